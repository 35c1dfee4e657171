"""Forget/retain metrics."""

from hf_unlearn.eval.asr import (
    char_error_rate,
    evaluate_asr,
    normalize_transcript,
    transcribe,
    wer_cer,
    word_error_rate,
)


__all__ = ["char_error_rate", "evaluate_asr", "normalize_transcript", "transcribe", "wer_cer", "word_error_rate"]
