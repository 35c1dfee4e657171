"""Fused LoRA capture vs independent references (a per-sample backward loop and torch.func vmap), in float64."""

import pytest
import torch
import torch.nn.functional as F
from peft import LoraConfig, get_peft_model
from torch import nn

from hf_unlearn.gradients import LoraGradientCapture
from hf_unlearn.losses import model_per_example_loss

from ..testing_utils import (
    assert_close,
    flatten,
    gpt2_batch,
    loop_per_sample_grads,
    reference_losses,
    tiny_gpt2_lora,
    tiny_whisper_lora,
    trainable,
    vmap_per_sample_grads,
    whisper_batch,
)


BUILDERS = {"whisper": (tiny_whisper_lora, whisper_batch), "gpt2": (tiny_gpt2_lora, gpt2_batch)}


def capture_per_sample(model, batch, **kwargs) -> LoraGradientCapture:
    with LoraGradientCapture(model, **kwargs) as capture:
        losses = model_per_example_loss(model, batch)
        capture.backward(losses)
    return capture


@pytest.mark.parametrize("kind", ["whisper", "gpt2"])
@pytest.mark.parametrize("k", [1, 3, 8])
@pytest.mark.parametrize("r", [1, 4])
def test_per_sample_gradients_match_vmap_and_loop(kind, k, r):
    build, make_batch = BUILDERS[kind]
    model = build(r, seed=k)
    batch = make_batch(k, seed=10 + k)
    captured = capture_per_sample(model, batch).per_sample_gradients()
    looped = loop_per_sample_grads(model, batch)
    vmapped = vmap_per_sample_grads(model, batch)
    assert captured.keys() == looped.keys() == vmapped.keys() == trainable(model).keys()
    assert any("lora_A" in n for n in captured) and any("lora_B" in n for n in captured)
    for name in captured:
        assert captured[name].shape == (k, *trainable(model)[name].shape)
        assert captured[name].dtype == torch.float64
        assert_close(captured[name], looped[name], what=f"capture vs loop, {name}")
        assert_close(vmapped[name], looped[name], what=f"vmap vs loop, {name}")
        assert looped[name].norm() > 0, f"{name}: the reference gradient is zero, the test checks nothing"


@pytest.mark.parametrize("kind", ["whisper", "gpt2"])
def test_gram_dot_combine_match_flattened_per_sample_gradients(kind):
    build, make_batch = BUILDERS[kind]
    model = build(4, seed=3)
    batch = make_batch(5, seed=4)
    capture = capture_per_sample(model, batch)
    looped = loop_per_sample_grads(model, batch)
    flat = flatten(looped)  # [B, P]

    for method in ("auto", "ghost", "materialize"):
        capture.gram_method = method
        assert_close(capture.gram(), flat @ flat.T, what=f"gram ({method})")

    generator = torch.Generator().manual_seed(0)
    vector = {n: torch.randn(p.shape, generator=generator, dtype=torch.float64) for n, p in trainable(model).items()}
    assert_close(capture.dot(vector), flat @ flatten({n: v[None] for n, v in vector.items()})[0], what="dot")
    by_param = {capture.parameters[n]: v for n, v in vector.items()}
    assert_close(capture.dot(by_param), capture.dot(vector), what="dot keyed by parameter")

    coefficients = torch.randn(5, generator=generator, dtype=torch.float64)
    combined = capture.combine(coefficients)
    for name, grad in looped.items():
        assert_close(combined[name], torch.einsum("b,b...->...", coefficients, grad), what=f"combine {name}")


def test_readouts_survive_exit_and_reset_on_reenter():
    model = tiny_gpt2_lora(2)
    capture = capture_per_sample(model, gpt2_batch(3))
    gram = capture.gram()
    # Hooks are gone: another forward/backward outside the block leaves the buffers alone.
    reference_losses(model, gpt2_batch(4, seed=1)).sum().backward()
    assert_close(capture.gram(), gram, rtol=0, what="gram after an outside backward")
    with capture:
        pass
    with pytest.raises(ValueError, match="Nothing was captured"):
        capture.gram()


def _hook_counts(model):
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) for m in model.modules())


def test_hooks_removed_on_exit_and_on_error():
    model = tiny_gpt2_lora(2)
    before = _hook_counts(model)
    with LoraGradientCapture(model) as capture:
        assert _hook_counts(model) > before
        losses = reference_losses(model, gpt2_batch(2))
    assert _hook_counts(model) == before
    # The tensor hooks on outputs went too: a backward after exit captures nothing.
    losses.sum().backward()
    with pytest.raises(ValueError, match="Nothing was captured"):
        capture.gram()

    with pytest.raises(RuntimeError, match="boom"):
        with LoraGradientCapture(model):
            reference_losses(model, gpt2_batch(2))
            raise RuntimeError("boom")
    assert _hook_counts(model) == before


