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
    columns = (("forget", "wer"), ("retain", "wer"), ("test", "wer"))
    assert compare.avg_gap(METRICS, columns, "unlearned") == pytest.approx(0.2 / 3)
    assert compare.avg_gap(METRICS, columns, "base") == pytest.approx(0.85 / 3)
    assert compare.avg_gap({"unlearned": METRICS["unlearned"]}, (("forget", "wer"),), "unlearned") is None
    # Columns may mix metrics: |0.9 − 0.85| on forget WER, |4.0 − 3.0| on forget loss.
    assert compare.avg_gap(METRICS, (("forget", "wer"), ("forget", "loss")), "unlearned") == pytest.approx(1.05 / 2)


def test_table_sorts_by_gap_and_ends_with_references(compare):
    benchmark = compare.Benchmark(
        recipe="unused",
        metric="wer",
        gap_columns=(("forget", "wer"),),
        table_columns=(("forget", "wer", "forget WER"), ("retain", "wer", "retain WER")),
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


def test_unknown_benchmark_is_refused(compare, capsys):
    with pytest.raises(SystemExit):
        compare.main(["--benchmark", "images"])
    assert "available: speech, text" in capsys.readouterr().err


def text_metrics(forget_rouge: float, retain_rouge: float, utility: float, auc: float) -> dict:
    forget = {"rougeL_recall": forget_rouge, "prob": 0.5, "truth_ratio": 0.6, "forget_quality": 0.2}
    forget.update(model_utility=utility, mia_loss_auc=auc)
    return {"forget": forget, "retain": {"rougeL_recall": retain_rouge}, "world_facts": {"rougeL_recall": 1.0}}


def test_text_plot_only_redraws_table_and_plots_from_the_json(compare, tmp_path, capsys):
    """The text benchmark's plumbing on a hand-written JSON: Avg-Gap over its four columns, table, plots."""
    benchmark = compare.BENCHMARKS["text"]
    shared = {"base": text_metrics(1.0, 1.0, 0.57, 1.0), "retrain": text_metrics(0.4, 1.0, 0.65, 0.5)}
    runs = {
        "npo": {"metrics": {**shared, "unlearned": text_metrics(0.2, 0.9, 0.55, 0.5)}, "retain_weight": 1.0},
        "ga": {"metrics": {**shared, "unlearned": text_metrics(0.0, 0.0, 0.0, 0.2)}, "retain_weight": 0.0},
    }
    for run in runs.values():
        run.update(max_steps=50, wall_s=40.0, log_history=[])
    summary = {"benchmark": "text", "seed": 0, **compare.summarise(benchmark, runs)}
    # npo: (|0.2 − 0.4| + |0.9 − 1| + |0.55 − 0.65| + 0) / 4; base: (0.6 + 0 + 0.08 + 0.5) / 4
    assert summary["methods"]["npo"]["avg_gap"] == pytest.approx(0.1)
    assert summary["base_avg_gap"] == pytest.approx(0.295)
    (tmp_path / "compare_methods_text.json").write_text(json.dumps(summary))

    argv = ["--benchmark", "text", "--plot_only", "--output_dir", str(tmp_path), "--runs_dir", str(tmp_path / "no")]
    assert compare.main(argv) == summary
    lines = (tmp_path / "compare_methods_text.md").read_text().splitlines()
    assert lines[0].startswith("| method | weight | forget ROUGE-L | forget prob |")
    assert lines[2].startswith("| npo | 1.000 | 0.200 |") and lines[2].endswith("| 0.100 | 40 |")
    assert lines[3].startswith("| ga |")
    assert lines[-1].startswith("| *exact retrain* | – | 0.400 |")
    assert_png(tmp_path / "compare_methods_text_tradeoff.png")
    assert not (tmp_path / "compare_methods_text_conflict.png").exists()  # no run logged a conflict diagnostic
    assert "| npo |" in capsys.readouterr().out


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
        metrics = json.loads((tmp_path / "runs" / "speech" / method / "metrics.json").read_text())
        assert run["unlearned"] == metrics["unlearned"]  # the recipe's own numbers, not recomputed
        assert run["avg_gap"] == pytest.approx(
            compare.avg_gap(metrics, (("forget", "wer"), ("retain", "wer"), ("test", "wer")), "unlearned")
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
