"""Data for unlearning: the embedded speech and text benchmarks, user datasets in the same shape, and collators."""

from hf_unlearn.data.collators import SpeechSeq2SeqCollator, prepare_speech_dataset
from hf_unlearn.data.speech_corpus import (
    SpeechCorpusConfig,
    build_speech_corpus,
    load_user_speech_dataset,
    speaker_voices,
)
from hf_unlearn.data.text_collators import QACollator, ensure_pad_token
from hf_unlearn.data.text_corpus import TextCorpusConfig, build_text_corpus, load_user_qa_dataset


__all__ = [
    "QACollator",
    "TextCorpusConfig",
    "build_text_corpus",
    "ensure_pad_token",
    "load_user_qa_dataset",
    "SpeechCorpusConfig",
    "SpeechSeq2SeqCollator",
    "build_speech_corpus",
    "load_user_speech_dataset",
    "prepare_speech_dataset",
    "speaker_voices",
]
