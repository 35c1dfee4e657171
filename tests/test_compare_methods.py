"""`benchmarks/compare_methods.py`: Avg-Gap, the statistics, grid selection on the validation seed, the outputs, and
`--quick` on the tiny text corpus."""

import json
import math

import pytest

from .test_plots import METRICS, assert_png
from .testing_utils import load_benchmark


@pytest.fixture(scope="module")
def compare():
    return load_benchmark("compare_methods")


def test_avg_gap_is_the_mean_absolute_gap_to_retrain(compare):
    # forget |0.9 − 0.85| = 0.05, retain |0.1 − 0| = 0.1, test |0.95 − 0.9| = 0.05
    columns = (("forget", "wer"), ("retain", "wer"), ("test", "wer"))
    assert compare.avg_gap(METRICS, columns, "unlearned") == pytest.approx(0.2 / 3)
    assert compare.avg_gap(METRICS, columns, "base") == pytest.approx(0.85 / 3)
    assert compare.avg_gap({"unlearned": METRICS["unlearned"]}, (("forget", "wer"),), "unlearned") is None
    # Columns may mix metrics: |0.9 − 0.85| on forget WER, |4.0 − 3.0| on forget loss.
    assert compare.avg_gap(METRICS, (("forget", "wer"), ("forget", "loss")), "unlearned") == pytest.approx(1.05 / 2)


def test_sign_test_matches_the_binomial_tail(compare):
    # 3 wins of 3: two-sided p = 2 · (1/2)^3; 2 of 3: 2 · (1 + 3)/8 = 1; 9 of 10: 2 · (1 + 10)/1024.
    assert compare.sign_test([-1.0, -2.0, -0.5]) == pytest.approx(0.25)
    assert compare.sign_test([-1.0, 2.0, -0.5]) == pytest.approx(1.0)
    assert compare.sign_test([-1.0] * 9 + [1.0]) == pytest.approx(22 / 1024)
    assert compare.sign_test([0.0, 0.0]) == 1.0  # ties carry no sign
    assert compare.sign_test([0.0, -1.0, -1.0]) == pytest.approx(0.5)
    assert compare.sign_test([-1e-15, 2e-16]) == 1.0  # float noise between identical models is a tie


def test_bootstrap_ci_and_mean_sd(compare):
    low, high = compare.bootstrap_ci([-0.1, -0.2, -0.3])
    assert -0.3 <= low < -0.2 < high <= -0.1  # the mean −0.2 inside, within the range of the resampled means
    assert compare.bootstrap_ci([0.5, 0.5]) == (0.5, 0.5)
    stat = compare.mean_sd([1.0, 2.0, 3.0])
    assert stat["mean"] == 2.0 and stat["sd"] == pytest.approx(1.0)  # sample sd (n − 1)
    assert compare.mean_sd([4.0])["sd"] is None
    paired = compare.paired_comparison([0.1, 0.2, 0.3], [0.2, 0.2, 0.5])
    assert paired["differences"] == pytest.approx([-0.1, 0.0, -0.2])
    assert (paired["wins"], paired["losses"]) == (2, 0) and paired["sign_test_p"] == pytest.approx(0.5)


def test_grid_is_weight_times_rate_and_at_most_nine_points(compare):
    points = compare.grid("lur", {"lur": (1.0, 3.0)}, [1e-3, 2e-3])
    assert [(p["weight"], p["learning_rate"]) for p in points] == [(1.0, 1e-3), (1.0, 2e-3), (3.0, 1e-3), (3.0, 2e-3)]
    assert compare.point_args(points[0]) == ["--learning_rate", "0.001", "--retain_weight", "1.0"]
    assert compare.point_args({"weight": None, "learning_rate": 1e-3}) == ["--learning_rate", "0.001"]  # GA
    with pytest.raises(ValueError, match="at most 9"):
        compare.grid("lur", {"lur": (1.0, 2.0, 3.0, 4.0)}, [1e-3, 2e-3, 3e-3])
    assert compare.parse_weights(["lur=1,3"], ["lur", "ga"]) == {"lur": (1.0, 3.0), "ga": (None,)}
    assert compare.parse_weights(["lur=1,3", "npo=2"], ["lur"]) == {"lur": (1.0, 3.0)}  # npo not compared here
    with pytest.raises(ValueError, match="method=w1,w2"):
        compare.parse_weights(["nope=1"], ["lur"])


