"""`benchmarks/ablate_orthograd_classifier.py`: each variant changes exactly what it names, the per-seed statistics and
table, and `--quick` end to end on the digits (slow: it trains the seed's base and exact-retrain models)."""

import json
import math
from dataclasses import fields
from pathlib import Path

import pytest

from hf_unlearn import GRUConfig, OrthoGradConfig
from hf_unlearn.recipes.classifier import parse_args

from ..testing_utils import load_benchmark


@pytest.fixture(scope="module")
def ablate():
    return load_benchmark("ablate_orthograd_classifier")


def test_every_variant_parses_and_changes_only_its_own_setting(ablate, tmp_path):
    """Each variant's command line goes through the recipe's parser and the config's checks (a renamed flag, or
    'preconditioned' without SGD and max_grad_norm=0, fails here), and differs from `default` where it says."""
    parsed = {}
    for variant in ablate.VARIANTS:
        argv = ablate.variant_argv(variant, "class", 0, tmp_path / variant, tmp_path / "cache", max_steps=40)
        parsed[variant] = parse_args(argv)
    script, config = parsed["default"]
    from hf_unlearn.methods import retain_knob

    assert ablate.ALPHA_FIELD == retain_knob("orthograd") == retain_knob("gru")
    assert type(config) is OrthoGradConfig and getattr(config, ablate.ALPHA_FIELD) == ablate.ALPHA == 0.5
    assert (config.projection_granularity, config.projection_space, config.retain_loss) == ("global", "gradient", "ce")
    assert str(config.optim.value).startswith("adamw") and not script.use_peft and script.retain_fraction == 1.0
    # Matched forget: stop at the exact retrain's forget accuracy, evaluated every step, closest step restored.
    assert script.stop_at_target == "retrain" and config.eval_steps == 1 and config.load_best_model_at_end
    assert config.metric_for_best_model == "forget_target_gap" and config.max_steps == 40

    def changed(variant):
        other_script, other_config = parsed[variant]
        names = {f.name for f in fields(config) if getattr(other_config, f.name, None) != getattr(config, f.name)}
        names |= {
            f"script.{f.name}" for f in fields(script) if getattr(other_script, f.name) != getattr(script, f.name)
        }
        return names - {"output_dir", "logging_dir", "script.method"}

    assert changed("per_tensor") == {"projection_granularity"}
    assert changed("preconditioned") == {"projection_space", "optim", "max_grad_norm"}
    assert changed("sgd") == {"optim", "learning_rate"} and parsed["sgd"][1].learning_rate == ablate.SGD_LR
    assert changed("lora") == {"script.use_peft"}
    assert changed("retain_10pct") == {"script.retain_fraction"} and parsed["retain_1pct"][0].retain_fraction == 0.01
    assert changed("kl") == {"retain_loss"}
    # Recipe flags for every run come before the variant's own: `sgd` keeps its learning rate.
    lower = ["--learning_rate", "1e-4"]
    for variant, lr in (("default", 1e-4), ("sgd", ablate.SGD_LR)):
        argv = ablate.variant_argv(variant, "class", 0, tmp_path / variant, tmp_path / "cache", 40, lower)
        assert parse_args(argv)[1].learning_rate == lr
    gru_script, gru_config = parsed["gru"]
    assert type(gru_config) is GRUConfig and gru_script.method == "gru"
    assert getattr(gru_config, ablate.ALPHA_FIELD) == 0.5


def record(ablate, seed, gap, forget_accuracy, reached):
    metrics = {
        "unlearned": {"forget": {"accuracy": forget_accuracy}, "retain": {"accuracy": 0.9},
                      "test": {"accuracy": 0.8}, "mia_efficacy": 0.7},
        "base": {"forget": {"accuracy": 1.0}, "retain": {"accuracy": 1.0}, "test": {"accuracy": 0.98},
                 "mia_efficacy": 0.0},
        "retrain": {"forget": {"accuracy": 0.0}, "retain": {"accuracy": 1.0}, "test": {"accuracy": 0.97},
                    "mia_efficacy": 1.0},
        "avg_gap": gap, "base_avg_gap": 0.5, "uis": 0.1,
        "stop_at_target": {"reached_step": 4 if reached else None, "restored_step": 4 if reached else 40},
    }  # fmt: skip
    return ablate.run_record(metrics, {"retain_mix": 0.5, "optim": "adamw_torch", "learning_rate": 1e-3}, seed, 1.0)


