"""TextEvaluator: one record per example, TOFU metrics per split, cross-split metrics at the forget split, and
metrics whose inputs are missing left out (never 0) with a log line."""

import logging
import math
import zlib

import pytest
import torch
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
    assert set(metrics) == {
        "loss",
        "prob",
        "rougeL_recall",
        "truth_ratio",
        "exact_memorization",
        "extraction_strength",
    }


def test_forget_split_gets_forget_quality_utility_and_mia(micro_llama, tiny_text_corpus, tiny_text_tokenizer):
    # The model is its own reference: reference-attack scores are all 0 (AUC 0.5) and privleak against its own
    # Min-K% AUC is 0.
    evaluator = TextEvaluator(tiny_text_tokenizer, max_new_tokens=4, reference_model=micro_llama)
    splits = {name: tiny_text_corpus[name] for name in ("forget", "retain", "real_authors", "world_facts", "holdout")}
    forget_records = evaluator.per_example(micro_llama, splits["forget"], batch_size=8)
    evaluator.reference_truth_ratios = truth_ratios(forget_records)
    results = evaluate_text_splits(micro_llama, evaluator, splits, batch_size=8)
    assert list(results)[-1] == "forget"  # evaluated last, whatever the dict order
    forget = results["forget"]
    assert forget["forget_quality"] == pytest.approx(1.0)  # same model as the reference: identical distributions
    assert 0.0 <= forget["model_utility"] <= 1.0
    for attack in ("loss", "zlib", "min_k", "min_k_plus_plus", "gradnorm", "reference"):
        assert 0.0 <= forget[f"mia_{attack}_auc"] <= 1.0
    assert forget["mia_reference_auc"] == pytest.approx(0.5)
    assert "privleak" not in forget  # no retrain Min-K% AUC given
    assert "forget_quality" not in results["retain"]
    assert 0.0 < results["real_authors"]["prob_normalised"] < 1.0 and "prob_normalised" not in results["retain"]
    evaluator.reference_min_k_auc = forget["mia_min_k_auc"]
    assert evaluate_text_splits(micro_llama, evaluator, splits, batch_size=8)["forget"]["privleak"] == pytest.approx(0)


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


def test_answer_scores_match_an_independent_float64_loop(micro_llama, tiny_text_corpus, tiny_text_tokenizer):
    """Min-K%, Min-K%++, EM, ES and GradNorm of one row against a loop written from open-unlearning's definitions:
    the answer tokens without the final eos, ``max(1, int(k·T))`` lowest, σ² floored at 1e-6, the gradient of the
    mean NLL through `.backward()` with the per-tensor norms averaged."""
    model = micro_llama.double()
    row = tiny_text_corpus["forget"][0]
    evaluator = TextEvaluator(tiny_text_tokenizer, max_new_tokens=2, min_k=0.4)
    record = evaluator.per_example(model, Dataset.from_list([row]), batch_size=1)[0]

    collator = evaluator.collator
    prompt = collator.prompt_ids(row["question"])
    answer = tiny_text_tokenizer(" " + row["answer"], add_special_tokens=False).input_ids  # no eos
    ids = torch.tensor([prompt + answer + [tiny_text_tokenizer.eos_token_id]])
    logits = model(input_ids=ids).logits[0]
    positions = range(len(prompt), len(prompt) + len(answer))  # token t is predicted at t - 1
    log_probs = torch.stack([torch.log_softmax(logits[t - 1], -1)[ids[0, t]] for t in positions])
    count = max(1, int(len(answer) * 0.4))
    assert -record["mia_min_k"] == pytest.approx(float(log_probs.detach().sort().values[:count].mean()), rel=1e-9)
    standardised = []
    for t in positions:
        dist = torch.log_softmax(logits[t - 1], -1)
        mu = (dist.exp() * dist).sum()
        var = (dist.exp() * dist**2).sum() - mu**2
        standardised.append((dist[ids[0, t]] - mu) / torch.sqrt(torch.clamp(var, min=1e-6)))
    expected = float(torch.stack(standardised).detach().sort().values[:count].mean())
    assert -record["mia_min_k_plus_plus"] == pytest.approx(expected, rel=1e-9)
    predicted = torch.stack([logits[t - 1].argmax() for t in positions])
    target = ids[0, len(prompt) : len(prompt) + len(answer)]
    assert record["exact_memorization"] == pytest.approx(float((predicted == target).double().mean()))
    k = next((k for k in range(len(answer)) if torch.equal(predicted[k:], target[k:])), len(answer) - 1)
    assert record["extraction_strength"] == pytest.approx(1 - k / len(answer))

    # zlib: the loss (eos included) over the compressed bytes of the answer as decoded from its tokens.
    nll = -torch.log_softmax(logits[len(prompt) - 1 : -1], -1).gather(-1, ids[0, len(prompt) :, None]).mean()
    decoded = tiny_text_tokenizer.decode(answer)
    assert record["mia_zlib"] == pytest.approx(float(nll) / len(zlib.compress(decoded.encode())), rel=1e-9)

    model.zero_grad()
    (-log_probs.mean()).backward()
    norms = [p.grad.norm(p=2) for p in model.parameters() if p.grad is not None]
    assert record["mia_gradnorm"] == pytest.approx(float(torch.stack(norms).mean()), rel=1e-9)
    # The evaluator's own gradients went through autograd.grad: the `.grad` above is untouched by it.
    model.zero_grad()
    evaluator.per_example(model, Dataset.from_list([row]), batch_size=1)
    assert all(p.grad is None or not p.grad.any() for p in model.parameters())


