"""Every method trains a few bf16 mixed-precision steps: on CUDA where there is one (`gpu` marker), and the same code
path on the CPU (bf16 autocast), so the GPU test's body is exercised in CI too."""

import math

import pytest
import torch

from hf_unlearn import METHODS

from .testing_utils import gpt2_lora_config, make_trainer


def train_bf16_steps(method: str, tmp_path, use_cpu: bool) -> None:
    trainer = make_trainer(
        method,
        tmp_path,
        peft_config=gpt2_lora_config(fan_in_fan_out=True),
        learning_rate=1e-3,
        lr_scheduler_type="constant",
        bf16=True,
        use_cpu=use_cpu,
    )
    adapter = {name: p.detach().clone() for name, p in trainer.model.named_parameters() if p.requires_grad}
    frozen = {name: p.detach().clone() for name, p in trainer.model.named_parameters() if not p.requires_grad}
    trainer.train()
    assert trainer.args.device.type == ("cpu" if use_cpu else "cuda")
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert losses and all(math.isfinite(loss) for loss in losses), losses
    after = dict(trainer.model.named_parameters())
    assert all(torch.isfinite(after[name]).all() for name in adapter)
    assert any(not torch.equal(adapter[name], after[name].detach().cpu().to(adapter[name].device)) for name in adapter)
    assert all(torch.equal(frozen[name], after[name].detach()) for name in frozen)  # the base is untouched


@pytest.mark.gpu  # skipped without CUDA (tests/conftest.py)
@pytest.mark.parametrize("method", sorted(METHODS))
def test_cuda_bf16_steps(method, tmp_path):
    train_bf16_steps(method, tmp_path, use_cpu=False)


@pytest.mark.parametrize("method", sorted(METHODS))
def test_cpu_bf16_autocast_steps(method, tmp_path):
    train_bf16_steps(method, tmp_path, use_cpu=True)