def test_loss_scale_divides_out_a_batch_mean():
    model = tiny_gpt2_lora(2)
    batch = gpt2_batch(4)
    with LoraGradientCapture(model, loss_scale=1 / 4) as capture:
        reference_losses(model, batch).mean().backward()
    assert_close(flatten(capture.per_sample_gradients()), flatten(loop_per_sample_grads(model, batch)))


@pytest.mark.parametrize("use_reentrant", [False, True])
def test_gradient_checkpointing_is_correct(use_reentrant):
    # Checkpointing only runs in training mode; dropouts are 0 so train and eval compute the same function.
    model = tiny_gpt2_lora(2, seed=5, use_cache=False)
    batch = gpt2_batch(4, seed=6)
    expected = loop_per_sample_grads(model, batch)
    model.train()
    model.base_model.model.gradient_checkpointing_enable(
        gradient_checkpointing_kwargs={"use_reentrant": use_reentrant}
    )
    model.base_model.model.enable_input_require_grads()  # reentrant checkpoints need an input that requires grad
    assert model.base_model.model.transformer.gradient_checkpointing
    with LoraGradientCapture(model) as capture:
        losses = reference_losses(model, batch)
        if use_reentrant:  # reentrant checkpointing does not support torch.autograd.grad
            losses.sum().backward()
        else:
            capture.backward(losses)
    captured = capture.per_sample_gradients()
    for name in expected:
        assert_close(captured[name], expected[name], what=f"checkpointed capture, {name}")


# ---- toy models: edge cases ----------------------------------------------------------------------------------------


class SharedTwice(nn.Module):
    """Applies the same Linear twice: its LoRA factors must sum both calls' contributions."""

    def __init__(self):
        super().__init__()
        self.inner = nn.Linear(6, 6)
        self.head = nn.Linear(6, 3)

    def forward(self, x):
        return self.head(torch.tanh(self.inner(torch.tanh(self.inner(x)))))


def toy_lora(module: nn.Module, targets: list[str], **lora_kwargs) -> nn.Module:
    torch.manual_seed(0)
    config = LoraConfig(r=2, target_modules=targets, init_lora_weights=False, **lora_kwargs)
    return get_peft_model(module, config).double()


def toy_losses(model, batch):
    logits = model(batch["x"])  # [B, ..., C]
    token_losses = F.cross_entropy(logits.movedim(-1, 1), batch["labels"], reduction="none")  # [B, ...]
    return token_losses.flatten(1).mean(1) if token_losses.ndim > 1 else token_losses


def toy_batch(batch: int, shape: tuple[int, ...], classes: int = 3):
    generator = torch.Generator().manual_seed(batch)
    return {
        "x": torch.randn(batch, *shape, generator=generator, dtype=torch.float64),
        "labels": torch.randint(0, classes, (batch, *shape[:-1]), generator=generator),
    }


@pytest.mark.parametrize("batch_size", [1, 4])
@pytest.mark.parametrize("shape", [(6,), (5, 6), (2, 3, 6)], ids=["2d", "3d", "4d"])
def test_toy_models_with_bias_and_shared_module(batch_size, shape):
    model = toy_lora(SharedTwice(), ["inner", "head"], lora_bias=True)
    batch = toy_batch(batch_size, shape)
    with LoraGradientCapture(model) as capture:
        capture.backward(toy_losses(model, batch))
    expected = loop_per_sample_grads(model, batch, loss_fn=toy_losses)
    assert any(name.endswith("lora_B.default.bias") for name in expected)
    captured = capture.per_sample_gradients()
    for name in expected:
        assert_close(captured[name], expected[name], what=name)
    flat = flatten(expected)
    for method in ("ghost", "materialize"):
        capture.gram_method = method
        assert_close(capture.gram(), flat @ flat.T, what=f"gram ({method})")


def test_frozen_lora_a_is_not_captured():
    model = toy_lora(nn.Sequential(nn.Linear(6, 6), nn.Tanh(), nn.Linear(6, 3)), ["0", "2"])
    for name, param in model.named_parameters():
        if "lora_A" in name:
            param.requires_grad_(False)
    batch = toy_batch(3, (6,))
    with LoraGradientCapture(model) as capture:
        capture.backward(toy_losses(model, batch))
    assert all("lora_B" in name for name in capture.parameters)
    expected = loop_per_sample_grads(model, batch, loss_fn=toy_losses)
    captured = capture.per_sample_gradients()
    for name in expected:
        assert_close(captured[name], expected[name], what=name)


def test_lora_dropout_captures_the_dropped_input():
    # Samples are independent under dropout too, but each draws its own mask, so compare with the batch gradient of
    # the same pass: Σ_i ∇ℓ_i must equal autograd's gradient of Σ_i ℓ_i only if the post-dropout input was kept.
    model = toy_lora(nn.Sequential(nn.Linear(6, 6), nn.Tanh(), nn.Linear(6, 3)), ["0", "2"], lora_dropout=0.5).train()
    batch = toy_batch(4, (5, 6))
    with LoraGradientCapture(model) as capture:
        toy_losses(model, batch).sum().backward()
    combined = capture.combine(torch.ones(4, dtype=torch.float64))
    for name, param in capture.parameters.items():
        assert_close(combined[name], param.grad, what=name)


