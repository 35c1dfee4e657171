"""OrthoGradTrainer (and its rank-1 ablation) against references that share no code with the library.

Every exactness claim runs in float64 with SGD (no momentum, no weight decay, no clipping, constant learning rate), so
one `train()` step moves the trainable parameters by exactly ``−η·d``. The reference ``d`` comes from a loop of
per-sample backward passes (`tests/testing_utils.py`) and an explicit `torch.linalg.lstsq` projection of the
flattened gradients.
"""

import gc

import pytest
import torch
import torch.nn.functional as F
from datasets import Dataset
from peft import get_peft_model
from torch import nn
from transformers import TrainerCallback

from hf_unlearn import METHODS, GRUConfig, GRUTrainer, OrthoGradConfig, OrthoGradTrainer
from hf_unlearn.methods.orthograd import concatenate_batches

from ..testing_utils import (
    EXACT_SGD,
    assert_close,
    collate,
    collate_speech,
    flat_trainable,
    flatten,
    gpt2_lora_config,
    logged,
    loop_per_sample_grads,
    reference_losses,
    speech_dataset,
    tiny_gpt2,
    tiny_whisper_lora,
    token_dataset,
)
from ..testing_utils import make_trainer as shared_make_trainer


LR = 0.05
DIAGNOSTICS = ("rank", "removed_fraction", "max_retain_cosine", "forget_retain_cosine", "residual_norm")


def gpt2_lora(seed: int = 0, dtype=torch.float64) -> nn.Module:
    return get_peft_model(tiny_gpt2(seed), gpt2_lora_config(r=2)).to(dtype)


KINDS = {
    # model, forget set, retain set, collator
    "gpt2": lambda: (gpt2_lora(), token_dataset(3, seed=1), token_dataset(4, seed=2), collate),
    "whisper": lambda: (
        tiny_whisper_lora(2, seed=3),
        speech_dataset(3, seed=1, max_len=6),
        speech_dataset(4, seed=2, max_len=6),
        collate_speech,
    ),
}


def make_trainer(model, forget, retain, tmp_path, collator=collate, method="orthograd", trainer_cls=None, **overrides):
    """One exact SGD step of `method` on the whole forget and retain sets (α = 0 unless told)."""
    return shared_make_trainer(
        method,
        tmp_path,
        model=model,
        forget=forget,
        retain=retain,
        collator=collator,
        trainer_cls=trainer_cls,
        **{
            **EXACT_SGD,
            "per_device_train_batch_size": len(forget),
            "per_device_retain_batch_size": len(retain),
            "max_steps": 1,
            "learning_rate": LR,
            "retain_mix": 0.0,
            **overrides,
        },
    )


def explicit_direction(model, forget_batch, retain_batch, alpha, rank_one=False, forget_loss_fn=reference_losses):
    """``d = α·ḡ_r − (1 − α)·P⊥ g_f`` from materialised per-sample gradients; also returns G [P, k]."""
    G = flatten(loop_per_sample_grads(model, retain_batch)).T  # [P, k]
    g_f = flatten(loop_per_sample_grads(model, forget_batch, loss_fn=forget_loss_fn)).mean(0)  # [P]
    mean = G.mean(1)
    if rank_one:
        conflict = g_f @ mean
        projected = g_f - (conflict / (mean @ mean)) * mean if conflict > 0 else g_f
    else:
        c = torch.linalg.lstsq(G, g_f[:, None], driver="gelsd").solution[:, 0]
        projected = g_f - G @ c
    return alpha * mean - (1 - alpha) * projected, G


def assert_orthogonal(update: torch.Tensor, G: torch.Tensor) -> None:
    relative = (G.T @ update).abs() / (G.norm(dim=0) * update.norm())
    assert relative.max() < 1e-8, f"update not orthogonal to retain gradients: relative <d, g_i> = {relative.tolist()}"


# ---------------------------------------------------------------------------------------------------- exact steps


