"""The embedded classifier benchmark: scikit-learn's handwritten digits, forgotten class-wise or at random (DESIGN §7).

Both seed papers report their central results on image classification: forget every training image of one class, or
a random subset of the training set, and compare with a model retrained from scratch without it. The digits of
`sklearn.datasets.load_digits` (1,797 real 8×8 scans, 10 classes, shipped inside the scikit-learn wheel) give that
protocol offline, at a size where the exact-retrain reference costs seconds.

The images become an ordinary `datasets` image-classification dataset (`id`, `image` as 8×8 grayscale PIL images,
`label` as a `ClassLabel`) split into `train` / `validation` / `test`, stratified and seeded, and cached content-keyed
like the other corpora. `forget_splits` then carves the task's splits out of any dataset of that shape, the embedded
one or a user's (`load_image_dataset`):

- `forget`: the training images to forget (one class, or `forget_fraction` of the training set).
- `retain`: the other training images.
- `test`: held-out images; class-wise, only those of the kept classes (the papers' TA).
- `forget_test` (class-wise only): held-out images of the forgotten class (a retrained model gets them wrong too).

`retain_subset` draws the part of `retain` an unlearning method may see (OrthoGrad's v2 setting: a small retain set);
the metrics and the exact-retrain reference keep the whole `retain` split.
"""

import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from datasets import ClassLabel, Dataset, DatasetDict, Features, Image, Value, load_from_disk

from hf_unlearn.data.speech_corpus import default_cache_dir


TASKS = ("class", "random")
# Bump when the conversion or the split changes, so stale caches are not reused.
_DIGITS_FORMAT_VERSION = 1


@dataclass(frozen=True)
class DigitsConfig:
    """How the digits are split into train / validation / test.

    Args:
        validation_fraction (`float`, *optional*, defaults to `0.1`): Share of the images held out for validation.
        test_fraction (`float`, *optional*, defaults to `0.2`): Share held out for testing (TA, MIA non-members).
        seed (`int`, *optional*, defaults to `0`): Seeds the stratified split.
    """

    validation_fraction: float = 0.1
    test_fraction: float = 0.2
    seed: int = 0

    def __post_init__(self) -> None:
        if not (
            0 < self.validation_fraction
            and 0 < self.test_fraction
            and self.validation_fraction + self.test_fraction < 1
        ):
            raise ValueError(
                "validation_fraction and test_fraction must be > 0 and sum to less than 1, got "
                f"{self.validation_fraction} and {self.test_fraction}."
            )

    def cache_key(self) -> str:
        import hashlib

        payload = json.dumps({"format": _DIGITS_FORMAT_VERSION, **asdict(self)}, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]


def _digits_dataset(config: DigitsConfig) -> DatasetDict:
    from PIL import Image as PILImage
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    # 0..16 intensities → 0..255 grayscale, so any image processor's usual rescale (1/255) applies.
    pixels = np.clip(np.rint(digits.images * 255.0 / 16.0), 0, 255).astype(np.uint8)  # [N, 8, 8]
    labels = digits.target.astype(int)
    ids = np.arange(len(labels))
    held_out = config.validation_fraction + config.test_fraction
    train_ids, rest_ids = train_test_split(ids, test_size=held_out, stratify=labels, random_state=config.seed)
    val_ids, test_ids = train_test_split(
        rest_ids, test_size=config.test_fraction / held_out, stratify=labels[rest_ids], random_state=config.seed
    )
    features = Features(
        {"id": Value("string"), "image": Image(), "label": ClassLabel(names=[str(d) for d in range(10)])}
    )

    def split(selected: np.ndarray) -> Dataset:
        selected = np.sort(selected)
        rows = {
            "id": [f"digit-{i:04d}" for i in selected],
            "image": [PILImage.fromarray(pixels[i], mode="L") for i in selected],
            "label": [int(labels[i]) for i in selected],
        }
        return Dataset.from_dict(rows, features=features)

    return DatasetDict({"train": split(train_ids), "validation": split(val_ids), "test": split(test_ids)})


def build_digits_dataset(
    config: DigitsConfig | None = None, cache_dir: str | os.PathLike | None = None
) -> DatasetDict:
    """The digits as `train` / `validation` / `test` (columns `id`, `image`, `label`), from cache when it exists.

    Args:
        config ([`DigitsConfig`], *optional*): Defaults to `DigitsConfig()`.
        cache_dir (`str`, *optional*): Defaults to `$HF_UNLEARN_CACHE` or `~/.cache/hf_unlearn`.
    """
    config = config if config is not None else DigitsConfig()
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    target = root / "digits" / config.cache_key()
    if not (target / "dataset_dict.json").exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".tmp-digits-"))
        try:
            _digits_dataset(config).save_to_disk(str(tmp / "data"))
            try:
                (tmp / "data").rename(target)
            except OSError:  # another process wrote it first; keep theirs
                if not (target / "dataset_dict.json").exists():
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return DatasetDict({name: split for name, split in load_from_disk(str(target), keep_in_memory=True).items()})


