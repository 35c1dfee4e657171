"""Projection maths vs explicit materialised projections (torch.linalg.lstsq on flattened gradients), float64."""

import pytest
import torch

from hf_unlearn.gradients import LoraGradientCapture

from ..testing_utils import assert_close, flatten, gpt2_batch, loop_per_sample_grads, reference_losses, tiny_gpt2_lora
from .projection_reference import (
    joint_gram_blocks,
    orthogonal_projection_coefficients,
    orthograd_direction,
    projection_diagnostics,
    rank_one_projection_coefficients,
    surrogate_loss,
)


def retain_gradients(case: str, generator: torch.Generator) -> torch.Tensor:
    """G [P, k] with a known structure."""
    if case == "full_rank":
        return torch.randn(40, 6, generator=generator, dtype=torch.float64)
    if case == "duplicated":  # duplicated samples, a scaled copy and an empty (all-padding) sample: rank 4 of k = 8
        base = torch.randn(40, 4, generator=generator, dtype=torch.float64)
        return torch.cat([base, base[:, :2], 3 * base[:, 3:], torch.zeros(40, 1, dtype=torch.float64)], 1)
    if case == "wide":  # more samples than parameters
        return torch.randn(4, 7, generator=generator, dtype=torch.float64)
    raise ValueError(case)