@pytest.mark.parametrize("alpha", [0.0, 0.3])
@pytest.mark.parametrize("kind", ["gpt2", "whisper"])
def test_one_sgd_step_is_the_projected_forget_step(kind, alpha, tmp_path):
    model, forget, retain, collator = KINDS[kind]()
    expected, G = explicit_direction(model, collator(list(forget)), collator(list(retain)), alpha)
    before = flat_trainable(model)
    trainer = make_trainer(model, forget, retain, tmp_path, collator=collator, retain_mix=alpha)
    assert trainer.per_sample_backend == "fused"
    trainer.train()
    update = flat_trainable(model) - before
    assert_close(update, -LR * expected, what=f"{kind} step, alpha={alpha}")
    logs = logged(trainer)
    for key in DIAGNOSTICS:
        assert f"orthograd/{key}" in logs
    assert {"forget/loss", "retain/loss", "loss"} <= logs.keys()
    assert logs["orthograd/rank"] == len(retain)
    if alpha == 0.0:
        assert_orthogonal(update, G)
        assert logs["orthograd/max_retain_cosine"] < 1e-8
    else:
        assert logs["orthograd/max_retain_cosine"] > 1e-3  # α > 0 descends on the retain loss by design


def test_rank_deficient_retain_batch_with_duplicates(tmp_path):
    model = gpt2_lora(seed=4)
    forget = token_dataset(2, seed=5)
    unique = token_dataset(3, seed=6)
    retain = Dataset.from_list(list(unique) + [unique[0], unique[2]])  # k = 5, rank 3
    expected, G = explicit_direction(model, collate(list(forget)), collate(list(retain)), 0.0)
    before = flat_trainable(model)
    trainer = make_trainer(model, forget, retain, tmp_path)
    trainer.train()
    update = flat_trainable(model) - before
    assert logged(trainer)["orthograd/rank"] == 3
    assert_close(update, -LR * expected, what="rank-deficient step")
    assert_orthogonal(update, G)


@pytest.mark.parametrize("seed, conflict", [(1, False), (3, True)])
def test_rank_one_ablation_matches_its_formula(seed, conflict, tmp_path):
    """Seed 3's forget and retain gradients conflict (projection applied, rank 1); seed 1's do not (rank 0)."""
    model, forget, retain = (
        gpt2_lora(seed=seed),
        token_dataset(3, seed=10 * seed),
        token_dataset(4, seed=10 * seed + 1),
    )
    forget_batch, retain_batch = collate(list(forget)), collate(list(retain))
    expected, G = explicit_direction(model, forget_batch, retain_batch, 0.2, rank_one=True)
    before = flat_trainable(model)
    trainer = make_trainer(model, forget, retain, tmp_path, method="gru", retain_mix=0.2)
    trainer.train()
    assert_close(flat_trainable(model) - before, -LR * expected, what="rank-1 step")
    logs = logged(trainer)
    assert logs["orthograd/rank"] == int(conflict)
    assert (logs["orthograd/forget_retain_cosine"] > 0) == conflict


