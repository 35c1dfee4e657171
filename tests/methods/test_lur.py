"""LURTrainer: one optimizer step moves θ by exactly −η·∇J, with ∇J recomputed independently in float64.

The reference shares no code with the library: per-example losses come from the independent float64 reference of
``tests/testing_utils.py`` (written with ``F.cross_entropy``), and ∇J from plain autograd through an inline inner step
(``create_graph=True``; the inner gradient detached for first order). The batches the trainer really used are
recorded by spying on ``training_step`` / ``next_retain_batch``, so the reference sees exactly the same data.
"""

from functools import partial

import pytest
import torch
import torch.nn.functional as F
from datasets import Dataset
from peft import get_peft_model
from torch import nn
from torch.func import functional_call

from hf_unlearn import METHODS, LURConfig, LURTrainer

from ..testing_utils import (
    EXACT_SGD,
    PAD,
    START,
    OnceDifferentiableTanh,
    collate,
    collate_speech,
    gpt2_lora_config,
    make_trainer,
    reference_losses,
    target_log_probs,
    tiny_gpt2,
    tiny_whisper_lora,
)
from ..testing_utils import REFERENCE_VOCAB as VOCAB
from ..testing_utils import speech_dataset as shared_speech_dataset


BETA, GAMMA, LR = 0.3, 0.7, 0.5


# The models are tiny: one intra-op thread (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("one_thread")


# ---------------------------------------------------------------------------------------------------------------------
# Tiny models, data, independent losses


def gpt2_lora(attn: str = "eager", seed: int = 0) -> nn.Module:
    config = dict(n_positions=16, bos_token_id=START, eos_token_id=2, pad_token_id=PAD, attn_implementation=attn)
    model = tiny_gpt2(seed, vocab_size=VOCAB, **config)
    return get_peft_model(model, gpt2_lora_config(r=2, fan_in_fan_out=True)).double()


def token_dataset(n: int, seed: int) -> Dataset:
    generator = torch.Generator().manual_seed(seed)
    lengths = torch.randint(3, 8, (n,), generator=generator).tolist()
    return Dataset.from_list(
        [{"input_ids": torch.randint(3, VOCAB, (length,), generator=generator).tolist()} for length in lengths]
    )


collate_tokens = partial(collate, pad_token_id=PAD)


def speech_dataset(n: int, seed: int) -> Dataset:
    return shared_speech_dataset(n, seed, max_len=5)


def seq_log_prob(model, params, batch):
    """(Σ_t log p(y_t), |y|) per example, from the shared independent reference."""
    return target_log_probs(lambda **inputs: functional_call(model, params, (), inputs), batch)


def mean_nll(model, params, batch):
    """L = (1/B)·Σ_i mean over example i's targets of −log p (DESIGN §1)."""
    return reference_losses(lambda **inputs: functional_call(model, params, (), inputs), batch).mean()


def npo_loss(model, params, batch, beta):
    log_prob, _ = seq_log_prob(model, params, batch)
    with torch.no_grad(), model.disable_adapter():
        ref_log_prob, _ = seq_log_prob(model, {}, batch)
    return (2 / beta) * F.softplus(beta * (log_prob - ref_log_prob)).mean()


def reference_meta_grad(theta, inner, outer, w_inner, w_outer, beta, second_order=True):
    """∇_θ [w_in·L_in(θ) + w_out·L_out(θ − β·∇L_in(θ))]; first order treats ∇L_in(θ) as a constant."""
    inner_value = inner(theta)
    grads = torch.autograd.grad(inner_value, list(theta.values()), retain_graph=True, create_graph=second_order)
    grads = [g if second_order else g.detach() for g in grads]
    virtual = {n: p - beta * g for (n, p), g in zip(theta.items(), grads, strict=True)}
    meta = w_inner * inner_value + w_outer * outer(virtual)
    return list(torch.autograd.grad(meta, list(theta.values())))


# ---------------------------------------------------------------------------------------------------------------------
# One trainer step, with the batches it used


