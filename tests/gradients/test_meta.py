"""The LUR meta-gradient (hf_unlearn.methods.lur.meta) against independent float64 references.

References share no code with the library: per-example losses are written here, the meta-gradient is recomputed by
plain autograd through an inline inner step (``create_graph=True``) and by ``torch.func.grad`` of a function that
itself takes a ``torch.func.grad`` inner step, and the Hessian-vector product by central finite differences.
"""

import math

import pytest
import torch
from peft import get_peft_model
from torch.func import functional_call

from hf_unlearn.methods.lur.meta import LURObjective, batch_loss_fn, trainable_parameters, virtual_step

from ..testing_utils import (
    OnceDifferentiableTanh,
    gpt2_lora_config,
    reference_losses,
    reference_whisper,
    tiny_gpt2,
    with_lora,
)


BETA, GAMMA = 0.3, 0.7


# The models are tiny: one intra-op thread (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("one_thread")


# ---------------------------------------------------------------------------------------------------------------------
# Tiny models and batches


GPT2 = dict(
    vocab_size=29, n_positions=16, bos_token_id=0, eos_token_id=0, pad_token_id=None, attn_implementation="eager"
)


def _gpt2_case(seed: int = 0):
    model = with_lora(tiny_gpt2(seed, **GPT2), 2, ["c_attn", "c_proj"], fan_in_fan_out=True)
    config = model.config

    def batch(b, t):
        ids = torch.randint(1, config.vocab_size, (b, t))
        labels = ids.clone()
        labels[0, -2:] = -100  # right padding on one example: it must not count in that example's mean
        labels[:, 0] = -100
        mask = (labels != -100) | (torch.arange(t) == 0)
        return {"input_ids": ids, "attention_mask": mask.long(), "labels": labels}

    return model, batch(3, 6), batch(4, 7)


def _gpt2_reference_loss(model, params, batch):
    """(1/B)·Σ_i mean_{t ∈ targets(i)} −log p(y_t), from the shared independent reference (causal shift)."""
    return reference_losses(lambda **inputs: functional_call(model, params, (), inputs), batch).mean()


def _whisper_case(seed: int = 0):
    whisper = reference_whisper(seed, vocab_size=31, num_mel_bins=4, max_target_positions=12, pad_token_id=1,
                                bos_token_id=2, eos_token_id=3, decoder_start_token_id=2)  # fmt: skip
    model = with_lora(whisper, 2, ["q_proj", "v_proj", "fc1"])
    config = model.config

    def batch(b, t):
        features = torch.randn(b, config.num_mel_bins, 2 * config.max_source_positions, dtype=torch.float64)
        labels = torch.randint(4, config.vocab_size, (b, t))
        labels[0, -3:] = -100
        return {"input_features": features, "labels": labels}

    return model, batch(2, 5), batch(3, 4)


def _whisper_reference_loss(model, params, batch):
    """The same, with the decoder inputs shifted right after the start token (the shared reference)."""
    config = model.config
    closure = lambda **inputs: functional_call(model, params, (), inputs)  # noqa: E731
    shift = dict(decoder_start_token_id=config.decoder_start_token_id, pad_token_id=config.pad_token_id)
    return reference_losses(closure, batch, **shift).mean()


CASES = {"gpt2": (_gpt2_case, _gpt2_reference_loss), "whisper": (_whisper_case, _whisper_reference_loss)}


def _setup(name, virtual_forward="auto"):
    make, reference_loss = CASES[name]
    model, forget, retain = make()
    params = trainable_parameters(model)
    # the test's own closures: L_u = −L_f (gradient ascent) and L_r, evaluated at any parameter dict
    ref_unlearn = lambda p: -reference_loss(model, p, forget)  # noqa: E731
    ref_retain = lambda p: reference_loss(model, p, retain)  # noqa: E731
    # the library's closures, built with its default per-example loss
    lib_forget = batch_loss_fn(model, forget, virtual_forward=virtual_forward)
    lib_unlearn = lambda p: -lib_forget(p)  # noqa: E731
    lib_retain = batch_loss_fn(model, retain, virtual_forward=virtual_forward)
    return model, params, (ref_unlearn, ref_retain), (lib_unlearn, lib_retain)


