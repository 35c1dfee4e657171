"""Forget/retain metrics."""

from hf_unlearn.eval.asr import (
    char_error_rate,
    evaluate_asr,
    normalize_transcript,
    transcribe,
    wer_cer,
    word_error_rate,
)
from hf_unlearn.eval.evaluator import ASREvaluator, ShardPlan, SplitEvaluator


__all__ = [
    "ASREvaluator",
    "ShardPlan",
    "SplitEvaluator",
    "char_error_rate",
    "evaluate_asr",
    "normalize_transcript",
    "transcribe",
    "wer_cer",
    "word_error_rate",
]