def train_one_step(model, tmp_path, forget, retain, collator=None, method="lur", **overrides):
    args = {
        **EXACT_SGD,
        "per_device_train_batch_size": len(forget),
        "per_device_retain_batch_size": len(retain),
        "max_steps": 1,
        "learning_rate": LR,
        "retain_weight": GAMMA,
    }
    if method == "lur":
        args["inner_lr"] = BETA
        args["forget_loss"] = "ga"  # the references below write L_u = −L_f; NPO has its own test
    trainer = make_trainer(
        method,
        tmp_path,
        model=model,
        forget=forget,
        retain=retain,
        collator=collator or collate_tokens,
        **{**args, **overrides},
    )
    used = {"forget": [], "retain": [], "fresh_forget": []}

    def spy(method, key):
        def wrapped(*a, **k):
            if key == "forget":
                used[key].append(a[1])
                return method(*a, **k)
            batch = method(*a, **k)
            used[key].append(batch)
            return batch

        return wrapped

    trainer.training_step = spy(trainer.training_step, "forget")
    trainer.next_retain_batch = spy(trainer.next_retain_batch, "retain")
    if isinstance(trainer, LURTrainer):
        trainer.next_fresh_forget_batch = spy(trainer.next_fresh_forget_batch, "fresh_forget")
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    trainer.train()
    used["frozen_changed"] = [n for n, p in model.named_parameters() if n in frozen and not torch.equal(p, frozen[n])]
    after = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
    delta = [after[n] - before[n] for n in before]
    theta = {n: t.clone().requires_grad_() for n, t in before.items()}
    return trainer, delta, theta, used


def assert_update_is(delta, grads, rtol=1e-9, what=""):
    """θ_after − θ_before == −η·∇J (plain SGD), as a relative error over all trainable parameters."""
    actual = torch.cat([d.reshape(-1) for d in delta])
    expected = -LR * torch.cat([g.reshape(-1) for g in grads])
    err, ref = (actual - expected).norm().item(), expected.norm().item()
    assert ref > 0, f"{what}: the expected update is zero, the test checks nothing"
    message = f"{what}: ‖Δ‖={err:.3e}, ‖ref‖={ref:.3e}, ‖actual‖={actual.norm():.3e}, rel={err / ref:.3e}"
    assert err <= rtol * ref, message


def ga_and_retain(model, forget_batch, retain_batch):
    return (lambda p: -mean_nll(model, p, forget_batch)), (lambda p: mean_nll(model, p, retain_batch))


# ---------------------------------------------------------------------------------------------------------------------
# Exact steps


@pytest.mark.parametrize("meta_order", ["second", "first"])
def test_sgd_step_is_minus_lr_times_meta_gradient_gpt2(meta_order, tmp_path):
    model = gpt2_lora()
    trainer, delta, theta, used = train_one_step(
        model, tmp_path, token_dataset(3, 1), token_dataset(4, 2), meta_order=meta_order
    )
    assert len(used["forget"]) == 1 and len(used["retain"]) == 1
    unlearn, retain = ga_and_retain(model, used["forget"][0], used["retain"][0])
    grads = reference_meta_grad(theta, unlearn, retain, 1.0, GAMMA, BETA, second_order=meta_order == "second")
    assert_update_is(delta, grads, what=f"LUR {meta_order} order")
    # the Hessian term is not negligible here, so the two orders are really told apart
    other = reference_meta_grad(theta, unlearn, retain, 1.0, GAMMA, BETA, second_order=meta_order != "second")
    with pytest.raises(AssertionError):
        assert_update_is(delta, other, rtol=1e-4)
    assert used["frozen_changed"] == []
    logged = trainer.state.log_history[0]
    assert logged["loss"] == pytest.approx(logged["lur/meta_loss"], rel=1e-6)  # the Trainer sums losses in float32
    assert logged["forget/loss"] == pytest.approx(mean_nll(model, theta, used["forget"][0]).item(), rel=1e-10)


def test_sgd_step_is_minus_lr_times_meta_gradient_whisper(tmp_path):
    model = tiny_whisper_lora(r=2)
    _, delta, theta, used = train_one_step(
        model, tmp_path, speech_dataset(2, 1), speech_dataset(3, 2), collator=collate_speech
    )
    unlearn, retain = ga_and_retain(model, used["forget"][0], used["retain"][0])
    assert_update_is(delta, reference_meta_grad(theta, unlearn, retain, 1.0, GAMMA, BETA), what="Whisper, exact")


