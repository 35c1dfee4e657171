"""`compare_methods.py --benchmark classifier`: tables and plot from the JSON, and a real two-method run."""

import importlib.util
import json
from pathlib import Path

import pytest

from hf_unlearn.recipes.classifier_benchmark import compare_classifier_methods, markdown_tables


REPO = Path(__file__).resolve().parents[2]


def compare_methods_module():
    spec = importlib.util.spec_from_file_location("compare_methods", REPO / "benchmarks" / "compare_methods.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def scores(forget, retain, test, mia, forget_test=None):
    out = {
        "forget": {"accuracy": forget},
        "retain": {"accuracy": retain},
        "test": {"accuracy": test},
        "mia_efficacy": mia,
    }
    if forget_test is not None:
        out["forget_test"] = {"accuracy": forget_test}
    return out


def summary():
    method = {"retain_weight": 1.0, "max_steps": 40, "learning_rate": 1e-3, "wall_s": 5.0}
    return {
        "benchmark": "classifier",
        "seed": 0,
        "tasks": {
            "class": {
                "base": scores(1.0, 1.0, 0.98, 0.0, 1.0),
                "retrain": scores(0.0, 1.0, 0.98, 1.0, 0.0),
                "base_avg_gap": 0.5,
                "methods": {
                    "ga": {**method, "unlearned": scores(0.0, 0.2, 0.2, 1.0, 0.0), "avg_gap": 0.39, "uis": 0.4},
                    "salun": {**method, "unlearned": scores(0.0, 1.0, 0.97, 1.0, 0.0), "avg_gap": 0.0025, "uis": 0.01},
                },
            },
            "random": {
                "base": scores(1.0, 1.0, 0.98, 0.0),
                "retrain": scores(0.97, 1.0, 0.97, 0.03),
                "base_avg_gap": 0.02,
                "methods": {
                    "salun": {**method, "unlearned": scores(0.9, 0.99, 0.95, 0.1), "avg_gap": 0.04, "uis": 0.05}
                },
            },
        },
    }


def test_tables_rank_by_avg_gap_and_show_ua_not_forget_accuracy():
    table = markdown_tables(summary())
    class_block, random_block = table.split("**random forgetting**")
    assert class_block.index("| salun |") < class_block.index("| ga |")
    # UA = 1 − forget accuracy; the class-wise table adds the forgotten class's test accuracy.
    assert "| salun | 1.000 | 1.000 | 1.000 | 0.970 | 0.000 | 1.000 | 0.003 | 0.010 | 5 |" in class_block
    assert "| *exact retrain* | – | 0.030 | 1.000 | 0.970 | 0.030 | 0.000 | – | – |" in random_block


def test_plot_only_redraws_from_the_json(tmp_path):
    (tmp_path / "compare_methods_classifier.json").write_text(json.dumps(summary()))
    result = compare_methods_module().main(["--benchmark", "classifier", "--plot_only", "--output_dir", str(tmp_path)])
    assert result["tasks"]["class"]["methods"]["salun"]["avg_gap"] == 0.0025
    assert (tmp_path / "compare_methods_classifier.md").read_text().startswith("**class-wise forgetting**")
    assert (tmp_path / "compare_methods_classifier.png").stat().st_size > 1000


@pytest.mark.slow  # ~40 s on the shared 2-core CPU: four recipe runs
def test_two_methods_on_a_local_checkpoint_and_dataset(tmp_path):
    from datasets import DatasetDict

    from hf_unlearn.data.digits import build_digits_dataset
    from hf_unlearn.models.tiny_classifier import build_image_processor, build_tiny_classifier

    digits = build_digits_dataset(cache_dir=tmp_path / "cache")
    DatasetDict({"train": digits["train"].select(range(60)), "test": digits["test"].select(range(40))}).save_to_disk(
        str(tmp_path / "data")
    )
    build_tiny_classifier(hidden_sizes=[8], depths=[1], embedding_size=8).save_pretrained(tmp_path / "model")
    build_image_processor().save_pretrained(tmp_path / "model")
    extra = ["--model_name_or_path", str(tmp_path / "model"), "--dataset_name", str(tmp_path / "data"),
             "--max_steps", "1", "--eval_strategy", "no", "--per_device_train_batch_size", "4"]  # fmt: skip
    result = compare_classifier_methods(["graddiff", "scrub"], ["class", "random"], runs_dir=tmp_path / "runs",
                                        output_dir=tmp_path / "out", extra=extra)  # fmt: skip
    assert set(result["tasks"]) == {"class", "random"}
    assert set(result["tasks"]["random"]["methods"]) == {"graddiff", "scrub"}
    assert result["tasks"]["class"]["methods"]["scrub"]["max_steps"] == 1
    assert (tmp_path / "out" / "compare_methods_classifier.json").is_file()
