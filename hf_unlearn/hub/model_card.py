"""The model card of an unlearned model, and the checks that make a Hub push fail before training, not after it.

The card is rendered from a Jinja template (`hf_unlearn/hub/templates/unlearned_model.md`, shipped in the wheel;
`model_cards/unlearned_model.md` at the repository root links to it) with `huggingface_hub.ModelCardData` for the
YAML metadata, so the Hub parses it exactly as `huggingface_hub.ModelCard.load` does. The trainer-facing entry points
are `UnlearnTrainer.create_model_card`, `UnlearnTrainer.set_card_info` and `UnlearnTrainer.save_for_hub` (their
bodies live in `trainer_card.py`); this module holds the pieces they share with the recipes.
"""

import hashlib
import json
import os
import shlex
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import fields
from enum import Enum
from importlib import metadata
from pathlib import Path
from typing import Any

from huggingface_hub import ModelCard, ModelCardData, get_token
from huggingface_hub import constants as hub_constants
from huggingface_hub.utils import DEFAULT_IGNORE_PATTERNS, HFValidationError, filter_repo_objects, validate_repo_id
from transformers import TrainingArguments

from ..integrations.transformers import TRAINER_PUSH_IGNORE_PATTERNS


# Package data, so wheel installs have it too (the repository's `model_cards/unlearned_model.md` is a link to it).
DEFAULT_TEMPLATE = Path(__file__).resolve().parent / "templates" / "unlearned_model.md"
# `TrainingArguments` fields that say how the unlearning run was trained (the rest are I/O and logging).
TRAINING_FIELDS = (
    "learning_rate",
    "lr_scheduler_type",
    "optim",
    "max_steps",
    "num_train_epochs",
    "per_device_train_batch_size",
    "gradient_accumulation_steps",
    "max_grad_norm",
    "weight_decay",
    "bf16",
    "fp16",
    "seed",
)
ADAPTER_FIELDS = ("peft_type", "r", "lora_alpha", "lora_dropout", "target_modules", "use_dora", "use_rslora")
MODEL_ORDER = ("base", "retrain", "unlearned")


# ---------------------------------------------------------------------------------------------- fingerprint


def forget_fingerprint(dataset: Any, id_column: str = "id") -> dict[str, Any]:
    """Count and sha256 of the forget set, computed from example ids and never from (or revealing) the content.

    The hash is taken over the *sorted* ids, so it does not depend on the order of the rows: anyone holding the same
    forget set recomputes the same fingerprint and can check which data a published model forgot, while the card
    itself says nothing about what the examples contain. Without an `id_column`, each row is replaced by its own
    sha256 first (a one-way digest of its stored values; audio/image bytes are hashed without decoding).

    Args:
        dataset (`datasets.Dataset` or a sized sequence of dicts):
            The forget set as passed to the trainer.
        id_column (`str`, *optional*, defaults to `"id"`):
            Column of unique example ids; used when present.

    Returns:
        `dict` with `count`, `sha256` (hex) and `source` (how the hashed keys were obtained).
    """
    column_names = getattr(dataset, "column_names", None)
    if column_names is not None and id_column in column_names:
        keys = [str(value) for value in dataset[id_column]]
        source = f"sorted `{id_column}` column"
    else:
        keys = [_sha256(_canonical_json(row)) for row in _iter_raw_rows(dataset)]
        source = "sorted per-row sha256 (no `id` column)"
    # JSON of the sorted list: unambiguous even for ids that contain separators.
    digest = _sha256(json.dumps(sorted(keys), ensure_ascii=False))
    return {"count": len(keys), "sha256": digest, "source": source}


def _iter_raw_rows(dataset: Any) -> Iterable[Any]:
    if hasattr(dataset, "with_format") and hasattr(dataset, "column_names"):
        # Arrow rows: the stored values (audio as bytes/path), no decoding, no torch formatting.
        for table in dataset.with_format("arrow").iter(batch_size=256):
            yield from table.to_pylist()
    else:
        for index in range(len(dataset)):
            yield dataset[index]


def _canonical_json(row: Any) -> str:
    def default(value: Any) -> Any:
        if isinstance(value, (bytes, bytearray)):
            return "sha256:" + hashlib.sha256(value).hexdigest()
        if hasattr(value, "tolist"):  # tensors and arrays
            return value.tolist()
        return repr(value)

    return json.dumps(row, sort_keys=True, default=default, ensure_ascii=False)


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


# ---------------------------------------------------------------------------------------------- card content


# `UnlearnConfig` fields that say how a run was evaluated or saved, not how the model was unlearnt.
NOT_HYPERPARAMETERS = frozenset({"overwrite_output_dir", "generation_max_new_tokens", "eval_generate"})


