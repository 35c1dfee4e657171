"""torch internals (checked against torch 2.13)."""

import contextlib
from collections.abc import Iterator, Mapping

from torch import Tensor, nn


CHECKED = "torch 2.13"

INTERNALS = (("torch.nn.Module", "_parameters"),)  # the registry `swapped_parameters` writes into

# The public BatchNorm classes (rather than torch's private `_BatchNorm` base): every BatchNorm torch ships, and any
# subclass of one. A custom layer deriving from the private base directly is not recognised.
BATCH_NORM_TYPES = (
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.BatchNorm3d,
    nn.LazyBatchNorm1d,
    nn.LazyBatchNorm2d,
    nn.LazyBatchNorm3d,
    nn.SyncBatchNorm,
)


def is_batch_norm(module: nn.Module) -> bool:
    return isinstance(module, BATCH_NORM_TYPES)


@contextlib.contextmanager
def swapped_parameters(module: nn.Module, substitutes: Mapping[str, Tensor]) -> Iterator[None]:
    """``module``'s own parameters replaced by plain tensors (differentiable, e.g. θ − β·g) inside the block.

    `torch.func.functional_call` is the public way and is used wherever it fits; it does not under DeepSpeed ZeRO-3,
    whose module hooks would then see plain tensors in place of its partitioned parameters (see
    `hf_unlearn.methods.lur.meta`). `setattr` refuses a tensor under a parameter's name, so the registry is written.
    """
    saved = {local: module._parameters[local] for local in substitutes}
    module._parameters.update(substitutes)
    try:
        yield
    finally:
        module._parameters.update(saved)