def fake_speech_metrics(forget: float, retain: float) -> dict:
    per_split = {"forget": forget, "forget_test": 0.9, "retain": retain, "test": 0.95}
    base = {split: {"wer": 0.0} for split in per_split}
    retrain = {"forget": {"wer": 0.8}, "forget_test": {"wer": 0.9}, "retain": {"wer": 0.0}, "test": {"wer": 0.95}}
    return {"base": base, "retrain": retrain, "unlearned": {s: {"wer": v} for s, v in per_split.items()}}


def fake_runner(calls):
    """Stands in for the recipe: retain damage grows with the learning rate and falls with the weight; GradDiff is
    worse than LUR by 0.05 retain WER on every seed, with a seed-dependent offset."""

    def run(benchmark, method, run_dir, seed, extra):
        calls.append((method, run_dir.name, seed, list(extra)))
        lr = float(extra[extra.index("--learning_rate") + 1])
        weight_flag = "--retain_mix" if method in ("orthograd", "gru") else "--retain_weight"  # α vs λ
        weight = float(extra[extra.index(weight_flag) + 1])
        retain = 100 * lr / weight + 0.01 * (seed % 7) + (0.05 if method == "graddiff" else 0.0)
        return {
            "metrics": fake_speech_metrics(0.8, retain),
            "retain_weight": weight,
            "learning_rate": lr,
            "stopped_step": 20,
            "restored_step": 15 + seed,
            "wall_s": 1.0,
        }

    return run


def test_selection_on_the_validation_seed_then_seeds_and_paired_comparison(compare, tmp_path, capsys):
    calls = []
    argv = ["--methods", "graddiff", "lur", "--seeds", "3", "--weights", "graddiff=1,3", "lur=1,3"]
    argv += ["--learning_rates", "1e-3", "2e-3", "--runs_dir", str(tmp_path / "runs"), "--output_dir", str(tmp_path)]
    summary = compare.main([*argv, "--", "--max_steps", "7"], runner=fake_runner(calls))

    # 4 grid points on the validation seed, then the chosen one on seeds 0, 1, 2 — per method.
    graddiff_calls = [call for call in calls if call[0] == "graddiff"]
    assert [(name, seed) for _, name, seed, _ in graddiff_calls] == [
        ("w1-lr0.001", 1000), ("w1-lr0.002", 1000), ("w3-lr0.001", 1000), ("w3-lr0.002", 1000),
        ("seed0", 0), ("seed1", 1), ("seed2", 2),
    ]  # fmt: skip
    extra = graddiff_calls[0][3]
    assert extra[:4] == ["--learning_rate", "0.001", "--retain_weight", "1.0"]
    assert ["--stop_at_target", "retrain", "--eval_steps", "5"] == extra[4:8]  # matched forget
    assert extra[-2:] == ["--max_steps", "7"]  # recipe args after `--` come last, so they win
    # Smallest retain damage = smallest Avg-Gap: the largest weight with the smallest rate, for both methods.
    for method in ("graddiff", "lur"):
        assert summary["methods"][method]["chosen"] == {"weight": 3.0, "learning_rate": 1e-3}
        assert len(summary["methods"][method]["grid"]) == 4
    lur = summary["methods"]["lur"]
    retains = [100 * 1e-3 / 3 + 0.01 * seed for seed in range(3)]
    assert lur["stats"]["retain/wer"]["mean"] == pytest.approx(sum(retains) / 3)
    assert lur["stats"]["retain/wer"]["sd"] == pytest.approx(0.01)
    assert lur["stats"]["restored_step"]["mean"] == pytest.approx(16.0)
    # LUR beats GradDiff by exactly 0.05 retain WER on every seed: Avg-Gap differs by 0.05 / 3.
    paired = lur["paired"]["graddiff"]
    assert paired["mean_difference"] == pytest.approx(-0.05 / 3)
    assert (paired["wins"], paired["losses"]) == (3, 0) and paired["sign_test_p"] == pytest.approx(0.25)
    assert "npo" not in lur["paired"] and summary["methods"]["graddiff"]["paired"] == {}

    written = json.loads((tmp_path / "compare_methods_speech.json").read_text())
    assert written == json.loads(json.dumps(summary))
    table = (tmp_path / "compare_methods_speech.md").read_text()
    lines = table.splitlines()
    assert lines[0].startswith("| method | weight | lr | forget WER |")
    assert lines[2].startswith("| lur | 3.00 | 0.001 | 0.800 ± 0.000 |")  # best mean Avg-Gap first
    assert "| lur | graddiff | -0.017 |" in table and "| 3 / 0 | 0.250 |" in table
    assert_png(tmp_path / "compare_methods_speech_tradeoff.png")
    assert "| *exact retrain, 3 seeds* |" in capsys.readouterr().out

    (tmp_path / "compare_methods_speech.md").unlink()
    assert compare.main(["--plot_only", "--output_dir", str(tmp_path), "--runs_dir", str(tmp_path / "no")]) == written
    assert (tmp_path / "compare_methods_speech.md").read_text() == table


