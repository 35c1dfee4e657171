"""SalUn and SCRUB on a causal LM (the sequence forms), and a ViT classifier through the vmap path."""

import pytest
import torch
from transformers import ViTConfig, ViTForImageClassification

from hf_unlearn.losses import model_per_example_loss

from ..testing_utils import (
    NUM_LABELS,
    classifier_trainer_args,
    collate,
    make_classifier_trainer,
    make_trainer,
    token_dataset,
)


def test_salun_on_sequences_is_masked_graddiff(tmp_path):
    trainer = make_trainer(
        "salun", tmp_path, retain=token_dataset(4, seed=2), **classifier_trainer_args(tmp_path), retain_weight=0.5,
        saliency_fraction=0.2,
    )  # fmt: skip
    model = trainer.model
    forget = collate(list(token_dataset(4, seed=1)))
    masks = trainer.compute_saliency()
    loss = trainer.compute_loss(model, forget)
    forget_loss = model_per_example_loss(model, forget).mean()
    retain_loss = trainer._metrics["train"]["retain/loss"][-1]
    assert loss.item() == pytest.approx(-forget_loss.item() + 0.5 * retain_loss, rel=1e-5)
    loss.backward()  # the hooks mask the gradient of every non-salient weight
    for name, param in model.named_parameters():
        if param.grad is not None:
            assert not param.grad[~masks[name]].any(), name
    kept = sum(int(m.sum()) for m in masks.values()) / sum(m.numel() for m in masks.values())
    assert 0.2 <= kept < 0.21


def test_scrub_on_sequences_trains(tmp_path):
    trainer = make_trainer(
        "scrub", tmp_path, retain=token_dataset(4, seed=2), **classifier_trainer_args(tmp_path, max_steps=4),
        max_phase_steps=4,
    )  # fmt: skip
    before = [p.detach().clone() for p in trainer.model.parameters()]
    trainer.train()
    keys = set().union(*trainer.state.log_history)
    assert {"scrub/forget_kl", "scrub/retain_kl"} <= keys
    assert any(not torch.equal(a, b) for a, b in zip(before, trainer.model.parameters(), strict=True))


@pytest.mark.parametrize("method", ["orthograd", "lur", "scrub"])
def test_a_vit_classifier_unlearns(tmp_path, method):
    torch.manual_seed(0)
    config = ViTConfig(image_size=8, patch_size=4, num_channels=1, hidden_size=16, num_hidden_layers=1,
                       num_attention_heads=2, intermediate_size=32, num_labels=NUM_LABELS)  # fmt: skip
    model = ViTForImageClassification(config)
    trainer = make_classifier_trainer(method, tmp_path, model)
    before = torch.cat([p.detach().flatten() for p in model.parameters()]).clone()
    trainer.train()
    after = torch.cat([p.detach().flatten() for p in model.parameters()])
    assert torch.isfinite(after).all() and not torch.equal(before, after)
    if method == "orthograd":
        assert trainer.per_sample_backend == "vmap"