def test_default_sdpa_attention_gets_the_exact_step(tmp_path):
    # transformers' default attention (SDPA) has no double backward in its fused kernels; the trainer must still give
    # the exact second-order update, identical to the eager model's.
    deltas = [
        train_one_step(gpt2_lora(attn), tmp_path / attn, token_dataset(3, 1), token_dataset(4, 2))[1]
        for attn in ("sdpa", "eager")
    ]
    assert_update_is(deltas[0], [d / -LR for d in deltas[1]], rtol=1e-10, what="SDPA vs eager")


def test_zero_inner_lr_is_grad_diff(tmp_path):
    data = (token_dataset(3, 1), token_dataset(4, 2))
    _, lur_delta, _, _ = train_one_step(gpt2_lora(), tmp_path / "lur", *data, inner_lr=0.0)
    _, gd_delta, _, _ = train_one_step(gpt2_lora(), tmp_path / "gd", *data, method="graddiff")
    assert_update_is(lur_delta, [d / -LR for d in gd_delta], rtol=1e-10, what="LUR(β=0) vs GradDiff(λ=γ)")


def test_gradient_accumulation_averages_micro_batch_meta_gradients(tmp_path):
    model = gpt2_lora()
    _, delta, theta, used = train_one_step(
        model,
        tmp_path,
        token_dataset(4, 1),
        token_dataset(6, 2),
        per_device_train_batch_size=2,
        per_device_retain_batch_size=3,
        gradient_accumulation_steps=2,
    )
    assert len(used["forget"]) == 2 and len(used["retain"]) == 2
    micro = [
        reference_meta_grad(theta, *ga_and_retain(model, f, r), 1.0, GAMMA, BETA)
        for f, r in zip(used["forget"], used["retain"], strict=True)
    ]
    assert not torch.allclose(micro[0][0], micro[1][0]), "the two micro-batches should differ"
    expected = [(a + b) / 2 for a, b in zip(*micro, strict=True)]
    assert_update_is(delta, expected, what="accumulated over 2 micro-batches")


def test_mirrored_order_matches_its_formula(tmp_path):
    model = gpt2_lora()
    _, delta, theta, used = train_one_step(
        model,
        tmp_path,
        token_dataset(3, 1),
        token_dataset(4, 2),
        objective_order="retain_then_unlearn",
    )
    unlearn, retain = ga_and_retain(model, used["forget"][0], used["retain"][0])
    # J = γ·L_r(θ) + L_u(θ − β·∇L_r(θ))
    assert_update_is(delta, reference_meta_grad(theta, retain, unlearn, GAMMA, 1.0, BETA), what="mirrored order")


def test_npo_forget_loss(tmp_path):
    model = gpt2_lora()
    trainer, delta, theta, used = train_one_step(
        model, tmp_path, token_dataset(3, 1), token_dataset(4, 2), forget_loss="npo", npo_beta=0.5
    )
    forget, retain_batch = used["forget"][0], used["retain"][0]

    def unlearn(p):
        return npo_loss(model, p, forget, 0.5)

    grads = reference_meta_grad(theta, unlearn, lambda p: mean_nll(model, p, retain_batch), 1.0, GAMMA, BETA)
    assert_update_is(delta, grads, what="LUR with NPO's L_u")
    assert "npo/log_ratio" in trainer.state.log_history[0]


def test_fresh_inner_batch_scores_a_new_retain_draw_at_the_virtual_point(tmp_path):
    model = gpt2_lora()
    trainer, delta, theta, used = train_one_step(
        model,
        tmp_path,
        token_dataset(3, 1),
        token_dataset(6, 2),
        per_device_retain_batch_size=3,
        inner_batch="fresh",
    )
    assert len(used["retain"]) == 2, "fresh draws one extra retain batch per micro-step"
    step_batch, fresh_batch = used["retain"]
    assert not torch.equal(step_batch["input_ids"], fresh_batch["input_ids"])
    unlearn, retain_fresh = ga_and_retain(model, used["forget"][0], fresh_batch)
    assert_update_is(delta, reference_meta_grad(theta, unlearn, retain_fresh, 1.0, GAMMA, BETA), what="fresh")
    # the diagnostics at θ read the step's own retain batch
    logged = trainer.state.log_history[0]
    assert logged["retain/loss"] == pytest.approx(mean_nll(model, theta, step_batch).item(), rel=1e-10)


