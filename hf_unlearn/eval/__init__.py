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
from hf_unlearn.eval.text_evaluator import TextEvaluator, evaluate_text_splits


__all__ = [
    "ASREvaluator",
    "ShardPlan",
    "SplitEvaluator",
    "TextEvaluator",
    "char_error_rate",
    "evaluate_asr",
    "evaluate_text_splits",
    "normalize_transcript",
    "transcribe",
    "wer_cer",
    "word_error_rate",
]
