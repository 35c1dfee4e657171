"""OrthoGrad as its authors run it: per-tensor projection, projection in the optimizer's geometry, the KL retain loss
and full-parameter fused capture — each against an explicit float64 reference (per-sample loop + lstsq)."""

import logging

import pytest
import torch
from torch import nn
from transformers import TrainerCallback

from hf_unlearn import OrthoGradConfig

from ..testing_utils import (
    assert_close,
    collate,
    flat_trainable,
    logged,
    loop_per_sample_grads,
    reference_losses,
    tiny_gpt2,
    token_dataset,
)
from .test_orthograd import LR, gpt2_lora, make_trainer


def per_tensor_grads(model, batch, loss_fn=reference_losses) -> dict[str, torch.Tensor]:
    return {n: g.flatten(1) for n, g in loop_per_sample_grads(model, batch, loss_fn=loss_fn).items()}  # [k, P_p]


def project_out(G: torch.Tensor, g: torch.Tensor, metric: torch.Tensor | None = None) -> torch.Tensor:
    """``g − G c`` with ``c`` the least-squares fit in the metric ``diag(metric)`` (identity when None), by an
    explicit lstsq on the rescaled matrix, independent of the library's eigen-solve."""
    root = torch.ones_like(g) if metric is None else metric.sqrt()
    c = torch.linalg.lstsq(G * root[:, None], (g * root)[:, None], driver="gelsd").solution[:, 0]
    return g - G @ c