def explicit_projection(G: torch.Tensor, g_f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Minimum-norm least squares on the materialised G (SVD-based gelsd)."""
    c = torch.linalg.lstsq(G, g_f[:, None], driver="gelsd").solution[:, 0]
    return c, G @ c


@pytest.mark.parametrize("case", ["full_rank", "duplicated", "wide"])
def test_projection_coefficients_match_lstsq(case):
    generator = torch.Generator().manual_seed(0)
    G = retain_gradients(case, generator)
    g_f = torch.randn(G.shape[0], generator=generator, dtype=torch.float64)
    c, rank = orthogonal_projection_coefficients(G.T @ G, G.T @ g_f)
    c_ref, projected_ref = explicit_projection(G, g_f)
    assert rank == int(torch.linalg.matrix_rank(G))
    assert_close(G @ c, projected_ref, what="G c")
    assert_close(c, c_ref, rtol=1e-7, what="c (minimum norm)")
    residual = g_f - G @ c
    assert (G.T @ residual).abs().max() <= 1e-10 * G.norm() * g_f.norm()


def test_projection_rtol_drops_weak_directions():
    generator = torch.Generator().manual_seed(1)
    G = torch.randn(30, 3, generator=generator, dtype=torch.float64)
    G[:, 2] = G[:, 0] + 1e-6 * torch.randn(30, generator=generator, dtype=torch.float64)  # near-dependent
    gram, cross = G.T @ G, G.T @ torch.randn(30, generator=generator, dtype=torch.float64)
    assert orthogonal_projection_coefficients(gram, cross)[1] == 3
    assert orthogonal_projection_coefficients(gram, cross, rtol=1e-9)[1] == 2


def test_all_zero_gram_projects_nothing():
    c, rank = orthogonal_projection_coefficients(torch.zeros(3, 3, dtype=torch.float64), torch.zeros(3))
    assert rank == 0 and torch.equal(c, torch.zeros(3, dtype=torch.float64))


@pytest.mark.parametrize("retain_weight", [0.0, 0.3])
@pytest.mark.parametrize("case", ["full_rank", "duplicated"])
def test_direction_matches_explicit_formula(case, retain_weight):
    generator = torch.Generator().manual_seed(2)
    G = retain_gradients(case, generator)
    g_f = torch.randn(G.shape[0], generator=generator, dtype=torch.float64)
    direction = orthograd_direction(G.T @ G, G.T @ g_f, retain_weight)
    d = G @ direction.retain_coefficients + direction.forget_coefficient * g_f
    _, projected = explicit_projection(G, g_f)
    expected = retain_weight * G.mean(1) - (1 - retain_weight) * (g_f - projected)
    assert_close(d, expected, what="d")
    if retain_weight == 0.0:  # the defining property: orthogonal to every per-sample retain gradient
        assert (G.T @ d).abs().max() <= 1e-10 * G.norm() * d.norm()
    # SGD along -d never lowers the forget loss to first order: ⟨g_f, d⟩ <= 0.
    assert g_f @ d <= 1e-12


def test_rank_one_projects_only_on_conflict():
    generator = torch.Generator().manual_seed(3)
    G = torch.randn(20, 4, generator=generator, dtype=torch.float64)
    mean = G.mean(1)
    for sign in (1.0, -1.0):
        g_f = torch.randn(20, generator=generator, dtype=torch.float64)
        g_f = g_f - (g_f @ mean) / (mean @ mean) * mean + sign * mean  # ⟨g_f, ḡ_r⟩ has the sign `sign`
        c, rank = rank_one_projection_coefficients(G.T @ G, G.T @ g_f)
        if sign > 0:
            expected = g_f - (g_f @ mean) / (mean @ mean) * mean
            assert rank == 1
            assert_close(g_f - G @ c, expected, what="GRU projection")
        else:
            assert rank == 0 and torch.equal(c, torch.zeros_like(c))
        direction = orthograd_direction(G.T @ G, G.T @ g_f, 0.0, rank_one=True)
        assert_close(direction.projection, c, what="rank-one direction")


@pytest.mark.parametrize("retain_weight", [0.0, 0.5])
def test_diagnostics_match_explicit_vectors(retain_weight):
    generator = torch.Generator().manual_seed(4)
    G = retain_gradients("duplicated", generator)
    g_f = torch.randn(G.shape[0], generator=generator, dtype=torch.float64)
    gram, cross = G.T @ G, G.T @ g_f
    direction = orthograd_direction(gram, cross, retain_weight)
    stats = projection_diagnostics(gram, cross, g_f @ g_f, direction)
    d = G @ direction.retain_coefficients + direction.forget_coefficient * g_f
    _, projected = explicit_projection(G, g_f)
    nonzero = G.norm(dim=0) > 0
    cosines = (G.T @ d)[nonzero].abs() / (d.norm() * G.norm(dim=0)[nonzero])
    assert stats["rank"] == 4
    assert_close(stats["removed_fraction"], projected.norm() / g_f.norm(), what="removed_fraction")
    assert_close(stats["residual_norm"], (g_f - projected).norm(), what="residual_norm")
    assert_close(stats["forget_retain_cosine"], torch.cosine_similarity(g_f, G.mean(1), 0), what="cosine")
    if retain_weight == 0.0:
        assert stats["max_retain_cosine"] < 1e-10
    else:
        assert_close(stats["max_retain_cosine"], cosines.max(), what="max_retain_cosine")


def test_joint_gram_blocks():
    generator = torch.Generator().manual_seed(5)
    G = torch.randn(30, 7, generator=generator, dtype=torch.float64)
    forget_mask = torch.tensor([True, False, False, True, False, True, False])
    retain_gram, cross, forget_sq_norm = joint_gram_blocks(G.T @ G, forget_mask)
    g_f = G[:, forget_mask].mean(1)
    assert_close(retain_gram, G[:, ~forget_mask].T @ G[:, ~forget_mask], what="retain Gram")
    assert_close(cross, G[:, ~forget_mask].T @ g_f, what="cross")
    assert_close(forget_sq_norm, g_f @ g_f, what="‖g_f‖²")


def test_refusals_name_the_fix():
    with pytest.raises(ValueError, match="retain batch is empty"):
        orthogonal_projection_coefficients(torch.zeros(0, 0), torch.zeros(0))
    gram = torch.eye(3)
    gram[1, 1] = float("nan")
    with pytest.raises(ValueError, match="NaN or inf losses.*lower the learning rate"):
        orthograd_direction(gram, torch.ones(3), 0.0)
    with pytest.raises(ValueError, match="Non-finite"):
        orthogonal_projection_coefficients(torch.eye(2), torch.tensor([1.0, float("inf")]))
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        orthograd_direction(torch.eye(2), torch.ones(2), 1.0)


@pytest.mark.parametrize("retain_weight", [0.0, 0.4])
def test_orthograd_step_on_gpt2_lora(retain_weight):
    """End to end on a real model: one capture of the concatenated forget+retain batch, the solve, and the surrogate
    loss whose gradient is d — against explicit flattened per-sample gradients and lstsq. The retain batch holds a
    duplicated sample, so G is rank-deficient."""
    model = tiny_gpt2_lora(2, seed=7)
    forget, retain = gpt2_batch(3, seed=8), gpt2_batch(4, seed=9)
    retain = {k: torch.cat([v, v[:1]]) for k, v in retain.items()}  # k = 5, rank 4
    joint = {k: torch.cat([forget[k], retain[k]]) for k in forget}
    forget_mask = torch.tensor([True] * 3 + [False] * 5)

    with LoraGradientCapture(model) as capture:
        capture.backward(reference_losses(model, joint))
    retain_gram, cross, forget_sq_norm = joint_gram_blocks(capture.gram(), forget_mask)
    direction = orthograd_direction(retain_gram, cross, retain_weight)
    assert direction.rank == 4
    forget_coefficients = torch.full((3,), direction.forget_coefficient / 3, dtype=torch.float64)
    joint_coefficients = torch.cat([forget_coefficients, direction.retain_coefficients])
    combined = flatten({n: g[None] for n, g in capture.combine(joint_coefficients).items()})[0]

    # The surrogate Σ a_i ℓ(r_i) + s·L_f, backpropagated normally, gives the same d in .grad.
    model.zero_grad()
    surrogate_loss(direction, reference_losses(model, retain), reference_losses(model, forget).mean()).backward()
    surrogate = torch.cat([p.grad.flatten() for p in capture.parameters.values()])

    G = flatten(loop_per_sample_grads(model, retain)).T  # [P, k]
    g_f = flatten(loop_per_sample_grads(model, forget)).mean(0)
    _, projected = explicit_projection(G, g_f)
    expected = retain_weight * G.mean(1) - (1 - retain_weight) * (g_f - projected)
    assert_close(combined, expected, what="combine(coefficients)")
    assert_close(surrogate, expected, what="surrogate-loss gradient")
    assert_close(forget_sq_norm, g_f @ g_f, what="‖g_f‖²")
    if retain_weight == 0.0:
        assert (G.T @ expected).abs().max() <= 1e-9 * G.norm(dim=0).max() * expected.norm()


@pytest.mark.parametrize("rank_one", [False, True])
def test_stacked_directions_and_diagnostics_equal_the_per_group_ones(rank_one):
    """Per-tensor projection solves n groups in one batch: each equals its own single solve, and the stacked
    diagnostics equal those of the concatenated direction computed from explicit vectors."""
    from hf_unlearn.methods.orthograd.projection import stacked_orthograd_directions, stacked_projection_diagnostics

    generator = torch.Generator().manual_seed(3)
    groups = [retain_gradients(case, generator) for case in ("full_rank", "duplicated", "wide")]
    k = 6
    groups = [G[:, :k] if G.shape[1] >= k else torch.cat([G, G[:, : k - G.shape[1]]], 1) for G in groups]
    forget = [torch.randn(G.shape[0], generator=generator, dtype=torch.float64) for G in groups]
    grams = torch.stack([G.T @ G for G in groups])
    cross = torch.stack([G.T @ g for G, g in zip(groups, forget, strict=True)])
    stacked = stacked_orthograd_directions(grams, cross, 0.3, rank_one=rank_one)
    pieces = []
    for index, (G, g) in enumerate(zip(groups, forget, strict=True)):
        single = orthograd_direction(G.T @ G, G.T @ g, 0.3, rank_one=rank_one)
        assert_close(stacked.retain_coefficients[index], single.retain_coefficients, what=f"group {index}")
        pieces.append(G @ single.retain_coefficients + single.forget_coefficient * g)
    d, G_all = torch.cat(pieces), torch.cat(groups, 0)  # the concatenated direction and per-sample gradients
    diagnostics = stacked_projection_diagnostics(grams, cross, torch.stack([g @ g for g in forget]), stacked)
    cosines = (G_all.T @ d).abs() / (G_all.norm(dim=0) * d.norm())
    assert diagnostics["max_retain_cosine"].item() == pytest.approx(cosines.max().item(), rel=1e-10)
    mean = G_all.mean(1)
    g_f = torch.cat(forget)
    assert diagnostics["forget_retain_cosine"].item() == pytest.approx(
        (g_f @ mean / (g_f.norm() * mean.norm())).item(), rel=1e-10
    )