# ---------------------------------------------------------------------------------------------------------------------
# Helpers


def _library_grad(params, lur, unlearn_fn, retain_fn, **kwargs):
    for p in params.values():
        p.grad = None
    step = lur(params, unlearn_fn, retain_fn, **kwargs)
    step.loss.backward()
    grads = [p.grad.clone() for p in params.values()]
    for p in params.values():
        p.grad = None
    return grads, step


def _grad(loss_fn, params, create_graph=False):
    return list(torch.autograd.grad(loss_fn(params), list(params.values()), create_graph=create_graph))


def _inline_meta_grad(params, inner_fn, outer_fn, inner_weight, outer_weight, beta):
    """∇_θ [w_in·L_in(θ) + w_out·L_out(θ − β∇L_in(θ))] by autograd through the inner step."""
    inner = inner_fn(params)
    inner_grads = torch.autograd.grad(inner, list(params.values()), create_graph=True)
    virtual = {name: p - beta * g for (name, p), g in zip(params.items(), inner_grads, strict=True)}
    meta = inner_weight * inner + outer_weight * outer_fn(virtual)
    return list(torch.autograd.grad(meta, list(params.values())))


def _func_meta_grad(params, inner_fn, outer_fn, inner_weight, outer_weight, beta):
    """The same meta-gradient with torch.func transforms only."""

    def meta(p):
        g = torch.func.grad(inner_fn)(p)
        return inner_weight * inner_fn(p) + outer_weight * outer_fn({k: p[k] - beta * g[k] for k in p})

    detached = {k: v.detach() for k, v in params.items()}
    return list(torch.func.grad(meta)(detached).values())


def _flat(tensors):
    return torch.cat([t.reshape(-1) for t in tensors])


def _assert_rel(actual, expected, rtol, what):
    actual, expected = _flat(actual), _flat(expected)
    err = (actual - expected).norm().item()
    ref = expected.norm().item()
    assert ref > 0, f"{what}: reference is zero, the test checks nothing"
    message = f"{what}: ‖Δ‖={err:.3e}, ‖ref‖={ref:.3e}, ‖actual‖={actual.norm():.3e}, rel={err / ref:.3e}"
    assert err <= rtol * ref, message


# ---------------------------------------------------------------------------------------------------------------------
# Exact meta-gradient


@pytest.mark.parametrize("name", ["gpt2", "whisper"])
def test_second_order_matches_inline_autograd_and_torch_func(name):
    model, params, (ref_u, ref_r), (lib_u, lib_r) = _setup(name)
    assert all("lora_" in n for n in params) and len(params) > 0

    grads, step = _library_grad(params, LURObjective(inner_lr=BETA, retain_weight=GAMMA), lib_u, lib_r)
    inline = _inline_meta_grad(params, ref_u, ref_r, 1.0, GAMMA, BETA)
    func = _func_meta_grad(params, ref_u, ref_r, 1.0, GAMMA, BETA)

    _assert_rel(inline, func, 1e-10, "inline autograd vs torch.func (the two references)")
    _assert_rel(grads, inline, 1e-8, "library vs inline autograd")
    _assert_rel(grads, func, 1e-8, "library vs torch.func")
    # the surrogate's value is the meta objective itself
    virtual = {n: p - BETA * g for (n, p), g in zip(params.items(), _grad(ref_u, params), strict=True)}
    expected_j = ref_u(params) + GAMMA * ref_r(virtual)
    assert step.loss.item() == pytest.approx(expected_j.item(), rel=1e-12)
    assert step.metrics["lur/meta_loss"] == pytest.approx(expected_j.item(), rel=1e-12)
    assert sum(p.numel() for p in params.values()) < sum(p.numel() for p in model.parameters())  # base stays frozen