def method_hyperparameters(args: TrainingArguments) -> dict[str, Any]:
    """The config fields a method adds on top of `TrainingArguments` (retain_weight, npo_beta, inner_lr, ...)."""
    skip = {f.name for f in fields(TrainingArguments)} | NOT_HYPERPARAMETERS
    # A renamed field's old name (`beta` of `npo_beta`, ...) is None once its value moved to the new name: not shown.
    skip |= set(getattr(args, "renamed_fields", {}))
    return {f.name: getattr(args, f.name) for f in fields(type(args)) if f.name not in skip}


def training_settings(args: TrainingArguments, num_processes: int = 1) -> dict[str, Any]:
    """The `TrainingArguments` that shape the optimisation, plus the number of processes (the global batch)."""
    settings = {name: _plain(getattr(args, name)) for name in TRAINING_FIELDS if hasattr(args, name)}
    if settings.get("max_steps", -1) > 0:
        settings.pop("num_train_epochs", None)  # max_steps wins; showing both would suggest both applied
    settings["num_processes"] = num_processes
    return settings


def adapter_settings(peft_config: Any) -> dict[str, Any] | None:
    """The adapter's defining fields (`None` for full fine-tuning)."""
    if peft_config is None:
        return None
    values = peft_config.to_dict() if hasattr(peft_config, "to_dict") else dict(vars(peft_config))
    settings = {}
    for name in ADAPTER_FIELDS:
        value = values.get(name)
        if value is None:
            continue
        if isinstance(value, (set, frozenset)):
            value = sorted(value)
        settings[name] = _plain(value)
    return settings


def _plain(value: Any) -> Any:
    """Enum members as their value (`linear`, not `SchedulerType.LINEAR`)."""
    return value.value if isinstance(value, Enum) else value