def test_autocast_bf16_reads_out_in_float32():
    model = toy_lora(nn.Sequential(nn.Linear(6, 6), nn.Tanh(), nn.Linear(6, 3)), ["0", "2"]).float()
    batch = {k: v.float() if v.is_floating_point() else v for k, v in toy_batch(4, (5, 6)).items()}
    with LoraGradientCapture(model) as capture, torch.autocast("cpu", dtype=torch.bfloat16):
        toy_losses(model, batch).sum().backward()
    assert capture.gram().dtype == torch.float32
    combined = capture.combine(torch.ones(4))
    for name, param in capture.parameters.items():
        assert combined[name].dtype == param.dtype == torch.float32
        assert_close(combined[name], param.grad, rtol=2e-2, what=name)


# ---- refusals ------------------------------------------------------------------------------------------------------


def test_refuses_model_without_lora():
    with pytest.raises(ValueError, match="get_peft_model"):
        LoraGradientCapture(nn.Sequential(nn.Linear(4, 4)))
    model = toy_lora(nn.Sequential(nn.Linear(4, 4)), ["0"])
    for param in model.parameters():
        param.requires_grad_(False)
    with pytest.raises(ValueError, match="VmapPerSampleGradients"):
        LoraGradientCapture(model)


def test_refuses_uncovered_trainable_parameters_unless_not_strict():
    model = toy_lora(nn.Sequential(nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 3)), ["0"], modules_to_save=["2"])
    with pytest.raises(ValueError, match="strict=False"):
        LoraGradientCapture(model)
    assert all("lora_" in name for name in LoraGradientCapture(model, strict=False).parameters)


def test_refuses_batch_norm_in_training_mode():
    model = toy_lora(nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4), nn.Linear(4, 3)), ["0", "2"])
    capture = LoraGradientCapture(model)
    with pytest.raises(ValueError, match=r"BatchNorm1d.*eval\(\)"):
        with capture:
            pass
    assert _hook_counts(model) == 0
    model.eval()
    with capture:
        capture.backward(toy_losses(model, toy_batch(3, (4,))))
    assert capture.gram().shape == (3, 3)


def test_refuses_dora():
    model = toy_lora(nn.Sequential(nn.Linear(4, 4)), ["0"], use_dora=True)
    with pytest.raises(ValueError, match="use_dora=False"):
        LoraGradientCapture(model)


def test_refuses_per_sample_weights_shape_and_bad_options():
    with pytest.raises(ValueError, match="gram_method"):
        LoraGradientCapture(tiny_gpt2_lora(1), gram_method="exact")
    model = tiny_gpt2_lora(1)
    with LoraGradientCapture(model) as capture:
        losses = reference_losses(model, gpt2_batch(3))
        with pytest.raises(ValueError, match=r"shape \[B\]"):
            capture.backward(losses.sum())
        capture.backward(losses)
    with pytest.raises(ValueError, match="Expected 3 coefficients"):
        capture.combine(torch.ones(2, dtype=torch.float64))


class TwoHeads(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Linear(4, 4)
        self.used = nn.Linear(4, 3)
        self.unused = nn.Linear(4, 3)

    def forward(self, x):
        hidden = torch.tanh(self.body(x))
        self.unused(hidden)  # runs, but never reaches the loss
        return self.used(hidden)


def test_layer_outside_the_loss_has_zero_gradient():
    model = toy_lora(TwoHeads(), ["body", "used", "unused"])
    batch = toy_batch(3, (4,))
    with LoraGradientCapture(model) as capture:
        capture.backward(toy_losses(model, batch))
    expected = loop_per_sample_grads(model, batch, loss_fn=toy_losses)
    captured = capture.per_sample_gradients()
    for name in expected:
        assert_close(captured[name], expected[name], what=name)
    assert all(captured[n].abs().max() == 0 for n in captured if ".unused." in n)
    unused = [n for n in capture.combine(torch.ones(3, dtype=torch.float64)) if ".unused." in n]
    assert unused and all(capture.combine(torch.ones(3, dtype=torch.float64))[n].abs().max() == 0 for n in unused)


def test_two_batch_sizes_in_one_block_are_refused():
    model = toy_lora(TwoHeads(), ["body", "used"])
    with LoraGradientCapture(model) as capture:
        capture.backward(toy_losses(model, toy_batch(3, (4,))))
        capture.backward(toy_losses(model, toy_batch(2, (4,))))
    with pytest.raises(ValueError, match="one concatenated batch"):
        capture.gram()