@pytest.mark.parametrize("name", ["gpt2", "whisper"])
def test_hook_substituted_virtual_forward_gives_the_same_meta_gradient(name):
    # The forward-hook substitution (used under DeepSpeed ZeRO-3) must equal the functional_call path, both orders.
    model, params, (ref_u, ref_r), (lib_u, lib_r) = _setup(name, virtual_forward="hooks")
    virtual = {n: p.detach() * 0.9 for n, p in params.items()}
    assert lib_r(virtual).item() == pytest.approx(ref_r(virtual).item(), rel=1e-12)
    assert lib_r(virtual).item() != pytest.approx(lib_r(None).item(), rel=1e-6)  # θ' was really used
    exact, _ = _library_grad(params, LURObjective(inner_lr=BETA, retain_weight=GAMMA), lib_u, lib_r)
    _assert_rel(exact, _inline_meta_grad(params, ref_u, ref_r, 1.0, GAMMA, BETA), 1e-8, "hooks, second order")
    first, _ = _library_grad(params, LURObjective(BETA, GAMMA, meta_order="first"), lib_u, lib_r)
    grad_u = _grad(ref_u, params)
    at_virtual = {
        n: (p - BETA * g).detach().requires_grad_() for (n, p), g in zip(params.items(), grad_u, strict=True)
    }
    expected = [gu + GAMMA * gr for gu, gr in zip(grad_u, _grad(ref_r, at_virtual), strict=True)]
    _assert_rel(first, expected, 1e-10, "hooks, first order")
    assert all(not m._forward_hooks for m in model.modules())  # the substitution leaves no hook behind


def test_plain_model_full_fine_tuning():
    model = _ToyModel().double()
    params = trainable_parameters(model)
    assert list(params) == ["inp.weight", "inp.bias", "out.weight", "out.bias"]
    unlearn, retain = _toy_losses(model)
    grads, _ = _library_grad(params, LURObjective(BETA, GAMMA), unlearn, retain)
    _assert_rel(grads, _inline_meta_grad(params, unlearn, retain, 1.0, GAMMA, BETA), 1e-12, "plain model")


def test_hessian_term_matches_finite_differences():
    _, params, (ref_u, ref_r), (lib_u, lib_r) = _setup("gpt2")
    exact, step = _library_grad(params, LURObjective(BETA, GAMMA), lib_u, lib_r, compute_diagnostics=True)
    first, _ = _library_grad(params, LURObjective(BETA, GAMMA, meta_order="first"), lib_u, lib_r)

    # v = ∇L_r(θ'), then ∇²L_u(θ)·v ≈ [∇L_u(θ + εu) − ∇L_u(θ − εu)]·‖v‖/(2ε), u = v/‖v‖
    virtual = {
        n: (p - BETA * g).detach().requires_grad_()
        for (n, p), g in zip(params.items(), _grad(ref_u, params), strict=True)
    }
    v = _grad(ref_r, virtual)
    v_norm = _flat(v).norm()
    eps = 1e-5

    def shifted(sign):
        return {
            n: (p + sign * eps * vi / v_norm).detach().requires_grad_()
            for (n, p), vi in zip(params.items(), v, strict=True)
        }

    hvp_fd = [
        (a - b) * v_norm / (2 * eps) for a, b in zip(_grad(ref_u, shifted(1)), _grad(ref_u, shifted(-1)), strict=True)
    ]

    # exact − first-order = −γβ·∇²L_u·∇L_r(θ')
    _assert_rel(
        [(e - f) / (-GAMMA * BETA) for e, f in zip(exact, first, strict=True)], hvp_fd, 1e-6, "Hessian term vs FD"
    )
    assert step.metrics["lur/hvp_norm"] == pytest.approx(BETA * _flat(hvp_fd).norm().item(), rel=1e-6)


# ---------------------------------------------------------------------------------------------------------------------
# First order, GradDiff limit, mirrored order