def library_versions() -> dict[str, str]:
    """Versions of the libraries that produced the weights: what a reader needs to reproduce them."""
    import hf_unlearn

    versions = {"hf_unlearn": hf_unlearn.__version__}
    for name in ("torch", "transformers", "peft", "datasets", "accelerate", "huggingface_hub"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def reproduce_command(argv: Sequence[str] | None = None) -> str | None:
    """The command line of this process (`sys.argv`), shell-quoted; `None` when there is none (notebooks)."""
    argv = list(sys.argv if argv is None else argv)
    if not argv or argv[0] in ("", "-", "-c") or "ipykernel" in argv[0]:
        return None
    program = Path(argv[0])
    if program.name == "hf-unlearn" or (program.name == "__main__.py" and program.parent.name == "hf_unlearn"):
        # The console script (or `python -m hf_unlearn`): its install path would only publish the author's disk.
        argv = ["hf-unlearn", *argv[1:]]
    prefix = ["python"] if argv[0].endswith(".py") else []
    return " ".join(shlex.quote(part) for part in prefix + argv)


def hub_id_or_none(name_or_path: str | None) -> str | None:
    """`name_or_path` when it names a Hub repo; `None` for local paths, which the Hub rejects in metadata."""
    if not name_or_path or os.path.exists(name_or_path):
        return None
    try:
        validate_repo_id(name_or_path)
    except HFValidationError:
        return None
    return name_or_path


def metrics_rows(results: Mapping[str, Mapping[str, Mapping[str, float]]] | None) -> dict[str, Any] | None:
    """`{"base"|"retrain"|"unlearned": {split: {metric: value}}}` as one row per (split, metric), one column per model.

    Models keep the order base, retrain, unlearned (others after); missing values render as `–`.
    """
    if not results:
        return None
    models = [name for name in MODEL_ORDER if name in results] + [name for name in results if name not in MODEL_ORDER]
    keys: list[tuple[str, str]] = []
    for name in models:
        for split, per_metric in results[name].items():
            keys += [(split, metric) for metric in per_metric if (split, metric) not in keys]
    rows = []
    for split, metric in keys:
        cells = []
        for name in models:
            value = results[name].get(split, {}).get(metric)
            cells.append("–" if value is None else f"{float(value):.4f}")
        rows.append({"split": split, "metric": metric, "cells": cells})
    return {"models": models, "rows": rows}


def model_card_context(
    *,
    model_name: str,
    method: str,
    base_model: str | None,
    hyperparameters: dict[str, Any],
    training: dict[str, Any],
    adapter: dict[str, Any] | None,
    forget: dict[str, Any],
    metrics: Mapping[str, Any] | None,
    paper: Mapping[str, str] | None,
    versions: dict[str, str],
    command: str | None,
    datasets: list[str] | None,
    usage: str | None = None,
) -> dict[str, Any]:
    """Every variable the template may use. Built the same way for the real card and the start-of-run check."""
    if adapter is not None and adapter.get("peft_type") == "LORA":
        adapter = {**adapter, "peft_type": "LoRA"}  # the method's name as its paper writes it, not peft's enum
    return {
        "model_name": model_name,
        "method": method,
        # A local path is shown by its folder name only: the card must not publish the author's file system.
        "base_model": hub_id_or_none(base_model) or (Path(base_model).name if base_model else "an unnamed model"),
        "base_model_id": hub_id_or_none(base_model),
        "hyperparameters": hyperparameters,
        "training": training,
        "adapter": adapter,
        "forget": forget,
        "metrics": metrics_rows(metrics),
        # A fixed shape, so the template never meets an optional key only some methods have.
        "paper": {"title": paper["title"], "id": paper["id"], "bibtex": paper.get("bibtex")} if paper else None,
        "versions": versions,
        "command": command,
        "datasets": datasets or None,
        "usage": usage,
    }


def render_model_card(
    card_data: ModelCardData, context: dict[str, Any], template_path: str | os.PathLike | None = None
) -> ModelCard:
    """Render the template with `StrictUndefined`, so a field the template names but the context lacks is an error.

    `huggingface_hub.ModelCard.from_template` renders with Jinja's default `Undefined`, which silently prints
    nothing; a typo would then ship an empty section without anyone noticing.
    """
    import jinja2

    template_path = Path(template_path or DEFAULT_TEMPLATE)
    if not template_path.is_file():
        raise FileNotFoundError(f"Model card template {template_path} not found.")
    environment = jinja2.Environment(
        undefined=jinja2.StrictUndefined, keep_trailing_newline=True, trim_blocks=True, lstrip_blocks=True
    )
    try:
        template = environment.from_string(template_path.read_text(encoding="utf-8"))
        content = template.render(card_data=card_data.to_yaml(), **context)
    except jinja2.UndefinedError as error:
        raise ValueError(
            f"Model card template {template_path} uses an unknown field ({error}). Fields it can use: "
            f"card_data, {', '.join(sorted(context))}."
        ) from error
    except jinja2.TemplateSyntaxError as error:
        raise ValueError(f"Model card template {template_path}, line {error.lineno}: {error.message}") from error
    return ModelCard(content)


def check_card_template(template_path: str | os.PathLike | None = None) -> None:
    """Render the template once with dummy values (every optional section filled) and fail on any unknown field.

    Called when a trainer is built and at the top of the recipes, so a broken template stops the run before any
    training time is spent instead of when the first checkpoint is saved.
    """
    context = model_card_context(
        model_name="dummy-model",
        method="Dummy",
        base_model="dummy/base-model",
        hyperparameters={"retain_weight": 1.0},
        training={"learning_rate": 1e-4},
        adapter={"peft_type": "LORA", "r": 8},
        forget={"count": 1, "sha256": "0" * 64, "source": "dummy"},
        metrics={name: {"forget": {"loss": 0.0}} for name in MODEL_ORDER},
        paper={"title": "Dummy", "id": "0000.00000", "bibtex": "@misc{dummy}"},
        versions={"hf_unlearn": "0"},
        command="python dummy.py",
        datasets=["dummy/dataset"],
        usage="import peft",
    )
    card_data = ModelCardData(library_name="peft", base_model="dummy/base-model", tags=["unlearning"])
    render_model_card(card_data, context, template_path)


# ---------------------------------------------------------------------------------------------- push checks


def check_push_to_hub(args: TrainingArguments) -> None:
    """Refuse a `push_to_hub=True` run that could not push, before the model, data or training cost anything.

    The Trainer itself would create the repository in its constructor (falling back to the output folder's name
    when `hub_model_id` is unset) and only fail on a missing token or network when it first uploads, possibly after
    hours of training.
    """
    if not args.push_to_hub:
        return
    if not args.hub_model_id:
        raise ValueError(
            "push_to_hub=True needs hub_model_id (e.g. --hub_model_id your-name/whisper-tiny-unlearned): name the "
            "Hub repository to push to, or set push_to_hub=False and write the upload locally with "
            "trainer.save_for_hub(folder) (recipes: --hub_dry_run_dir DIR)."
        )
    if not (args.hub_token or get_token()):
        raise ValueError(
            f"push_to_hub=True to {args.hub_model_id!r} but no Hugging Face token was found: run `hf auth login`, "
            "set the HF_TOKEN environment variable, or pass hub_token (--hub_token)."
        )
    if hub_constants.HF_HUB_OFFLINE:
        raise ValueError(
            f"push_to_hub=True to {args.hub_model_id!r} but HF_HUB_OFFLINE is set: unset it to push, or set "
            "push_to_hub=False and write the upload locally with trainer.save_for_hub(folder) (recipes: "
            "--hub_dry_run_dir DIR)."
        )


def upload_file_list(folder: str | os.PathLike) -> list[str]:
    """Files of `folder` that `Trainer.push_to_hub` would upload: its own ignore patterns plus huggingface_hub's."""
    folder = Path(folder)
    relative = sorted(path.relative_to(folder).as_posix() for path in folder.glob("**/*") if path.is_file())
    ignore = TRAINER_PUSH_IGNORE_PATTERNS + list(DEFAULT_IGNORE_PATTERNS)
    return list(filter_repo_objects(relative, ignore_patterns=ignore))
