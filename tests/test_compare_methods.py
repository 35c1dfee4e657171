"""`benchmarks/compare_methods.py`: Avg-Gap, the table, the benchmark switch, and a two-method run on the tiny corpus."""

import importlib.util
import json
from pathlib import Path

import pytest

from .test_plots import METRICS, assert_png


REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def compare():
    spec = importlib.util.spec_from_file_location("compare_methods", REPO / "benchmarks" / "compare_methods.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_avg_gap_is_the_mean_absolute_gap_to_retrain(compare):
    # forget |0.9 − 0.85| = 0.05, retain |0.1 − 0| = 0.1, test |0.95 − 0.9| = 0.05
    gap = compare.avg_gap(METRICS, ("forget", "retain", "test"), "wer", "unlearned")
    assert gap == pytest.approx(0.2 / 3)
    assert compare.avg_gap(METRICS, ("forget", "retain", "test"), "wer", "base") == pytest.approx(0.85 / 3)
    assert compare.avg_gap({"unlearned": METRICS["unlearned"]}, ("forget",), "wer", "unlearned") is None


def test_table_sorts_by_gap_and_ends_with_references(compare):
    benchmark = compare.Benchmark(
        recipe="unused", metric="wer", lower_is_better=True, gap_splits=("forget",), table_splits=("forget", "retain")
    )
    worse = json.loads(json.dumps(METRICS))
    worse["unlearned"]["forget"]["wer"] = 0.2
    runs = {
        "ga": {"metrics": worse, "retain_weight": 0.0, "max_steps": 60, "wall_s": 10.0, "log_history": []},
        "lur": {"metrics": METRICS, "retain_weight": 1.0, "max_steps": 60, "wall_s": 20.0, "log_history": []},
    }
    lines = compare.markdown_table(benchmark, compare.summarise(benchmark, runs)).splitlines()
    assert lines[0] == "| method | weight | forget WER | retain WER | Avg-Gap ↓ | time (s) |"
    assert lines[2] == "| lur | 1.000 | 0.900 | 0.100 | 0.050 | 20 |"
    assert lines[3] == "| ga | 0.000 | 0.200 | 0.100 | 0.650 | 10 |"
    assert lines[4].startswith("| *base (before)* | – | 0.000 | 0.000 | 0.850 |")
    assert lines[5].startswith("| *exact retrain* |")


def test_text_benchmark_is_refused_with_the_reason(compare, capsys):
    with pytest.raises(SystemExit):
        compare.main(["--benchmark", "text"])
    err = capsys.readouterr().err
    assert "unlearn_llm" in err and "available: speech" in err


def test_unknown_method_is_refused_before_any_run(compare, capsys, tmp_path):
    with pytest.raises(SystemExit):
        compare.main(["--methods", "graddiff", "nope", "--runs_dir", str(tmp_path)])
    assert "nope" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_two_methods_on_the_tiny_corpus(compare, tmp_path):
    results_dir = tmp_path / "results"
    argv = ["--methods", "graddiff", "lur", "--runs_dir", str(tmp_path / "runs"), "--output_dir", str(results_dir)]
    summary = compare.main([*argv, "--", "--corpus_preset", "tiny", "--max_steps", "2", "--logging_steps", "1"])
    written = json.loads((results_dir / "compare_methods_speech.json").read_text())
    assert written == json.loads(json.dumps(summary))
    assert set(written["methods"]) == {"graddiff", "lur"}
    for method, run in written["methods"].items():
        metrics = json.loads((tmp_path / "runs" / method / "metrics.json").read_text())
        assert run["unlearned"] == metrics["unlearned"]  # the recipe's own numbers, not recomputed
        assert run["avg_gap"] == pytest.approx(
            compare.avg_gap(metrics, ("forget", "retain", "test"), "wer", "unlearned")
        )
    table = (results_dir / "compare_methods_speech.md").read_text()
    assert "| graddiff |" in table and "| lur |" in table and "| *exact retrain* |" in table
    assert_png(results_dir / "compare_methods_speech_tradeoff.png")
    assert_png(results_dir / "compare_methods_speech_conflict.png")  # LUR logs lur/grad_cosine

    (results_dir / "compare_methods_speech.md").unlink()
    assert (
        compare.main(["--plot_only", "--runs_dir", str(tmp_path / "runs"), "--output_dir", str(results_dir)])
        == written
    )
    assert (results_dir / "compare_methods_speech.md").read_text() == table
