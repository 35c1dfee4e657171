"""Single-group views of OrthoGrad's stacked projection (`hf_unlearn.methods.orthograd.projection`), for tests.

The library solves every projection stacked ([n, k, k], one group for the global projection, one per tensor for the
per-tensor one); these wrappers call it with n = 1 so that tests can state the maths for one Gram and check the code
path the trainer runs against explicit materialised projections.
"""

import torch
from torch import Tensor

from hf_unlearn.methods.orthograd.projection import (
    OrthoGradDirection,
    stacked_orthograd_directions,
    stacked_projection_diagnostics,
)
from hf_unlearn.methods.orthograd.projection import joint_gram_blocks as stacked_joint_gram_blocks


def orthograd_direction(
    gram: Tensor, cross: Tensor, retain_mix: float, rtol: float | None = None, rank_one: bool = False
) -> OrthoGradDirection:
    """``d = α·ḡ_r − (1 − α)·P⊥ g_f`` as coefficients, for one Gram [k, k] and cross terms [k]."""
    if gram.ndim != 2:
        raise ValueError(f"The retain Gram must be square [k, k], got {tuple(gram.shape)}.")
    stacked = stacked_orthograd_directions(gram[None], cross[None], retain_mix, rtol, rank_one=rank_one)
    return OrthoGradDirection(
        stacked.retain_coefficients[0], stacked.forget_coefficient, stacked.projection[0], stacked.rank
    )


def orthogonal_projection_coefficients(gram: Tensor, cross: Tensor, rtol: float | None = None) -> tuple[Tensor, int]:
    """``c = (GᵀG)⁺ Gᵀ g_f`` and the numerical rank kept."""
    direction = orthograd_direction(gram, cross, 0.0, rtol)
    return direction.projection, direction.rank


def rank_one_projection_coefficients(gram: Tensor, cross: Tensor) -> tuple[Tensor, int]:
    """The GRU-style coefficients (projection against ḡ_r only, when they conflict) and 1 or 0."""
    direction = orthograd_direction(gram, cross, 0.0, rank_one=True)
    return direction.projection, direction.rank


def projection_diagnostics(
    gram: Tensor, cross: Tensor, forget_sq_norm: Tensor | float, direction: OrthoGradDirection
) -> dict[str, Tensor]:
    stacked = OrthoGradDirection(
        direction.retain_coefficients[None], direction.forget_coefficient, direction.projection[None], direction.rank
    )
    forget_sq_norm = torch.as_tensor(forget_sq_norm, dtype=gram.dtype, device=gram.device)
    return stacked_projection_diagnostics(gram[None], cross[None], forget_sq_norm[None], stacked)


def joint_gram_blocks(gram: Tensor, forget_mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``(retain Gram [k, k], Gᵀg_f [k], ‖g_f‖²)`` of one joint Gram, ``g_f`` the mean forget gradient."""
    retain_gram, cross, forget_sq_norm = stacked_joint_gram_blocks(gram[None], forget_mask)
    return retain_gram[0], cross[0], forget_sq_norm[0]


def surrogate_loss(direction: OrthoGradDirection, retain_losses: Tensor, forget_loss: Tensor) -> Tensor:
    """``Σ_i a_i ℓ(r_i) + s·L_f`` with ``a, s`` constants: its gradient is ``d``."""
    return (direction.retain_coefficients.detach().to(retain_losses.dtype) * retain_losses).sum() + (
        direction.forget_coefficient * forget_loss
    )