def test_first_order_matches_formula():
    _, params, (ref_u, ref_r), (lib_u, lib_r) = _setup("gpt2")
    grads, _ = _library_grad(params, LURObjective(BETA, GAMMA, meta_order="first"), lib_u, lib_r)
    grad_u = _grad(ref_u, params)
    virtual = {n: (p - BETA * g).detach().requires_grad_() for (n, p), g in zip(params.items(), grad_u, strict=True)}
    expected = [gu + GAMMA * gr for gu, gr in zip(grad_u, _grad(ref_r, virtual), strict=True)]  # ∇L_u(θ) + γ∇L_r(θ')
    _assert_rel(grads, expected, 1e-10, "first-order LUR vs ∇L_u(θ) + γ∇L_r(θ')")


@pytest.mark.parametrize("meta_order", ["second", "first"])
@pytest.mark.parametrize("objective_order", ["unlearn_then_retain", "retain_then_unlearn"])
def test_zero_inner_lr_is_grad_diff(meta_order, objective_order):
    _, params, (ref_u, ref_r), (lib_u, lib_r) = _setup("gpt2")
    lur = LURObjective(0.0, GAMMA, meta_order=meta_order, objective_order=objective_order)
    grads, _ = _library_grad(params, lur, lib_u, lib_r)
    expected = _grad(lambda p: ref_u(p) + GAMMA * ref_r(p), params)
    _assert_rel(grads, expected, 1e-10, "LUR with inner_lr=0 vs GradDiff")


def test_mirrored_order_matches_its_formula():
    _, params, (ref_u, ref_r), (lib_u, lib_r) = _setup("gpt2")
    # J = γ·L_r(θ) + L_u(θ − β∇L_r(θ))
    lur = LURObjective(BETA, GAMMA, objective_order="retain_then_unlearn")
    grads, step = _library_grad(params, lur, lib_u, lib_r)
    _assert_rel(grads, _inline_meta_grad(params, ref_r, ref_u, GAMMA, 1.0, BETA), 1e-8, "mirrored vs inline")
    _assert_rel(grads, _func_meta_grad(params, ref_r, ref_u, GAMMA, 1.0, BETA), 1e-8, "mirrored vs torch.func")
    assert step.metrics["lur/inner_loss"] == pytest.approx(ref_r(params).item(), rel=1e-12)

    # first order: γ∇L_r(θ) + ∇L_u(θ')
    lur = LURObjective(BETA, GAMMA, meta_order="first", objective_order="retain_then_unlearn")
    grads, _ = _library_grad(params, lur, lib_u, lib_r)
    grad_r = _grad(ref_r, params)
    virtual = {n: (p - BETA * g).detach().requires_grad_() for (n, p), g in zip(params.items(), grad_r, strict=True)}
    expected = [GAMMA * gr + gu for gr, gu in zip(grad_r, _grad(ref_u, virtual), strict=True)]
    _assert_rel(grads, expected, 1e-10, "mirrored first order vs γ∇L_r(θ) + ∇L_u(θ')")


# ---------------------------------------------------------------------------------------------------------------------
# Diagnostics, accumulation, autocast, building blocks


@pytest.mark.parametrize("meta_order", ["second", "first"])
def test_diagnostics_match_references_and_leave_the_gradient_alone(meta_order):
    _, params, (ref_u, ref_r), (lib_u, lib_r) = _setup("gpt2")
    plain, _ = _library_grad(params, LURObjective(BETA, GAMMA, meta_order=meta_order), lib_u, lib_r)
    lur = LURObjective(BETA, GAMMA, meta_order=meta_order)
    grads, step = _library_grad(params, lur, lib_u, lib_r, compute_diagnostics=True)
    _assert_rel(grads, plain, 1e-12, "gradient with diagnostics vs without")

    grad_u, grad_r = _flat(_grad(ref_u, params)), _flat(_grad(ref_r, params))
    virtual = {n: p - BETA * g for (n, p), g in zip(params.items(), _grad(ref_u, params), strict=True)}
    m = step.metrics
    assert m["lur/grad_dot"] == pytest.approx(torch.dot(grad_u, grad_r).item(), rel=1e-10)
    assert m["lur/grad_cosine"] == pytest.approx(torch.cosine_similarity(grad_u, grad_r, 0).item(), rel=1e-10)
    assert m["lur/outer_loss"] == pytest.approx(ref_r(params).item(), rel=1e-12)
    assert m["lur/outer_loss_change"] == pytest.approx((ref_r(virtual) - ref_r(params)).item(), rel=1e-8)
    assert m["lur/inner_grad_norm"] == pytest.approx(grad_u.norm().item(), rel=1e-10)
    assert ("lur/hvp_norm" in m) == (meta_order == "second")


