"""Per-layer per-sample gradient maths for the fused capture (DESIGN §3), one sampler per layer type.

Every supported layer's weight gradient for sample ``i`` is built from two things an ordinary backward already
computes: what the layer read (its input, turned into "rows" ``X_i`` [T, d_in]) and the gradient at its output
(``Δ_i`` [T, d_out]). A sampler turns one layer's calls into those rows and forms, from them alone:

- ``per_sample``: the materialised ``∇ℓ_i`` per parameter (tests, small layers, the D-weighted Gram);
- ``gram``: each parameter tensor's own ``[B, B]`` share of ``K_ij = ⟨∇ℓ_i, ∇ℓ_j⟩`` (ghost or materialised);
- ``dot``: ``⟨∇ℓ_i, v⟩`` [B];
- ``combine``: ``Σ_i c_i ∇ℓ_i`` with one coefficient vector per parameter tensor.

A parameter that does not require grad is skipped, so a frozen bias or LoRA-FA's frozen ``lora_A`` costs nothing.
Samples never mix inside these layers, which is why BatchNorm with batch statistics is refused upstream.
"""

from collections.abc import Mapping
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers.pytorch_utils import Conv1D


GramMethod = Literal["auto", "ghost", "materialize"]


class UnsupportedLayerError(ValueError):
    """A trainable layer the fused capture cannot read per-sample gradients from; names it and why."""

    def __init__(self, name: str, reason: str):
        self.layer_name = name
        super().__init__(f"`{name}`: {reason}")


def trainable(layer: nn.Module) -> dict[str, nn.Parameter]:
    """The layer's own trainable parameters (weight, then bias)."""
    return {
        name: p
        for name in ("weight", "bias")
        if isinstance(p := getattr(layer, name, None), nn.Parameter) and p.requires_grad
    }


def _flat_gram(flat: Tensor, weight: Tensor | None) -> Tensor:
    return (flat if weight is None else flat * weight.reshape(1, -1).to(flat)) @ flat.T


class LayerSampler:
    """Base sampler: the readouts from materialised per-sample gradients, one layer at a time. Subclasses define
    `rows`, `backprop_rows` and `per_sample`, and override readouts that have a cheaper factored form."""

    def rows(self, layer: nn.Module, inputs: Tensor, dtype: torch.dtype) -> Tensor:
        raise NotImplementedError

    def backprop_rows(self, layer: nn.Module, grad: Tensor, dtype: torch.dtype) -> Tensor:
        return grad.reshape(grad.shape[0], -1, grad.shape[-1]).to(dtype)

    def per_sample(self, layer: nn.Module, rows: Tensor, backprops: Tensor) -> dict[str, Tensor]:
        raise NotImplementedError

    def gram(
        self,
        layer: nn.Module,
        rows: Tensor,
        backprops: Tensor,
        method: GramMethod = "auto",
        weights: Mapping[str, Tensor] | None = None,
    ) -> dict[str, Tensor]:
        """``{parameter: [B, B]}``; ``weights`` (parameter-shaped, e.g. a diagonal preconditioner) give
        ``⟨∇ℓ_i, w ⊙ ∇ℓ_j⟩`` instead of the plain inner product."""
        grads = self.per_sample(layer, rows, backprops)
        return {
            local: _flat_gram(g.flatten(1), None if weights is None else weights[local]) for local, g in grads.items()
        }

    def squares(self, layer: nn.Module, rows: Tensor, backprops: Tensor) -> dict[str, Tensor]:
        """``Σ_i (∇ℓ_i)²`` elementwise, parameter-shaped: the batch's second moment of per-sample gradients."""
        return {local: g.square().sum(0) for local, g in self.per_sample(layer, rows, backprops).items()}

    def dot(self, layer: nn.Module, rows: Tensor, backprops: Tensor, vector: Mapping[str, Tensor]) -> Tensor:
        out = backprops.new_zeros(backprops.shape[0])
        for local, grad in self.per_sample(layer, rows, backprops).items():
            out = out + grad.flatten(1) @ vector[local].reshape(-1).to(grad.dtype)
        return out

    def combine(
        self, layer: nn.Module, rows: Tensor, backprops: Tensor, coefficients: Mapping[str, Tensor]
    ) -> dict[str, Tensor]:
        return {
            local: torch.einsum("b,b...->...", coefficients[local], grad)
            for local, grad in self.per_sample(layer, rows, backprops).items()
        }


