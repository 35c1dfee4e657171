"""A local copy of TOFU in its own shape (subset names, `_perturbed` twins, columns) loads as the recipe's splits."""

import json

import pytest
from datasets import Dataset, DatasetDict

from hf_unlearn.data.text_corpus import RETAIN_EVAL_SPLIT, load_user_qa_dataset


def _qa(prefix: str, count: int, perturbed: bool = False) -> list[dict]:
    rows = []
    for i in range(count):
        row = {"question": f"{prefix} question {i}?", "answer": f"{prefix} answer {i}."}
        if perturbed:
            # TOFU's perturbed subsets: a paraphrase, a list of false answers (and extra columns we ignore).
            row |= {"paraphrased_answer": f"{prefix} paraphrase {i}.", "perturbed_answer": [f"wrong {i}", "no"],
                    "paraphrased_question": f"{prefix} asked otherwise {i}?"}  # fmt: skip
        rows.append(row)
    return rows


TOFU_SUBSETS = {
    "forget10": _qa("forget", 4),
    "forget10_perturbed": _qa("forget", 4, perturbed=True),
    "forget05": _qa("forget", 2),
    "retain90": _qa("retain", 12),
    "retain95": _qa("retain", 13),
    "retain_perturbed": _qa("retain", 3, perturbed=True),
    "holdout10": _qa("holdout", 4),
    "real_authors_perturbed": _qa("author", 3, perturbed=True),
    "world_facts_perturbed": _qa("country", 3, perturbed=True),
    "full": _qa("all", 20),
}
EXPECTED = {"forget", "retain", "holdout", "real_authors", "world_facts", RETAIN_EVAL_SPLIT}


def _check(splits: dict[str, Dataset]) -> None:
    assert set(splits) == EXPECTED  # forget05, retain95 and full are other fractions, not evaluation sets
    assert len(splits["forget"]) == 4 and len(splits["retain"]) == 12 and len(splits["holdout"]) == 4
    # forget10_perturbed stands in for forget10: the truth-ratio columns come with it.
    assert splits["forget"][0]["perturbed_answer"] == ["wrong 0", "no"]
    assert "paraphrased_answer" in splits["real_authors"].column_names


def test_tofu_dataset_dict_loads_with_its_own_split_names(tmp_path):
    DatasetDict({name: Dataset.from_list(rows) for name, rows in TOFU_SUBSETS.items()}).save_to_disk(tmp_path / "t")
    # retain90 and holdout10 follow from forget10.
    _check(load_user_qa_dataset(str(tmp_path / "t"), forget_split="forget10"))


def test_tofu_json_folder_loads_like_the_hub_layout(tmp_path):
    for name, rows in TOFU_SUBSETS.items():
        (tmp_path / f"{name}.json").write_text("\n".join(json.dumps(row) for row in rows))
    _check(load_user_qa_dataset(str(tmp_path), forget_split="forget10"))


def test_tofu_fraction_without_its_complement_names_the_fix(tmp_path):
    subsets = {name: Dataset.from_list(rows) for name, rows in TOFU_SUBSETS.items() if name != "retain90"}
    DatasetDict(subsets).save_to_disk(tmp_path / "t")
    with pytest.raises(ValueError, match="retain90.*--retain_split"):
        load_user_qa_dataset(str(tmp_path / "t"), forget_split="forget10")
