"""DeepSpeed internals (checked against deepspeed 0.19.8).

`whole_parameters` holds ZeRO-3 parameters whole across several module calls and `torch.autograd.grad`.
`deepspeed.zero.GatheredParameters` is the public way to gather; it does not fit because it only gathers: inside
the block, each module's forward/backward hooks still release the parameters they fetched as soon as that module is
done (ZeRO-3 tracks holders in `ds_active_sub_modules`), so the surrogate and the virtual step, which read the
weights outside any module, would find them partitioned again. Marking the parameters as held is what keeps them
whole; DeepSpeed's own release checks that set.
"""

import contextlib
import os
import sys
from collections.abc import Iterator

import torch


CHECKED = "deepspeed 0.19.8"

# What `whole_parameters` reads or calls on a ZeRO-3 parameter (DeepSpeed sets them on each one it partitions).
ZERO3_PARAMETER_ATTRIBUTES = ("ds_status", "ds_active_sub_modules", "all_gather", "partition")

INTERNALS = (
    ("deepspeed.runtime.zero.partition_parameters", "ZeroParamStatus"),
    # Per-parameter attributes ZeRO-3 sets (`ds_id`, then ZERO3_PARAMETER_ATTRIBUTES): checked on each use, with a
    # clear error (`_require_zero3_attributes`).
)


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
    _require_zero3_attributes(tracked[0])
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


def _require_zero3_attributes(parameter: torch.nn.Parameter) -> None:
    missing = [name for name in ZERO3_PARAMETER_ATTRIBUTES if not hasattr(parameter, name)]
    if missing:
        raise RuntimeError(
            f"A DeepSpeed ZeRO-3 parameter (it has `ds_id`) lacks {missing}, which hf-unlearn reads to hold it whole "
            f"(checked against {CHECKED}): install a supported DeepSpeed version, or update "
            "hf_unlearn/integrations/deepspeed.py."
        )


def declare_cpu_when_no_accelerator() -> None:
    """Tell DeepSpeed it runs on the CPU when torch sees no accelerator, before anything imports DeepSpeed.

    transformers' `Trainer` imports DeepSpeed whenever it is installed; DeepSpeed then probes for a device and, when
    it finds none, logs "Setting accelerator to CPU. If you have GPU or other accelerator, we were unable to detect
    it." on every run. `DS_ACCELERATOR` is DeepSpeed's documented override. It is set only when the user has not set
    it and torch reports no accelerator (CUDA, MPS, XPU or a plugged-in backend): the case where DeepSpeed's probe
    ends at "cpu" anyway, so only the warning changes. No effect once DeepSpeed is imported.
    """
    if "DS_ACCELERATOR" in os.environ or "deepspeed" in sys.modules:
        return
    accelerator = getattr(torch, "accelerator", None)  # torch >= 2.6; older: CUDA is what DeepSpeed would find
    has_device = accelerator.is_available() if accelerator is not None else torch.cuda.is_available()
    if not has_device:
        os.environ["DS_ACCELERATOR"] = "cpu"