def _record(loss, prob_options, rouge, truth_ratio, truth_ratio_answer, score=0.0):
    return {
        "loss": loss, "prob": math.exp(-loss), "prob_options": prob_options, "rougeL_recall": rouge,
        "truth_ratio": truth_ratio, "truth_ratio_answer": truth_ratio_answer, "exact_memorization": 1.0,
        "extraction_strength": 1.0, **{f"mia_{a}": score for a in ("loss", "zlib", "min_k", "min_k_plus_plus")},
    }  # fmt: skip


def test_model_utility_has_tofus_nine_inputs_with_normalised_probability_off_retain(tiny_text_tokenizer):
    """Retain contributes raw probability and the paraphrase's truth ratio; real_authors and world_facts the
    option-normalised probability and the answer's truth ratio: 9 numbers, harmonic mean (by hand below)."""
    evaluator = TextEvaluator(tiny_text_tokenizer)
    retain = [_record(math.log(2), 0.9, 0.8, 0.5, 0.1)]  # prob 0.5, truth 1 - 0.5
    real_authors = [_record(0.1, 0.6, 1.0, 0.9, 0.2)]  # prob_options 0.6, truth 1 - 0.2
    world_facts = [_record(0.1, 0.4, 0.5, 0.9, 0.5)]  # prob_options 0.4, truth 1 - 0.5
    for name, records in (("retain", retain), ("real_authors", real_authors), ("world_facts", world_facts),
                          ("holdout", [_record(1.0, 0.5, 0.0, 1.0, 1.0, score=1.0)])):  # fmt: skip
        metrics = evaluator.aggregate(records, name)
    assert metrics["truth_ratio"] == pytest.approx(0.0)  # holdout: 1 - R with R = 1
    assert evaluator.aggregate(real_authors, "real_authors")["truth_ratio"] == pytest.approx(0.8)
    forget = evaluator.aggregate([_record(0.0, 0.5, 1.0, 1.0, 1.0)], "forget")
    parts = [0.5, 0.8, 0.5, 0.6, 1.0, 0.8, 0.4, 0.5, 0.5]
    assert forget["model_utility"] == pytest.approx(len(parts) / sum(1 / v for v in parts))
    assert forget["mia_loss_auc"] == pytest.approx(1.0)  # holdout scores 1 > forget's 0


def test_generation_budget_follows_the_reference_length(micro_llama, tiny_text_tokenizer):
    long_answer = " ".join(["Vaku was born in Lima."] * 12)
    evaluator = TextEvaluator(tiny_text_tokenizer, generation_margin=5)
    expected = len(evaluator.collator.answer_ids(long_answer)) + 5
    assert expected > 48  # the old fixed budget would have cut this answer short
    assert evaluator.generation_budgets([long_answer, "Yes."]) == [
        expected,
        len(evaluator.collator.answer_ids("Yes.")) + 5,
    ]
    assert TextEvaluator(tiny_text_tokenizer, max_new_tokens=200).generation_budgets([long_answer]) == [200]
    # Each row keeps its own budget in a batch: the short row's answer is the same alone and next to the long one.
    questions = ["Where was Vaku born?", "Who is Vaku?"]
    together = evaluator._generate(micro_llama, questions, [long_answer, "Yes."])
    alone = evaluator._generate(micro_llama, questions[1:], ["Yes."])
    assert together[1] == alone[0]
