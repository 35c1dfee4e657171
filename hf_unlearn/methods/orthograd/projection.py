"""OrthoGrad's projection, solved in the k-dimensional span of the per-sample retain gradients (DESIGN §2.2).

Everything here works on small matrices only: the retain Gram ``K = GᵀG`` [k, k], the cross terms ``b = Gᵀ g_f`` [k]
and the scalar ``‖g_f‖²``, all of which the capture produces without forming a P-sized vector. The result is a set
of coefficients, so the direction is ``d = Σ_i a_i g_i + s·g_f``, the gradient of the surrogate loss
``Σ_i a_i ℓ(r_i) + s·L_f`` with ``a, s`` held fixed: that is how the Trainer hands ``d`` to any optimizer.

Sign convention: ``g_f = ∇L_f`` is the gradient of the forget *task* loss, the one unlearning raises. The optimizer
*descends* along ``d`` (SGD: ``θ ← θ − η d``), so the forget term enters ``d`` with a negative coefficient. For an
unlearning objective ``L_u`` to be minimised (e.g. NPO's), pass ``g_f = −∇L_u``.
"""

from dataclasses import dataclass

import torch
from torch import Tensor


def _check(gram: Tensor, cross: Tensor | None = None) -> None:
    if gram.ndim != 2 or gram.shape[0] != gram.shape[1]:
        raise ValueError(f"The retain Gram must be square [k, k], got {tuple(gram.shape)}.")
    if gram.shape[0] == 0:
        raise ValueError("The retain batch is empty (k = 0): OrthoGrad needs at least one retain sample per step.")
    if cross is not None and cross.shape != gram.shape[:1]:
        raise ValueError(f"Cross terms Gᵀg_f must have shape [{gram.shape[0]}], got {tuple(cross.shape)}.")
    if not bool(torch.isfinite(gram).all()) or (cross is not None and not bool(torch.isfinite(cross).all())):
        raise ValueError(
            "Non-finite per-sample gradients (NaN/inf in the Gram or cross terms). Check for NaN or inf losses "
            "(e.g. an example with no target token), lower the learning rate, or train in float32/bf16 rather than "
            "fp16."
        )


def default_rtol(k: int, dtype: torch.dtype) -> float:
    """``10·k·eps``: eigenvalues of a k×k Gram of exactly dependent gradients come out at about ``k·eps·λ_max``, and
    the Gram carries the rounding of its dtype, so directions weaker than that are noise, not retain samples."""
    return 10.0 * max(k, 1) * torch.finfo(dtype).eps


def orthogonal_projection_coefficients(gram: Tensor, cross: Tensor, rtol: float | None = None) -> tuple[Tensor, int]:
    """Coefficients of the projection of ``g_f`` onto span(G): ``c = (GᵀG)⁺ Gᵀ g_f``, so ``P⊥ g_f = g_f − G c``.

    Solved by the symmetric eigendecomposition ``K = V Λ Vᵀ`` with eigenvalues below ``rtol·λ_max`` dropped, i.e.
    ``c = V_r Λ_r⁻¹ V_rᵀ b``: the minimum-norm least-squares solution when k exceeds rank(G) (duplicated or padded
    samples), and the pseudo-inverse of a numerically regularised G otherwise.

    Args:
        gram (`Tensor` [k, k]): ``K = GᵀG``.
        cross (`Tensor` [k]): ``b = Gᵀ g_f``.
        rtol (`float`, *optional*): relative eigenvalue cut-off; defaults to [`default_rtol`].

    Returns:
        `(c, rank)`: ``c`` [k] in the Gram's dtype and the number of kept directions (the numerical rank of G).
    """
    _check(gram, cross)
    cross = cross.to(gram)
    rtol = default_rtol(gram.shape[0], gram.dtype) if rtol is None else rtol
    eigenvalues, eigenvectors = torch.linalg.eigh((gram + gram.T) / 2)
    keep = (eigenvalues > rtol * eigenvalues[-1]) & (eigenvalues > 0)  # an all-zero Gram keeps nothing
    kept_vectors = eigenvectors[:, keep]  # [k, rank]
    coefficients = kept_vectors @ ((kept_vectors.T @ cross) / eigenvalues[keep])
    return coefficients, int(keep.sum())


