"""What `UnlearnTrainer`'s card and dry-run hooks do: gather the trainer's facts, render the card, mirror an upload.

Kept out of `trainer.py` so the trainer holds only the forget/retain plumbing; its `create_model_card`,
`set_card_info`, `save_for_hub`, `save_model` and `_save_checkpoint` are one-line hooks into this module.
"""

import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from ..integrations.transformers import save_model_internal
from . import model_card as hub_card
from .local_paths import command_without_local_paths, scrub_upload_folder
from .usage import task_of, usage_snippet


if TYPE_CHECKING:
    from ..trainer import UnlearnTrainer


def update_card_info(
    card_info: dict[str, Any],
    metrics: dict[str, dict[str, dict[str, float]]] | None = None,
    datasets: list[str] | None = None,
    command: str | None = None,
) -> None:
    """Record in `card_info` the values that are given; `None` leaves a field as it was (see `set_card_info`)."""
    if metrics is not None:
        card_info["metrics"] = {name: dict(per_split) for name, per_split in metrics.items()}
    if datasets is not None:
        card_info["datasets"] = list(datasets)
    if command is not None:
        card_info["command"] = command


def default_model_name(trainer: "UnlearnTrainer", output_dir: str | os.PathLike | None = None) -> str:
    """The last part of `hub_model_id`, else the output folder's name: the repo name the card will sit in."""
    return (trainer.args.hub_model_id or Path(output_dir or trainer.args.output_dir).absolute().name).split("/")[-1]


def write_model_card(
    trainer: "UnlearnTrainer",
    output_dir: str | os.PathLike,
    *,
    card_info: dict[str, Any],
    forget: dict[str, Any],
    model_name: str | None = None,
    tags: str | list[str] | None = None,
    dataset: str | list[str] | None = None,
    language: str | list[str] | None = None,
    license: str | None = None,
    for_upload: bool = False,
) -> Path:
    """Render `README.md` into `output_dir` from the trainer's model, method, config and `card_info`; returns its path.

    Reads the base model's name and the adapter from the (unwrapped) model, the method's own hyperparameters from
    `trainer.args` and the seed paper from `trainer._paper`. Local paths never reach the card (the Hub rejects them
    in metadata, and they would publish the author's file system); `for_upload` also shortens the paths in the
    reproduce command.
    """
    from peft import PeftModel

    model_name = model_name or default_model_name(trainer, output_dir)
    extra_tags = [tags] if isinstance(tags, str) else list(tags or [])
    datasets = [dataset] if isinstance(dataset, str) else dataset
    datasets = datasets if datasets is not None else card_info["datasets"]

    model = trainer.accelerator.unwrap_model(trainer.model)
    is_peft = isinstance(model, PeftModel)
    base = model.get_base_model() if is_peft else model
    base_model = getattr(getattr(base, "config", None), "_name_or_path", None) or None
    peft_config = model.peft_config.get("default", next(iter(model.peft_config.values()))) if is_peft else None
    task = task_of(type(base).__name__)
    base_model_id = hub_card.hub_id_or_none(base_model)
    repo = trainer.args.hub_model_id or f"path/to/{model_name}"
    usage = (
        usage_snippet(task, base_model=base_model_id or "path/to/base-model", repo=repo, is_peft=is_peft)
        if task is not None
        else None
    )
    command = card_info["command"]

    context = hub_card.model_card_context(
        model_name=model_name,
        method=trainer._name,
        base_model=base_model,
        hyperparameters=hub_card.method_hyperparameters(trainer.args),
        training=hub_card.training_settings(trainer.args, trainer.accelerator.num_processes),
        adapter=hub_card.adapter_settings(peft_config),
        forget=forget,
        metrics=card_info["metrics"],
        paper=trainer._paper,
        versions=hub_card.library_versions(),
        command=command_without_local_paths(command) if for_upload else command,
        datasets=[name for name in datasets or [] if hub_card.hub_id_or_none(name)],
        usage=usage,
    )
    card_data = ModelCardData(
        model_name=model_name,
        base_model=context["base_model_id"],
        library_name="peft" if is_peft else "transformers",
        pipeline_tag=task.pipeline_tag if task else None,
        tags=list(dict.fromkeys([*trainer._tag_names, "machine-unlearning", *extra_tags])),
        datasets=context["datasets"],
        language=language,
        license=license,
        eval_results=eval_results(card_info["metrics"], task.pipeline_tag if task else "other") or None,
    )
    card = hub_card.render_model_card(card_data, context, trainer._card_template)
    os.makedirs(output_dir, exist_ok=True)
    path = Path(output_dir) / "README.md"
    card.save(str(path))
    return path


