"""`PerSampleGradients`: the one interface a method uses to read per-sample gradients, whatever computes them.

Two backends implement it: [`FusedGradientCapture`] reads ``g_i = ∇ℓ_i`` off one ordinary backward from each layer's
input and output gradient (no per-sample gradient is materialised for the Gram), and [`VmapPerSampleGradients`]
computes them with `torch.func.vmap` for any trainable parameters. How the per-sample losses are produced differs
(``capture.backward(losses)`` inside the ``with`` block, or ``vmap.compute(batch)``); every readout below is the same,
so OrthoGrad is written once against this Protocol.
"""

from collections.abc import Mapping
from typing import Protocol, runtime_checkable

from torch import Tensor, nn


@runtime_checkable
class PerSampleGradients(Protocol):
    """Readouts of the per-sample gradients ``G = [g_1 … g_B]`` of the last batch (``ℓ_i`` reduced per example)."""

    @property
    def parameters(self) -> dict[str, nn.Parameter]:
        """The parameters differentiated, by name: the keys of every readout."""
        ...

    @property
    def batch_size(self) -> int:
        """B, the number of samples read."""
        ...

    def gram(
        self, per_tensor: bool = False, weights: Mapping[str, Tensor] | None = None
    ) -> Tensor | dict[str, Tensor]:
        """``GᵀG`` [B, B] (or ``GᵀDG`` with diagonal ``weights``); per parameter tensor with ``per_tensor=True``."""
        ...

    def dot(self, vector: Mapping[str | nn.Parameter, Tensor | None]) -> Tensor:
        """``Gᵀv`` [B]."""
        ...

    def combine(self, coefficients: Tensor | Mapping[str, Tensor]) -> dict[str, Tensor]:
        """``Σ_i c_i g_i`` per parameter (one [B] vector, or one per tensor)."""
        ...

    def squares(self) -> dict[str, Tensor]:
        """``Σ_i g_i²`` elementwise per parameter (an Adam-style second moment)."""
        ...

    def per_sample_gradients(self) -> dict[str, Tensor]:
        """Materialised ``g_i``, name → [B, *shape] (what the cross-process Gram gathers)."""
        ...

    def clear(self) -> None:
        """Drop what the last batch left (activations, gradients)."""
        ...
