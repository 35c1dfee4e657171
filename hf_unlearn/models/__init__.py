"""Models built from config for the embedded benchmarks, and their cached base/exact-retrain references."""

from hf_unlearn.models.batch_norm import freeze_batch_norm
from hf_unlearn.models.speech_benchmark_models import (
    ReferenceTrainingConfig,
    load_reference_model,
    processor_for_corpus,
    train_reference_model,
)
from hf_unlearn.models.text_reference import (
    TextReferenceTrainingConfig,
    load_text_reference_model,
    tokenizer_for_text_corpus,
    train_text_reference_model,
)
from hf_unlearn.models.tiny_llama import build_llama_tokenizer, build_tiny_llama
from hf_unlearn.models.tiny_whisper import build_tiny_whisper, build_whisper_processor, build_whisper_tokenizer


__all__ = [
    "freeze_batch_norm",
    "ReferenceTrainingConfig",
    "TextReferenceTrainingConfig",
    "build_llama_tokenizer",
    "build_tiny_llama",
    "load_text_reference_model",
    "tokenizer_for_text_corpus",
    "train_text_reference_model",
    "build_tiny_whisper",
    "build_whisper_processor",
    "build_whisper_tokenizer",
    "load_reference_model",
    "processor_for_corpus",
    "train_reference_model",
]