def test_one_point_grid_skips_selection_and_quick_shrinks_the_grid(compare, tmp_path):
    calls = []
    argv = ["--methods", "lur", "--seeds", "2", "--weights", "lur=3", "--learning_rates", "1e-3"]
    compare.main([*argv, "--runs_dir", str(tmp_path), "--output_dir", str(tmp_path)], runner=fake_runner(calls))
    assert [(name, seed) for _, name, seed, _ in calls] == [("seed0", 0), ("seed1", 1)]

    calls.clear()
    compare.main(["--methods", "lur", "--quick", "--runs_dir", str(tmp_path), "--output_dir", str(tmp_path)],
                 runner=fake_runner(calls))  # fmt: skip
    # Two weights × the first rate on the validation seed, then 2 seeds, on the tiny corpus.
    assert [(name, seed) for _, name, seed, _ in calls] == [
        ("w1-lr0.0005", 1000), ("w3-lr0.0005", 1000), ("seed0", 0), ("seed1", 1)
    ]  # fmt: skip
    assert calls[0][3][-6:] == ["--corpus_preset", "tiny", "--max_steps", "2", "--eval_steps", "1"]


def test_bad_arguments_are_refused_before_any_run(compare, tmp_path, capsys):
    for argv, message in [
        (["--benchmark", "images"], "available: speech, text"),
        (["--methods", "graddiff", "nope"], "nope"),
        (["--validation_seed", "1"], "is a reported seed"),
        (["--weights", "graddiff=1,2,3,4", "--learning_rates", "1", "2", "3"], "at most 9"),
        (["--seeds", "0"], "--seeds must be >= 1"),
    ]:
        with pytest.raises(SystemExit):
            compare.main([*argv, "--runs_dir", str(tmp_path)], runner=lambda *a: pytest.fail("ran"))
        assert message in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_plot_only_refuses_a_json_of_the_one_seed_version(compare, tmp_path, capsys):
    old = {"benchmark": "speech", "seed": 0, "methods": {"lur": {"unlearned": {}, "avg_gap": 0.1}}}
    (tmp_path / "compare_methods_speech.json").write_text(json.dumps(old))
    with pytest.raises(SystemExit):
        compare.main(["--plot_only", "--output_dir", str(tmp_path)])
    assert "one-seed comparison of an earlier version" in capsys.readouterr().err


