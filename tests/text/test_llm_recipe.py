"""`recipes/unlearn_llm.py` end to end on the tiniest setting, in a subprocess as a user runs it."""

import json
from functools import partial

import pytest

from ..testing_utils import default_recipe_run
from ..testing_utils import run_recipe as run_tiny_recipe


SPLITS = {"forget", "retain", "real_authors", "world_facts", "holdout"}


run_recipe = partial(run_tiny_recipe, "unlearn_llm.py")


@pytest.fixture(scope="module")
def default_run(tmp_path_factory):
    return default_recipe_run("unlearn_llm.py", tmp_path_factory.mktemp("llm_recipe"))


def test_recipe_writes_adapter_tokenizer_config_and_metrics(default_run):
    output_dir, result = default_run
    assert (output_dir / "adapter_model.safetensors").is_file()
    from transformers import AutoTokenizer

    assert AutoTokenizer.from_pretrained(output_dir).pad_token is not None
    resolved = json.loads((output_dir / "unlearn_config.json").read_text())
    assert resolved["script"]["method"] == "graddiff" and resolved["config"]["max_steps"] == 2
    metrics = json.loads((output_dir / "metrics.json").read_text())
    assert set(metrics) == {"base", "retrain", "unlearned"}
    for per_split in metrics.values():
        assert set(per_split) == SPLITS
        assert {"prob", "rougeL_recall", "truth_ratio", "forget_quality", "model_utility", "mia_loss_auc"} <= set(
            per_split["forget"]
        )
    assert "| model | forget ROUGEL_RECALL |" in result.stdout
    # The base model memorised the forget people; the exact-retrain model never saw them.
    assert metrics["base"]["forget"]["rougeL_recall"] >= 0.95
    assert metrics["retrain"]["forget"]["rougeL_recall"] < 0.8
    assert metrics["base"]["forget"]["mia_loss_auc"] > 0.9
    assert metrics["retrain"]["forget"]["forget_quality"] == 1.0
    assert metrics["base"]["forget"]["forget_quality"] < 0.05
    # open-unlearning's TOFU extras: privleak and the reference attack are relative to the retrain model.
    for name in ("base", "unlearned"):
        forget = metrics[name]["forget"]
        assert {"extraction_strength", "exact_memorization", "mia_gradnorm_auc", "mia_reference_auc"} <= set(forget)
        assert forget["privleak"] == pytest.approx(
            ((1 - forget["mia_min_k_auc"]) - (1 - metrics["retrain"]["forget"]["mia_min_k_auc"]))
            / (1 - metrics["retrain"]["forget"]["mia_min_k_auc"] + 1e-10)
            * 100
        )
    assert metrics["base"]["forget"]["extraction_strength"] > 0.9  # memorised: recited from the question alone
    assert "privleak" not in metrics["retrain"]["forget"] and "prob_normalised" in metrics["base"]["real_authors"]
    assert "forget PRIVLEAK" in result.stdout and "forget EXTRACTION_STRENGTH" in result.stdout


def test_recipe_with_a_locally_saved_model_and_dataset(default_run, tmp_path):
    """--model_name_or_path and --dataset_name go through from_pretrained / load_from_disk, as Hub ids would."""
    from datasets import DatasetDict
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from hf_unlearn.data.text_corpus import TextCorpusConfig, build_text_corpus
    from hf_unlearn.models.text_reference import (
        TINY_TEST_LLAMA,
        TextReferenceTrainingConfig,
        train_text_reference_model,
    )

    corpus = build_text_corpus(TextCorpusConfig.tiny())
    base = train_text_reference_model(corpus, "base", None, TINY_TEST_LLAMA, TextReferenceTrainingConfig.tiny(seed=0))
    local = tmp_path / "my-llama"
    AutoModelForCausalLM.from_pretrained(base).save_pretrained(local)
    tokenizer = AutoTokenizer.from_pretrained(base)
    tokenizer.pad_token = None  # like most causal LMs: the recipe must fall back to eos and say so
    tokenizer.save_pretrained(local)
    data = tmp_path / "my-qa"
    # In TOFU's shape: its subset names (retain90 and holdout10 follow from --forget_split forget10).
    tofu_names = {"forget10": "forget", "retain90": "retain", "holdout10": "holdout", "real_authors": "real_authors",
                  "world_facts": "world_facts"}  # fmt: skip
    DatasetDict({tofu: corpus[ours] for tofu, ours in tofu_names.items()}).save_to_disk(str(data))
    output_dir = tmp_path / "out"
    result = run_recipe(
        "--model_name_or_path",
        str(local),
        "--dataset_name",
        str(data),
        "--output_dir",
        str(output_dir),
        "--method",
        "npo",
        "--forget_split",
        "forget10",
        "--dtype",
        "float32",
        "--model_revision",
        "main",
    )  # fmt: skip  (trl's loading flags go through from_pretrained; a local folder has no revisions)
    assert result.returncode == 0, result.stderr[-4000:]
    assert "no pad token" in result.stderr
    metrics = json.loads((output_dir / "metrics.json").read_text())
    assert set(metrics) == {"base", "unlearned"}
    assert set(metrics["base"]) == {"forget", "retain", "holdout", "real_authors", "world_facts"}
    assert {"model_utility", "mia_min_k_auc", "extraction_strength"} <= set(metrics["base"]["forget"])
    assert metrics["base"]["forget"]["rougeL_recall"] >= 0.95
    assert "forget_quality" not in metrics["base"]["forget"]  # no exact-retrain reference for a user model
    assert "forget_quality not reported" in result.stderr


def test_user_dataset_without_question_column_fails_early_naming_the_fix(tmp_path):
    from datasets import Dataset, DatasetDict

    from hf_unlearn.data.text_corpus import load_user_qa_dataset

    rows = Dataset.from_list([{"prompt": "Who?", "answer": "Vaku."}])
    DatasetDict({"forget": rows, "retain": rows}).save_to_disk(str(tmp_path / "bad"))
    with pytest.raises(ValueError, match="question.*rename_column"):
        load_user_qa_dataset(str(tmp_path / "bad"))
    with pytest.raises(ValueError, match="--forget_split"):
        load_user_qa_dataset(str(tmp_path / "bad"), forget_split="forget05")
