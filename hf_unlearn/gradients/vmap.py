"""Generic per-sample gradients of any trainable parameters with ``torch.func`` (DESIGN §3, last bullets).

The fused capture covers Linear, Conv1d/2d, Embedding, LayerNorm and frozen BatchNorm weights and LoRA Linears. For
any other trainable layer (custom norms, tied weights, DoRA), ``vmap(grad(functional_call))`` gives the same
per-sample gradients at the cost of materialising them: memory B·P, so chunk over the sample dimension.
"""

from collections.abc import Callable, Mapping
from typing import Any, Literal

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad_and_value, vmap

from .capture import refuse_batch_norm


PerExampleLossFn = Callable[[nn.Module, dict[str, Any]], Tensor]


class _LossModule(nn.Module):
    """Lets `functional_call` swap the parameters of `model` while `loss_fn` calls `model` itself."""

    def __init__(self, model: nn.Module, loss_fn: PerExampleLossFn):
        super().__init__()
        self.model = model
        self.loss_fn = loss_fn

    def forward(self, batch: dict[str, Any]) -> Tensor:
        return self.loss_fn(self.model, batch)


class VmapPerSampleGradients:
    r"""Per-sample gradients ``g_i = ∇ℓ_i`` of arbitrary trainable parameters, with the readouts of
    [`FusedGradientCapture`] (``gram``, ``dot``, ``combine``, ``per_sample_gradients``).

    ``loss_fn(model, batch) -> ℓ`` [B] is the same per-example loss the fused path backpropagates. It is called on a
    batch of one example (each tensor keeps a leading dim of size 1) under `torch.func.vmap`, so it must avoid
    data-dependent Python control flow: ``if tensor.any(): raise`` (as in `hf_unlearn.losses.per_example_loss`'s
    empty-target check) or transformers' padding warning (``pad_token_id in input_ids``, skipped when an
    ``attention_mask`` is passed) fail under vmap. Validate the batch before and compute ℓ without such checks.

    Args:
        model (`nn.Module`):
            The model; must be batch-first and have independent samples (no BatchNorm with batch statistics).
        loss_fn (`Callable[[nn.Module, dict], Tensor]`):
            Per-example losses ``ℓ_i``, reduced per example (DESIGN §1).
        params (`dict[str, nn.Parameter]`, *optional*):
            Parameters to differentiate, by name. Defaults to every parameter with ``requires_grad``.
        chunk_size (`int`, *optional*):
            Samples per vmap chunk; bounds peak memory of the forward/backward. Defaults to the whole batch.
        randomness (`str`, *optional*, defaults to `"error"`):
            Passed to `torch.func.vmap`; use ``"different"`` for dropout in training mode.

    Example:

    ```python
    >>> import torch
    >>> from hf_unlearn.gradients import VmapPerSampleGradients
    >>> model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))
    >>> def loss_fn(model, batch):
    ...     return torch.nn.functional.cross_entropy(model(batch["x"]), batch["y"], reduction="none")
    >>> grads = VmapPerSampleGradients(model, loss_fn)
    >>> losses = grads.compute({"x": torch.randn(5, 4), "y": torch.randint(0, 3, (5,))})
    >>> grads.gram().shape
    torch.Size([5, 5])
    ```
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: PerExampleLossFn,
        params: Mapping[str, nn.Parameter] | None = None,
        chunk_size: int | None = None,
        randomness: Literal["error", "different", "same"] = "error",
    ):
        self.model = model
        self.params = (
            dict(params) if params is not None else {n: p for n, p in model.named_parameters() if p.requires_grad}
        )
        if not self.params:
            raise ValueError("No trainable parameters: set requires_grad on the parameters to unlearn with.")
        self._wrapper = _LossModule(model, loss_fn)
        self.chunk_size = chunk_size
        self.randomness = randomness
        self._grads: dict[str, Tensor] | None = None

    def clear(self) -> None:
        self._grads = None

    @property
    def parameters(self) -> dict[str, nn.Parameter]:
        return dict(self.params)

    def compute(self, batch: Mapping[str, Any]) -> Tensor:
        """Compute and keep the per-sample gradients of ``batch``; returns the per-example losses ``ℓ`` [B] (detached).

        Tensors in ``batch`` are split along dim 0; other values are passed to every example unchanged.
        """
        refuse_batch_norm(self.model)
        tensors = {k: v for k, v in batch.items() if isinstance(v, Tensor)}
        others = {k: v for k, v in batch.items() if not isinstance(v, Tensor)}
        if not tensors:
            raise ValueError("The batch holds no tensor to split into examples.")
        sizes = {v.shape[0] for v in tensors.values()}
        if len(sizes) != 1 or 0 in sizes:
            raise ValueError(f"Every tensor in the batch needs the same non-zero size on dim 0, got {sorted(sizes)}.")
        prefixed = {f"model.{n}": p.detach() for n, p in self.params.items()}

        def example_loss(params: dict[str, Tensor], example: dict[str, Tensor]) -> Tensor:
            single = {k: v.unsqueeze(0) for k, v in example.items()} | others  # a batch of one
            losses = functional_call(self._wrapper, params, (single,))
            return losses.reshape(())

        per_sample = vmap(
            grad_and_value(example_loss), in_dims=(None, 0), chunk_size=self.chunk_size, randomness=self.randomness
        )
        try:
            grads, losses = per_sample(prefixed, tensors)
        except RuntimeError as error:
            if "data-dependent control flow" not in str(error):
                raise
            raise ValueError(
                "loss_fn (or the model) branches on tensor values, which torch.func.vmap cannot run. Pass an "
                "attention_mask to transformers models, and compute ℓ without value checks (validate the batch "
                "before calling `compute`)."
            ) from error
        self._grads = {n.removeprefix("model."): g for n, g in grads.items()}  # [B, *shape]
        return losses.detach()

    # ---- readouts (same semantics as LoraGradientCapture) ----------------------------------------------------------

    def _require(self) -> dict[str, Tensor]:
        if self._grads is None:
            raise ValueError("No per-sample gradients yet: call `compute(batch)` first.")
        return self._grads

    def _flat(self, grad: Tensor) -> Tensor:
        dtype = torch.float64 if grad.dtype == torch.float64 else torch.float32
        return grad.flatten(1).to(dtype)  # [B, numel]

    @property
    def batch_size(self) -> int:
        return next(iter(self._require().values())).shape[0]

    def per_sample_gradients(self) -> dict[str, Tensor]:
        """Name → [B, *param.shape]."""
        return dict(self._require())

    def squares(self) -> dict[str, Tensor]:
        """``Σ_i (∇ℓ_i)²`` elementwise, name → parameter-shaped (float32, or float64 for float64 models)."""
        return {name: self._flat(g).square().sum(0).reshape(g.shape[1:]) for name, g in self._require().items()}

    def gram(
        self, per_tensor: bool = False, weights: Mapping[str, Tensor] | None = None
    ) -> Tensor | dict[str, Tensor]:
        """``K = GᵀG`` [B, B] over all parameters, in float32 (float64 for float64 models); ``per_tensor=True`` gives
        ``{name: that tensor's [B, B] Gram}`` and ``weights`` (name → parameter-shaped D) ``⟨∇ℓ_i, D ∇ℓ_j⟩``, as in
        [`FusedGradientCapture.gram`]."""
        grams = {}
        for name, grad in self._require().items():
            flat = self._flat(grad)
            left = flat if weights is None else flat * weights[name].reshape(1, -1).to(flat)
            grams[name] = left @ flat.T
        return grams if per_tensor else sum(grams.values())

    def dot(self, vector: Mapping[str | nn.Parameter, Tensor | None]) -> Tensor:
        """``Gᵀv`` [B] for ``v`` keyed by parameter name or parameter; ``None`` entries count as zero."""
        by_id = {id(p): n for n, p in self.params.items()}
        by_name = {(by_id.get(id(k)) if isinstance(k, nn.Parameter) else k): v for k, v in vector.items()}
        missing = [n for n in self.params if n not in by_name]
        if missing:
            raise ValueError(f"The vector has no entry for parameters {missing[:5]}; give one entry per parameter.")
        out = 0
        for name, grad in self._require().items():
            if by_name[name] is not None:
                flat = self._flat(grad)
                out = out + flat @ by_name[name].reshape(-1).to(flat.dtype)
        return out if isinstance(out, Tensor) else torch.zeros(self.batch_size)

    def combine(self, coefficients: Tensor | Mapping[str, Tensor]) -> dict[str, Tensor]:
        """``Σ_i c_i ∇ℓ_i``, name → tensor of the parameter's shape and dtype; one [B] vector for every parameter, or
        a mapping name → [B]."""
        grads = self._require()
        if isinstance(coefficients, Tensor):
            if coefficients.shape != (self.batch_size,):
                raise ValueError(f"Expected {self.batch_size} coefficients, got shape {tuple(coefficients.shape)}.")
            coefficients = dict.fromkeys(grads, coefficients)
        missing = [n for n in grads if n not in coefficients]
        if missing:
            raise ValueError(f"No coefficients for parameters {missing[:5]}; give one [B] vector per parameter.")
        out = {}
        for name, grad in grads.items():
            flat = self._flat(grad)
            out[name] = (coefficients[name].to(flat) @ flat).reshape(grad.shape[1:]).to(self.params[name].dtype)
        return out
