"""The content-keyed, atomically written disk cache shared by every trained reference model.

A reference model (base or exact-retrain, speech or text) is a pure function of its training data, tokenizer,
model config and hyperparameters. Hashing all of them into the directory name means a cache hit can never be a
stale model, and writing into a temporary directory renamed into place means a crash or a concurrent process
never leaves a half-written model where a reader would take it.
"""

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

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
    for the info file, which is written last: its presence marks a complete entry.
    """
    key = cache_key(key_payload)
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    target = root / subdir / f"{kind}-{key}"
    if (target / INFO_FILE).exists():
        return str(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".tmp-{kind}-"))
    try:
        stats = build(tmp)
        info = {"kind": kind, "key": key, **stats, "key_inputs": key_payload}
        (tmp / INFO_FILE).write_text(json.dumps(info, indent=2, default=str))
        try:
            tmp.rename(target)
        except OSError:  # another process finished the same model first; keep theirs
            if not (target / INFO_FILE).exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return str(target)
