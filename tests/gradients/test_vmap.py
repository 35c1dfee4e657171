"""The generic torch.func path vs a per-sample backward loop, and vs the fused capture on LoRA models."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from hf_unlearn.gradients import LoraGradientCapture, VmapPerSampleGradients

from ..testing_utils import (
    assert_close,
    flatten,
    gpt2_batch,
    loop_per_sample_grads,
    reference_gpt2,
    reference_losses,
    tiny_whisper_lora,
    whisper_batch,
)


def mlp_losses(model, batch):
    return F.cross_entropy(model(batch["x"]), batch["labels"], reduction="none")


def mlp_batch(batch_size: int):
    generator = torch.Generator().manual_seed(batch_size)
    return {
        "x": torch.randn(batch_size, 5, generator=generator, dtype=torch.float64),
        "labels": torch.randint(0, 3, (batch_size,), generator=generator),
    }


def check_readouts(grads: VmapPerSampleGradients, expected: dict[str, torch.Tensor]) -> None:
    captured = grads.per_sample_gradients()
    assert captured.keys() == expected.keys()
    for name in expected:
        assert_close(captured[name], expected[name], what=name)
    flat = flatten(expected)
    assert_close(grads.gram(), flat @ flat.T, what="gram")
    generator = torch.Generator().manual_seed(0)
    vector = {n: torch.randn(g.shape[1:], generator=generator, dtype=torch.float64) for n, g in expected.items()}
    assert_close(grads.dot(vector), flat @ flatten({n: v[None] for n, v in vector.items()})[0], what="dot")
    coefficients = torch.randn(flat.shape[0], generator=generator, dtype=torch.float64)
    combined = flatten({n: g[None] for n, g in grads.combine(coefficients).items()})[0]
    assert_close(combined, coefficients @ flat, what="combine")


@pytest.mark.parametrize("batch_size", [1, 4])
@pytest.mark.parametrize("chunk_size", [None, 3])
def test_full_fine_tuning_mlp(batch_size, chunk_size):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 7), nn.LayerNorm(7), nn.Tanh(), nn.Linear(7, 3)).double()
    batch = mlp_batch(batch_size)
    grads = VmapPerSampleGradients(model, mlp_losses, chunk_size=chunk_size)
    losses = grads.compute(batch)
    assert_close(losses, mlp_losses(model, batch).detach(), what="losses")
    check_readouts(grads, loop_per_sample_grads(model, batch, loss_fn=mlp_losses))


def test_full_fine_tuning_gpt2_subset_of_parameters():
    model = reference_gpt2(seed=1)
    batch = gpt2_batch(3, seed=2)
    for name, param in model.named_parameters():
        param.requires_grad_(".h.1." in name)  # the last block only: any subset works
    grads = VmapPerSampleGradients(model, reference_losses, chunk_size=2)
    grads.compute(batch)
    check_readouts(grads, loop_per_sample_grads(model, batch))


def test_agrees_with_fused_capture_on_lora():
    model = tiny_whisper_lora(2, seed=3)
    batch = whisper_batch(4, seed=4)
    with LoraGradientCapture(model) as capture:
        capture.backward(reference_losses(model, batch))
    grads = VmapPerSampleGradients(model, reference_losses)
    grads.compute(batch)
    assert_close(grads.gram(), capture.gram(), what="gram")
    fused = capture.per_sample_gradients()
    for name, grad in grads.per_sample_gradients().items():
        assert_close(grad, fused[name], what=name)


def test_refusals():
    model = nn.Sequential(nn.Linear(5, 4), nn.BatchNorm1d(4), nn.Linear(4, 3)).double()
    with pytest.raises(ValueError, match="eval"):
        VmapPerSampleGradients(model, mlp_losses).compute(mlp_batch(3))
    frozen = nn.Linear(2, 2).requires_grad_(False)
    with pytest.raises(ValueError, match="requires_grad"):
        VmapPerSampleGradients(frozen, mlp_losses)
    grads = VmapPerSampleGradients(nn.Linear(5, 3).double(), mlp_losses)
    with pytest.raises(ValueError, match="compute"):
        grads.gram()
    with pytest.raises(ValueError, match="same non-zero size"):
        grads.compute({"x": torch.randn(3, 5, dtype=torch.float64), "labels": torch.zeros(2, dtype=torch.long)})


def test_data_dependent_loss_gets_a_clear_error():
    def checking_loss(model, batch):
        if bool((batch["labels"] < 0).any()):
            raise AssertionError("unreachable")
        return mlp_losses(model, batch)

    grads = VmapPerSampleGradients(nn.Linear(5, 3).double(), checking_loss)
    with pytest.raises(ValueError, match="attention_mask"):
        grads.compute(mlp_batch(2))
