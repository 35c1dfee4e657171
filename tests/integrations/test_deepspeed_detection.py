"""DeepSpeed's "unable to detect" accelerator warning is avoided at its source, and only where it changes nothing."""

import os
import subprocess
import sys

import pytest
import torch

from hf_unlearn.integrations.deepspeed import declare_cpu_when_no_accelerator

from ..testing_utils import REPO


def test_a_trainer_built_without_an_accelerator_prints_no_deepspeed_detection_warning(tmp_path):
    pytest.importorskip("deepspeed")
    code = (
        "from tests.testing_utils import make_trainer\n"
        f"make_trainer('graddiff', __import__('pathlib').Path({str(tmp_path)!r}))\n"
        "import os, sys; print('DS_ACCELERATOR', os.environ.get('DS_ACCELERATOR'), 'deepspeed' in sys.modules)\n"
    )
    env = {key: value for key, value in os.environ.items() if key != "DS_ACCELERATOR"}
    env["PYTHONPATH"] = str(REPO)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    expected = "cpu" if not torch.cuda.is_available() else "None"
    assert f"DS_ACCELERATOR {expected}" in result.stdout
    assert "unable to detect" not in result.stdout + result.stderr


def test_the_users_choice_and_a_visible_device_are_left_alone(monkeypatch):
    monkeypatch.setenv("DS_ACCELERATOR", "cuda")
    declare_cpu_when_no_accelerator()
    assert os.environ["DS_ACCELERATOR"] == "cuda"

    monkeypatch.delenv("DS_ACCELERATOR")
    monkeypatch.delitem(sys.modules, "deepspeed", raising=False)
    monkeypatch.setattr(torch.accelerator, "is_available", lambda: True)
    declare_cpu_when_no_accelerator()
    assert "DS_ACCELERATOR" not in os.environ

    monkeypatch.setattr(torch.accelerator, "is_available", lambda: False)
    declare_cpu_when_no_accelerator()
    assert os.environ["DS_ACCELERATOR"] == "cpu"
