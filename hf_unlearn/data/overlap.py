"""Examples that are in both the forget and the retain set.

An example in both is trained up and down at once: the run "works" and its forget metrics mean nothing. Rows are
compared by id (an `id` column in both sets) and by content: a hash of every column that is not an identifier or a
grouping label (speaker, author), so the same clip or QA pair filed under two speakers still counts.
"""

import hashlib
import re
from typing import Any

import numpy as np
from datasets import Dataset


# Columns that name or group an example rather than hold it.
NOT_CONTENT = re.compile(r"^(id|idx|index|speaker|speaker_id|author|author_id|split|source)$|_(id|idx)$")


def content_columns(forget: Dataset, retain: Dataset) -> list[str]:
    """The columns both sets have that hold an example's content (audio, features, text, tokens, labels)."""
    common = [name for name in forget.column_names if name in set(retain.column_names)]
    return [name for name in common if not NOT_CONTENT.search(name)]


def row_digest(row: dict[str, Any], columns: list[str]) -> str:
    """SHA-256 of `row`'s values in `columns` (arrays by dtype, shape and bytes; nested dicts and lists walked)."""
    digest = hashlib.sha256()
    for name in columns:
        digest.update(name.encode())
        _update(digest, row[name])
    return digest.hexdigest()


def find_overlap(forget: Dataset, retain: Dataset) -> tuple[str, list[tuple[int, int]]]:
    """`(what matched, [(forget row, retain row), ...])`: shared ids if both sets have an `id` column, else (or when
    no id is shared) identical content."""
    if "id" in forget.column_names and "id" in retain.column_names:
        retain_ids = {value: j for j, value in enumerate(retain["id"])}
        pairs = [(i, retain_ids[value]) for i, value in enumerate(forget["id"]) if value in retain_ids]
        if pairs:
            return "id", pairs
    columns = content_columns(forget, retain)
    if not columns:
        return "content", []
    forget_rows, retain_rows = forget.select_columns(columns), retain.select_columns(columns)
    retain_digests = {row_digest(row, columns): j for j, row in enumerate(retain_rows.with_format("numpy"))}
    pairs = []
    for i, row in enumerate(forget_rows.with_format("numpy")):
        j = retain_digests.get(row_digest(row, columns))
        if j is not None:
            pairs.append((i, j))
    return f"content of {', '.join(columns)}", pairs


def check_no_overlap(forget: Dataset, retain: Dataset | None, allow_overlap: bool) -> None:
    """Refuse forget and retain sets that share examples, unless `allow_overlap`."""
    if retain is None or allow_overlap:
        return
    what, pairs = find_overlap(forget, retain)
    if pairs:
        shown = ", ".join(f"forget[{i}] = retain[{j}]" for i, j in pairs[:3])
        raise ValueError(
            f"{len(pairs)} of {len(forget)} forget examples are also in the retain set (same {what}; {shown}): "
            "remove them from the retain set, or pass allow_overlap=True (--allow_overlap true) to train anyway."
        )


def _update(digest: "hashlib._Hash", value: Any) -> None:
    if isinstance(value, np.ndarray):
        if value.dtype == object:
            digest.update(f"obj{value.shape}".encode())
            for item in value.ravel():
                _update(digest, item)
        else:
            digest.update(f"{value.dtype}{value.shape}".encode())
            digest.update(np.ascontiguousarray(value).tobytes())
    elif isinstance(value, dict):
        for key in sorted(value):
            digest.update(str(key).encode())
            _update(digest, value[key])
    elif isinstance(value, list | tuple):
        digest.update(f"list{len(value)}".encode())
        for item in value:
            _update(digest, item)
    else:
        digest.update(repr(value).encode())