def test_fresh_inner_batch_mirrored_scores_a_new_forget_draw(tmp_path):
    model = gpt2_lora()
    _, delta, theta, used = train_one_step(
        model,
        tmp_path,
        token_dataset(6, 1),
        token_dataset(4, 2),
        per_device_train_batch_size=3,
        inner_batch="fresh",
        objective_order="retain_then_unlearn",
    )
    assert len(used["retain"]) == 1 and len(used["fresh_forget"]) == 1
    unlearn_fresh, retain = ga_and_retain(model, used["fresh_forget"][0], used["retain"][0])
    grads = reference_meta_grad(theta, retain, unlearn_fresh, GAMMA, 1.0, BETA)
    assert_update_is(delta, grads, what="fresh, mirrored")


# ---------------------------------------------------------------------------------------------------------------------
# Logging, export


def test_diagnostics_are_logged_on_logging_steps_only(tmp_path):
    data = (token_dataset(3, 1), token_dataset(4, 2))
    trainer, _, _, _ = train_one_step(gpt2_lora(), tmp_path / "a", *data)
    expected = {
        "forget/loss",
        "retain/loss",
        "lur/inner_loss",
        "lur/virtual_outer_loss",
        "lur/meta_loss",
        "lur/inner_grad_norm",
        "lur/grad_dot",
        "lur/grad_cosine",
        "lur/outer_loss_change",
        "lur/hvp_norm",
    }
    assert expected <= set(trainer.state.log_history[0])
    assert -1.0 <= trainer.state.log_history[0]["lur/grad_cosine"] <= 1.0

    trainer, _, _, _ = train_one_step(gpt2_lora(), tmp_path / "b", *data, max_steps=2, logging_steps=5)
    logged = {key for entry in trainer.state.log_history for key in entry}
    assert "lur/inner_loss" in logged and "lur/grad_cosine" not in logged

    trainer, _, _, _ = train_one_step(gpt2_lora(), tmp_path / "c", *data, logging_steps=5, diagnostics_every=1)
    assert "lur/grad_cosine" in {key for entry in trainer.state.log_history for key in entry}


def test_registered_for_the_recipe_cli():
    assert METHODS["lur"] == (LURConfig, LURTrainer)
    assert LURTrainer._paper["id"] == "2503.06339"


# ---------------------------------------------------------------------------------------------------------------------
# Bad input


def test_invalid_config_names_the_fix(tmp_path):
    common = dict(output_dir=str(tmp_path), use_cpu=True, report_to="none")
    # A negative inner_lr: tests/methods/test_every_method.py (with every method's own hyperparameter).
    with pytest.raises(ValueError, match="retain_weight > 0"):
        LURConfig(retain_weight=0.0, **common)
    with pytest.raises(ValueError, match="meta_order"):
        LURConfig(meta_order="third", **common)
    with pytest.raises(ValueError, match="inner_batch"):
        LURConfig(inner_batch="new", **common)
    with pytest.raises(ValueError, match="npo_beta"):
        LURConfig(forget_loss="npo", npo_beta=0.0, **common)


def test_non_finite_virtual_loss_names_the_step(tmp_path):
    with pytest.raises(FloatingPointError, match=r"global step 0.*inner_lr"):
        train_one_step(gpt2_lora(), tmp_path, token_dataset(3, 1), token_dataset(4, 2), inner_lr=1e300)


class _FusedLM(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.embed, self.head = nn.Embedding(VOCAB, 8), nn.Linear(8, VOCAB)
        self.config = type("Config", (), {"is_encoder_decoder": False})()

    def forward(self, input_ids, attention_mask=None):
        return type("Out", (), {"logits": self.head(OnceDifferentiableTanh.apply(self.embed(input_ids)))})()


def test_second_order_without_double_backward_suggests_first_order(tmp_path):
    data = (token_dataset(3, 1), token_dataset(4, 2))
    with pytest.raises(RuntimeError, match="meta_order='first'"):
        train_one_step(_FusedLM(), tmp_path / "second", *data)
    _, delta, _, _ = train_one_step(_FusedLM(), tmp_path / "first", *data, meta_order="first")
    assert any(d.abs().max() > 0 for d in delta)
