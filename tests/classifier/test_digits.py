"""The embedded digits and user image datasets: splits, caching, and bad input named early."""

import numpy as np
import pytest
from datasets import ClassLabel, Dataset, DatasetDict

from hf_unlearn.data.digits import (
    DigitsConfig,
    build_digits_dataset,
    forget_splits,
    load_image_dataset,
    retain_subset,
)
from hf_unlearn.models.tiny_classifier import ImageClassificationCollator, check_labels_fit


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    return build_digits_dataset(cache_dir=tmp_path_factory.mktemp("cache"))


def test_digits_are_the_real_scikit_learn_images_split_stratified(digits, tmp_path):
    from sklearn.datasets import load_digits

    sizes = {name: len(split) for name, split in digits.items()}
    assert sum(sizes.values()) == 1797 and sizes["test"] == 360 and sizes["validation"] == 180
    ids = [i for split in digits.values() for i in split["id"]]
    assert len(set(ids)) == 1797  # disjoint
    # Stratified: every class in every split, in proportion.
    for split in digits.values():
        counts = np.bincount(split["label"], minlength=10)
        assert counts.min() > 0 and counts.max() / counts.min() < 1.3
    # Pixel content is the wheel's data, rescaled 0..16 → 0..255.
    row = digits["train"][0]
    index = int(row["id"].split("-")[1])
    expected = np.clip(np.rint(load_digits().images[index] * 255 / 16), 0, 255)
    assert np.array_equal(np.asarray(row["image"]), expected) and row["label"] == load_digits().target[index]
    # Same seed → same split (a cache hit elsewhere); another seed → another split.
    again = build_digits_dataset(cache_dir=tmp_path)
    assert again["test"]["id"] == digits["test"]["id"]
    other = build_digits_dataset(DigitsConfig(seed=1), cache_dir=tmp_path)
    assert other["test"]["id"] != digits["test"]["id"]


def test_class_and_random_forget_splits(digits):
    splits = forget_splits(digits, "class", forget_class=3)
    assert set(splits["forget"]["label"]) == {3} and 3 not in set(splits["retain"]["label"])
    assert len(splits["forget"]) + len(splits["retain"]) == len(digits["train"])
    assert set(splits["forget_test"]["label"]) == {3} and 3 not in set(splits["test"]["label"])
    random = forget_splits(digits, "random", forget_fraction=0.1, seed=0)
    assert len(random["forget"]) == round(0.1 * len(digits["train"])) and "forget_test" not in random
    assert not set(random["forget"]["id"]) & set(random["retain"]["id"])
    assert forget_splits(digits, "random", seed=0)["forget"]["id"] == random["forget"]["id"]
    assert forget_splits(digits, "random", seed=1)["forget"]["id"] != random["forget"]["id"]


def test_retain_subset_is_a_seeded_stratified_share_of_retain(digits):
    retain = forget_splits(digits, "class", forget_class=3)["retain"]
    assert retain_subset(retain, 1.0) is retain
    for fraction in (0.01, 0.1):
        subset = retain_subset(retain, fraction, seed=0)
        assert len(subset) == round(fraction * len(retain))
        assert set(subset["id"]) < set(retain["id"])  # only retain images, never a forgotten one
        assert subset["id"] == sorted(subset["id"], key=retain["id"].index)  # retain's order kept
        assert set(subset["label"]) == set(retain["label"])  # every kept class, even at 1 % (11 images, 9 classes)
        assert retain_subset(retain, fraction, seed=0)["id"] == subset["id"]
        assert retain_subset(retain, fraction, seed=1)["id"] != subset["id"]
    # Fewer images than classes: a plain seeded draw; never empty.
    assert len(retain_subset(retain, 0.004, seed=0)) == 5 and len(retain_subset(retain, 1e-6)) == 1
    for fraction in (0.0, -0.1, 1.5):
        with pytest.raises(ValueError, match=r"retain_fraction must be in \(0, 1\]"):
            retain_subset(retain, fraction)


def test_bad_input_is_refused_naming_the_fix(digits, tmp_path):
    with pytest.raises(ValueError, match="forget_class=11 has no training image.*--forget_class"):
        forget_splits(digits, "class", forget_class=11)
    for fraction in (0.0, 1.0, 1.5):
        with pytest.raises(ValueError, match=r"forget_fraction must be in \(0, 1\)"):
            forget_splits(digits, "random", forget_fraction=fraction)
    with pytest.raises(ValueError, match="task"):
        forget_splits(digits, "speaker")
    # A dataset without image/label columns.
    wrong = DatasetDict({"train": Dataset.from_dict({"img": [1, 2], "target": [0, 1]})})
    wrong.save_to_disk(str(tmp_path / "wrong"))
    with pytest.raises(ValueError, match=r"no \['image', 'label'\].*rename_column"):
        load_image_dataset(str(tmp_path / "wrong"))
    # Labels outside the head: early (whole splits) and in the collator.
    with pytest.raises(ValueError, match=r"labels \[9\] outside the model's head of 5.*num_labels"):
        check_labels_fit({"retain": Dataset.from_dict({"label": [0, 4, 9]})}, num_labels=5)
    with pytest.raises(ValueError, match=r"Labels \[7\] are outside the model's head of 5"):
        ImageClassificationCollator(5)([{"label": 7, "pixel_values": np.zeros((1, 8, 8))}])


def test_user_datasets_saved_to_disk_or_as_an_imagefolder(digits, tmp_path):
    small = DatasetDict({"train": digits["train"].select(range(40)), "test": digits["test"].select(range(10))})
    small.save_to_disk(str(tmp_path / "saved"))
    loaded = load_image_dataset(str(tmp_path / "saved"))
    assert len(loaded["train"]) == 40 and loaded["test"]["id"] == small["test"]["id"]
    # An imagefolder: <root>/train/<label>/<file>.png, no test split → 20 % of train held out.
    for i, row in enumerate(digits["train"].select(range(20))):
        folder = tmp_path / "images" / "train" / str(row["label"])
        folder.mkdir(parents=True, exist_ok=True)
        row["image"].save(folder / f"{i}.png")
    loaded = load_image_dataset(str(tmp_path / "images"))
    assert {"image", "label"} <= set(loaded["train"].column_names)
    assert len(loaded["train"]) + len(loaded["test"]) == 20 and len(loaded["test"]) == 4
    assert isinstance(loaded["train"].features["label"], ClassLabel)
