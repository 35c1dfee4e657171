"""Models built from config for the embedded benchmarks, and their cached base/exact-retrain references."""

from hf_unlearn.models.reference import (
    ReferenceTrainingConfig,
    load_reference_model,
    processor_for_corpus,
    train_reference_model,
)
from hf_unlearn.models.tiny_whisper import build_tiny_whisper, build_whisper_processor, build_whisper_tokenizer


__all__ = [
    "ReferenceTrainingConfig",
    "build_tiny_whisper",
    "build_whisper_processor",
    "build_whisper_tokenizer",
    "load_reference_model",
    "processor_for_corpus",
    "train_reference_model",
]
