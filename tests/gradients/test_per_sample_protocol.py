"""Both per-sample backends implement the one declared interface, `PerSampleGradients`, and agree through it."""

import inspect

import torch

from hf_unlearn.gradients import FusedGradientCapture, PerSampleGradients, VmapPerSampleGradients

from ..testing_utils import assert_close, gpt2_batch, reference_losses, tiny_gpt2_lora


MEMBERS = ["parameters", "batch_size", "gram", "dot", "combine", "squares", "per_sample_gradients", "clear"]


def test_the_protocol_declares_what_orthograd_reads():
    declared = {name for name in dir(PerSampleGradients) if not name.startswith("_")}
    assert declared == set(MEMBERS)


def test_both_backends_implement_it_with_the_same_parameters():
    for backend in (FusedGradientCapture, VmapPerSampleGradients):
        for name in MEMBERS:
            declared, implemented = getattr(PerSampleGradients, name), getattr(backend, name)
            assert isinstance(implemented, property) == isinstance(declared, property), (backend, name)
            if callable(declared):
                assert list(inspect.signature(implemented).parameters) == list(
                    inspect.signature(declared).parameters
                ), (backend, name)


def test_readouts_agree_through_the_protocol():
    model = tiny_gpt2_lora(2, seed=5)
    batch = gpt2_batch(3, seed=6)
    fused = FusedGradientCapture(model)
    with fused:
        fused.backward(reference_losses(model, batch))
    vmapped = VmapPerSampleGradients(model, reference_losses)
    vmapped.compute(batch)
    backends: list[PerSampleGradients] = [fused, vmapped]
    assert all(isinstance(backend, PerSampleGradients) for backend in backends)
    coefficients = torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64)
    assert fused.batch_size == vmapped.batch_size == 3
    assert_close(fused.gram(), vmapped.gram(), what="gram")
    for name, value in fused.gram(per_tensor=True).items():
        assert_close(value, vmapped.gram(per_tensor=True)[name], what=f"gram[{name}]")
    fused_combined, vmap_combined = fused.combine(coefficients), vmapped.combine(coefficients)
    fused_squares, vmap_squares = fused.squares(), vmapped.squares()
    for name in fused.parameters:
        assert_close(fused_combined[name], vmap_combined[name], what=f"combine[{name}]")
        assert_close(fused_squares[name], vmap_squares[name], what=f"squares[{name}]")
    for backend in backends:
        backend.clear()
