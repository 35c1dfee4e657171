"""Concurrent runs that miss the same cached reference model train it once; a killed build's leftovers go."""

import multiprocessing
import time
from pathlib import Path

from hf_unlearn.models.cache import cache_key, cached_model_dir


def build_once(cache: Path, log: Path, results) -> None:
    """One process's run: miss the cache, build (slowly), return the entry's path."""

    def build(folder: Path) -> dict:
        with log.open("a") as f:
            f.write("trained\n")
        time.sleep(2)  # long enough for the other process to arrive while this one builds
        (folder / "model.safetensors").write_text("weights")
        return {"steps": 1}

    results.put(cached_model_dir("base", {"data": "same"}, build, cache_dir=cache))


def test_two_concurrent_builds_train_once(tmp_path):
    """Two processes (forked, so no second import of the package) miss the same entry at the same time."""
    context = multiprocessing.get_context("fork")
    results = context.Queue()
    log = tmp_path / "builds.log"
    processes = [context.Process(target=build_once, args=(tmp_path / "cache", log, results)) for _ in range(2)]
    for process in processes:
        process.start()
    paths = [results.get(timeout=120) for _ in processes]
    for process in processes:
        process.join(timeout=60)
    assert [process.exitcode for process in processes] == [0, 0]
    assert paths[0] == paths[1] and (Path(paths[0]) / "model.safetensors").read_text() == "weights"
    assert log.read_text() == "trained\n"  # one training; the other process waited and read it


def test_orphan_of_a_killed_build_is_removed(tmp_path):
    entries = tmp_path / "reference_models"
    key = cache_key({"data": "x"})
    orphan = entries / f".tmp-base-{key}-abc123"
    orphan.mkdir(parents=True)
    (orphan / "half.bin").write_text("torn")
    other_entry = entries / ".tmp-base-0000000000000000-def456"  # another entry's build, maybe alive: kept
    other_entry.mkdir()
    calls = []

    def build(folder):
        calls.append(folder)
        return {}

    path = cached_model_dir("base", {"data": "x"}, build, cache_dir=tmp_path)
    assert not orphan.exists() and other_entry.is_dir() and len(calls) == 1
    assert cached_model_dir("base", {"data": "x"}, build, cache_dir=tmp_path) == path and len(calls) == 1
