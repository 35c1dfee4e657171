"""The classifier recipe end to end: a local checkpoint and dataset (fast), the embedded default (slow)."""

import json

import pytest
from datasets import DatasetDict

from hf_unlearn.cli import main as cli_main
from hf_unlearn.data.digits import build_digits_dataset
from hf_unlearn.models.tiny_classifier import build_image_processor, build_tiny_classifier


@pytest.fixture(scope="module")
def local_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("classifier")
    digits = build_digits_dataset(cache_dir=root / "cache")
    # Two of every class in test, a few dozen training images: enough for every split, seconds to run.
    small = DatasetDict({"train": digits["train"].select(range(60)), "test": digits["test"].select(range(40))})
    small.save_to_disk(str(root / "dataset"))
    for labels in (10, 4):
        model = build_tiny_classifier(num_labels=labels, hidden_sizes=[8], depths=[1], embedding_size=8)
        model.save_pretrained(root / f"model{labels}")
        build_image_processor().save_pretrained(root / f"model{labels}")
    return root


def run_cli(root, tmp_path, *extra):
    argv = [
        "unlearn",
        "--recipe",
        "classifier",
        "--dataset_name",
        str(root / "dataset"),
        "--cache_dir",
        str(tmp_path / "cache"),
        "--output_dir",
        str(tmp_path / "out"),
        "--max_steps",
        "2",
        "--eval_strategy",
        "no",
        "--per_device_train_batch_size",
        "4",
        "--per_device_retain_batch_size",
        "4",
        *extra,
        "--debug",
    ]  # fmt: skip  (--debug: a refusal raises here instead of printing one line)
    assert cli_main(argv) == 0
    return json.loads((tmp_path / "out" / "metrics.json").read_text())


def test_local_checkpoint_and_dataset(local_data, tmp_path, capsys):
    metrics = run_cli(local_data, tmp_path, "--model_name_or_path", str(local_data / "model10"), "--method", "scrub")
    assert set(metrics) == {"base", "unlearned", "avg_gap", "base_avg_gap", "uis"}
    assert metrics["avg_gap"] is None  # no exact-retrain reference for a checkpoint used as is
    for model in ("base", "unlearned"):
        assert {"forget", "retain", "test", "forget_test", "mia_efficacy"} == set(metrics[model])
        assert all(0 <= metrics[model][s]["accuracy"] <= 1 for s in ("forget", "retain", "test", "forget_test"))
    assert isinstance(metrics["uis"], float)
    out = tmp_path / "out"
    for name in ("model.safetensors", "preprocessor_config.json", "README.md", "trainer_state.json",
                 "unlearn_config.json"):  # fmt: skip
        assert (out / name).is_file(), name
    assert "| unlearned |" in capsys.readouterr().out
    assert cli_main(["report", str(out)]) == 0  # the classifier table, and the plots
    assert "MIA-efficacy" in capsys.readouterr().out and (out / "training_curves.png").is_file()


def test_checkpoint_with_another_head_is_refused_naming_the_fix(local_data, tmp_path):
    with pytest.raises(ValueError, match="head of 4 classes but the dataset has 10.*--train_references true"):
        run_cli(local_data, tmp_path, "--model_name_or_path", str(local_data / "model4"))


@pytest.mark.slow  # ~25 s on the shared 2-core CPU: fine-tunes two references
def test_checkpoint_with_another_head_is_fine_tuned_into_references(local_data, tmp_path):
    metrics = run_cli(local_data, tmp_path, "--model_name_or_path", str(local_data / "model4"), "--train_references",
                      "true", "--task", "random", "--forget_fraction", "0.2", "--method", "graddiff")  # fmt: skip
    assert {"base", "retrain", "unlearned"} <= set(metrics) and isinstance(metrics["avg_gap"], float)
    assert "forget_test" not in metrics["base"]


def test_bad_recipe_arguments_fail_before_training(local_data, tmp_path):
    with pytest.raises(ValueError, match=r"forget_fraction must be in \(0, 1\)"):
        run_cli(local_data, tmp_path, "--task", "random", "--forget_fraction", "1.5")
    with pytest.raises(ValueError, match="forget_class=42"):
        run_cli(local_data, tmp_path, "--forget_class", "42")
    with pytest.raises(ValueError, match=r"--retain_fraction must be in \(0, 1\]"):
        run_cli(local_data, tmp_path, "--retain_fraction", "0")
    assert not (tmp_path / "out").exists()


def test_retain_fraction_trains_on_a_subset_and_scores_on_all_of_retain(local_data, tmp_path, monkeypatch):
    import hf_unlearn.recipes.common as common

    seen = {}
    write = common.write_run_outputs

    def spy(trainer, config, script_args, results, *args):
        seen["train"] = list(trainer.retain_dataset["id"])
        seen["metrics"] = {name: list(split["id"]) for name, split in trainer.eval_dataset.items()}
        return write(trainer, config, script_args, results, *args)

    monkeypatch.setattr(common, "write_run_outputs", spy)
    model = ["--model_name_or_path", str(local_data / "model10"), "--method", "graddiff"]
    run_cli(local_data, tmp_path, *model, "--retain_fraction", "0.2", "--overwrite_output_dir", "true")
    retain = seen["metrics"]["retain"]
    assert len(seen["train"]) == round(0.2 * len(retain)) and set(seen["train"]) < set(retain)
    run_cli(local_data, tmp_path, *model, "--overwrite_output_dir", "true")
    assert seen["train"] == seen["metrics"]["retain"]  # the default trains on every retain image


