"""Nothing of the author's file system in a Hub upload.

A run records paths as it met them: the embedded base model's cache folder in `adapter_config.json`
(`base_model_name_or_path`), `output_dir` and data paths in `unlearn_config.json` and `training_args.bin`, and
the command line in the card. Locally they are useful (peft's `AutoPeftModel` reloads from them); published, they
reveal a home folder and point nowhere. An upload keeps each such path's last component only, and a local base
model is named in `adapter_config.json` only when it is a Hub id.
"""

import json
import os
import shlex
from pathlib import Path, PurePath
from typing import Any


def is_local_path(value: Any) -> bool:
    """An absolute file-system path (what would leak); relative names such as `outputs/run` are kept."""
    return isinstance(value, str) and os.path.isabs(value)


def without_local_paths(value: Any) -> Any:
    """`value` with every absolute path string (at any depth of dicts and lists) replaced by its last component."""
    if is_local_path(value):
        return PurePath(value).name
    if isinstance(value, dict):
        return {key: without_local_paths(item) for key, item in value.items()}
    if isinstance(value, list):
        return [without_local_paths(item) for item in value]
    return value


def command_without_local_paths(command: str | None) -> str | None:
    """A shell command whose absolute path arguments are shortened to their last component."""
    if command is None:
        return None
    return " ".join(shlex.quote(without_local_paths(part)) for part in shlex.split(command))


def scrub_upload_folder(folder: str | os.PathLike, base_model_id: str | None) -> None:
    """Rewrite, in place, the files of an upload folder that hold local paths (JSON files and `training_args.bin`)."""
    folder = Path(folder)
    for path in folder.glob("**/*.json"):
        values = json.loads(path.read_text())
        if path.name == "adapter_config.json" and is_local_path(values.get("base_model_name_or_path")):
            values["base_model_name_or_path"] = base_model_id
        path.write_text(json.dumps(without_local_paths(values), indent=2))
    training_args = folder / "training_args.bin"
    if training_args.is_file():
        _scrub_training_args(training_args)


def _scrub_training_args(path: Path) -> None:
    import copy
    import dataclasses

    import torch

    # Written by `Trainer.save_model` from our own config object: a pickle we produced, so full unpickling is safe.
    args = torch.load(path, weights_only=False)
    args = copy.copy(args)
    for field in dataclasses.fields(args):
        value = getattr(args, field.name, None)
        if is_local_path(value):
            object.__setattr__(args, field.name, PurePath(value).name)
    torch.save(args, path)
