"""What hf-unlearn wrote into an `output_dir`, so that nothing else there is ever replaced or deleted.

Every run records the entries it wrote in `hf_unlearn_outputs.json` (the manifest). A later run into the same
folder is refused unless it resumes or `overwrite_output_dir` is set; even then, an entry the toolkit would write
(a name in `TOOLKIT_NAMES`) that the manifest does not list is the user's, and the run is refused before any
training time is spent, naming it. Entries with other names are left alone. `.tmp-checkpoint-N` folders are the
toolkit's by name (a save that was interrupted) and are replaced.
"""

import fnmatch
import json
import os
from pathlib import Path

from .checkpoints import STAGING_PREFIX


MANIFEST_FILE = "hf_unlearn_outputs.json"

# Names a run (its checkpoints, final save, recipe outputs) can write at the top of output_dir.
TOOLKIT_NAMES = (
    MANIFEST_FILE,
    "README.md",
    "metrics.json",
    "*_results.json",
    "trainer_state.json",
    "unlearn_config.json",
    "training_args.bin",
    "adapter_config.json",
    "adapter_model.*",
    "model*.safetensors",
    "model.safetensors.index.json",
    "pytorch_model*.bin",
    "config.json",
    "generation_config.json",
    "tokenizer*",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "normalizer.json",
    "preprocessor_config.json",
    "processor_config.json",
    "chat_template.*",
    "*.png",
    "checkpoint-*",
    "runs",
)


def written_by_toolkit(output_dir: str | os.PathLike) -> set[str]:
    """Entries of `output_dir` an earlier hf-unlearn run recorded as its own."""
    manifest = Path(output_dir) / MANIFEST_FILE
    if not manifest.is_file():
        return set()
    return set(json.loads(manifest.read_text()).get("entries", []))


def foreign_entries(output_dir: str | os.PathLike) -> set[str]:
    """Entries of `output_dir` that no hf-unlearn run recorded (the user's, or another tool's)."""
    root = Path(output_dir)
    if not root.is_dir():
        return set()
    entries = {entry.name for entry in root.iterdir() if not entry.name.startswith(STAGING_PREFIX)}
    return entries - written_by_toolkit(root) - {MANIFEST_FILE}


def record_outputs(output_dir: str | os.PathLike, preexisting: set[str]) -> None:
    """Add every entry of `output_dir` except `preexisting` (what was there before the run) to the manifest."""
    root = Path(output_dir)
    if not root.is_dir():
        return
    entries = written_by_toolkit(root) | ({entry.name for entry in root.iterdir()} - preexisting - {MANIFEST_FILE})
    tmp = root / f".{MANIFEST_FILE}.tmp"
    tmp.write_text(json.dumps({"entries": sorted(entries)}, indent=1))
    tmp.replace(root / MANIFEST_FILE)


def check_output_dir(output_dir: str | None, overwrite: bool, resuming: bool) -> None:
    """Refuse an `output_dir` where this run could replace a file it did not write, naming the fix."""
    if output_dir is None or not Path(output_dir).is_dir():
        return
    foreign = foreign_entries(output_dir)
    if not overwrite and not resuming:
        if foreign or written_by_toolkit(output_dir):
            raise FileExistsError(
                f"output_dir {output_dir!r} is not empty: choose another output_dir, resume with "
                "--resume_from_checkpoint, or pass --overwrite_output_dir to replace an earlier hf-unlearn run's "
                "outputs there (files it did not write are never replaced)."
            )
        return
    clashing = sorted(name for name in foreign if any(fnmatch.fnmatch(name, p) for p in TOOLKIT_NAMES))
    if clashing:
        raise FileExistsError(
            f"output_dir {output_dir!r} holds {clashing}, which hf-unlearn did not write but a run would replace "
            "(overwrite_output_dir and resume only replace the toolkit's own outputs): move them, or choose "
            "another output_dir."
        )
