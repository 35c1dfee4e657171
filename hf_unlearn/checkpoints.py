"""Which checkpoint folders are complete, and where a resumed run starts.

Checkpoints are written into a `.tmp-checkpoint-N` folder and renamed to `checkpoint-N` once every file is in it
(`UnlearnTrainer._save_checkpoint`), so a `checkpoint-N` folder is complete unless something other than this
toolkit wrote it, or it predates atomic saving. Those are recognised by a missing `trainer_state.json` (the last
file the Trainer writes) and skipped with a warning, so that a run killed while saving resumes from the checkpoint
before.
"""

import logging
import os
import re
from pathlib import Path


logger = logging.getLogger(__name__)

CHECKPOINT_PATTERN = re.compile(r"^checkpoint-(\d+)$")
STAGING_PREFIX = ".tmp-checkpoint-"
TRAINER_STATE_FILE = "trainer_state.json"


def stream_state_file(process_index: int) -> str:
    """Name of the file holding one process's extra data streams (retain, ...) inside a checkpoint."""
    return f"hf_unlearn_streams_{process_index}.pt"


def is_complete_checkpoint(folder: str | os.PathLike) -> bool:
    """Whether `folder` holds a whole checkpoint: the trainer state is the last file written into it."""
    return (Path(folder) / TRAINER_STATE_FILE).is_file()


def checkpoint_step(folder: str | os.PathLike) -> int | None:
    match = CHECKPOINT_PATTERN.match(Path(folder).name)
    return int(match.group(1)) if match else None


def latest_complete_checkpoint(output_dir: str | os.PathLike) -> str | None:
    """The complete `checkpoint-N` with the largest N in `output_dir`; incomplete ones are skipped with a warning."""
    root = Path(output_dir)
    if not root.is_dir():
        return None
    folders = sorted(
        (entry for entry in root.iterdir() if entry.is_dir() and checkpoint_step(entry) is not None),
        key=checkpoint_step,
        reverse=True,
    )
    for folder in folders:
        if is_complete_checkpoint(folder):
            return str(folder)
        logger.warning(
            "Skipping incomplete checkpoint %s (no %s: the run was stopped while writing it).",
            folder,
            TRAINER_STATE_FILE,
        )
    return None


def resolve_resume_checkpoint(resume_from_checkpoint: str | bool | None, output_dir: str | None) -> str | None:
    """`resume_from_checkpoint` as a folder: `True` (or "true") is the latest complete checkpoint of `output_dir`.

    Raises with the fix named when there is nothing to resume from, instead of silently starting from step 0.
    """
    if resume_from_checkpoint is None or resume_from_checkpoint is False:
        return None
    if isinstance(resume_from_checkpoint, str) and resume_from_checkpoint.lower() in ("false", "no", ""):
        return None
    if resume_from_checkpoint is True or str(resume_from_checkpoint).lower() in ("true", "yes", "latest"):
        if output_dir is None:
            raise ValueError("resume_from_checkpoint=True needs output_dir: pass the folder of the run to resume.")
        checkpoint = latest_complete_checkpoint(output_dir)
        if checkpoint is None:
            raise FileNotFoundError(
                f"No complete checkpoint in {output_dir!r} to resume from: pass the folder of an earlier run as "
                "--output_dir, a checkpoint folder as --resume_from_checkpoint, or drop --resume_from_checkpoint."
            )
        return checkpoint
    checkpoint = str(resume_from_checkpoint)
    if not Path(checkpoint).is_dir():
        raise FileNotFoundError(
            f"resume_from_checkpoint {checkpoint!r} is not a folder: pass a checkpoint-N folder, or true for the "
            "latest complete one in output_dir."
        )
    if not is_complete_checkpoint(checkpoint):
        raise ValueError(
            f"Checkpoint {checkpoint!r} is incomplete (no {TRAINER_STATE_FILE}); pass an earlier checkpoint, or "
            "--resume_from_checkpoint true to take the latest complete one."
        )
    return checkpoint
