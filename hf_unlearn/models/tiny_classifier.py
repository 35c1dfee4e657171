"""A tiny image classifier built from a transformers config, and its cached base / exact-retrain references.

Model choice: a two-stage `ResNetForImageClassification` (basic blocks, widths 32/64, 74 k parameters). Measured on the
project's 2-core CPU, one thread, 20 epochs over the 1,257 training digits take ~7 s in a plain loop and reach 0.97
test accuracy, where a ViT (patch 2, hidden 32–64) needs several times longer for a lower accuracy; so base and
exact-retrain together fit in well under a minute and the first run from an empty cache stays under 2 minutes. It is
also the family of both papers' image tables (ResNet-18) and carries BatchNorm: trained from scratch with batch
statistics, then unlearned with BatchNorm frozen (`freeze_batch_norm`), as when fine-tuning a pretrained ResNet —
which is what lets OrthoGrad's per-sample gradients and LUR's virtual step treat samples independently.

Images go through the model's image processor (`AutoImageProcessor`) once, into a `pixel_values` column;
`ImageClassificationCollator` stacks them and checks every label against the model's head.
"""

import hashlib
import json
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import transformers
from datasets import Dataset, concatenate_datasets
from transformers import ResNetConfig, ResNetForImageClassification

from hf_unlearn.models.cache import cached_model_dir, config_for_key
from hf_unlearn.models.training import REFERENCE_ROLES, FromScratchConfig, fit_from_scratch


# Bump when training code changes in a way that changes the result, so stale caches are not reused.
_CLASSIFIER_FORMAT_VERSION = 1
TINY_RESNET = dict(embedding_size=16, hidden_sizes=[32, 64], depths=[1, 1], layer_type="basic",
                   downsample_in_first_stage=False)  # fmt: skip
"""The default `ResNetConfig` fields: an 8×8 input leaves the stem at 2×2, and two stages of basic blocks suffice."""


@dataclass(frozen=True)
class ClassifierTrainingConfig(FromScratchConfig):
    """From-scratch training of the tiny classifier (fields: `FromScratchConfig`; defaults set for the digits).

    A high learning rate and 20 epochs fit the training digits (train accuracy ~1.0) in seconds; the final decay
    of the warmup-stable-decay schedule settles the weights.
    """

    learning_rate: float = 3e-3
    num_train_epochs: int = 20
    batch_size: int = 32
    warmup_steps: int = 10


def build_image_processor(image_size: int = 8, num_channels: int = 1) -> Any:
    """Rescale 0..255 to [0, 1], normalise to [-1, 1], keep the size: what the tiny classifier was trained with.

    The PIL backend by name: the pixels are then the same with or without torchvision installed (without it,
    `ViTImageProcessor` falls back to this same class and warns that it did)."""
    try:
        from transformers import ViTImageProcessorPil as ImageProcessor  # checked against transformers 5.24
    except ImportError:  # a transformers 5 release before the split into backends
        from transformers import ViTImageProcessor as ImageProcessor

    return ImageProcessor(
        do_resize=True,
        size={"height": image_size, "width": image_size},
        image_mean=[0.5] * num_channels,
        image_std=[0.5] * num_channels,
    )


def build_tiny_classifier(num_labels: int = 10, num_channels: int = 1, **overrides) -> ResNetForImageClassification:
    """`ResNetForImageClassification` from a `ResNetConfig` (`TINY_RESNET` plus `overrides`), randomly initialised."""
    values = {**TINY_RESNET, **overrides}
    id2label = {i: str(i) for i in range(num_labels)}
    config = ResNetConfig(
        num_channels=num_channels,
        num_labels=num_labels,
        id2label=id2label,
        label2id={v: k for k, v in id2label.items()},
        **values,
    )
    return ResNetForImageClassification(config)


def model_num_channels(model_or_config: Any) -> int:
    config = getattr(model_or_config, "config", model_or_config)
    return int(getattr(config, "num_channels", 3))


def add_pixel_values(dataset: Dataset, image_processor: Any, num_channels: int, batch_size: int = 256) -> Dataset:
    """`dataset` with a `pixel_values` column from `image_processor` (images converted to the model's channels:
    grayscale for 1, RGB for 3), the `image` column dropped. Done once, in memory."""
    mode = "L" if num_channels == 1 else "RGB"

    def process(batch: dict[str, list]) -> dict[str, Any]:
        images = [image.convert(mode) for image in batch["image"]]
        pixels = image_processor(images=images, return_tensors="np")["pixel_values"]
        return {"pixel_values": pixels.astype(np.float32)}

    processed = dataset.map(
        process, batched=True, batch_size=batch_size, remove_columns=["image"], keep_in_memory=True, desc=None
    )
    return processed


