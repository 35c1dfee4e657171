"""Pure-torch per-sample gradient machinery for the gradient-editing methods (no Trainer imports here).

- [`PerSampleGradients`]: the one declared interface (a `typing.Protocol`) both backends implement.
- [`FusedGradientCapture`] / [`LoraGradientCapture`]: per-sample gradients from one backward (fused, hooks), of
  Linear/Conv/Embedding/LayerNorm weights (full fine-tuning) or of peft LoRA weights; per-layer maths in `samplers`.
- [`VmapPerSampleGradients`]: the same readouts for any trainable parameters via `torch.func.vmap`.

The methods' own maths lives with each method: OrthoGrad's projection in `hf_unlearn.methods.orthograd.projection`
(and `.global_gram`), LUR's virtual step and meta-gradient in `hf_unlearn.methods.lur.meta`. Their old import paths
here still work for one release, with a FutureWarning, for the names the library still has (the single-group
projection helpers that only tests used are now test references, `tests/gradients/projection_reference.py`).
"""

import warnings
from importlib import import_module
from typing import Any

from .capture import FusedGradientCapture, LoraGradientCapture
from .per_sample import PerSampleGradients
from .samplers import UnsupportedLayerError
from .vmap import VmapPerSampleGradients


__all__ = [
    "FusedGradientCapture",
    "LoraGradientCapture",
    "PerSampleGradients",
    "UnsupportedLayerError",
    "VmapPerSampleGradients",
]

# Names that moved to their method's package in this release → their new module (old paths kept for one release).
_MOVED = {
    **dict.fromkeys(["LURObjective", "LURStep", "batch_loss_fn", "trainable_parameters", "virtual_step"], "lur.meta"),
    "OrthoGradDirection": "orthograd.projection",
}


def __getattr__(name: str) -> Any:
    if name not in _MOVED:
        raise AttributeError(f"module 'hf_unlearn.gradients' has no attribute {name!r}")
    new_module = f"hf_unlearn.methods.{_MOVED[name]}"
    warnings.warn(
        f"hf_unlearn.gradients.{name} moved to {new_module}; the old path will be removed in the next release.",
        FutureWarning,
        stacklevel=2,
    )
    return getattr(import_module(new_module), name)