@pytest.mark.slow
def test_quick_text_comparison_runs_the_recipe(compare, tmp_path):
    """`--quick` for real: the text recipe on the tiny corpus, grid selection, 2 seeds, matched-forget stopping."""
    results_dir = tmp_path / "results"
    argv = ["--benchmark", "text", "--quick", "--methods", "graddiff", "npo"]
    summary = compare.main([*argv, "--runs_dir", str(tmp_path / "runs"), "--output_dir", str(results_dir)])
    assert set(summary["methods"]) == {"graddiff", "npo"} and summary["seeds"] == [0, 1]
    for method, entry in summary["methods"].items():
        assert len(entry["grid"]) == 2 and len(entry["seeds"]) == 2
        for run in entry["seeds"]:
            run_dir = tmp_path / "runs" / "text" / method / f"seed{run['seed']}"
            metrics = json.loads((run_dir / "metrics.json").read_text())
            assert run["unlearned"] == metrics["unlearned"]  # the recipe's own numbers, not recomputed
            resolved = json.loads((run_dir / "unlearn_config.json").read_text())
            assert resolved["script"]["stop_at_target"] == "retrain" and resolved["config"]["load_best_model_at_end"]
            assert resolved["config"]["retain_weight"] == entry["chosen"]["weight"]
            assert math.isfinite(run["avg_gap"])
    assert "npo" in summary["methods"]["graddiff"]["paired"]
    assert_png(results_dir / "compare_methods_text_quick_tradeoff.png")
    assert (results_dir / "compare_methods_text_quick.json").is_file()
    assert not (results_dir / "compare_methods_text.json").exists()  # a quick run never replaces a real one


def recipe_classifier_metrics(task: str, forget: float, retain: float, seed: int) -> dict:
    """What the classifier recipe returns (its metrics.json), for a stand-in run."""

    def model(forget_acc, retain_acc, test_acc, mia):
        scores = {"forget": {"accuracy": forget_acc}, "retain": {"accuracy": retain_acc},
                  "test": {"accuracy": test_acc}, "mia_efficacy": mia}  # fmt: skip
        if task == "class":
            scores["forget_test"] = {"accuracy": forget_acc}
        return scores

    retrain_forget = 0.0 if task == "class" else 0.95
    return {
        "base": model(1.0, 1.0, 0.97, 0.0),
        "retrain": model(retrain_forget, 1.0, 0.97 - 0.01 * seed, 1.0 if task == "class" else 0.1),
        "unlearned": model(forget, retain, 0.95, 0.9),
        "avg_gap": None,
        "uis": 0.25,
    }


def test_classifier_view_gives_ua_mia_and_uis_as_columns(compare):
    view = compare.classifier_view(recipe_classifier_metrics("class", 0.2, 0.9, 0))
    assert view["unlearned"]["forget"] == {"accuracy": 0.2, "ua": 0.8}
    assert view["unlearned"]["mia"] == {"efficacy": 0.9} and view["unlearned"]["scores"] == {"uis": 0.25}
    assert "scores" not in view["base"] and view["retrain"]["forget_test"] == {"accuracy": 0.0}
    # Avg-Gap over UA, RA, TA, MIA: |0.2 − 0| + |0.9 − 1| + |0.95 − 0.97| + |0.9 − 1| = 0.42, over 4.
    columns = compare.BENCHMARKS["classifier"].gap_columns
    assert compare.avg_gap(view, columns, "unlearned") == pytest.approx(0.42 / 4)