def rank_one_projection_coefficients(gram: Tensor, cross: Tensor) -> tuple[Tensor, int]:
    """GRU-style ablation: project ``g_f`` against the mean retain gradient ``ḡ_r = G 1/k`` only, and only when they
    conflict.

    The forget term moves θ along ``+g_f`` (see the module's sign convention), which changes the retain loss by
    ``∝ ⟨ḡ_r, g_f⟩``; they conflict when that is positive. Then ``g_f − (⟨g_f, ḡ_r⟩/‖ḡ_r‖²) ḡ_r = g_f − G c`` with
    ``c_i = 1ᵀb / 1ᵀK1`` for every i (the 1/k of ḡ_r cancels), so the result plugs into [`orthograd_direction`]
    exactly like the full projection.

    Returns:
        `(c, rank)`: rank is 1 when a projection was applied, 0 otherwise.
    """
    _check(gram, cross)
    cross = cross.to(gram)
    along = cross.sum()  # k·⟨g_f, ḡ_r⟩
    mean_sq = gram.sum()  # k²·‖ḡ_r‖²
    if along <= 0 or mean_sq <= 0:
        return torch.zeros_like(cross), 0
    return torch.full_like(cross, float(along / mean_sq)), 1


@dataclass
class OrthoGradDirection:
    """``d = Σ_i retain_coefficients[i]·g_i + forget_coefficient·g_f``; descend along it.

    Attributes:
        retain_coefficients (`Tensor` [k]): ``a_i = α/k + (1 − α)·c_i``.
        forget_coefficient (`float`): ``s = −(1 − α)``. With ``g_f = (1/m) Σ_j ∇ℓ(f_j)`` the per-forget-sample
            coefficients are ``s/m``.
        projection (`Tensor` [k]): ``c``, the coefficients of ``G c``, the part of ``g_f`` removed.
        rank (`int`): directions of span(G) projected out.
    """

    retain_coefficients: Tensor
    forget_coefficient: float
    projection: Tensor
    rank: int

    def surrogate_loss(self, retain_losses: Tensor, forget_loss: Tensor) -> Tensor:
        """``Σ_i a_i ℓ(r_i) + s·L_f`` with ``a, s`` constants: its gradient is ``d`` (``retain_losses`` are the
        per-example ℓ(r_i) [k] of the same retain batch, ``forget_loss`` the L_f whose gradient was g_f)."""
        return (self.retain_coefficients.detach().to(retain_losses.dtype) * retain_losses).sum() + (
            self.forget_coefficient * forget_loss
        )


def orthograd_direction(
    gram: Tensor, cross: Tensor, retain_mix: float, rtol: float | None = None, rank_one: bool = False
) -> OrthoGradDirection:
    """OrthoGrad's direction as coefficients (DESIGN §2.2):

        d = α·ḡ_r − (1 − α)·P⊥ g_f,    P⊥ g_f = g_f − G c,    ḡ_r = (1/k) Σ_i g_i
          = Σ_i [α/k + (1 − α)·c_i]·g_i − (1 − α)·g_f

    With α = 0 and SGD the step is orthogonal to every g_i, so no retain loss moves to first order; α > 0 adds
    plain retain descent. Adam preconditions ``d``, so orthogonality then only holds approximately.

    Args:
        gram (`Tensor` [k, k]): retain Gram ``GᵀG``.
        cross (`Tensor` [k]): ``Gᵀ g_f``, ``g_f = ∇L_f``.
        retain_mix (`float`): α ∈ [0, 1).
        rtol (`float`, *optional*): eigenvalue cut-off of [`orthogonal_projection_coefficients`].
        rank_one (`bool`, *optional*, defaults to `False`): the GRU-style ablation
            ([`rank_one_projection_coefficients`]) instead of the per-sample projection.
    """
    if not 0.0 <= retain_mix < 1.0:
        raise ValueError(f"retain_mix (α) must be in [0, 1), got {retain_mix}; at α = 1 nothing is unlearned.")
    if rank_one:
        projection, rank = rank_one_projection_coefficients(gram, cross)
    else:
        projection, rank = orthogonal_projection_coefficients(gram, cross, rtol)
    k = gram.shape[0]
    retain_coefficients = retain_mix / k + (1.0 - retain_mix) * projection
    return OrthoGradDirection(retain_coefficients, -(1.0 - retain_mix), projection, rank)


