"""Data for unlearning: the embedded speech benchmark, user datasets in the same shape, and collators."""

from hf_unlearn.data.collators import SpeechSeq2SeqCollator, prepare_speech_dataset
from hf_unlearn.data.speech_corpus import (
    SpeechCorpusConfig,
    build_speech_corpus,
    load_user_speech_dataset,
    speaker_voices,
)


__all__ = [
    "SpeechCorpusConfig",
    "SpeechSeq2SeqCollator",
    "build_speech_corpus",
    "load_user_speech_dataset",
    "prepare_speech_dataset",
    "speaker_voices",
]