def test_classifier_tasks_select_on_the_validation_split_then_compare_per_task(compare, tmp_path, capsys):
    calls = []

    def run(benchmark, method, run_dir, seed, extra):
        calls.append((method, run_dir.parent.parent.name, run_dir.name, seed, list(extra)))
        task = extra[extra.index("--task") + 1]
        lr = float(extra[extra.index("--learning_rate") + 1])
        weight_flag = "--retain_mix" if method in ("orthograd", "gru") else "--retain_weight"  # α vs λ
        weight = float(extra[extra.index(weight_flag) + 1])
        # Retain damage grows with the rate, falls with the weight; OrthoGrad keeps 0.02 more retain accuracy.
        retain = 1.0 - 10 * lr / weight - 0.001 * seed + (0.02 if method == "orthograd" else 0.0)
        metrics = recipe_classifier_metrics(task, 0.0 if task == "class" else 0.95, retain, seed)
        return {"metrics": benchmark.metrics_view(metrics), "retain_weight": weight, "learning_rate": lr,
                "stopped_step": 6, "restored_step": 6, "wall_s": 1.0}  # fmt: skip

    argv = ["--benchmark", "classifier", "--methods", "graddiff", "orthograd", "--weights", "graddiff=1,3",
            "orthograd=0.3,0.5", "--learning_rates", "1e-3", "--torch_threads", "2", "--runs_dir",
            str(tmp_path / "runs"), "--output_dir", str(tmp_path)]  # fmt: skip
    summary = compare.main(argv, runner=run)

    assert list(summary["tasks"]) == ["class", "random"] and summary["torch_threads"] == 2
    for task in ("class", "random"):
        task_calls = [call for call in calls if call[1] == task]
        assert [(c[0], c[2], c[3]) for c in task_calls] == [
            ("graddiff", "w1-lr0.001", 1000), ("graddiff", "w3-lr0.001", 1000),
            ("graddiff", "seed0", 0), ("graddiff", "seed1", 1), ("graddiff", "seed2", 2),
            ("orthograd", "w0.3-lr0.001", 1000), ("orthograd", "w0.5-lr0.001", 1000),
            ("orthograd", "seed0", 0), ("orthograd", "seed1", 1), ("orthograd", "seed2", 2),
        ]  # fmt: skip
        for _, _, name, _, extra in task_calls:
            assert extra[extra.index("--task") + 1] == task
            # Only the selection runs score on the validation split; the reported seeds use the test split.
            assert ("--test_split" in extra) == name.startswith("w")
            assert ["--stop_at_target", "retrain", "--eval_steps", "2", "--max_steps", "80"] == extra[-6:]
        entry = summary["tasks"][task]
        assert entry["methods"]["graddiff"]["chosen"] == {"weight": 3.0, "learning_rate": 1e-3}
        paired = entry["methods"]["orthograd"]["paired"]["graddiff"]
        # Chosen: GradDiff λ = 3 (RA 1 − 0.01/3), OrthoGrad α = 0.5 (RA 1): Avg-Gap differs by (0.01/3) / 4.
        assert paired["mean_difference"] == pytest.approx(-0.01 / 3 / 4) and paired["wins"] == 3
        # Each seed's own references, as mean ± sd: retrain TA 0.97, 0.96, 0.95.
        assert entry["reference_stats"]["retrain"]["test/accuracy"]["mean"] == pytest.approx(0.96)
        assert entry["reference_stats"]["retrain"]["test/accuracy"]["sd"] == pytest.approx(0.01)
    table = (tmp_path / "compare_methods_classifier.md").read_text()
    class_block, random_block = table.split("**random forgetting (`--task random`)**")
    assert class_block.startswith("**class-wise forgetting (`--task class`)**")
    assert "| UA | RA | TA | forget-class TA | MIA-efficacy | UIS | Avg-Gap ↓ |" in class_block
    assert "forget-class TA" not in random_block  # no such split in random forgetting
    assert "| orthograd | 0.50 | 0.001 | 1.000 ± 0.000 | 0.999 ± 0.001 |" in class_block  # UA = 1 − accuracy
    assert "| *exact retrain, 3 seeds* | – | – | 1.000 ± 0.000 |" in class_block
    assert "| orthograd | graddiff | -0.001 | [-0.001, -0.001] | 3 / 0 | 0.250 |" in random_block
    assert_png(tmp_path / "compare_methods_classifier_tradeoff.png")
    capsys.readouterr()

    (tmp_path / "compare_methods_classifier.md").unlink()
    written = json.loads((tmp_path / "compare_methods_classifier.json").read_text())
    redrawn = compare.main(["--benchmark", "classifier", "--plot_only", "--output_dir", str(tmp_path)])
    assert redrawn == written and (tmp_path / "compare_methods_classifier.md").read_text() == table


