"""`compare_methods.py --benchmark classifier --quick` for real: the classifier recipe on the digits, both tasks,
grid selection on the validation split, 2 seeds, matched-forget stopping. The protocol itself (selection, tasks,
statistics, outputs) is tested fast with a stand-in recipe in tests/test_compare_methods.py."""

import json
import math

import pytest

from ..test_plots import assert_png
from ..testing_utils import load_benchmark


@pytest.mark.slow  # ~50 s of CPU: 16 recipe runs and 9 two-epoch reference models
def test_quick_classifier_comparison_runs_the_recipe(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_UNLEARN_CACHE", str(tmp_path / "cache"))
    compare = load_benchmark("compare_methods")
    results_dir, runs = tmp_path / "results", tmp_path / "runs"
    argv = ["--benchmark", "classifier", "--quick", "--methods", "graddiff", "orthograd"]
    summary = compare.main([*argv, "--runs_dir", str(runs), "--output_dir", str(results_dir)])

    assert set(summary["tasks"]) == {"class", "random"} and summary["seeds"] == [0, 1]
    assert summary["torch_threads"] == 1
    for task, entry in summary["tasks"].items():
        for method, result in entry["methods"].items():
            assert len(result["grid"]) == 2 and len(result["seeds"]) == 2
            grid_dir = runs / "classifier" / task / method / compare.point_name(result["grid"][0])
            grid_config = json.loads((grid_dir / "unlearn_config.json").read_text())["script"]
            assert grid_config["test_split"] == "validation" and grid_config["task"] == task  # never the test split
            for run in result["seeds"]:
                run_dir = runs / "classifier" / task / method / f"seed{run['seed']}"
                metrics = json.loads((run_dir / "metrics.json").read_text())
                resolved = json.loads((run_dir / "unlearn_config.json").read_text())
                assert resolved["script"]["test_split"] == "test" and resolved["script"]["stop_at_target"] == "retrain"
                assert resolved["config"]["load_best_model_at_end"] and resolved["config"]["seed"] == run["seed"]
                # The harness's Avg-Gap over UA, RA, TA, MIA is the recipe's own.
                assert run["avg_gap"] == pytest.approx(metrics["avg_gap"]) and math.isfinite(run["avg_gap"])
                assert run["unlearned"]["forget"]["ua"] == pytest.approx(
                    1 - metrics["unlearned"]["forget"]["accuracy"]
                )
        assert "graddiff" in entry["methods"]["orthograd"]["paired"]
    assert_png(results_dir / "compare_methods_classifier_quick_tradeoff.png")
    table = (results_dir / "compare_methods_classifier_quick.md").read_text()
    assert "**class-wise forgetting (`--task class`)**" in table and "forget-class TA" in table
