"""Pure-torch gradient maths for the gradient-editing methods (no Trainer imports here).

- [`FusedGradientCapture`] / [`LoraGradientCapture`]: per-sample gradients from one backward (fused, hooks), of
  Linear/Conv/Embedding/LayerNorm weights (full fine-tuning) or of peft LoRA weights; per-layer maths in `samplers`.
- [`VmapPerSampleGradients`]: the same readouts for any trainable parameters via `torch.func.vmap`.
- `projection`: OrthoGrad's projection and direction as coefficients on per-sample gradients.
- `meta`: [`LURObjective`], LUR's virtual step and meta-gradient as a surrogate loss.
"""

from .capture import FusedGradientCapture, LoraGradientCapture
from .meta import LURObjective, LURStep, batch_loss_fn, trainable_parameters, virtual_step
from .projection import (
    OrthoGradDirection,
    joint_gram_blocks,
    orthogonal_projection_coefficients,
    orthograd_direction,
    projection_diagnostics,
    rank_one_projection_coefficients,
)
from .samplers import UnsupportedLayerError
from .vmap import VmapPerSampleGradients


__all__ = [
    "LURObjective",
    "LURStep",
    "FusedGradientCapture",
    "LoraGradientCapture",
    "UnsupportedLayerError",
    "OrthoGradDirection",
    "VmapPerSampleGradients",
    "batch_loss_fn",
    "joint_gram_blocks",
    "orthograd_direction",
    "orthogonal_projection_coefficients",
    "projection_diagnostics",
    "rank_one_projection_coefficients",
    "trainable_parameters",
    "virtual_step",
]