def flat(grads: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.cat(list(grads.values()), -1)


def untied_gpt2(seed: int, train_positions: bool = False) -> nn.Module:
    """Full fine-tuning whose every trainable layer the fused capture supports: GPT-2 ties wte and lm_head by
    default, and runs its learned position embedding on a batch of 1 broadcast over the batch."""
    model = tiny_gpt2(seed).double()
    model.config.tie_word_embeddings = False
    model.lm_head.weight = nn.Parameter(model.lm_head.weight.detach().clone())
    model.transformer.wpe.requires_grad_(train_positions)
    return model


# ---------------------------------------------------------------------------------------------------- per tensor


@pytest.mark.parametrize("alpha", [0.0, 0.3])
@pytest.mark.parametrize("build", ["lora", "full"])
def test_per_tensor_step_projects_each_tensor_separately(build, alpha, tmp_path):
    model = gpt2_lora(seed=1) if build == "lora" else untied_gpt2(seed=1)
    forget, retain = token_dataset(3, seed=4), token_dataset(4, seed=5)
    G = per_tensor_grads(model, collate(list(retain)))
    g_f = {n: g.mean(0) for n, g in per_tensor_grads(model, collate(list(forget))).items()}
    expected = {n: alpha * G[n].mean(0) - (1 - alpha) * project_out(G[n].T, g_f[n]) for n in G}
    before = flat_trainable(model)
    trainer = make_trainer(model, forget, retain, tmp_path, retain_mix=alpha, projection_granularity="per_tensor")
    assert trainer.per_sample_backend == "fused"
    trainer.train()
    update = flat_trainable(model) - before
    assert_close(update, -LR * flat(expected), what=f"per-tensor step ({build}, alpha={alpha})")
    logs = logged(trainer)
    if alpha == 0.0:
        offset = 0
        for name, g in G.items():  # orthogonal tensor by tensor, not only in total
            part = update[offset : offset + g.shape[1]]
            offset += g.shape[1]
            if part.norm() > 0:
                relative = (g @ part).abs() / (g.norm(dim=1) * part.norm()).clamp_min(1e-300)
                assert relative.max() < 1e-8, f"{name}: {relative.tolist()}"
        assert logs["orthograd/max_retain_cosine"] < 1e-8
    global_model = gpt2_lora(seed=1) if build == "lora" else untied_gpt2(seed=1)
    global_before = flat_trainable(global_model)
    make_trainer(global_model, forget, retain, tmp_path / "g", retain_mix=alpha).train()
    difference = (flat_trainable(global_model) - global_before - update).norm() / update.norm()
    assert difference > 1e-3, "per-tensor and global projections coincide: the test cannot tell them apart"
    assert logs["orthograd/rank"] > len(retain)  # up to #tensors × k directions removed, not k


# ---------------------------------------------------------------------------------------------------- preconditioned


def max_relative_dot(update: torch.Tensor, G: torch.Tensor) -> float:
    return ((G @ update).abs() / (G.norm(dim=1) * update.norm())).max().item()


@pytest.mark.parametrize("granularity", ["global", "per_tensor"])
def test_preconditioned_step_is_orthogonal_to_every_retain_gradient(granularity, tmp_path):
    """One SGD step of ``−η·D·d``, D = Adam's 1/(√v̂+ε) after its first update: v̂ = (1/N) Σ_i g_i², the mean
    squared per-sample gradient over the N = m + k forget and retain samples."""
    model = gpt2_lora(seed=2)
    forget, retain = token_dataset(3, seed=6), token_dataset(4, seed=7)
    G = per_tensor_grads(model, collate(list(retain)))
    F = per_tensor_grads(model, collate(list(forget)))
    g_f = {n: g.mean(0) for n, g in F.items()}
    eps = 1e-8
    D = {n: 1.0 / (torch.cat([F[n], G[n]]).square().mean(0).sqrt() + eps) for n in G}
    if granularity == "global":
        d = -project_out(flat(G).T, flat(g_f), flat(D))
    else:
        d = -flat({n: project_out(G[n].T, g_f[n], D[n]) for n in G})
    expected_step = -LR * flat(D) * d
    before = flat_trainable(model)
    trainer = make_trainer(
        model,
        forget,
        retain,
        tmp_path,
        projection_space="preconditioned",
        projection_granularity=granularity,
        adam_epsilon=eps,
    )
    trainer.train()
    update = flat_trainable(model) - before
    assert_close(update, expected_step, rtol=1e-7, what=f"preconditioned step ({granularity})")
    assert max_relative_dot(update, flat(G)) < 1e-8
    assert logged(trainer)["orthograd/max_retain_cosine"] < 1e-8


class Snapshots(TrainerCallback):
    def __init__(self):
        self.states = []

    def on_step_begin(self, args, state, control, model=None, **kwargs):
        self.states.append({n: p.detach().clone() for n, p in model.named_parameters()})


def test_preconditioned_orthogonality_holds_after_the_first_step_and_gradient_space_fails_it(tmp_path):
    """Step 2 (v̂ now mixes two steps) is orthogonal to step 2's retain gradients; the same model trained by AdamW
    (β1 = 0) in gradient space is not — the reason the preconditioned space exists."""
    forget, retain = token_dataset(3, seed=8), token_dataset(4, seed=9)
    results = {}
    for space, optim in (("preconditioned", "sgd"), ("gradient", "adamw_torch")):
        model = gpt2_lora(seed=3)
        snapshots = Snapshots()
        trainer = make_trainer(
            model,
            forget,
            retain,
            tmp_path / space,
            projection_space=space,
            optim=optim,
            max_steps=2,
            adam_beta1=0.0,
            learning_rate=1e-3,
        )
        trainer.add_callback(snapshots)
        trainer.train()
        worst = 0.0
        for step, start in enumerate(snapshots.states):
            end = snapshots.states[step + 1] if step + 1 < len(snapshots.states) else dict(model.named_parameters())
            names = [n for n, p in model.named_parameters() if p.requires_grad]
            update = torch.cat([(end[n] - start[n]).detach().flatten() for n in names])
            with torch.no_grad():
                current = {n: p.detach().clone() for n, p in model.named_parameters()}
                for n, p in model.named_parameters():
                    p.copy_(start[n])
            G = flat(per_tensor_grads(model, collate(list(retain))))
            with torch.no_grad():
                for n, p in model.named_parameters():
                    p.copy_(current[n])
            worst = max(worst, max_relative_dot(update, G))
        results[space] = worst
    assert results["preconditioned"] < 1e-8, results
    assert results["gradient"] > 1e-3, results


def test_preconditioned_space_needs_sgd(tmp_path):
    with pytest.raises(ValueError, match="optim='sgd'"):
        OrthoGradConfig(output_dir=str(tmp_path), use_cpu=True, projection_space="preconditioned")
    with pytest.raises(ValueError, match="max_grad_norm=0"):
        OrthoGradConfig(
            output_dir=str(tmp_path), use_cpu=True, projection_space="preconditioned", optim="sgd", max_grad_norm=1.0
        )
    with pytest.raises(ValueError, match="projection_granularity"):
        OrthoGradConfig(output_dir=str(tmp_path), use_cpu=True, projection_granularity="per_layer")
    with pytest.raises(ValueError, match="retain_loss"):
        OrthoGradConfig(output_dir=str(tmp_path), use_cpu=True, retain_loss="mse")


# ---------------------------------------------------------------------------------------------------- KL retain loss


def kl_losses(model, batch):
    """Mean token KL(π_ref ‖ π_θ) over each example's targets; π_ref = the model with its adapter disabled."""
    labels = batch["labels"][:, 1:]
    log_probs = torch.log_softmax(model(input_ids=batch["input_ids"]).logits[:, :-1], -1)
    with torch.no_grad(), model.disable_adapter():
        ref = torch.log_softmax(model(input_ids=batch["input_ids"]).logits[:, :-1], -1)
    token_kl = (ref.exp() * (ref - log_probs)).sum(-1)
    mask = labels != -100
    return (token_kl * mask).sum(1) / mask.sum(1)


@pytest.mark.parametrize("mode", ["fused", "vmap"])
def test_kl_retain_loss_projects_against_per_sample_kl_gradients(mode, tmp_path):
    model = gpt2_lora(seed=4)
    forget, retain = token_dataset(3, seed=10), token_dataset(4, seed=11)
    alpha = 0.3
    G = flat(per_tensor_grads(model, collate(list(retain)), loss_fn=kl_losses))
    assert G.norm() > 0
    g_f = flat({n: g.mean(0) for n, g in per_tensor_grads(model, collate(list(forget))).items()})
    expected = alpha * G.mean(0) - (1 - alpha) * project_out(G.T, g_f)
    kl_before = kl_losses(model, collate(list(retain))).mean().item()
    before = flat_trainable(model)
    trainer = make_trainer(
        model, forget, retain, tmp_path, retain_loss="kl", retain_mix=alpha, per_sample_gradients=mode
    )
    trainer.train()
    update = flat_trainable(model) - before
    assert_close(update, -LR * expected, what=f"KL retain step ({mode})")
    logs = logged(trainer)
    assert logs["retain/kl"] == pytest.approx(kl_before, rel=1e-6)
    assert logs["retain/loss"] == pytest.approx(
        reference_losses(gpt2_lora(seed=4), collate(list(retain))).mean().item(), rel=1e-6
    )


def test_kl_retain_loss_uses_a_frozen_copy_without_adapter(tmp_path):
    model = untied_gpt2(seed=5)
    forget, retain = token_dataset(2, seed=12), token_dataset(3, seed=13)
    trainer = make_trainer(model, forget, retain, tmp_path, retain_loss="kl", max_steps=2)
    trainer.train()
    logs = trainer.state.log_history
    kls = [entry["retain/kl"] for entry in logs if "retain/kl" in entry]
    assert kls[0] == pytest.approx(0.0, abs=1e-12)  # the policy starts as the reference
    assert kls[1] > 0  # and the frozen copy did not move with it


# ---------------------------------------------------------------------------------------------------- full fine-tuning


def test_full_fine_tuning_is_fused_when_every_layer_is_supported(tmp_path):
    model = untied_gpt2(seed=6)
    forget, retain = token_dataset(2, seed=14), token_dataset(3, seed=15)
    G = flat(per_tensor_grads(model, collate(list(retain))))
    g_f = flat({n: g.mean(0) for n, g in per_tensor_grads(model, collate(list(forget))).items()})
    expected = -project_out(G.T, g_f)
    before = flat_trainable(model)
    trainer = make_trainer(model, forget, retain, tmp_path)
    assert trainer.per_sample_backend == "fused"
    trainer.train()
    assert_close(flat_trainable(model) - before, -LR * expected, what="full-parameter fused step")


def test_unsupported_layer_falls_back_to_vmap_with_one_line_naming_it(tmp_path):
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logger = logging.getLogger("hf_unlearn.methods.orthograd")
    logger.addHandler(handler)
    try:
        trainer = make_trainer(
            tiny_gpt2(seed=7).double(), token_dataset(2, seed=1), token_dataset(2, seed=2), tmp_path
        )
    finally:
        logger.removeHandler(handler)
    assert trainer.per_sample_backend == "vmap"
    lines = [r.getMessage() for r in records if "vmap" in r.getMessage()]
    assert len(lines) == 1 and "tied weights" in lines[0] and "transformer.wte" in lines[0], lines
    records.clear()
    logger.addHandler(handler)
    try:  # found only when the step runs: the position embedding is called on a batch of 1 and broadcast
        model = untied_gpt2(seed=7, train_positions=True)
        trainer = make_trainer(model, token_dataset(2, seed=1), token_dataset(2, seed=2), tmp_path / "p")
        assert trainer.per_sample_backend == "fused"
        before = flat_trainable(model)
        trainer.train()
    finally:
        logger.removeHandler(handler)
    assert trainer.per_sample_backend == "vmap"
    assert flat_trainable(model).sub(before).norm() > 0
    lines = [r.getMessage() for r in records if "vmap" in r.getMessage()]
    assert len(lines) == 1 and "transformer.wpe" in lines[0] and "broadcast" in lines[0], lines
    with pytest.raises(ValueError, match="VmapPerSampleGradients"):
        make_trainer(
            tiny_gpt2(seed=7).double(),
            token_dataset(2, seed=1),
            token_dataset(2, seed=2),
            tmp_path,
            per_sample_gradients="fused",
        )


def test_preconditioned_full_fine_tuning_stays_bounded_where_only_retain_samples_move(tmp_path):
    """Token embeddings of words only the retain batch contains have a zero forget gradient: a preconditioner built
    from the batch gradient would put D = 1/ε there; the per-sample second moment keeps the step Adam-sized."""
    model = untied_gpt2(seed=8)
    forget, retain = token_dataset(2, seed=16), token_dataset(3, seed=17)
    forget_ids = {t for row in forget["input_ids"] for t in row}
    retain_only = sorted({t for row in retain["input_ids"] for t in row} - forget_ids)
    assert retain_only, "the case needs tokens that only the retain batch contains"
    G = flat(per_tensor_grads(model, collate(list(retain))))
    before = flat_trainable(model)
    trainer = make_trainer(model, forget, retain, tmp_path, projection_space="preconditioned")
    assert trainer.per_sample_backend == "fused"
    trainer.train()
    update = flat_trainable(model) - before
    assert update.abs().max() <= 10 * LR, f"step of {update.abs().max():.3g} with lr {LR}"
    assert max_relative_dot(update, G) < 1e-8