def joint_gram_blocks(
    gram: Tensor, forget_mask: Tensor, forget_weights: Tensor | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """Split the Gram of one concatenated forget+retain batch into what OrthoGrad needs.

    Capturing both batches in one forward/backward gives ``K`` over all m + k samples. With
    ``g_f = Σ_j w_j ∇ℓ(f_j)`` (default ``w_j = 1/m``, the mean forget loss), ``Gᵀ g_f = K_rf w`` and
    ``‖g_f‖² = wᵀ K_ff w``: no second pass for the forget gradient.

    Returns:
        `(retain_gram [k, k], cross [k], forget_sq_norm [])`.
    """
    forget_mask = forget_mask.to(device=gram.device, dtype=torch.bool)
    if forget_weights is None:
        num_forget = int(forget_mask.sum())
        forget_weights = torch.full((num_forget,), 1.0 / max(num_forget, 1), dtype=gram.dtype, device=gram.device)
    forget_weights = forget_weights.to(gram)
    retain_rows = gram[~forget_mask]
    retain_gram = retain_rows[:, ~forget_mask]
    cross = retain_rows[:, forget_mask] @ forget_weights
    forget_sq_norm = forget_weights @ gram[forget_mask][:, forget_mask] @ forget_weights
    return retain_gram, cross, forget_sq_norm


def projection_diagnostics(
    gram: Tensor, cross: Tensor, forget_sq_norm: Tensor | float, direction: OrthoGradDirection
) -> dict[str, Tensor]:
    """Diagnostics from the k×k quantities alone (0-d tensors; call ``.item()`` when logging).

    - ``rank``: numerical rank of G kept by the solve.
    - ``removed_fraction``: ``‖G c‖ / ‖g_f‖`` (``‖G c‖² = cᵀKc``), the share of the forget gradient's norm that lies
      in span(G) and was projected out; 1 means nothing was left to unlearn with.
    - ``residual_norm``: ``‖g_f − G c‖ = sqrt(‖g_f‖² − 2cᵀb + cᵀKc)``.
    - ``max_retain_cosine``: ``max_i |⟨d, g_i⟩| / (‖d‖·‖g_i‖)`` over retain samples with g_i ≠ 0, with
      ``⟨d, g_i⟩ = (K a)_i + s·b_i``; about 0 for α = 0 (the defining property), larger for α > 0 by design.
    - ``forget_retain_cosine``: ``cos(g_f, ḡ_r) = 1ᵀb / (‖g_f‖·sqrt(1ᵀK1))``; positive means they conflict.
    """
    return grouped_projection_diagnostics([(gram, cross, forget_sq_norm, direction)])


def grouped_projection_diagnostics(
    groups: list[tuple[Tensor, Tensor, Tensor | float, OrthoGradDirection]],
) -> dict[str, Tensor]:
    """[`projection_diagnostics`] of a direction solved separately on disjoint groups of parameters (per-tensor
    projection): inner products over all parameters are sums of the groups' ones, so every quantity is the
    one of the whole concatenated direction; ``rank`` is the total number of directions removed."""
    gram = torch.stack([g for g, _, _, _ in groups])
    cross = torch.stack([c.to(gram) for _, c, _, _ in groups])
    forget_sq_norm = torch.stack([torch.as_tensor(f, dtype=gram.dtype, device=gram.device) for _, _, f, _ in groups])
    direction = OrthoGradDirection(
        torch.stack([d.retain_coefficients.to(gram) for *_, d in groups]),
        groups[0][3].forget_coefficient,
        torch.stack([d.projection.to(gram) for *_, d in groups]),
        sum(d.rank for *_, d in groups),
    )
    return stacked_projection_diagnostics(gram, cross, forget_sq_norm, direction)


def stacked_projection_diagnostics(
    gram: Tensor, cross: Tensor, forget_sq_norm: Tensor, direction: OrthoGradDirection
) -> dict[str, Tensor]:
    """The diagnostics of groups solved separately, stacked on dim 0 (``gram`` [n, k, k], ``cross`` [n, k],
    ``forget_sq_norm`` [n], ``direction`` from [`stacked_orthograd_directions`])."""
    c, a, s = direction.projection.to(gram), direction.retain_coefficients.to(gram), direction.forget_coefficient
    forget_sq_norm = forget_sq_norm.to(gram)

    def quad(x: Tensor, y: Tensor) -> Tensor:  # Σ_groups xᵀ K y
        return torch.einsum("nk,nkl,nl->", x, gram, y)

    removed_sq = quad(c, c)
    forget_sq = forget_sq_norm.sum()
    residual_sq = forget_sq - 2 * (c * cross).sum() + removed_sq
    update_dot_retain = torch.einsum("nkl,nl->k", gram, a) + s * cross.sum(0)  # ⟨d, g_i⟩ [k]
    update_sq = quad(a, a) + 2 * s * (a * cross).sum() + s * s * forget_sq
    retain_norms = gram.diagonal(dim1=-2, dim2=-1).sum(0).clamp_min(0).sqrt()
    tiny = torch.finfo(gram.dtype).tiny
    forget_norm = forget_sq.clamp_min(0).sqrt()
    update_norm = update_sq.clamp_min(0).sqrt()
    nonzero = retain_norms > 0
    cosines = update_dot_retain[nonzero].abs() / (update_norm * retain_norms[nonzero]).clamp_min(tiny)
    return {
        "rank": torch.tensor(float(direction.rank)),
        "removed_fraction": removed_sq.clamp_min(0).sqrt() / forget_norm.clamp_min(tiny),
        "residual_norm": residual_sq.clamp_min(0).sqrt(),
        "max_retain_cosine": cosines.max() if cosines.numel() else update_norm.new_zeros(()),
        "forget_retain_cosine": cross.sum() / (forget_norm * gram.sum().clamp_min(0).sqrt()).clamp_min(tiny),
    }


def stacked_orthograd_directions(
    gram: Tensor, cross: Tensor, retain_mix: float, rtol: float | None = None, rank_one: bool = False
) -> OrthoGradDirection:
    """[`orthograd_direction`] for n independent groups at once (per-tensor projection): ``gram`` [n, k, k],
    ``cross`` [n, k]; one batched eigen-solve instead of n small ones. Fields are stacked on dim 0 ([n, k]) and
    ``rank`` is the total over groups. Each group is solved exactly as the single-group function solves it."""
    if not 0.0 <= retain_mix < 1.0:
        raise ValueError(f"retain_mix (α) must be in [0, 1), got {retain_mix}; at α = 1 nothing is unlearned.")
    if gram.ndim != 3 or gram.shape[-1] != gram.shape[-2] or cross.shape != gram.shape[:2]:
        raise ValueError(f"Expected gram [n, k, k] and cross [n, k], got {tuple(gram.shape)}, {tuple(cross.shape)}.")
    _check(gram.sum(0), cross.sum(0))  # empty retain batch; NaN/inf anywhere in the stack stays non-finite in sums
    cross = cross.to(gram)
    k = gram.shape[-1]
    if rank_one:
        along = cross.sum(-1)  # k·⟨g_f, ḡ_r⟩ per group
        mean_sq = gram.sum((-1, -2))
        conflict = (along > 0) & (mean_sq > 0)
        value = torch.where(
            conflict, along / mean_sq.where(conflict, torch.ones_like(mean_sq)), torch.zeros_like(along)
        )
        projection, rank = value[:, None].expand(-1, k).clone(), int(conflict.sum())
    else:
        rtol = default_rtol(k, gram.dtype) if rtol is None else rtol
        eigenvalues, eigenvectors = torch.linalg.eigh((gram + gram.transpose(-1, -2)) / 2)
        keep = (eigenvalues > rtol * eigenvalues[:, -1:]) & (eigenvalues > 0)
        inverse = torch.where(
            keep, 1.0 / eigenvalues.where(keep, torch.ones_like(eigenvalues)), torch.zeros_like(eigenvalues)
        )
        projection = eigenvectors @ (inverse * (eigenvectors.transpose(-1, -2) @ cross[..., None])[..., 0])[..., None]
        projection, rank = projection[..., 0], int(keep.sum())
    retain_coefficients = retain_mix / k + (1.0 - retain_mix) * projection
    return OrthoGradDirection(retain_coefficients, -(1.0 - retain_mix), projection, rank)