def test_stop_at_target_stops_the_classifier_at_the_forget_accuracy(local_data, tmp_path):
    # Forget accuracy <= 1.0 holds at the first evaluation: the run stops at step 1 of 3 and says so.
    model = ["--model_name_or_path", str(local_data / "model10"), "--method", "graddiff"]
    metrics = run_cli(local_data, tmp_path, *model, "--max_steps", "3", "--stop_at_target", "1.0",
                      "--eval_strategy", "steps", "--eval_steps", "1")  # fmt: skip
    assert metrics["stop_at_target"] == {"target": 1.0, "reached_step": 1, "restored_step": 1, "last_step": 1}
    with pytest.raises(ValueError, match="--stop_at_target retrain needs the exact-retrain"):
        run_cli(local_data, tmp_path, *model, "--stop_at_target", "retrain", "--eval_strategy", "steps",
                "--overwrite_output_dir", "true")  # fmt: skip


@pytest.mark.slow
def test_embedded_default_forgets_digit_3_like_exact_retraining(tmp_path, capsys):
    """From an empty cache: digits, base and exact-retrain tiny ResNets, SalUn on digit 3 (the preset)."""
    argv = ["unlearn", "--recipe", "classifier", "--cache_dir", str(tmp_path / "cache"), "--output_dir",
            str(tmp_path / "out"), "--eval_strategy", "no"]  # fmt: skip
    assert cli_main(argv) == 0
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["base"]["forget"]["accuracy"] > 0.95  # base UA ≈ 0
    assert metrics["retrain"]["forget"]["accuracy"] < 0.05  # retrain UA ≈ 1
    assert metrics["retrain"]["test"]["accuracy"] > 0.9
    assert metrics["avg_gap"] < metrics["base_avg_gap"]  # unlearning moved the model towards exact retraining
    assert "Avg-Gap" in capsys.readouterr().out


def test_test_split_validation_scores_on_the_digits_validation_split(tmp_path):
    """Hyper-parameter selection (compare_methods' grid) scores TA and the MIA on validation, never on test."""
    from hf_unlearn.recipes.classifier import ScriptArguments, load_splits

    digits = build_digits_dataset(cache_dir=tmp_path)
    for task in ("class", "random"):
        splits = load_splits(ScriptArguments(task=task, cache_dir=str(tmp_path), test_split="validation"), seed=0)
        held_out = list(splits["test"]["id"]) + (list(splits["forget_test"]["id"]) if task == "class" else [])
        assert sorted(held_out) == sorted(digits["validation"]["id"])
        default = load_splits(ScriptArguments(task=task, cache_dir=str(tmp_path)), seed=0)
        assert set(default["test"]["id"]) <= set(digits["test"]["id"])
        assert list(splits["forget"]["id"]) == list(
            default["forget"]["id"]
        )  # the forget and retain sets do not change
    with pytest.raises(ValueError, match="'nope'.*'test' and 'validation'"):
        load_splits(ScriptArguments(cache_dir=str(tmp_path), test_split="nope"), seed=0)
    with pytest.raises(ValueError, match="--reference_epochs must be >= 1"):
        load_splits(ScriptArguments(cache_dir=str(tmp_path), reference_epochs=0), seed=0)


def test_stop_at_target_stops_at_the_forget_accuracy_and_keeps_that_checkpoint(local_data, tmp_path):
    # An untrained head: forget accuracy is near chance (≤ 0.5) at the first evaluation, so the run stops there.
    metrics = run_cli(local_data, tmp_path, "--model_name_or_path", str(local_data / "model10"), "--method",
                      "graddiff", "--max_steps", "6", "--stop_at_target", "0.5", "--eval_strategy", "steps",
                      "--eval_steps", "2")  # fmt: skip
    state = json.loads((tmp_path / "out" / "trainer_state.json").read_text())
    evaluated = [entry for entry in state["log_history"] if "eval_forget_accuracy" in entry]
    assert [entry["step"] for entry in evaluated] == [2] and state["global_step"] == 2
    assert evaluated[0]["eval_forget_accuracy"] <= 0.5
    assert state["best_global_step"] == 2
    assert metrics["unlearned"]["forget"]["accuracy"] == pytest.approx(evaluated[0]["eval_forget_accuracy"])
    with pytest.raises(ValueError, match="--stop_at_target retrain needs the exact-retrain model"):
        run_cli(local_data, tmp_path / "again", "--model_name_or_path", str(local_data / "model10"),
                "--stop_at_target", "retrain")  # fmt: skip
