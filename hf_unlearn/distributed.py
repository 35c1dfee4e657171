"""Process-group helpers the methods share: launcher checks and the few collectives the retain-aware steps need.

Everything here is a no-op on one process, so single-device code paths stay exactly what they were.
"""

import contextlib
import logging
import os
from collections.abc import Iterator

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


def zero_stage(accelerator) -> int | None:
    """The DeepSpeed ZeRO stage the accelerator runs, `None` without DeepSpeed."""
    plugin = getattr(accelerator.state, "deepspeed_plugin", None)
    return None if plugin is None else plugin.zero_stage


@contextlib.contextmanager
def whole_model_loading() -> Iterator[None]:
    """`from_pretrained` loads whole weights on every process, even under a DeepSpeed ZeRO-3 config.

    transformers otherwise builds models inside `deepspeed.zero.Init` as soon as a ZeRO-3 `TrainingArguments` exists:
    a collective per parameter, so every rank must load the same models at the same moment, and the models come out
    partitioned and unusable outside the engine (the exact-retrain reference, an evaluation before `train`). With a
    LoRA adapter the frozen base fits on each device anyway; the engine partitions it when training starts.
    """
    try:
        from transformers.integrations import deepspeed as hf_deepspeed
    except ImportError:
        yield
        return
    reference = hf_deepspeed._hf_deepspeed_config_weak_ref
    config = reference() if reference is not None else None
    hf_deepspeed.unset_hf_deepspeed_config()
    try:
        yield
    finally:
        if config is not None:
            hf_deepspeed.set_hf_deepspeed_config(config)


def zero3_partitioned(parameters) -> list[torch.nn.Parameter]:
    """Those of `parameters` that DeepSpeed ZeRO-3 manages (it tags each with a `ds_id`), whatever their state now."""
    return [p for p in parameters if hasattr(p, "ds_id")]


# Marks a parameter as in use by `whole_parameters`, next to the ids of the ZeRO-3 modules whose forward holds it.
_WHOLE_PARAMETERS_HOLD = "hf_unlearn.whole_parameters"


@contextlib.contextmanager
def whole_parameters(parameters: list[torch.nn.Parameter]) -> Iterator[None]:
    """Inside the block, ZeRO-3-partitioned `parameters` are whole on every process and stay whole; a no-op otherwise.

    ZeRO-3 gathers a parameter only while the module that owns it runs its forward or backward. The meta steps also
    read the trainable (LoRA) weights outside any module: a surrogate ``⟨p, d_p⟩``, a virtual step ``θ − β·g``,
    `torch.autograd.grad` with respect to them, and the backward that accumulates into ``p.grad`` (which needs ``p``
    whole). The block gathers them once and marks them in use, which DeepSpeed's release respects, so module hooks
    inside the block do not partition them midway; on exit the ones this block gathered are partitioned again. Keep
    the optimizer step outside the block: it writes the partitions, and only then are the whole copies refreshed.
    """
    tracked = zero3_partitioned(parameters)
    if not tracked:
        yield
        return
    from deepspeed.runtime.zero.partition_parameters import ZeroParamStatus

    gathered = [p for p in tracked if p.ds_status == ZeroParamStatus.NOT_AVAILABLE]
    if gathered:
        gathered[0].all_gather(param_list=gathered)
    for param in tracked:
        param.ds_active_sub_modules.add(_WHOLE_PARAMETERS_HOLD)
    try:
        yield
    finally:
        for param in tracked:
            param.ds_active_sub_modules.discard(_WHOLE_PARAMETERS_HOLD)
        # Those a module still holds (a forward whose backward never ran) are DeepSpeed's to release at its step.
        release = [p for p in gathered if p.ds_status == ZeroParamStatus.AVAILABLE and not p.ds_active_sub_modules]
        if release:
            release[0].partition(param_list=release)