def test_gradient_accumulation_sums_micro_batch_meta_gradients():
    model, params, _, _ = _setup("gpt2")
    _, forget, retain = _gpt2_case(seed=0)
    _, forget2, retain2 = _gpt2_case(seed=1)
    lur = LURObjective(BETA, GAMMA)
    for p in params.values():
        p.grad = None

    def micro_step(forget, retain):
        lib_forget = batch_loss_fn(model, forget)
        lur(params, lambda p, f=lib_forget: -f(p), batch_loss_fn(model, retain)).loss.div(2).backward()
        ref_unlearn = lambda p: -_gpt2_reference_loss(model, p, forget)  # noqa: E731
        ref_retain = lambda p: _gpt2_reference_loss(model, p, retain)  # noqa: E731
        return _inline_meta_grad(params, ref_unlearn, ref_retain, 1.0, GAMMA, BETA)

    expected = [(a + b) / 2 for a, b in zip(micro_step(forget, retain), micro_step(forget2, retain2), strict=True)]
    _assert_rel([p.grad for p in params.values()], expected, 1e-8, "accumulated .grad")


def test_autocast_bf16_stays_close_to_float32():
    model, params, (ref_u, ref_r), _ = _setup("gpt2")
    model.float()
    params = trainable_parameters(model)
    _, forget, retain = _gpt2_case()
    lib_f = batch_loss_fn(model, forget)
    lib_r = batch_loss_fn(model, retain)
    expected = _inline_meta_grad(params, ref_u, ref_r, 1.0, GAMMA, BETA)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        grads, step = _library_grad(params, LURObjective(BETA, GAMMA), lambda p: -lib_f(p), lib_r)
    assert step.loss.dtype == torch.float32
    assert all(g.dtype == torch.float32 for g in grads)
    _assert_rel(grads, expected, 5e-2, "bf16 autocast vs float32")


def _checkpointed_gpt2(use_reentrant):
    model = tiny_gpt2(0, **GPT2)
    if use_reentrant is not None:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": use_reentrant})
    lora = gpt2_lora_config(r=2, target_modules=("c_attn",), lora_alpha=8, fan_in_fan_out=True)
    model = get_peft_model(model, lora).double().train()  # checkpointing only runs in training mode
    torch.manual_seed(1)
    forget, retain = ({"input_ids": ids, "labels": ids} for ids in torch.randint(1, 29, (2, 3, 6)))
    return model, forget, retain


def test_activation_checkpointing_is_bypassed_at_the_virtual_point():
    # The checkpointed recompute reads parameters from the module during backward, after the θ' swap has ended:
    # without the bypass this gradient is off by ~6%.
    grads = {}
    for use_reentrant in (None, False):
        model, forget, retain = _checkpointed_gpt2(use_reentrant)
        params = trainable_parameters(model)
        lib_forget = batch_loss_fn(model, forget)
        grads[use_reentrant], _ = _library_grad(
            params, LURObjective(BETA, GAMMA), lambda p, f=lib_forget: -f(p), batch_loss_fn(model, retain)
        )
    _assert_rel(grads[False], grads[None], 1e-12, "checkpointed vs plain")
    assert model.is_activation_checkpointing  # the flags are restored

    model, forget, _ = _checkpointed_gpt2(use_reentrant=True)
    with pytest.raises(ValueError, match="use_reentrant': False"):
        batch_loss_fn(model, forget)


