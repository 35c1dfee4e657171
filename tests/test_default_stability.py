"""`benchmarks/default_stability.py`: the divergence rule on hand-made metrics, and one real run end to end."""

import json

import pytest

from .testing_utils import load_benchmark


@pytest.fixture(scope="module")
def stability():
    return load_benchmark("default_stability")


def speech(forget: float, retain: float, test: float = 0.1) -> dict:
    return {"forget": {"wer": forget}, "retain": {"wer": retain}, "test": {"wer": test}}


def test_speech_divergence_is_babbling_or_a_lost_retain_set(stability):
    base = speech(0.0, 0.0)
    assert stability.divergence("speech", {"base": base, "unlearned": speech(0.9, 0.1)}) is None  # forgot, kept
    assert stability.divergence("speech", {"base": base, "unlearned": speech(1.0, 0.5)}) is None  # at both limits
    assert "forget WER 1.30" in stability.divergence("speech", {"base": base, "unlearned": speech(1.3, 0.0)})
    assert "test WER 5.00" in stability.divergence("speech", {"base": base, "unlearned": speech(0.2, 0.1, 5.0)})
    assert "retain WER 0.61" in stability.divergence("speech", {"base": base, "unlearned": speech(1.1, 0.61)})


def test_text_and_classifier_divergence_is_half_the_base_retain_score(stability):
    def text(retain: float, utility: float = 0.8) -> dict:
        return {"forget": {"rougeL_recall": 0.1, "model_utility": utility}, "retain": {"rougeL_recall": retain}}

    assert stability.divergence("text", {"base": text(0.9), "unlearned": text(0.45)}) is None  # exactly half
    assert "retain ROUGE-L 0.44" in stability.divergence("text", {"base": text(0.9), "unlearned": text(0.44)})
    assert "not finite" in stability.divergence("text", {"base": text(0.9), "unlearned": text(0.9, float("nan"))})

    def digits(retain: float) -> dict:
        return {"forget": {"accuracy": 0.0}, "retain": {"accuracy": retain}}

    assert stability.divergence("classifier", {"base": digits(1.0), "unlearned": digits(0.5)}) is None
    assert "retain accuracy 0.30" in stability.divergence(
        "classifier", {"base": digits(1.0), "unlearned": digits(0.3)}
    )


def test_a_real_run_writes_the_verdict_table(stability, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_UNLEARN_CACHE", str(tmp_path / "cache"))
    argv = ["--benchmarks", "text", "--methods", "graddiff", "--runs_dir", str(tmp_path / "runs")]
    summary = stability.main(
        [*argv, "--output_dir", str(tmp_path), "--", "--corpus_preset", "tiny", "--max_steps", "2"]
    )
    (row,) = summary["benchmarks"]["text"]
    assert row["method"] == "graddiff" and row["steps"] == 2 and row["diverged"] is None
    written = json.loads((tmp_path / "default_stability_graddiff.json").read_text())
    assert written["benchmarks"]["text"][0]["metrics"]["unlearned"] == row["metrics"]["unlearned"]
    markdown = (tmp_path / "default_stability_graddiff.md").read_text()
    assert "| graddiff | 3 | 0.001 | 2 |" in markdown and "*exact retrain*" in markdown
