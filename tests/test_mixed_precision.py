"""Every method trains a few bf16 mixed-precision steps: on CUDA where there is one (`gpu` marker), and the same code
path on the CPU (bf16 autocast), so the GPU test's body is exercised in CI too."""

import math

import pytest
import torch
from peft import LoraConfig

from hf_unlearn import METHODS

from .methods.toy_lm import collate, tiny_gpt2, token_dataset


LORA = dict(
    r=4,
    lora_alpha=8,
    target_modules=["c_attn", "c_proj"],
    lora_dropout=0.0,
    init_lora_weights=False,
    fan_in_fan_out=True,
)


def train_bf16_steps(method: str, tmp_path, use_cpu: bool) -> None:
    config_cls, trainer_cls = METHODS[method]
    args = config_cls(
        output_dir=str(tmp_path / "out"),
        per_device_train_batch_size=4,
        max_steps=3,
        learning_rate=1e-3,
        lr_scheduler_type="constant",
        bf16=True,
        use_cpu=use_cpu,
        logging_steps=1,
        report_to="none",
        seed=0,
        disable_tqdm=True,
    )
    trainer = trainer_cls(
        model=tiny_gpt2(),
        args=args,
        forget_dataset=token_dataset(4, seed=1),
        retain_dataset=token_dataset(6, seed=2),
        data_collator=collate,
        peft_config=LoraConfig(**LORA),
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


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("method", sorted(METHODS))
def test_cuda_bf16_steps(method, tmp_path):
    train_bf16_steps(method, tmp_path, use_cpu=False)


@pytest.mark.parametrize("method", sorted(METHODS))
def test_cpu_bf16_autocast_steps(method, tmp_path):
    train_bf16_steps(method, tmp_path, use_cpu=True)