class RecordingTrainer(OrthoGradTrainer):
    """Keeps each micro-step's forget and retain batch, to rebuild the documented accumulation by hand."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.forget_batches, self.retain_batches = [], []

    def training_step(self, model, inputs, num_items_in_batch=None):
        self.forget_batches.append({k: v.clone() for k, v in inputs.items()})
        return super().training_step(model, inputs, num_items_in_batch)

    def next_retain_batch(self):
        batch = super().next_retain_batch()
        self.retain_batches.append({k: v.clone() for k, v in batch.items()})
        return batch


def test_gradient_accumulation_averages_per_micro_step_projections(tmp_path):
    """Each micro-step projects its forget batch against its own retain batch; the step is their mean direction."""
    model = gpt2_lora(seed=5)
    forget, retain = token_dataset(4, seed=7), token_dataset(6, seed=8)
    before = flat_trainable(model)
    trainer = make_trainer(
        model,
        forget,
        retain,
        tmp_path,
        trainer_cls=RecordingTrainer,
        per_device_train_batch_size=2,
        per_device_retain_batch_size=3,
        gradient_accumulation_steps=2,
    )
    reference_model = gpt2_lora(seed=5)  # same initial weights, untouched by training
    trainer.train()
    assert len(trainer.forget_batches) == len(trainer.retain_batches) == 2
    directions = [
        explicit_direction(reference_model, f, r, 0.0)[0]
        for f, r in zip(trainer.forget_batches, trainer.retain_batches, strict=True)
    ]
    assert_close(flat_trainable(model) - before, -LR * (directions[0] + directions[1]) / 2, what="accumulated step")


# ---------------------------------------------------------------------------------------------------- other paths


def test_vmap_path_on_full_fine_tuning(tmp_path):
    model = tiny_gpt2(seed=2).double()
    forget, retain = token_dataset(2, seed=3), token_dataset(3, seed=4)
    expected, G = explicit_direction(model, collate(list(forget)), collate(list(retain)), 0.0)
    before = flat_trainable(model)
    trainer = make_trainer(model, forget, retain, tmp_path)
    assert trainer.per_sample_backend == "vmap"
    trainer.train()
    update = flat_trainable(model) - before
    assert_close(update, -LR * expected, what="vmap full fine-tuning step")
    assert_orthogonal(update, G)
    assert model.config._attn_implementation == "sdpa"  # the eager switch for vmap is undone


def test_vmap_and_fused_paths_agree_on_lora(tmp_path):
    updates = []
    for mode in ("fused", "vmap"):
        model = gpt2_lora(seed=6)
        before = flat_trainable(model)
        trainer = make_trainer(
            model,
            token_dataset(2, seed=1),
            token_dataset(3, seed=2),
            tmp_path / mode,
            per_sample_gradients=mode,
            retain_mix=0.4,
        )
        assert trainer.per_sample_backend == mode
        trainer.train()
        updates.append(flat_trainable(model) - before)
    assert_close(updates[1], updates[0], what="vmap vs fused")


def npo_losses(model, batch, beta=0.5):
    """(2/β)·softplus(β·(log π_θ − log π_ref)) per example, π_ref = the model with its adapter disabled."""
    lengths = (batch["labels"][:, 1:] != -100).sum(1)
    log_prob = -reference_losses(model, batch) * lengths
    with torch.no_grad(), model.disable_adapter():
        ref_log_prob = -reference_losses(model, batch) * lengths
    return (2 / beta) * F.softplus(beta * (log_prob - ref_log_prob))


@pytest.mark.parametrize("mode", ["fused", "vmap"])
def test_npo_forget_loss_projects_the_npo_gradient_and_lowers_it(mode, tmp_path):
    model = gpt2_lora(seed=7)
    forget, retain = token_dataset(3, seed=2), token_dataset(4, seed=3)
    forget_batch = collate(list(forget))
    # g_f = −∇L_NPO (projection.py's sign convention), so d = −P⊥(−∇L_NPO) at α = 0. NPO's gradient is about |y|
    # times larger than GA's (a sequence log-likelihood, not a token mean) and this toy loss is strongly curved (a
    # plain gradient step of 1e-4 already lowers it 6x less than first order predicts): a small step stays first-order.
    expected, G = explicit_direction(
        model, forget_batch, collate(list(retain)), 0.0, forget_loss_fn=lambda m, b: -npo_losses(m, b)
    )
    npo_before = npo_losses(model, forget_batch).mean().item()
    before = flat_trainable(model)
    trainer = make_trainer(
        model,
        forget,
        retain,
        tmp_path,
        forget_loss="npo",
        npo_beta=0.5,
        per_sample_gradients=mode,
        learning_rate=1e-5,
    )
    trainer.train()
    update = flat_trainable(model) - before
    assert_close(update, -1e-5 * expected, what=f"NPO step ({mode})")
    assert_orthogonal(update, G)
    assert npo_losses(model, forget_batch).mean().item() < npo_before
    logs = logged(trainer)
    assert logs["npo/loss"] == pytest.approx(npo_before, rel=1e-6)
    assert "forget/loss" in logs


# ---------------------------------------------------------------------------------------------------- lifecycle


def forward_hook_count(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) for m in model.modules())


class PoisonAdapter(TrainerCallback):
    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step == 1:
            with torch.no_grad():
                next(p for n, p in model.named_parameters() if "lora_B" in n).fill_(float("nan"))


def test_hooks_are_removed_after_a_step_and_after_an_error(tmp_path):
    model = gpt2_lora(seed=8)
    hooks = forward_hook_count(model)
    trainer = make_trainer(model, token_dataset(2, seed=1), token_dataset(3, seed=2), tmp_path, max_steps=3)
    trainer.add_callback(PoisonAdapter())
    with pytest.raises(FloatingPointError, match="global step 1"):
        trainer.train()  # step 1 is fine, then a NaN adapter weight makes step 2 fail inside the capture
    assert trainer.state.global_step == 1
    assert forward_hook_count(model) == hooks
    assert all(not calls for calls in trainer._per_sample._calls.values())


class CountLiveTensors(TrainerCallback):
    def __init__(self, at: tuple[int, ...]):
        self.at, self.counts = at, {}

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step in self.at:
            gc.collect()
            self.counts[state.global_step] = sum(1 for obj in gc.get_objects() if torch.is_tensor(obj))


def test_memory_does_not_grow_over_50_steps(tmp_path):
    model = gpt2_lora(seed=9, dtype=torch.float32)
    counter = CountLiveTensors(at=(5, 55))
    trainer = make_trainer(
        model,
        token_dataset(4, seed=1),
        token_dataset(8, seed=2),
        tmp_path,
        per_device_train_batch_size=2,
        per_device_retain_batch_size=4,
        max_steps=55,
        learning_rate=1e-3,
        retain_mix=0.5,
        logging_steps=10,
    )
    trainer.add_callback(counter)
    trainer.train()
    assert counter.counts[55] <= counter.counts[5] + 3, f"live tensors grew: {counter.counts}"
    assert all(not calls for calls in trainer._per_sample._calls.values()), "captured activations outlive the step"


# ---------------------------------------------------------------------------------------------------- bad input


def test_bad_input_names_the_fix(tmp_path):
    common = dict(output_dir=str(tmp_path / "o"), use_cpu=True, report_to="none")
    # α outside [0, 1): tests/methods/test_every_method.py (with every method's own hyperparameter).
    with pytest.raises(ValueError, match="per_device_retain_batch_size must be >= 1"):
        OrthoGradConfig(per_device_retain_batch_size=0, **common)
    with pytest.raises(ValueError, match="forget_loss"):
        OrthoGradConfig(forget_loss="npo2", **common)
    with pytest.raises(ValueError, match="retain_dataset"):
        OrthoGradTrainer(
            model=gpt2_lora(),
            args=OrthoGradConfig(retain_mix=0.0, **common),
            forget_dataset=token_dataset(2, seed=0),
            data_collator=collate,
        )
    with pytest.raises(ValueError, match="VmapPerSampleGradients"):
        make_trainer(
            tiny_gpt2(),
            token_dataset(2, seed=0),
            token_dataset(2, seed=1),
            tmp_path,
            per_sample_gradients="fused",
        )
    with_batch_norm = gpt2_lora()
    with_batch_norm.base_model.model.transformer.add_module("norm", nn.BatchNorm1d(16))
    with pytest.raises(ValueError, match="GroupNorm/LayerNorm"):
        make_trainer(with_batch_norm, token_dataset(2, seed=0), token_dataset(2, seed=1), tmp_path)


def test_concatenate_batches_pads_each_kind_of_tensor():
    first = {
        "input_ids": torch.tensor([[5, 6, 7]]),
        "attention_mask": torch.ones(1, 3, dtype=torch.long),
        "labels": torch.tensor([[5, 6, 7]]),
    }
    second = {
        "input_ids": torch.tensor([[8]]),
        "attention_mask": torch.ones(1, 1, dtype=torch.long),
        "labels": torch.tensor([[8]]),
    }
    joint = concatenate_batches(first, second, pad_token_id=2)
    assert joint["input_ids"].tolist() == [[5, 6, 7], [8, 2, 2]]
    assert joint["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert joint["labels"].tolist() == [[5, 6, 7], [8, -100, -100]]
    with pytest.raises(ValueError, match="same number of frames"):
        concatenate_batches({"input_features": torch.zeros(1, 8, 12)}, {"input_features": torch.zeros(1, 8, 10)})
    with pytest.raises(ValueError, match="different keys"):
        concatenate_batches(first, {"input_ids": second["input_ids"]})


def test_methods_table_and_model_card_metadata():
    assert METHODS["orthograd"] == (OrthoGradConfig, OrthoGradTrainer)
    assert METHODS["gru"] == (GRUConfig, GRUTrainer)
    assert OrthoGradTrainer._paper["id"] == "2503.02312"
    assert GRUConfig(output_dir="unused", use_cpu=True, report_to="none").projection == "rank1"
