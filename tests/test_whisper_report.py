"""The speech recipe's headline: Avg-Gap to exact retraining over the four splits, checked on hand-computed cases."""

import pytest

from hf_unlearn.recipes.whisper import retrain_gap, run_report


def wers(forget: float, forget_test: float, retain: float, test: float) -> dict[str, dict[str, float]]:
    values = {"forget": forget, "forget_test": forget_test, "retain": retain, "test": test}
    return {split: {"wer": wer, "cer": wer / 2} for split, wer in values.items()}


RESULTS = {
    "base": wers(0.0, 0.1, 0.0, 0.2),
    "retrain": wers(0.6, 0.7, 0.0, 0.2),
    "unlearned": wers(0.9, 0.7, 0.1, 0.3),
}


def test_retrain_gap_is_the_mean_absolute_wer_difference():
    assert retrain_gap(RESULTS, "base") == pytest.approx((0.6 + 0.6 + 0.0 + 0.0) / 4)  # 0.3
    assert retrain_gap(RESULTS, "unlearned") == pytest.approx((0.3 + 0.0 + 0.1 + 0.1) / 4)  # 0.125: overshoot counts
    assert retrain_gap(RESULTS, "retrain") == 0.0


def test_no_gap_without_retrain_or_with_a_missing_split():
    assert retrain_gap({"base": RESULTS["base"]}, "base") is None
    partial = {"base": {"forget": {"wer": 0.0}}, "retrain": RESULTS["retrain"]}
    assert retrain_gap(partial, "base") is None


def test_report_prints_the_headline_after_the_table():
    report = run_report(RESULTS)
    assert report.splitlines()[-1] == (
        "Avg-Gap to exact retrain (mean |ΔWER| over forget, forget_test, retain, test): base 0.300, unlearned 0.125"
    )
    assert "| unlearned | 0.900 |" in report
    assert "Avg-Gap" not in run_report({"base": RESULTS["base"]})