def eval_results(metrics: dict[str, dict[str, dict[str, float]]] | None, task_type: str) -> list[EvalResult]:
    """The unlearned model's scores as the card's `model-index` (one entry per split and metric).

    The embedded benchmarks are not Hub datasets, so each split is named as `hf-unlearn/<split>`; the base and
    exact-retrain scores stay in the card's table, which is where a reader compares them.
    """
    results = []
    for split, per_metric in ((metrics or {}).get("unlearned") or {}).items():
        for metric, value in per_metric.items():
            results.append(
                EvalResult(
                    task_type=task_type,
                    dataset_type=f"hf-unlearn/{split}",
                    dataset_name=f"{split} split",
                    metric_type=metric,
                    metric_value=float(value),
                )
            )
    return results


def save_for_hub(trainer: "UnlearnTrainer", folder: str | os.PathLike) -> list[str]:
    """Dry run of [`~transformers.Trainer.push_to_hub`]: write into `folder` exactly the files it would upload.

    `push_to_hub` saves the model into `output_dir`, writes the card and uploads `output_dir` except `_*`,
    `checkpoint-*` and `.git`. This does the same into `folder` without any network: the files already in
    `output_dir` that would be uploaded are copied, then the model is saved over them (adapter
    `adapter_model.safetensors` + `adapter_config.json`, or the full weights), with the processor/tokenizer files,
    `training_args.bin` and the `README.md` card. `hf upload REPO folder` uploads it as is.

    Args:
        trainer ([`~hf_unlearn.UnlearnTrainer`]):
            The trainer whose model would be pushed. Every process must call this (sharded models gather).
        folder (`str` or `os.PathLike`):
            An empty or missing folder, not `output_dir` itself.

    Returns:
        `list[str]`: the paths, relative to `folder`, that would be uploaded.
    """
    folder = Path(folder)
    if folder.absolute() == Path(trainer.args.output_dir).absolute():
        raise ValueError("save_for_hub needs a folder other than output_dir: it mirrors what would be uploaded.")
    if folder.is_dir() and any(folder.iterdir()):
        raise FileExistsError(f"save_for_hub folder {str(folder)!r} is not empty; pass an empty or new folder.")
    if trainer.is_world_process_zero():
        folder.mkdir(parents=True, exist_ok=True)
        source = Path(trainer.args.output_dir)
        if source.is_dir():
            for relative in hub_card.upload_file_list(source):
                (folder / relative).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(source / relative, folder / relative)
    save_model_internal(trainer, str(folder))  # all processes: sharded models gather here
    if not trainer.is_world_process_zero():
        return []
    if trainer._forget_fingerprint is None:
        trainer._forget_fingerprint = hub_card.forget_fingerprint(trainer.train_dataset)
    model_tags = getattr(trainer.accelerator.unwrap_model(trainer.model), "model_tags", None)
    card_path = write_model_card(
        trainer,
        folder,
        card_info=trainer._card_info,
        forget=trainer._forget_fingerprint,
        model_name=default_model_name(trainer),
        tags=list(model_tags or []),
        for_upload=True,
    )
    base_model_id = ModelCard.load(card_path).data.base_model
    scrub_upload_folder(folder, base_model_id)
    return hub_card.upload_file_list(folder)
