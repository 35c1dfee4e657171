"""The Gram of per-sample gradients over every process's samples (DESIGN §5, OrthoGrad on several processes).

Cross-process inner products ⟨∇ℓ_i, ∇ℓ_j⟩ with i and j on different ranks need one side's gradients on the other:
each rank flattens its n_r per-sample LoRA gradients to an [n_r, P] matrix and all-gathers it (P = trainable LoRA
parameters, small by design), then forms the full N×N Gram locally. Every rank ends with the same Gram, solves the
same k×k system and keeps only the coefficients of its own samples, so the combination Σ c_i ∇ℓ_i is formed from
local factors and summed across ranks by the ordinary gradient all-reduce.
"""

from dataclasses import dataclass

import torch
from torch import Tensor

from ..distributed import all_gather_counts, all_gather_rows


@dataclass
class GlobalGram:
    """Gram over all ranks' samples, in rank order, and where this rank's samples sit in it."""

    gram: Tensor
    """[N, N], N = Σ_r n_r."""
    forget_mask: Tensor
    """[N] bool: which rows are forget samples (each rank's rows are its forget samples, then its retain ones)."""
    local_rows: slice
    """This rank's rows (its samples in its own order)."""
    bytes_sent: int
    """Bytes of per-sample gradients this rank contributed to the all-gather (for benchmarks)."""


def flat_per_sample_gradients(per_sample_gradients: dict[str, Tensor]) -> Tensor:
    """[B, P]: every parameter's per-sample gradient, flattened and concatenated in a fixed (name) order."""
    names = sorted(per_sample_gradients)
    return torch.cat([per_sample_gradients[name].flatten(1) for name in names], dim=1)


def global_gram(local_gradients: Tensor, num_forget: int) -> GlobalGram:
    """All-gather [n_r, P] per-sample gradients (this rank's first `num_forget` rows are forget samples) and form
    the global Gram; on one process, the local Gram. Two collectives: the row counts, then the gradients."""
    num_rows = local_gradients.shape[0]
    counts = all_gather_counts([num_forget, num_rows], local_gradients.device)
    gathered = all_gather_rows(local_gradients.contiguous(), counts=[rows for _, rows in counts])
    rank = torch.distributed.get_rank() if len(counts) > 1 else 0
    start = sum(rows for _, rows in counts[:rank])
    forget_mask = torch.cat([torch.arange(rows) < forget for forget, rows in counts])
    return GlobalGram(
        gram=gathered @ gathered.T,
        forget_mask=forget_mask,
        local_rows=slice(start, start + num_rows),
        bytes_sent=local_gradients.numel() * local_gradients.element_size(),
    )
