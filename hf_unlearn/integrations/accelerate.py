"""accelerate internals and version-dependent arguments (checked against accelerate 1.15).

The collectives of `hf_unlearn.distributed` use `torch.distributed` directly rather than accelerate's `reduce` /
`gather` / `pad_across_processes`: `all_reduce_mean_` averages many tensors in ONE flattened collective (accelerate's
`reduce` runs one per tensor), and `all_gather_rows` gathers rows whose counts the caller already knows, which
`pad_across_processes` would gather again in a collective of its own.
"""

from typing import Any

from accelerate.utils import DistributedType


CHECKED = "accelerate 1.15"

INTERNALS = (
    ("accelerate.Accelerator", "backward"),  # its **kwargs reach DeepSpeedEngineWrapper.backward (scale_wrt_gas)
    ("accelerate.utils.deepspeed", "DeepSpeedEngineWrapper"),
    ("accelerate.state.AcceleratorState", "deepspeed_plugin"),
)


def uses_deepspeed(accelerator: Any) -> bool:
    return accelerator.distributed_type == DistributedType.DEEPSPEED


def backward_kwargs(accelerator: Any) -> dict[str, Any]:
    """Keyword arguments for `accelerator.backward` when the caller has already divided the loss by the accumulation
    steps: under DeepSpeed, `scale_wrt_gas=False` (forwarded to the engine's backward) so it is not divided twice."""
    return {"scale_wrt_gas": False} if uses_deepspeed(accelerator) else {}


def zero_stage(accelerator: Any) -> int | None:
    """The DeepSpeed ZeRO stage the accelerator runs, `None` without DeepSpeed."""
    plugin = getattr(accelerator.state, "deepspeed_plugin", None)
    return None if plugin is None else plugin.zero_stage
