"""The content-keyed, atomically written disk cache shared by every trained reference model.

A reference model (base or exact-retrain, speech or text) is a pure function of its training data, tokenizer,
model config and hyperparameters. Hashing all of them into the directory name means a cache hit can never be a
stale model, writing into a temporary directory renamed into place means a crash never leaves a half-written
model where a reader would take it, and a file lock per entry means concurrent runs train each model once.
"""

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from filelock import FileLock

from hf_unlearn.data.speech_corpus import default_cache_dir


INFO_FILE = "hf_unlearn_reference.json"


def cache_key(payload: dict[str, Any]) -> str:
    """16 hex digits of the SHA-256 of `payload` as sorted JSON."""
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


def config_for_key(config) -> dict[str, Any]:
    """A model config as a dict without the fields that do not change the model (versions, paths, dtype)."""
    values = config.to_dict()
    for name in ("transformers_version", "_name_or_path", "architectures", "dtype", "torch_dtype"):
        values.pop(name, None)
    return values


def cached_model_dir(
    kind: str,
    key_payload: dict[str, Any],
    build: Callable[[Path], dict[str, Any]],
    cache_dir: str | os.PathLike | None = None,
    subdir: str = "reference_models",
) -> str:
    """`<cache>/<subdir>/<kind>-<key>`, calling `build(tmp_dir)` to fill it on a miss.

    `build` saves the model (and tokenizer/processor) into the directory it is given and returns statistics
    for the info file, which is written last: its presence marks a complete entry. A file lock per entry makes
    concurrent processes that miss the same entry build it once: the others wait, then read it. Under the lock,
    temporary folders of the same entry left by a killed build are deleted.
    """
    key = cache_key(key_payload)
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    target = root / subdir / f"{kind}-{key}"
    if (target / INFO_FILE).exists():
        return str(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target.parent / f".{kind}-{key}.lock")):
        if (target / INFO_FILE).exists():  # built by the process that held the lock before us
            return str(target)
        remove_orphans(target.parent, f".tmp-{kind}-{key}-")
        tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".tmp-{kind}-{key}-"))
        try:
            stats = build(tmp)
            info = {"kind": kind, "key": key, **stats, "key_inputs": key_payload}
            (tmp / INFO_FILE).write_text(json.dumps(info, indent=2, default=str))
            if target.exists():  # a folder without the info file: an incomplete entry from before the lock
                shutil.rmtree(target)
            tmp.rename(target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return str(target)


def remove_orphans(folder: Path, prefix: str) -> list[Path]:
    """Delete `folder`'s temporary build folders named `prefix*`. Call only while holding the entry's lock: then no
    live process is writing into any of them (each build holds the lock until its folder is renamed)."""
    orphans = [entry for entry in folder.iterdir() if entry.is_dir() and entry.name.startswith(prefix)]
    for orphan in orphans:
        shutil.rmtree(orphan, ignore_errors=True)
    return orphans
