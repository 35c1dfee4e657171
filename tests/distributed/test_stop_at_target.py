"""`StopAtForgetTarget` under 2 processes (DDP, ZeRO-3) stops at the step and restores the checkpoint one process does.

The run (`train_steps.py`, `graddiff_stop`) evaluates every step and stops at a forget-loss target reached at step 3,
whose closest evaluated checkpoint is step 2's: every rank must see the same gathered metrics, stop together and
restore the same checkpoint, so the saved adapters match one process with twice the batch.
"""

import json
import sys

import pytest
import torch
from safetensors.torch import load_file

from ..testing_utils import accelerate_launch
from .test_equivalence import CONFIGS, EVAL_TOLERANCE, SCRIPT, _run


pytestmark = [pytest.mark.distributed, pytest.mark.slow]
RUN = "graddiff_stop"


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    out = tmp_path_factory.mktemp("stop_one_process")
    _run([sys.executable, str(SCRIPT), str(out), "--per_device_batch_size", "4", "--steps", "4", "--runs", RUN])
    return out


@pytest.mark.parametrize("config", ["cpu_ddp", "cpu_zero3"])
def test_two_processes_stop_and_restore_like_one(one_process, tmp_path, config):
    args = [str(SCRIPT), str(tmp_path), "--per_device_batch_size", "2", "--steps", "4", "--runs", RUN]
    _run(accelerate_launch(config, *args, port=29541 + len(config)))

    expected = json.loads((one_process / RUN / "run_info.json").read_text())
    actual = json.loads((tmp_path / RUN / "run_info.json").read_text())
    assert actual["world_size"] == 2
    # One process: reached at step 3 (of 4), step 2 restored. Two processes: the same.
    assert expected["stop_reached_step"] == expected["global_step"] == 3 and expected["best_step"] == 2
    assert actual["stop_reached_step"] == actual["global_step"] == 3 and actual["best_step"] == 2
    for one, two in zip(expected["stop_history"], actual["stop_history"], strict=True):
        assert one["step"] == two["step"]
        assert two["value"] == pytest.approx(one["value"], rel=EVAL_TOLERANCE[config])
    rtol, atol = CONFIGS[config]
    one_adapter = load_file(one_process / RUN / "adapter_model.safetensors")
    two_adapter = load_file(tmp_path / RUN / "adapter_model.safetensors")
    for name, tensor in one_adapter.items():
        torch.testing.assert_close(two_adapter[name], tensor, rtol=rtol, atol=atol)
