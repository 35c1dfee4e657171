"""Adam's diagonal preconditioner D for `projection_space="preconditioned"`, from per-sample gradients."""

import torch
from torch import Tensor

from ...distributed import all_gather_counts, all_reduce_mean_


class DiagonalPreconditioner:
    """``D = 1/(√v̂ + ε)`` per parameter, with the second moment of the step's per-sample gradients (forget and retain
    samples alike, over every process):

        v ← β2·v + (1 − β2)·(1/N) Σ_i g_i²,    v̂ = v/(1 − β2^t)

    Per-sample rather than the batch gradient: ``d`` lies in the span of the ``g_i``, so wherever ``d`` is non-zero
    some ``g_i`` is, and D stays bounded there. The batch gradient ``ĝ`` can vanish on coordinates that retain
    samples move (at α = 0, a token embedding seen only in the retain batch), where D = 1/ε would blow the step up.

    The state lives here, not in the optimizer's checkpoint: a resumed run restarts it.
    """

    def __init__(self, beta2: float, eps: float):
        self.beta2, self.eps = beta2, eps
        self.second_moment: dict[str, Tensor] = {}  # v
        self.steps = 0  # t

    def update(self, squares: dict[str, Tensor], num_samples: int, device: torch.device | str) -> dict[str, Tensor]:
        """Fold in this step's ``Σ_i g_i²`` (``squares``, over this process's ``num_samples``); return ``D``."""
        counts = all_gather_counts([num_samples], device)
        total = sum(c[0] for c in counts)
        names = list(squares)
        all_reduce_mean_([squares[n] for n in names])  # (1/W) Σ_ranks; × W/N below gives the mean over samples
        beta2, eps = self.beta2, self.eps
        self.steps += 1
        correction = 1.0 - beta2**self.steps
        weights = {}
        for name in names:
            second = squares[name].float() * (len(counts) / total)
            v = self.second_moment.get(name)
            v = (1.0 - beta2) * second if v is None else beta2 * v + (1.0 - beta2) * second
            self.second_moment[name] = v
            weights[name] = 1.0 / ((v / correction).sqrt() + eps)
        return weights