def test_statistics_and_table_are_mean_and_sample_sd_over_seeds(ablate, tmp_path):
    runs = [record(ablate, 0, 0.1, 0.2, True), record(ablate, 1, 0.3, 0.0, False)]
    assert runs[0]["UA"] == pytest.approx(0.8) and runs[0]["retrain"]["UA"] == 1.0 and runs[0]["base"]["UA"] == 0.0
    summary = ablate.summarize(runs)
    # mean(0.1, 0.3) = 0.2; sample sd = sqrt(((0.1)² + (0.1)²) / 1) = 0.1414; UA: 0.8 and 1.0 → 0.9 ± 0.1414.
    assert summary["avg_gap"] == pytest.approx((0.2, math.sqrt(0.02)))
    assert summary["UA"] == pytest.approx((0.9, math.sqrt(0.02)))
    assert summary["reached"] == 1 and summary["restored_step"] == pytest.approx((22.0, math.sqrt(2) * 18))
    assert ablate.mean_sd([0.4]) == (0.4, 0.0)
    # Paired with default seed by seed: 0.05 − 0.1 = −0.05 and 0.45 − 0.3 = +0.15 → mean 0.05, sd 0.1414, lower on 1/2;
    # t = 0.05 / (0.1414 / √2) = 0.5 with 1 degree of freedom (a Cauchy law): p = 1 − (2/π)·atan(0.5) = 0.7048.
    other = [record(ablate, 0, 0.05, 0.0, True), record(ablate, 1, 0.45, 0.0, True)]
    expected = (0.05, math.sqrt(0.02), 1, 2, 1 - 2 / math.pi * math.atan(0.5))
    assert ablate.paired_difference(other, runs) == pytest.approx(expected)
    results = {"seeds": [0, 1], "max_steps": 40, "threads": 1, "load_average": "1.0–2.0",
               "tasks": {"class": {"default": runs, "per_tensor": other}, "random": {}}}  # fmt: skip
    table = ablate.write_outputs(results, tmp_path, "stem")
    assert (
        "| default | 0.200 ± 0.141 | – | – | – | 0.900 ± 0.141 | 0.900 ± 0.000 | 0.800 ± 0.000 | 0.700 ± 0.000 |"
        in table
    )
    assert "| per_tensor | 0.250 ± 0.283 | +0.0500 ± 0.1414 | 1/2 | 0.70 | 1.000 ± 0.000 |" in table
    assert "| 22.0 | 1/2 |" in table and "| *exact retrain* | 0 | – | – | – | 1.000 | 1.000 | 0.970 | 1.000 |" in table
    assert "| *base (before)* | 0.500 ± 0.000 | – | – | – | 0.000 | 1.000 | 0.980 | 0.000 |" in table
    assert "random" not in table  # a task without runs gets no table
    assert json.loads((tmp_path / "stem.json").read_text()) == results
    assert (tmp_path / "stem.png").stat().st_size > 0 and "torch threads 1" in (tmp_path / "stem.md").read_text()


@pytest.mark.slow  # 33 s CPU, 2 min 19 s wall at load 13-16 (2 cores): trains seed 0's two ResNets
def test_quick_ablation_runs_the_recipe(ablate, tmp_path):
    argv = ["--quick", "--tasks", "class", "--variants", "default", "per_tensor", "retain_1pct",
            "--runs_dir", str(tmp_path / "runs"), "--output_dir", str(tmp_path / "results")]  # fmt: skip
    results = ablate.main(argv)
    assert results["threads"] == 1 and results["seeds"] == [0] and results["max_steps"] == 2
    runs = results["tasks"]["class"]
    assert set(runs) == {"default", "per_tensor", "retain_1pct"}
    for variant, (run,) in runs.items():
        assert 0 <= run["avg_gap"] <= 1 and run["restored_step"] in (1, 2), variant
        assert run["alpha"] == 0.5 and run["retrain"]["UA"] == 1.0  # the exact retrain never predicts digit 3
    assert (tmp_path / "results" / "ablate_orthograd_classifier_quick.md").is_file()
    assert not (tmp_path / "results" / "ablate_orthograd_classifier.json").exists()  # quick never replaces a real run


def test_extend_adds_seeds_to_the_existing_runs(ablate, tmp_path, monkeypatch):
    """`--extend` keeps the JSON's runs and appends the new seeds' (the recipe replaced by a stub that records its
    seed), and refuses a seed already there or another budget."""
    import hf_unlearn.recipes.classifier as recipe

    def fake_run(argv):
        seed, out = int(argv[argv.index("--seed") + 1]), Path(argv[argv.index("--output_dir") + 1])
        out.mkdir(parents=True)
        (out / "unlearn_config.json").write_text(json.dumps({"config": {"retain_mix": 0.5}}))
        return {
            "unlearned": {"forget": {"accuracy": 0.0}, "retain": {"accuracy": 1.0}, "test": {"accuracy": 0.9},
                          "mia_efficacy": 1.0},
            "base": {"forget": {"accuracy": 1.0}, "retain": {"accuracy": 1.0}, "test": {"accuracy": 0.9},
                     "mia_efficacy": 0.0},
            "retrain": {"forget": {"accuracy": 0.0}, "retain": {"accuracy": 1.0}, "test": {"accuracy": 0.9},
                        "mia_efficacy": 1.0},
            "avg_gap": 0.01 * (seed + 1), "base_avg_gap": 0.5, "uis": 0.0,
            "stop_at_target": {"reached_step": 3, "restored_step": 3},
        }  # fmt: skip

    monkeypatch.setattr(recipe, "run", fake_run)
    common = ["--tasks", "class", "--variants", "default", "--runs_dir", str(tmp_path / "runs"),
              "--output_dir", str(tmp_path / "out")]  # fmt: skip
    ablate.main(["--seeds", "0", *common])
    results = ablate.main(["--seeds", "1", "2", "--extend", *common])
    assert results["seeds"] == [0, 1, 2]
    assert [r["avg_gap"] for r in results["tasks"]["class"]["default"]] == pytest.approx([0.01, 0.02, 0.03])
    assert json.loads((tmp_path / "out" / "ablate_orthograd_classifier.json").read_text())["seeds"] == [0, 1, 2]
    with pytest.raises(SystemExit, match="--extend needs new seeds"):
        ablate.main(["--seeds", "2", "--extend", *common])
    with pytest.raises(SystemExit, match="same max_steps"):
        ablate.main(["--seeds", "3", "--extend", "--max_steps", "10", *common])
