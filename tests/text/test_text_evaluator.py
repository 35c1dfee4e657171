"""TextEvaluator: one record per example, TOFU metrics per split, cross-split metrics at the forget split, and
metrics whose inputs are missing left out (never 0) with a log line."""

import logging
import math

import pytest
from datasets import Dataset

from hf_unlearn.eval import SplitEvaluator
from hf_unlearn.eval.text_evaluator import TextEvaluator, evaluate_text_splits, truth_ratios


def test_records_and_split_metrics(micro_llama, tiny_text_corpus, tiny_text_tokenizer):
    evaluator = TextEvaluator(tiny_text_tokenizer, max_new_tokens=4)
    assert isinstance(evaluator, SplitEvaluator)
    records = evaluator.per_example(micro_llama, tiny_text_corpus["retain"], batch_size=5)
    assert len(records) == len(tiny_text_corpus["retain"])
    record = records[0]
    assert isinstance(record["generated"], str)
    assert record["prob"] == pytest.approx(math.exp(-record["loss"]))
    assert 0.0 <= record["rougeL_recall"] <= 1.0 and record["truth_ratio"] > 0
    # Batching does not change a record (padding is masked out of every score).
    single = evaluator.per_example(micro_llama, tiny_text_corpus["retain"].select([0]), batch_size=1)[0]
    assert single["loss"] == pytest.approx(record["loss"], rel=1e-4)
    assert single["mia_min_k_plus_plus"] == pytest.approx(record["mia_min_k_plus_plus"], rel=1e-4, abs=1e-5)
    metrics = evaluator.aggregate(records, "retain")
    assert set(metrics) == {"loss", "prob", "rougeL_recall", "truth_ratio"}


def test_forget_split_gets_forget_quality_utility_and_mia(micro_llama, tiny_text_corpus, tiny_text_tokenizer):
    evaluator = TextEvaluator(tiny_text_tokenizer, max_new_tokens=4)
    splits = {name: tiny_text_corpus[name] for name in ("forget", "retain", "world_facts", "holdout")}
    forget_records = evaluator.per_example(micro_llama, splits["forget"], batch_size=8)
    evaluator.reference_truth_ratios = truth_ratios(forget_records)
    results = evaluate_text_splits(micro_llama, evaluator, splits, batch_size=8)
    assert list(results)[-1] == "forget"  # evaluated last, whatever the dict order
    forget = results["forget"]
    assert forget["forget_quality"] == pytest.approx(1.0)  # same model as the reference: identical distributions
    assert 0.0 <= forget["model_utility"] <= 1.0
    for attack in ("loss", "zlib", "min_k", "min_k_plus_plus"):
        assert 0.0 <= forget[f"mia_{attack}_auc"] <= 1.0
    assert "forget_quality" not in results["retain"]


def test_without_perturbed_answers_truth_ratio_is_omitted_and_said(micro_llama, tiny_text_tokenizer, caplog):
    plain = Dataset.from_list([{"question": "Who is Vaku?", "answer": "Vaku is a baker."}] * 3)
    evaluator = TextEvaluator(tiny_text_tokenizer, max_new_tokens=2, reference_truth_ratios=[0.5, 1.0])
    with caplog.at_level(logging.WARNING):
        metrics = evaluator.aggregate(evaluator.per_example(micro_llama, plain, batch_size=2), "forget")
    assert "truth_ratio" not in metrics and "forget_quality" not in metrics
    assert "rougeL_recall" in metrics
    assert any("no truth ratio" in r.message for r in caplog.records)


def test_missing_question_column_names_the_fix(micro_llama, tiny_text_tokenizer):
    evaluator = TextEvaluator(tiny_text_tokenizer)
    with pytest.raises(ValueError, match="question.*rename_column"):
        evaluator.per_example(micro_llama, Dataset.from_list([{"prompt": "Who?", "answer": "Vaku."}]), batch_size=1)
