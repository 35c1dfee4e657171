"""A run killed with SIGKILL (after a checkpoint, or while writing one) and resumed ends with exactly the adapter of
an uninterrupted run: real subprocesses, not calls into internals."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.testing_utils import accelerate_launch, launcher_env


SCRIPT = Path(__file__).with_name("run_resumable.py")
ALL_METHODS = ["ga", "graddiff", "npo", "simnpo", "orthograd", "gru", "lur", "lur_fresh"]


def run(output_root: Path, methods: list[str], *flags: str) -> subprocess.CompletedProcess:
    command = [sys.executable, str(SCRIPT), str(output_root), "--methods", *methods, *flags]
    return subprocess.run(command, env=launcher_env(), capture_output=True, text=True, timeout=900)


def max_adapter_difference(a: Path, b: Path) -> float:
    left, right = load_file(str(a / "adapter_model.safetensors")), load_file(str(b / "adapter_model.safetensors"))
    assert left.keys() == right.keys() and left
    return max(float((left[key] - right[key]).abs().max()) for key in left)


def kill_then_resume(tmp_path: Path, methods: list[str], kill_flag: str, kill_step: str) -> dict[str, Path]:
    for method in methods:  # each killed run ends its process
        killed = run(tmp_path / "crashed", [method], kill_flag, kill_step)
        assert killed.returncode == -9, killed.stderr[-3000:]
        assert not (tmp_path / "crashed" / method / "adapter_model.safetensors").exists()
    resumed = run(tmp_path / "crashed", methods, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    return {method: tmp_path / "crashed" / method for method in methods}


@pytest.mark.parametrize("run_name", ["lur_fresh"])
def test_resume_in_process_matches_uninterrupted_run(tmp_path, run_name):
    """Fast case of the contract: resuming from checkpoint-4 of a finished run (into a new output_dir) ends with the
    same adapter; checkpoint-4 sits mid-pass of the retain stream (and of LUR's fresh forget stream) and mid-epoch of
    the forget stream. LUR drawing a fresh forget batch (a third stream) here; every method with its defaults is
    resumed the same way in tests/methods/test_every_method.py."""
    from tests.resume.run_resumable import train

    train(run_name, tmp_path / "full")
    train(run_name, tmp_path / "resumed", resume=str(tmp_path / "full" / "checkpoint-4"))
    assert max_adapter_difference(tmp_path / "full", tmp_path / "resumed") == 0.0
    assert sorted(p.name for p in (tmp_path / "resumed").glob("checkpoint-*")) == ["checkpoint-10", "checkpoint-8"]


@pytest.mark.slow
def test_kill_while_saving_then_resume_matches_uninterrupted_run(tmp_path):
    """Killed (a real subprocess, SIGKILL) while writing checkpoint-8: the torn save is ignored, resume starts at
    checkpoint-4, replays the retain stream mid-pass and ends bit-identical to an uninterrupted run. The resumed and
    uninterrupted runs are in this process (one subprocess start instead of three keeps the test fast)."""
    from tests.resume.run_resumable import train

    killed = run(tmp_path / "crashed", ["graddiff"], "--kill_while_saving", "8")
    assert killed.returncode == -9, killed.stderr[-3000:]
    crashed = tmp_path / "crashed" / "graddiff"
    assert (crashed / "checkpoint-4" / "trainer_state.json").is_file()
    assert not (crashed / "checkpoint-8").exists() and (crashed / ".tmp-checkpoint-8").is_dir()
    train("graddiff", crashed, resume=True)
    train("graddiff", tmp_path / "full")
    assert max_adapter_difference(tmp_path / "full", crashed) == 0.0
    assert not (crashed / ".tmp-checkpoint-8").exists() and (crashed / "checkpoint-8" / "trainer_state.json").is_file()


@pytest.mark.slow
def test_kill_after_save_then_resume_in_subprocesses(tmp_path):
    """The same with every run a subprocess of its own."""
    full = run(tmp_path / "full", ["graddiff"])
    assert full.returncode == 0, full.stderr[-3000:]
    crashed = kill_then_resume(tmp_path, ["graddiff"], "--kill_after_save", "4")
    assert max_adapter_difference(tmp_path / "full" / "graddiff", crashed["graddiff"]) == 0.0


@pytest.mark.slow
def test_every_method_resumes_to_the_uninterrupted_adapter(tmp_path):
    full = run(tmp_path / "full", ALL_METHODS)
    assert full.returncode == 0, full.stderr[-3000:]
    crashed = kill_then_resume(tmp_path, ALL_METHODS, "--kill_after_save", "4")
    gaps = {method: max_adapter_difference(tmp_path / "full" / method, folder) for method, folder in crashed.items()}
    assert gaps == dict.fromkeys(ALL_METHODS, 0.0), gaps


@pytest.mark.slow
def test_without_retain_stream_restore_the_resumed_run_differs(tmp_path):
    """The check above can fail: a resumed run whose checkpoint lost the retain position does not match."""
    full = run(tmp_path / "full", ["graddiff"])
    killed = run(tmp_path / "crashed", ["graddiff"], "--kill_after_save", "4")
    assert full.returncode == 0 and killed.returncode == -9
    (tmp_path / "crashed" / "graddiff" / "checkpoint-4" / "hf_unlearn_streams_0.pt").unlink()
    resumed = run(tmp_path / "crashed", ["graddiff"], "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "retain stream restarts" in resumed.stderr
    assert max_adapter_difference(tmp_path / "full" / "graddiff", tmp_path / "crashed" / "graddiff") > 1e-4


def test_stream_state_replays_to_the_same_batches():
    """In-process: a CyclingStream restored from its state gives the batches the original gives next."""
    from torch.utils.data import DataLoader, RandomSampler

    from hf_unlearn.data.streams import CyclingStream

    def make():
        generator = torch.Generator().manual_seed(0)
        return DataLoader(list(range(7)), batch_size=3, sampler=RandomSampler(range(7), generator=generator))

    original = CyclingStream(make)
    for _ in range(4):  # into the second pass
        original.next()
    restored = CyclingStream(make)
    restored.load_state_dict(original.state_dict())
    assert [original.next().tolist() for _ in range(6)] == [restored.next().tolist() for _ in range(6)]


def launch(config: str, output_root: Path, methods: list[str], *flags: str) -> subprocess.CompletedProcess:
    command = accelerate_launch(config, str(SCRIPT), str(output_root), "--methods", *methods, *flags, port=29561)
    return subprocess.run(command, env=launcher_env(), capture_output=True, text=True, timeout=1200)


@pytest.mark.slow
@pytest.mark.distributed
@pytest.mark.parametrize(
    ("config", "methods"), [("cpu_ddp", ["graddiff", "orthograd", "lur"]), ("cpu_zero3", ["graddiff", "lur"])]
)
def test_two_process_run_killed_after_a_checkpoint_resumes_to_the_same_adapter(tmp_path, config, methods):
    """Under DDP and ZeRO-3 each process saves and restores its own retain-stream position."""
    full = launch(config, tmp_path / "full", methods)
    assert full.returncode == 0, full.stderr[-3000:]
    for method in methods:
        killed = launch(config, tmp_path / "crashed", [method], "--kill_after_save", "4")
        assert killed.returncode != 0, killed.stderr[-3000:]
        checkpoint = tmp_path / "crashed" / method / "checkpoint-4"
        assert {p.name for p in checkpoint.glob("hf_unlearn_streams_*.pt")} == {
            "hf_unlearn_streams_0.pt",
            "hf_unlearn_streams_1.pt",
        }
    resumed = launch(config, tmp_path / "crashed", methods, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    gaps = {m: max_adapter_difference(tmp_path / "full" / m, tmp_path / "crashed" / m) for m in methods}
    assert gaps == dict.fromkeys(methods, 0.0), gaps
