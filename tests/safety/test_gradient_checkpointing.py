"""Every method trains under gradient checkpointing or refuses before its first step with the fix named; exact LUR
under checkpointing (eager attention) equals exact LUR without it, in float64."""

import pytest
import torch
from peft import LoraConfig, get_peft_model_state_dict

from tests.resume.run_resumable import OVERRIDES
from tests.testing_utils import make_trainer, tiny_gpt2, token_dataset


SGD_RUN = dict(per_device_train_batch_size=2, max_steps=2, optim="sgd", learning_rate=0.5, max_grad_norm=0.0)


def train(tmp_path, method, checkpointing=None, attention=None, **overrides):
    extra = {}
    if checkpointing is not None:
        extra = {"gradient_checkpointing": True, "gradient_checkpointing_kwargs": {"use_reentrant": checkpointing}}
    model = tiny_gpt2().double()
    if attention is not None:
        model.set_attn_implementation(attention)
    trainer = make_trainer(
        method,
        tmp_path / f"{method}-{checkpointing}-{attention}",
        model=model,
        retain=token_dataset(4, seed=2),
        peft_config=LoraConfig(r=2, target_modules=["c_attn"], init_lora_weights=False),
        **{**SGD_RUN, **OVERRIDES[method], **extra, **overrides},
    )
    trainer.train()
    return trainer, {key: value.clone() for key, value in get_peft_model_state_dict(trainer.model).items()}


@pytest.mark.parametrize("method", ["orthograd", "gru", "lur"])
def test_reentrant_checkpointing_is_refused_before_training(tmp_path, method):
    with pytest.raises(ValueError, match=r"use_reentrant': False"):
        train(tmp_path, method, checkpointing=True)


def test_exact_lur_with_sdpa_attention_is_refused_naming_eager(tmp_path):
    with pytest.raises(ValueError, match="attn_implementation='eager'.*meta_order='first'"):
        train(tmp_path, "lur", checkpointing=False, attention="sdpa")


@pytest.mark.parametrize("meta_order", ["second", "first"])
def test_lur_under_checkpointing_equals_lur_without(tmp_path, meta_order):
    _, plain = train(tmp_path, "lur", attention="eager", meta_order=meta_order)
    trainer, checkpointed = train(tmp_path, "lur", checkpointing=False, attention="eager", meta_order=meta_order)
    assert any(getattr(module, "gradient_checkpointing", False) for module in trainer.model.modules())
    assert plain.keys() == checkpointed.keys()
    for key in plain:
        assert plain[key].dtype == torch.float64
        torch.testing.assert_close(checkpointed[key], plain[key], rtol=0, atol=1e-12)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["ga", "graddiff", "npo", "simnpo", "orthograd", "gru"])
@pytest.mark.parametrize("reentrant", [False, True])
def test_every_other_method_trains_under_checkpointing(tmp_path, method, reentrant):
    if reentrant and method in ("orthograd", "gru"):
        pytest.skip("refused above")
    _, plain = train(tmp_path, method)
    _, checkpointed = train(tmp_path, method, checkpointing=reentrant)
    for key in plain:
        torch.testing.assert_close(checkpointed[key], plain[key], rtol=0, atol=1e-12)
