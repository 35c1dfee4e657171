"""Process-group helpers the methods share: launcher checks and the few collectives the retain-aware steps need
(why these and not accelerate's `reduce`/`gather`: `hf_unlearn.integrations.accelerate`).

Everything here is a no-op on one process, so single-device code paths stay exactly what they were.
"""

import logging
import os

import torch
import torch.distributed as dist
from torch import Tensor


logger = logging.getLogger(__name__)


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def launcher_world_size() -> int:
    """The process count the launcher (torchrun, accelerate launch, deepspeed) announced, 1 without one."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def accelerator_available() -> bool:
    """Whether any accelerator (CUDA, XPU, MPS, ...) is present; without one, DDP must use gloo."""
    accelerator = getattr(torch, "accelerator", None)
    if accelerator is not None and hasattr(accelerator, "is_available"):
        return bool(accelerator.is_available())
    return torch.cuda.is_available()


def check_process_count(num_processes: int) -> None:
    """Refuse a run that silently got one process when the launcher was asked for more.

    Two traps of `accelerate launch` on machines without GPUs: `--cpu --num_processes N` (and a `MULTI_CPU` config)
    start ONE process, and several processes started without `use_cpu` never join a process group — each trains
    alone on its own data shard. Both would otherwise give plausible but wrong results.
    """
    requested = launcher_world_size()
    if requested > 1 and num_processes != requested:
        raise RuntimeError(
            f"The launcher started {requested} processes but this one sees a world of {num_processes}: the processes "
            "are not connected. On CPU pass use_cpu=True (--use_cpu) so that they join a gloo process group, e.g. "
            "`accelerate launch --config_file accelerate_configs/cpu_ddp.yaml ...`."
        )
    # accelerate's simple launcher sets MASTER_ADDR only when asked for several processes, but runs just one.
    if num_processes == 1 and "WORLD_SIZE" not in os.environ and "MASTER_ADDR" in os.environ:
        if os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true"):
            raise RuntimeError(
                "accelerate was asked for several CPU processes (`--cpu --num_processes N` or a MULTI_CPU config) "
                "but started one. Use `accelerate launch --config_file accelerate_configs/cpu_ddp.yaml ...` (or "
                "`--multi_gpu --num_processes N` with --use_cpu) for N connected CPU processes, or `--num_processes 1` "
                "to run on one on purpose."
            )


def all_reduce_mean_(tensors: list[Tensor]) -> list[Tensor]:
    """Average tensors over processes, in place, in one collective (flattened); returns them for chaining."""
    if not is_distributed() or not tensors:
        return tensors
    flat = torch.cat([t.reshape(-1) for t in tensors])
    dist.all_reduce(flat)
    flat /= dist.get_world_size()
    offset = 0
    for tensor in tensors:
        tensor.copy_(flat[offset : offset + tensor.numel()].view_as(tensor))
        offset += tensor.numel()
    return tensors


def all_gather_counts(values: list[int], device: torch.device | str = "cpu") -> list[list[int]]:
    """Every process's small integer vector (same length everywhere), in rank order; `[values]` on one process."""
    if not is_distributed():
        return [list(values)]
    local = torch.tensor(values, dtype=torch.long, device=device)
    gathered = [torch.zeros_like(local) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, local)
    return [[int(v) for v in g] for g in gathered]


def all_gather_rows(tensor: Tensor, counts: list[int] | None = None) -> Tensor:
    """Concatenate every process's rows (dim 0) in rank order; rows may differ in number between processes.

    `counts` (rows per rank), when the caller already has them, saves the collective that would gather them.
    """
    if not is_distributed():
        return tensor
    if counts is None:
        counts = [c[0] for c in all_gather_counts([tensor.shape[0]], tensor.device)]
    padded = tensor.new_zeros((max(counts), *tensor.shape[1:]))
    padded[: tensor.shape[0]] = tensor
    gathered = [torch.empty_like(padded) for _ in counts]
    dist.all_gather(gathered, padded.contiguous())
    return torch.cat([g[:n] for g, n in zip(gathered, counts, strict=True)])