@dataclass
class ImageClassificationCollator:
    """Stacks `pixel_values` and `label` rows into `{"pixel_values": [B, C, H, W], "labels": [B]}`.

    A label outside ``[0, num_labels)`` would index past the classifier head deep in the loss; it is refused here with
    the fix.
    """

    num_labels: int

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        labels = torch.tensor([int(row["label"]) for row in rows], dtype=torch.long)
        if bool(((labels < 0) | (labels >= self.num_labels)).any()):
            bad = sorted({int(v) for v in labels if not 0 <= v < self.num_labels})
            raise ValueError(
                f"Labels {bad} are outside the model's head of {self.num_labels} classes: load the model with "
                "`num_labels` covering the dataset's classes (and `ignore_mismatched_sizes=True` for a pretrained "
                "checkpoint), or drop those rows."
            )
        pixels = torch.stack([torch.as_tensor(np.asarray(row["pixel_values"]), dtype=torch.float32) for row in rows])
        return {"pixel_values": pixels, "labels": labels}


def check_labels_fit(splits: dict[str, Dataset], num_labels: int) -> None:
    """Every split's labels must index the classifier head: checked before any training time is spent."""
    for name, split in splits.items():
        labels = np.asarray(split["label"])
        bad = sorted(set(labels[(labels < 0) | (labels >= num_labels)].tolist()))
        if bad:
            raise ValueError(
                f"Split {name!r} has labels {bad} outside the model's head of {num_labels} classes: load the model "
                "with `num_labels` covering the dataset's classes (`ignore_mismatched_sizes=True` for a pretrained "
                "checkpoint), or drop those rows."
            )


def train_classifier_reference(
    train_split: Dataset,
    kind: Literal["base", "retrain"],
    num_labels: int = 10,
    model_overrides: dict | None = None,
    training_config: ClassifierTrainingConfig | None = None,
    cache_dir: str | os.PathLike | None = None,
    model_name_or_path: str | None = None,
) -> str:
    """Train (or reuse from cache) a classifier on `train_split` (rows `id`, `image`, `label`); return the directory
    holding the model and its image processor.

    Without `model_name_or_path` the tiny ResNet is trained from scratch. With it, that checkpoint (Hub id or local
    dir) is fine-tuned, its head resized to `num_labels` (`ignore_mismatched_sizes`), with its own image processor:
    the base and exact-retrain references of a pretrained model. `kind` only names the cache entry ("base" is trained
    on every training image, "retrain" on the retain images); the key covers the rows (ids and labels), the model
    config and the hyperparameters.
    """
    if kind not in ("base", "retrain"):
        raise ValueError(f"kind must be 'base' or 'retrain', got {kind!r}.")
    training_config = training_config if training_config is not None else ClassifierTrainingConfig()
    order = np.argsort(np.asarray(train_split["id"]), kind="stable")
    train_split = train_split.select(order)
    transformers.set_seed(training_config.seed)
    if model_name_or_path is None:
        model = build_tiny_classifier(num_labels=num_labels, **dict(model_overrides or {}))
        processor = build_image_processor(num_channels=model_num_channels(model))
    else:
        model, processor = load_pretrained_classifier(model_name_or_path, num_labels)
    key_payload = {
        "format": _CLASSIFIER_FORMAT_VERSION,
        "checkpoint": model_name_or_path,
        "data": image_dataset_digest(train_split),
        "model": config_for_key(model.config),
        "processor": processor.to_dict(),
        "training": asdict(training_config),
    }

    def build(directory: Path) -> dict:
        data = add_pixel_values(train_split, processor, model_num_channels(model))
        collator = ImageClassificationCollator(num_labels)
        description = f"classifier {REFERENCE_ROLES[kind]}"
        stats = fit_from_scratch(
            model, data, collator, training_config, directory / "trainer", description=description
        )
        shutil.rmtree(directory / "trainer", ignore_errors=True)
        model.save_pretrained(directory)
        processor.save_pretrained(directory)
        return {"num_train_rows": len(train_split), **stats}

    name = "resnet" if model_name_or_path is None else "finetuned"
    return cached_model_dir(f"{name}-{kind}", key_payload, build, cache_dir)


def load_pretrained_classifier(model_name_or_path: str, num_labels: int | None = None) -> tuple[Any, Any]:
    """`(model, image processor)` of an image-classification checkpoint; with `num_labels`, a head of that size (a new,
    randomly initialised head when the checkpoint's differs: `ignore_mismatched_sizes=True`)."""
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    kwargs = {} if num_labels is None else {"num_labels": num_labels, "ignore_mismatched_sizes": True}
    model = AutoModelForImageClassification.from_pretrained(model_name_or_path, **kwargs)
    return model, AutoImageProcessor.from_pretrained(model_name_or_path)


def image_dataset_digest(dataset: Dataset) -> str:
    """Content hash of the rows a model trains on (ids and labels, in row order; ids identify the images)."""
    rows = [list(map(str, dataset["id"])), [int(v) for v in dataset["label"]]]
    return hashlib.sha256(json.dumps(rows).encode()).hexdigest()[:16]


def training_rows(forget: Dataset, retain: Dataset, kind: Literal["base", "retrain"]) -> Dataset:
    """The rows a reference model trains on: forget + retain for "base", retain only for "retrain"."""
    return concatenate_datasets([forget, retain]) if kind == "base" else retain