class LinearSampler(LayerSampler):
    """``y = X Wᵀ + b`` on [B, …, d_in]: ``∇_W ℓ_i = Δ_iᵀ X_i``, ``∇_b ℓ_i = Σ_t Δ_i[t]`` (a sum over positions,
    which share the weight). Subclasses map other layers onto this form by overriding `rows` and the view of the
    weight as a [d_out, d_in] matrix."""

    def rows(self, layer, inputs, dtype):
        return inputs.reshape(inputs.shape[0], -1, inputs.shape[-1]).to(dtype)

    def weight_matrix(self, layer: nn.Module, weight: Tensor) -> Tensor:
        """A weight-shaped tensor (with leading dims) as [..., d_out, d_in]."""
        return weight

    def weight_shape(self, layer: nn.Module, matrix: Tensor) -> Tensor:
        """Inverse of `weight_matrix`: [..., d_out, d_in] back to [..., *weight.shape]."""
        return matrix

    def per_sample(self, layer, rows, backprops):
        params = trainable(layer)
        grads = {}
        if "weight" in params:
            grads["weight"] = self.weight_shape(layer, torch.einsum("bto,bti->boi", backprops, rows))
        if "bias" in params:
            grads["bias"] = backprops.sum(1)
        return grads

    @staticmethod
    def ghost_is_cheaper(rows: Tensor, backprops: Tensor) -> bool:
        # Ghost: B²·T²·(d_in + d_out) multiply-adds and a [B, B, T, T] buffer. Materialised: B·T·d_in·d_out to form
        # the per-sample gradients plus B²·d_in·d_out for their Gram. Thin factors (LoRA) and long sequences favour
        # materialising; short sequences of wide layers (T = 1 for 2-D inputs) favour the ghost form.
        batch, steps, d_in = rows.shape
        d_out = backprops.shape[-1]
        ghost = batch * batch * steps * steps * (d_in + d_out)
        materialized = batch * steps * d_in * d_out + batch * batch * d_in * d_out
        return ghost < materialized

    def gram(self, layer, rows, backprops, method="auto", weights=None):
        """The ghost form never builds a per-sample gradient: ``⟨Δ_iᵀX_i, Δ_jᵀX_j⟩_F = ⟨X_i X_jᵀ, Δ_i Δ_jᵀ⟩_F``
        (trace cyclicity). A weighted Gram has no such factorisation, so it materialises."""
        params = trainable(layer)
        grams = {}
        if "weight" in params:
            weight = None if weights is None else self.weight_matrix(layer, weights["weight"])
            if weight is None and (method == "ghost" or (method == "auto" and self.ghost_is_cheaper(rows, backprops))):
                act_gram = torch.einsum("bti,csi->bcts", rows, rows)  # [B, B, T, T]
                backprop_gram = torch.einsum("bto,cso->bcts", backprops, backprops)  # [B, B, T, T]
                grams["weight"] = (act_gram * backprop_gram).sum((2, 3))
            else:
                flat = torch.einsum("bto,bti->boi", backprops, rows).flatten(1)  # [B, d_out·d_in]
                grams["weight"] = _flat_gram(flat, weight)
        if "bias" in params:
            grams["bias"] = _flat_gram(backprops.sum(1), None if weights is None else weights["bias"])
        return grams

    def dot(self, layer, rows, backprops, vector):
        """``Σ_t Δ_i[t]·(V X_i[t])``, the product taken on the narrower side of ``V``: no [B, d_out, d_in]."""
        params = trainable(layer)
        out = rows.new_zeros(rows.shape[0])
        if "weight" in params:
            weight = self.weight_matrix(layer, vector["weight"]).to(rows.dtype)
            if backprops.shape[-1] <= rows.shape[-1]:
                out = out + (backprops * (rows @ weight.T)).sum((1, 2))
            else:
                out = out + (rows * (backprops @ weight)).sum((1, 2))
        if "bias" in params:
            out = out + backprops.sum(1) @ vector["bias"].to(rows.dtype)
        return out

    def combine(self, layer, rows, backprops, coefficients):
        """``(diag(c)·Δ)ᵀ X`` over all B·T rows: one matmul per parameter (DESIGN §3)."""
        params = trainable(layer)
        out = {}
        if "weight" in params:
            weighted = backprops * coefficients["weight"][:, None, None]  # [B, T, d_out]
            out["weight"] = self.weight_shape(layer, weighted.flatten(0, 1).T @ rows.flatten(0, 1))
        if "bias" in params:
            out["bias"] = (backprops * coefficients["bias"][:, None, None]).sum((0, 1))
        return out


