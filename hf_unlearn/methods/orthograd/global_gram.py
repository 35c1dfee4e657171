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

from ...distributed import all_gather_counts, all_gather_rows


@dataclass
class GlobalGram:
    """Gram over all ranks' samples, in rank order, and where this rank's samples sit in it."""

    gram: Tensor | dict[str, Tensor]
    """[N, N], N = Σ_r n_r; with ``per_tensor``, one [N, N] Gram per parameter name."""
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


def global_gram(
    per_sample_gradients: dict[str, Tensor],
    num_forget: int,
    per_tensor: bool = False,
    weights: dict[str, Tensor] | None = None,
) -> GlobalGram:
    """All-gather this rank's per-sample gradients (name → [n_r, *shape]; its first `num_forget` rows are forget
    samples) and form the global Gram — one per parameter tensor with ``per_tensor``, ``⟨g_i, D g_j⟩`` with
    ``weights`` D (name → parameter-shaped). On one process, the local Gram. Two collectives: the row counts, then
    the gradients (every tensor in one [n_r, P] message)."""
    names = sorted(per_sample_gradients)
    local = flat_per_sample_gradients(per_sample_gradients)
    num_rows = local.shape[0]
    counts = all_gather_counts([num_forget, num_rows], local.device)
    gathered = all_gather_rows(local.contiguous(), counts=[rows for _, rows in counts])
    rank = torch.distributed.get_rank() if len(counts) > 1 else 0
    start = sum(rows for _, rows in counts[:rank])
    forget_mask = torch.cat([torch.arange(rows) < forget for forget, rows in counts])
    grams, offset = {}, 0
    for name in names:
        size = per_sample_gradients[name][0].numel()
        block = gathered[:, offset : offset + size]
        offset += size
        left = block if weights is None else block * weights[name].reshape(1, -1).to(block)
        grams[name] = left @ block.T
    return GlobalGram(
        gram=grams if per_tensor else sum(grams.values()),
        forget_mask=forget_mask,
        local_rows=slice(start, start + num_rows),
        bytes_sent=local.numel() * local.element_size(),
    )
