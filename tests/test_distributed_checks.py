"""Launcher traps are caught before any training: a silent one-process run, or processes that never connected."""

import pytest

from hf_unlearn.distributed import check_process_count


def test_accelerate_cpu_trap_is_named(monkeypatch):
    # `accelerate launch --cpu --num_processes 2` exports MASTER_ADDR but starts one process without WORLD_SIZE.
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("ACCELERATE_USE_CPU", "True")
    with pytest.raises(RuntimeError, match="cpu_ddp.yaml"):
        check_process_count(1)


def test_unconnected_processes_are_refused(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(RuntimeError, match="not connected"):
        check_process_count(1)


def test_plain_and_connected_runs_pass(monkeypatch):
    for key in ("WORLD_SIZE", "MASTER_ADDR", "ACCELERATE_USE_CPU"):
        monkeypatch.delenv(key, raising=False)
    check_process_count(1)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    check_process_count(2)