def test_batch_loss_fn_and_virtual_step():
    _, params, (ref_u, _), (lib_u, _) = _setup("whisper")
    assert lib_u(None).item() == pytest.approx(ref_u(params).item(), rel=1e-12)
    assert lib_u(dict(params)).item() == pytest.approx(ref_u(params).item(), rel=1e-12)

    grads = _grad(ref_u, params)
    for second_order in (True, False):
        virtual = virtual_step(params, lib_u(None), BETA, second_order=second_order)
        assert list(virtual) == list(params)
        _assert_rel(
            list(virtual.values()), [p - BETA * g for p, g in zip(params.values(), grads, strict=True)], 1e-12, "θ'"
        )
        assert all(v.requires_grad for v in virtual.values())
        assert all(v.grad_fn is not None for v in virtual.values())
    assert lib_u(virtual).item() == pytest.approx(ref_u(virtual).item(), rel=1e-12)


# ---------------------------------------------------------------------------------------------------------------------
# Bad input


class _ToyModel(torch.nn.Module):
    def __init__(self, activation=torch.tanh):
        super().__init__()
        self.inp, self.out, self.activation = torch.nn.Linear(3, 4), torch.nn.Linear(4, 1), activation

    def forward(self, x):
        return self.out(self.activation(self.inp(x)))


def _toy_losses(model):
    x_f, x_r = torch.randn(5, 3, dtype=torch.float64), torch.randn(6, 3, dtype=torch.float64)

    def on(x, sign):
        return lambda p: sign * (model(x) if p is None else functional_call(model, p, (x,))).pow(2).mean()

    return on(x_f, -1.0), on(x_r, 1.0)


def test_invalid_hyperparameters_name_the_field():
    with pytest.raises(ValueError, match="inner_lr"):
        LURObjective(inner_lr=-0.1)
    with pytest.raises(ValueError, match="inner_lr"):
        LURObjective(inner_lr=math.nan)
    with pytest.raises(ValueError, match="retain_weight"):
        LURObjective(inner_lr=0.1, retain_weight=-1.0)
    with pytest.raises(ValueError, match="meta_order"):
        LURObjective(inner_lr=0.1, meta_order="third")
    model = _ToyModel().double()
    unlearn, _ = _toy_losses(model)
    with pytest.raises(ValueError, match="inner_lr"):
        virtual_step(trainable_parameters(model), unlearn(None), inner_lr=-1.0)
    with pytest.raises(ValueError, match="requires_grad"):
        trainable_parameters(model.requires_grad_(False))


def test_non_finite_losses_name_which_one():
    model = _ToyModel().double()
    params = trainable_parameters(model)
    unlearn, retain = _toy_losses(model)
    with pytest.raises(FloatingPointError, match="inner loss"):
        LURObjective(BETA)(params, lambda p: unlearn(p) * math.nan, retain)
    with pytest.raises(FloatingPointError, match="virtual point.*inner_lr"):
        LURObjective(1e300)(params, unlearn, retain)
    with pytest.raises(ValueError, match="scalar"):
        LURObjective(BETA)(params, lambda p: unlearn(p).expand(2), retain)


def test_op_without_double_backward_suggests_first_order():
    model = _ToyModel(activation=OnceDifferentiableTanh.apply).double()
    params = trainable_parameters(model)
    unlearn, retain = _toy_losses(model)
    for compute_diagnostics in (False, True):
        with pytest.raises(RuntimeError, match="meta_order='first'"):
            LURObjective(BETA, meta_order="second")(params, unlearn, retain, compute_diagnostics=compute_diagnostics)
    # the first-order variant never differentiates the inner gradient
    step = LURObjective(BETA, meta_order="first")(params, unlearn, retain, compute_diagnostics=True)
    step.loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in params.values())
