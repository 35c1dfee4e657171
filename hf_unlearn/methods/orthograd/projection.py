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


def joint_gram_blocks(grams: Tensor, forget_mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Split the Grams of one concatenated forget+retain batch into what OrthoGrad needs, per group.

    Capturing both batches in one forward/backward gives ``K`` over all m + k samples (``grams`` [n, m+k, m+k], one
    per group: n = 1 for the global projection, one per tensor otherwise). With ``g_f = (1/m) Σ_j ∇φ(f_j)``,
    ``Gᵀ g_f = K_rf·1/m`` and ``‖g_f‖² = 1ᵀK_ff1/m²``: no second pass for the forget gradient.

    Returns:
        `(retain_gram [n, k, k], cross [n, k], forget_sq_norm [n])`.
    """
    mask = forget_mask.to(device=grams.device, dtype=torch.bool)
    num_forget = int(mask.sum())
    retain_rows = grams[:, ~mask]
    retain_gram = retain_rows[:, :, ~mask]
    cross = retain_rows[:, :, mask].sum(-1) / num_forget
    forget_sq_norm = grams[:, mask][:, :, mask].sum((-1, -2)) / num_forget**2
    return retain_gram, cross, forget_sq_norm


def stacked_projection_diagnostics(
    gram: Tensor, cross: Tensor, forget_sq_norm: Tensor, direction: OrthoGradDirection
) -> dict[str, Tensor]:
    """Diagnostics from the k×k quantities alone, of n groups solved separately and stacked on dim 0 (``gram``
    [n, k, k], ``cross`` [n, k], ``forget_sq_norm`` [n], ``direction`` from [`stacked_orthograd_directions`]).
    Inner products over all parameters are sums of the groups' ones, so each quantity is the one of the whole
    concatenated direction (0-d tensors; call ``.item()`` when logging):

    - ``rank``: directions of span(G) removed by the solves (total over groups).
    - ``removed_fraction``: ``‖G c‖ / ‖g_f‖`` (``‖G c‖² = cᵀKc``), the share of the forget gradient's norm that lies
      in span(G) and was projected out; 1 means nothing was left to unlearn with.
    - ``residual_norm``: ``‖g_f − G c‖ = sqrt(‖g_f‖² − 2cᵀb + cᵀKc)``.
    - ``max_retain_cosine``: ``max_i |⟨d, g_i⟩| / (‖d‖·‖g_i‖)`` over retain samples with g_i ≠ 0, with
      ``⟨d, g_i⟩ = (K a)_i + s·b_i``; about 0 for α = 0 (the defining property), larger for α > 0 by design.
    - ``forget_retain_cosine``: ``cos(g_f, ḡ_r) = 1ᵀb / (‖g_f‖·sqrt(1ᵀK1))``; positive means they conflict.
    """
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
    """OrthoGrad's direction as coefficients, for n independent groups at once (n = 1: the global projection; one
    per tensor: the per-tensor projection): ``gram`` [n, k, k] (``K = GᵀG``), ``cross`` [n, k] (``b = Gᵀ g_f``).

        c = (GᵀG)⁺ Gᵀ g_f,    d = Σ_i [α/k + (1 − α)·c_i]·g_i − (1 − α)·g_f     (α = retain_mix ∈ [0, 1))

    ``c`` comes from the symmetric eigendecomposition ``K = V Λ Vᵀ`` with eigenvalues below ``rtol·λ_max`` dropped
    (``rtol`` defaults to [`default_rtol`]): the minimum-norm least-squares solution when k exceeds rank(G). With
    ``rank_one`` (the GRU-style ablation) ``g_f`` is projected against the mean retain gradient only, and only when
    they conflict (``⟨g_f, ḡ_r⟩ > 0``): ``c_i = 1ᵀb / 1ᵀK1`` for every i. One batched eigen-solve for all groups;
    fields are stacked on dim 0 ([n, k]) and ``rank`` is the total over groups."""
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