def test_classifier_quick_shrinks_references_and_steps(compare, tmp_path):
    calls = []

    def run(benchmark, method, run_dir, seed, extra):
        calls.append((run_dir.name, seed, list(extra)))
        task = extra[extra.index("--task") + 1]
        return {"metrics": benchmark.metrics_view(recipe_classifier_metrics(task, 0.5, 0.9, seed))}

    argv = ["--benchmark", "classifier", "--quick", "--methods", "salun", "--tasks", "random"]
    summary = compare.main([*argv, "--runs_dir", str(tmp_path), "--output_dir", str(tmp_path)], runner=run)
    assert [(name, seed) for name, seed, _ in calls] == [("w1-lr0.0001", 1000), ("w3-lr0.0001", 1000),
                                                         ("seed0", 0), ("seed1", 1)]  # fmt: skip
    assert calls[0][2][-6:] == ["--reference_epochs", "2", "--max_steps", "4", "--eval_steps", "2"]
    assert list(summary["tasks"]) == ["random"] and (tmp_path / "compare_methods_classifier_quick.json").is_file()
    assert not (tmp_path / "compare_methods_classifier.json").exists()


def test_method_weights_go_through_the_librarys_field_names(compare):
    point = {"weight": 0.3, "learning_rate": 1e-3}
    assert compare.point_args(point, "orthograd") == ["--learning_rate", "0.001", "--retain_mix", "0.3"]
    assert compare.point_args(point, "gru") == ["--learning_rate", "0.001", "--retain_mix", "0.3"]
    assert compare.point_args(point, "lur") == ["--learning_rate", "0.001", "--retain_weight", "0.3"]
    assert compare.point_args({"weight": None, "learning_rate": 1e-3}, "ga") == ["--learning_rate", "0.001"]


def test_tasks_of_another_benchmark_are_refused(compare, tmp_path, capsys):
    for argv, message in [
        (["--benchmark", "speech", "--tasks", "class"], "speech has the tasks none"),
        (["--benchmark", "classifier", "--tasks", "rows"], "classifier has the tasks ['class', 'random']"),
        (["--benchmark", "classifier", "--torch_threads", "0"], "--torch_threads must be >= 1"),
    ]:
        with pytest.raises(SystemExit):
            compare.main([*argv, "--runs_dir", str(tmp_path)], runner=lambda *a: pytest.fail("ran"))
        assert message in capsys.readouterr().err


def test_parts_run_apart_merge_into_the_same_comparison(compare, tmp_path, capsys):
    """Disjoint --methods / --tasks run in separate processes, then --merge: the same statistics as one run."""

    def run(benchmark, method, run_dir, seed, extra):
        task = extra[extra.index("--task") + 1]
        lr = float(extra[extra.index("--learning_rate") + 1])
        retain = 1.0 - lr * (3 if method == "npo" else 1) - 0.001 * seed
        return {"metrics": benchmark.metrics_view(recipe_classifier_metrics(task, 0.1, retain, seed)), "wall_s": 2.0}

    common = ["--benchmark", "classifier", "--learning_rates", "1e-3", "2e-3", "--weights", "graddiff=1", "npo=1",
              "lur=1", "--runs_dir", str(tmp_path / "runs")]  # fmt: skip
    whole = compare.main([*common, "--methods", "graddiff", "npo", "lur", "--output_dir", str(tmp_path / "whole")],
                         runner=run)  # fmt: skip
    parts = [
        ["--methods", "graddiff", "--tasks", "class"], ["--methods", "npo", "lur", "--tasks", "class"],
        ["--methods", "graddiff", "npo", "lur", "--tasks", "random"],
    ]  # fmt: skip
    for i, part in enumerate(parts):
        compare.main([*common, *part, "--output_dir", str(tmp_path / f"part{i}")], runner=run)
    files = [str(tmp_path / f"part{i}" / "compare_methods_classifier.json") for i in range(3)]
    merged = compare.main(["--benchmark", "classifier", "--merge", *files, "--output_dir", str(tmp_path / "merged")])

    assert merged["tasks"] == whole["tasks"]  # every run, statistic and paired comparison
    assert [part["methods"] for part in merged["merged_from"]] == [["graddiff"], ["lur", "npo"], ["graddiff", "lur",
                                                                                                "npo"]]  # fmt: skip
    table = (tmp_path / "merged" / "compare_methods_classifier.md").read_text()
    assert table == (tmp_path / "whole" / "compare_methods_classifier.md").read_text()
    capsys.readouterr()
    other = ["--benchmark", "classifier", "--merge", files[0], files[0], "--output_dir", str(tmp_path / "x")]
    with pytest.raises(SystemExit):
        compare.main(other)
    assert "'graddiff' (class) is in two files" in capsys.readouterr().err
    compare.main([*common, "--methods", "lur", "--seeds", "2", "--output_dir", str(tmp_path / "two")], runner=run)
    with pytest.raises(SystemExit):
        compare.main([*other[:3], str(tmp_path / "two" / "compare_methods_classifier.json"), files[1]])
    assert "differ in 'seeds'" in capsys.readouterr().err


