"""Every method's defaults run without blowing up: finite losses, and on the embedded tiny benchmarks no babbling
(WER beyond 1.2) and no retain collapse.

The divergence this guards against (LUR with the unbounded gradient-ascent forget loss at γ = 1: forget WER 5.57 at
step 60 on the speech benchmark) needs tens of steps on the full corpus; these tests are the cheap tripwire, the
benchmark runs (`benchmarks/compare_methods.py`) are the measurement.
"""

import json
import math

import pytest
import torch
from peft import LoraConfig

from hf_unlearn import METHODS

from .methods.toy_lm import collate, tiny_gpt2, token_dataset


LORA = dict(r=4, lora_alpha=8, target_modules=["c_attn", "c_proj"], lora_dropout=0.0, init_lora_weights=False)


def finite_losses(log_history: list[dict]) -> dict[str, float]:
    """Every logged loss-like value (training loss, forget/retain losses, method terms); fails on any non-finite."""
    values = {}
    for entry in log_history:
        for key, value in entry.items():
            if "loss" in key and isinstance(value, (int, float)):
                assert math.isfinite(value), f"step {entry.get('step')}: {key} = {value}"
                values[key] = value
    return values


@pytest.mark.parametrize("method", sorted(METHODS))
def test_defaults_train_a_few_finite_steps_on_a_toy_model(method, tmp_path):
    config_cls, trainer_cls = METHODS[method]
    args = config_cls(
        output_dir=str(tmp_path), per_device_train_batch_size=4, max_steps=3, use_cpu=True, logging_steps=1,
        report_to="none", seed=0, disable_tqdm=True,
    )  # fmt: skip
    trainer = trainer_cls(
        model=tiny_gpt2(),
        args=args,
        forget_dataset=token_dataset(8, seed=1),
        retain_dataset=token_dataset(8, seed=2),
        data_collator=collate,
        peft_config=LoraConfig(**LORA),
    )
    before = {name: p.detach().clone() for name, p in trainer.model.named_parameters() if p.requires_grad}
    trainer.train()
    assert {"loss", "forget/loss"} <= set(finite_losses(trainer.state.log_history))
    moved = max((p.detach() - before[name]).abs().max().item() for name, p in trainer.model.named_parameters()
                if name in before)  # fmt: skip
    assert 0 < moved < 1.0, f"{method}: the adapter moved by {moved:.3g} in 3 default steps"
    assert torch.isfinite(torch.tensor(moved))


@pytest.mark.slow
@pytest.mark.parametrize("benchmark", ["speech", "text"])
@pytest.mark.parametrize("method", sorted(METHODS))
def test_defaults_do_not_blow_up_on_the_tiny_benchmarks(method, benchmark, tmp_path):
    from hf_unlearn.recipes import llm, whisper

    recipe = whisper if benchmark == "speech" else llm
    argv = ["--corpus_preset", "tiny", "--method", method, "--max_steps", "10", "--logging_steps", "1"]
    results = recipe.run([*argv, "--eval_strategy", "no", "--output_dir", str(tmp_path)])
    finite_losses(json.loads((tmp_path / "trainer_state.json").read_text())["log_history"])
    unlearned, base = results["unlearned"], results["base"]
    if benchmark == "speech":
        for split in ("forget", "retain"):
            assert unlearned[split]["wer"] <= 1.2, f"{method}: {split} WER {unlearned[split]['wer']:.3f} (babbling)"
    else:
        retain = unlearned["retain"]["rougeL_recall"]
        assert retain >= 0.5 * base["retain"]["rougeL_recall"], f"{method}: retain ROUGE-L collapsed to {retain:.3f}"
        assert math.isfinite(unlearned["forget"]["model_utility"])
