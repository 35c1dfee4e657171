"""Every method through `accelerate launch --config_file accelerate_configs/<cpu config> recipes/unlearn_whisper.py`
with 2 processes (slow: one recipe run per pair). The equivalence of the maths is in test_equivalence.py; this checks
the user's command end to end: caches built once, every rank loads, trains, evaluates, saves."""

import json
import subprocess

import pytest

from ..testing_utils import REPO, accelerate_launch, launcher_env


pytestmark = [pytest.mark.distributed, pytest.mark.slow]
METHODS = ["ga", "graddiff", "npo", "simnpo", "orthograd", "gru", "lur"]


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("config", ["cpu_ddp", "cpu_zero2", "cpu_zero3"])
def test_recipe_runs_under_two_processes(config, method, tmp_path):
    command = accelerate_launch(config, str(REPO / "recipes" / "unlearn_whisper.py"))
    command += ["--corpus_preset", "tiny", "--method", method, "--max_steps", "2", "--eval_steps", "2"]
    command += ["--per_device_train_batch_size", "2", "--per_device_retain_batch_size", "2"]
    command += ["--output_dir", str(tmp_path / "out")]
    result = subprocess.run(command, env=launcher_env(), capture_output=True, text=True, timeout=900, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-6000:]
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert set(metrics) == {"base", "retrain", "unlearned"}
    assert (tmp_path / "out" / "adapter_model.safetensors").is_file()