def load_image_dataset(
    name_or_path: str, config_name: str | None = None, test_split: str = "test", seed: int = 0
) -> DatasetDict:
    """A user's image-classification dataset (Hub name, `save_to_disk` folder or imagefolder) as `train` / `test`.

    It must have `image` and `label` columns. Without a `test_split`, 20 % of `train` is held out (seeded).
    """
    from datasets import load_dataset

    path = Path(name_or_path)
    if (path / "dataset_dict.json").exists() or (path / "dataset_info.json").exists():
        loaded = load_from_disk(str(path))
    else:
        loaded = load_dataset(name_or_path, config_name)
    if isinstance(loaded, Dataset):
        loaded = DatasetDict({"train": loaded})
    if "train" not in loaded:
        raise ValueError(f"The dataset {name_or_path!r} has no 'train' split (splits: {list(loaded)}).")
    for split_name, split in loaded.items():
        missing = [column for column in ("image", "label") if column not in split.column_names]
        if missing:
            raise ValueError(
                f"Split {split_name!r} of {name_or_path!r} has no {missing} column(s) (columns: {split.column_names}): "
                "an image-classification dataset needs `image` and `label`; rename yours with "
                "`dataset.rename_column(old, 'image')` / `rename_column(old, 'label')`."
            )
    splits = {"train": loaded["train"]}
    if test_split in loaded:
        splits["test"] = loaded[test_split]
    else:
        held_out = loaded["train"].train_test_split(test_size=0.2, seed=seed)
        splits = {"train": held_out["train"], "test": held_out["test"]}
    return DatasetDict(splits)


def forget_splits(
    dataset: DatasetDict,
    task: Literal["class", "random"] = "class",
    forget_class: int = 3,
    forget_fraction: float = 0.1,
    seed: int = 0,
) -> dict[str, Dataset]:
    """The task's `forget` / `retain` / `test` (and, class-wise, `forget_test`) splits of `dataset`.

    Args:
        dataset (`DatasetDict`): `train` and `test` splits with a `label` column.
        task (`"class"` or `"random"`): Forget one class, or a random `forget_fraction` of the training set.
        forget_class (`int`, *optional*, defaults to `3`): Class-wise: the label to forget.
        forget_fraction (`float`, *optional*, defaults to `0.1`): Random: the share of training images to forget.
        seed (`int`, *optional*, defaults to `0`): Random: seeds which images are forgotten.
    """
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}.")
    train, test = dataset["train"], dataset["test"]
    train_labels = np.asarray(train["label"])
    test_labels = np.asarray(test["label"])
    if task == "class":
        if not np.any(train_labels == forget_class):
            present = sorted(set(train_labels.tolist()))
            raise ValueError(
                f"forget_class={forget_class} has no training image (labels present: {present}): pass one of them "
                "with --forget_class."
            )
        forget_mask = train_labels == forget_class
        return {
            "forget": train.select(np.flatnonzero(forget_mask)),
            "retain": train.select(np.flatnonzero(~forget_mask)),
            "test": test.select(np.flatnonzero(test_labels != forget_class)),
            "forget_test": test.select(np.flatnonzero(test_labels == forget_class)),
        }
    if not 0 < forget_fraction < 1:
        raise ValueError(f"forget_fraction must be in (0, 1), got {forget_fraction}: e.g. 0.1 forgets 10 % of train.")
    count = max(1, int(round(forget_fraction * len(train))))
    chosen = np.random.default_rng(seed).permutation(len(train))[:count]
    forget_mask = np.zeros(len(train), dtype=bool)
    forget_mask[chosen] = True
    return {
        "forget": train.select(np.flatnonzero(forget_mask)),
        "retain": train.select(np.flatnonzero(~forget_mask)),
        "test": test,
    }


def retain_subset(retain: Dataset, retain_fraction: float = 1.0, seed: int = 0) -> Dataset:
    """The seeded `retain_fraction` of `retain` an unlearning method trains on (at least one image; all at 1.0).

    Stratified by `label` when every class can keep an image, so a 1 % subset still shows each kept class; a plain
    seeded draw otherwise (fewer images than classes). The order of `retain` is kept.

    Args:
        retain (`Dataset`): The retain split, with a `label` column.
        retain_fraction (`float`, *optional*, defaults to `1.0`): Share of `retain` to keep, in (0, 1].
        seed (`int`, *optional*, defaults to `0`): Seeds which images are kept.
    """
    if not 0 < retain_fraction <= 1:
        raise ValueError(f"retain_fraction must be in (0, 1], got {retain_fraction}: e.g. 0.01 keeps 1 % of retain.")
    count = max(1, int(round(retain_fraction * len(retain))))
    if count >= len(retain):
        return retain
    labels = np.asarray(retain["label"])
    classes, per_class = np.unique(labels, return_counts=True)
    if min(count, len(retain) - count) >= len(classes) and per_class.min() >= 2:  # what stratifying needs
        from sklearn.model_selection import train_test_split

        kept, _ = train_test_split(np.arange(len(retain)), train_size=count, stratify=labels, random_state=seed)
    else:
        kept = np.random.default_rng(seed).permutation(len(retain))[:count]
    return retain.select(np.sort(kept))