def test_a_finished_run_is_reused_only_for_exactly_its_arguments(compare, tmp_path):
    run_dir = tmp_path / "seed0"
    run_dir.mkdir()
    argv = ["--method", "lur", "--seed", "0", "--output_dir", str(run_dir), "--overwrite_output_dir", "true",
            "--learning_rate", "0.001", "--retain_weight", "3.0", "--task", "class", "--use_peft", "false"]  # fmt: skip
    assert compare.finished_run(run_dir, argv) is None  # nothing there yet
    resolved = {"script": {"method": "lur", "task": "class", "use_peft": False, "output_dir": "elsewhere"},
                "config": {"seed": 0, "learning_rate": 1e-3, "retain_weight": 3, "overwrite_output_dir": True}}  # fmt: skip
    (run_dir / "unlearn_config.json").write_text(json.dumps(resolved))
    (run_dir / "trainer_state.json").write_text("{}")
    assert compare.finished_run(run_dir, argv) is None  # no metrics.json: the run did not finish
    (run_dir / "metrics.json").write_text("{}")
    # An earlier version's folder: matched on the resolved values (numbers and booleans by value), time unknown.
    assert compare.finished_run(run_dir, argv) == {"argv": argv, "wall_s": None}
    for flag, other in (("--learning_rate", "0.002"), ("--task", "random"), ("--use_peft", "true"), ("--seed", "1")):
        changed = list(argv)
        changed[changed.index(flag) + 1] = other
        assert compare.finished_run(run_dir, changed) is None, flag
    assert compare.finished_run(run_dir, [*argv, "--max_steps", "80"]) is None  # a flag the run did not resolve
    # The harness's own record: exactly the same argument list, with its wall time.
    (run_dir / compare.RUN_RECORD).write_text(json.dumps({"argv": argv, "wall_s": 12.5}))
    assert compare.finished_run(run_dir, argv)["wall_s"] == 12.5
    assert compare.finished_run(run_dir, [*argv[:-1], "true"]) is None


def test_a_json_of_the_first_multi_seed_version_keeps_its_one_seed_references(compare):
    """Its runs keep no references of their own: the table shows the file's seed-0 pair as one seed, not as a mean."""
    benchmark = compare.BENCHMARKS["speech"]
    old = fake_speech_metrics(0.8, 0.1)
    run = {"unlearned": old["unlearned"], "avg_gap": 0.1, "restored_step": 5, "wall_s": 1.0}
    task = {"methods": {"lur": {"chosen": {"weight": 1.0, "learning_rate": 1e-3}, "grid": [],
                                "seeds": [{**run, "seed": s} for s in range(3)]}},
            "base": old["base"], "retrain": old["retrain"], "base_avg_gap": 0.3}  # fmt: skip
    compare.aggregate(benchmark, task)
    assert task["reference_stats"]["seeds"] == 1
    table = compare.markdown_table(benchmark, task, [0, 1, 2])
    assert "| *exact retrain, seed 0* | – | – | 0.800 | 0.900 | 0.000 | 0.950 | 0.000 |" in table
    assert "| *base (before, seed 0)* |" in table and "0.300 |" in table