class TransposedLinearSampler(LinearSampler):
    """transformers' `Conv1D` (GPT-2): ``y = X W + b`` with ``W`` [d_in, d_out], a Linear with a transposed weight."""

    def weight_matrix(self, layer, weight):
        return weight.transpose(-1, -2)

    def weight_shape(self, layer, matrix):
        return matrix.transpose(-1, -2)


class ConvSampler(LinearSampler):
    """`nn.Conv1d`/`nn.Conv2d` (groups = 1, zero padding): a Linear on the unfolded input patches, with
    ``X_i`` [L, C_in·∏kernel] (`F.unfold`) and ``Δ_i`` [L, C_out] at the L output positions."""

    def rows(self, layer, inputs, dtype):
        if isinstance(layer, nn.Conv1d):  # as a 2-D convolution over a height-1 image
            inputs = inputs.unsqueeze(2)
            kernel, dilation, padding, stride = (
                (1, *layer.kernel_size),
                (1, *layer.dilation),
                (0, *layer.padding),
                (1, *layer.stride),
            )
        else:
            kernel, dilation, padding, stride = layer.kernel_size, layer.dilation, layer.padding, layer.stride
        patches = F.unfold(inputs.to(dtype), kernel, dilation=dilation, padding=padding, stride=stride)
        return patches.transpose(1, 2)  # [B, L, C_in·∏kernel]

    def backprop_rows(self, layer, grad, dtype):
        return grad.flatten(2).transpose(1, 2).to(dtype)  # [B, C_out, *spatial] → [B, L, C_out]

    def weight_matrix(self, layer, weight):
        return weight.reshape(*weight.shape[: weight.ndim - layer.weight.ndim], layer.out_channels, -1)

    def weight_shape(self, layer, matrix):
        return matrix.reshape(*matrix.shape[:-2], *layer.weight.shape)


class EmbeddingSampler(LayerSampler):
    """`nn.Embedding`: ``∇_E ℓ_i = Σ_t e_{id_t} Δ_i[t]ᵀ``, rows of ``E`` scattered by token id. Never materialised
    ([B, V, D] is vocabulary-sized): the Gram is the ghost form ``Σ_{t,s} [id_it = id_js]·⟨Δ_i[t], Δ_j[s]⟩``, the dot
    product gathers ``V[id]`` and `combine` is one `index_add`. The padding index gets no gradient, as in torch."""

    def rows(self, layer, inputs, dtype):
        return inputs.reshape(inputs.shape[0], -1)  # token ids [B, T], kept as integers

    def _backprops(self, layer, rows, backprops):
        if layer.padding_idx is None:
            return backprops
        return backprops.masked_fill((rows == layer.padding_idx)[..., None], 0)

    def per_sample(self, layer, rows, backprops):
        backprops = self._backprops(layer, rows, backprops)
        batch = rows.shape[0]
        out = backprops.new_zeros(batch, *layer.weight.shape)
        for i in range(batch):
            out[i].index_add_(0, rows[i], backprops[i])
        return {"weight": out}

    def gram(self, layer, rows, backprops, method="auto", weights=None):
        backprops = self._backprops(layer, rows, backprops)
        scaled = backprops if weights is None else backprops * weights["weight"].to(backprops)[rows]
        same_token = (rows[:, None, :, None] == rows[None, :, None, :]).to(backprops.dtype)  # [B, B, T, T]
        inner = torch.einsum("btd,csd->bcts", scaled, backprops)
        return {"weight": (same_token * inner).sum((2, 3))}

    def squares(self, layer, rows, backprops):
        """One sample at a time: [V, D] per sample, never [B, V, D]."""
        backprops = self._backprops(layer, rows, backprops)
        out = backprops.new_zeros(layer.weight.shape)
        for i in range(rows.shape[0]):
            out += backprops.new_zeros(layer.weight.shape).index_add_(0, rows[i], backprops[i]).square()
        return {"weight": out}

    def dot(self, layer, rows, backprops, vector):
        backprops = self._backprops(layer, rows, backprops)
        return (vector["weight"].to(backprops.dtype)[rows] * backprops).sum((1, 2))

    def combine(self, layer, rows, backprops, coefficients):
        weighted = self._backprops(layer, rows, backprops) * coefficients["weight"][:, None, None]
        out = weighted.new_zeros(layer.weight.shape)
        return {"weight": out.index_add_(0, rows.flatten(), weighted.flatten(0, 1))}


