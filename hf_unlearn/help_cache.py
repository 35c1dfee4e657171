"""`hf-unlearn unlearn --help` in a fraction of a second after its first use.

That help lists every `TrainingArguments` field with the preset's effective default, so building it imports
transformers, torch and peft (about 5 s on 2 CPU cores) — the same cost `trl <command> --help` pays. The text is a
pure function of the command line, the preset file, the installed library versions and this package's own files, so
it is kept on disk under a key of exactly those, like the reference models: a stale help can never be shown.
Only the standard library is imported here.
"""

import hashlib
import json
import os
import shutil
import sys
from collections.abc import Callable
from contextlib import redirect_stdout
from importlib import metadata
from io import StringIO
from pathlib import Path


# Libraries whose fields or defaults appear in the help.
HELP_LIBRARIES = ("transformers", "peft", "accelerate", "torch")
PACKAGE_DIR = Path(__file__).resolve().parent


def help_cache_dir() -> Path:
    """`$HF_UNLEARN_CACHE/help` (default `~/.cache/hf_unlearn/help`), next to the reference models."""
    return Path(os.environ.get("HF_UNLEARN_CACHE", Path.home() / ".cache" / "hf_unlearn")) / "help"


def package_fingerprint() -> list[tuple[str, int, int]]:
    """(file, size, mtime in ns) of every source and preset file of hf_unlearn: any edit changes the key."""
    files = sorted(p for suffix in ("*.py", "*.yaml") for p in PACKAGE_DIR.rglob(suffix))
    return [(str(p.relative_to(PACKAGE_DIR)), p.stat().st_size, p.stat().st_mtime_ns) for p in files]


def help_key(recipe: str, argv: list[str]) -> str:
    """Hash of everything the help text depends on: recipe, arguments, `--config` file, versions, package files."""
    versions = {}
    for name in HELP_LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    config_text = None
    for flag, value in zip(argv, argv[1:], strict=False):
        if flag == "--config" and Path(value).is_file():
            config_text = Path(value).read_text()
    for arg in argv:
        if arg.startswith("--config=") and Path(arg.split("=", 1)[1]).is_file():
            config_text = Path(arg.split("=", 1)[1]).read_text()
    payload = {
        "recipe": recipe,
        "argv": argv,
        "program": Path(sys.argv[0]).name,  # the usage line names the program
        "config": config_text,
        "versions": versions,
        "package": package_fingerprint(),
        "columns": shutil.get_terminal_size().columns,  # argparse wraps to the terminal's width
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def cached_help(recipe: str, argv: list[str], build: Callable[[], None]) -> str:
    """The help text for `argv`: read from the cache, else produced by `build()` (which prints it to stdout and
    raises `SystemExit(0)`, as argparse's `--help` does) and stored. A failing build stores nothing."""
    path = help_cache_dir() / f"{recipe}-{help_key(recipe, argv)}.txt"
    if path.is_file():
        return path.read_text()
    buffer = StringIO()
    try:
        with redirect_stdout(buffer):
            build()
    except SystemExit as stop:
        if stop.code not in (0, None):
            sys.stdout.write(buffer.getvalue())
            raise
    text = buffer.getvalue()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(f".{os.getpid()}.tmp")
        partial.write_text(text)
        partial.replace(path)  # atomic: a concurrent reader sees the whole text or none
    except OSError:
        pass  # a read-only cache only costs the next call its speed
    return text