class LayerNormSampler(LayerSampler):
    """`nn.LayerNorm`: ``∇_γ ℓ_i = Σ_t Δ_i[t] ⊙ x̂_i[t]``, ``∇_β ℓ_i = Σ_t Δ_i[t]``, with ``x̂`` the normalised input
    recomputed from the kept input. Per-sample gradients are [B, d]: materialising them is the cheap form."""

    def rows(self, layer, inputs, dtype):
        size = layer.weight.numel() if layer.weight is not None else layer.bias.numel()
        x = inputs.reshape(inputs.shape[0], -1, size).to(dtype)
        return F.layer_norm(x, (size,), eps=layer.eps)  # x̂ [B, T, d]: the normalisation without γ, β

    def backprop_rows(self, layer, grad, dtype):
        size = layer.weight.numel() if layer.weight is not None else layer.bias.numel()
        return grad.reshape(grad.shape[0], -1, size).to(dtype)

    def per_sample(self, layer, rows, backprops):
        params = trainable(layer)
        grads = {}
        if "weight" in params:
            grads["weight"] = (backprops * rows).sum(1).reshape(-1, *layer.weight.shape)
        if "bias" in params:
            grads["bias"] = backprops.sum(1).reshape(-1, *layer.bias.shape)
        return grads


class FrozenBatchNormSampler(LayerNormSampler):
    """`nn.BatchNorm1d/2d/3d` in eval mode with running statistics (frozen BN, as the classifier benchmark's ResNet
    uses): a per-channel affine map of ``x̂ = (x − running_mean) / √(running_var + ε)``, so, channels last,
    ``∇_γ ℓ_i = Σ_t Δ_i[t] ⊙ x̂_i[t]`` and ``∇_β ℓ_i = Σ_t Δ_i[t]`` over the positions t — LayerNorm's readouts.
    A BN in training mode normalises with batch statistics, which couples the samples: it has no per-sample gradient
    and is refused (`sampler_for`; the trainers refuse it before the first step)."""

    @staticmethod
    def _channels_last(tensor: Tensor) -> Tensor:
        # [B, C] or [B, C, *positions] → [B, positions, C]
        return tensor.reshape(tensor.shape[0], tensor.shape[1], -1).transpose(1, 2)

    def rows(self, layer, inputs, dtype):
        x = self._channels_last(inputs.to(dtype))
        return (x - layer.running_mean.to(dtype)) * torch.rsqrt(layer.running_var.to(dtype) + layer.eps)

    def backprop_rows(self, layer, grad, dtype):
        return self._channels_last(grad.to(dtype))


LINEAR, TRANSPOSED_LINEAR, CONV, EMBEDDING, LAYER_NORM, FROZEN_BATCH_NORM = (
    LinearSampler(),
    TransposedLinearSampler(),
    ConvSampler(),
    EmbeddingSampler(),
    LayerNormSampler(),
    FrozenBatchNormSampler(),
)


def sampler_for(name: str, layer: nn.Module) -> LayerSampler:
    """The sampler of `layer`, or `UnsupportedLayerError` saying why there is none.

    Types are matched exactly, not by subclass: a subclass may compute with its weight differently (Whisper's
    positional embedding slices its weight instead of looking ids up), which hooks on the call cannot see.
    """
    kind = type(layer)
    if kind is nn.Linear:
        return LINEAR
    if kind is Conv1D:
        return TRANSPOSED_LINEAR
    if kind in (nn.Conv1d, nn.Conv2d):
        if layer.groups != 1:
            raise UnsupportedLayerError(name, f"{kind.__name__} with groups={layer.groups} (only groups=1).")
        if layer.padding_mode != "zeros" or isinstance(layer.padding, str):
            raise UnsupportedLayerError(
                name,
                f"{kind.__name__} with padding={layer.padding!r}, padding_mode={layer.padding_mode!r} "
                "(only explicit zero padding).",
            )
        return CONV
    if kind is nn.Embedding:
        if layer.max_norm is not None or layer.scale_grad_by_freq or layer.sparse:
            raise UnsupportedLayerError(name, "nn.Embedding with max_norm, scale_grad_by_freq or sparse.")
        return EMBEDDING
    if kind is nn.LayerNorm:
        return LAYER_NORM
    if kind in (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d):
        if layer.training or layer.running_mean is None:
            raise UnsupportedLayerError(
                name,
                f"{kind.__name__} in training mode (or without running statistics) normalises with batch statistics, "
                "which has no per-sample gradient; freeze it (`hf_unlearn.models.freeze_batch_norm`).",
            )
        return FROZEN_BATCH_NORM
    raise UnsupportedLayerError(
        name,
        f"{kind.__name__} has trainable parameters and no fused per-sample sampler (supported: nn.Linear, "
        "transformers Conv1D, nn.Conv1d/2d, nn.Embedding, nn.LayerNorm, frozen nn.BatchNorm1d/2d/3d).",
    )
