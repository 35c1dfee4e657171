"""Fused per-sample gradient capture on peft LoRA layers (DESIGN §3).

peft's ``lora_A[adapter]`` and ``lora_B[adapter]`` are plain ``nn.Linear`` modules (``peft/tuners/lora/layer.py``),
and a Linear's weight gradient for sample ``i`` is a product of two things an ordinary backward already computes:
the layer input ``X_i`` and the gradient at the layer output ``Δ_i``. Hooks keep both, so one backward of
``Σ_i ℓ_i`` yields everything OrthoGrad needs (the k×k Gram, ``Gᵀv``, ``Σ_i c_i ∇ℓ_i``) without a backward per sample
and without materialising ``[B, out, in]`` unless asked.

The per-layer maths lives in sampler functions with one fixed signature, ``(layer, activations, backprops, ...)``,
in the spirit of opacus' ``grad_sample/linear.py``; the capture object only owns hooks and buffers.
"""

from collections.abc import Mapping
from typing import Literal

import torch
from peft.tuners.lora import LoraLayer
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm


GramMethod = Literal["auto", "ghost", "materialize"]


# --------------------------------------------------------------------------------------------------------------------
# Per-layer samplers for nn.Linear. ``activations`` [B, T, d_in] and ``backprops`` [B, T, d_out] are already in the
# accumulation dtype, with every call of the layer in the forward concatenated along T (see `_stack_calls`). A
# parameter that does not require grad is skipped, so frozen lora_A (LoRA-FA) or a frozen bias cost nothing.
# --------------------------------------------------------------------------------------------------------------------


def _trainable(layer: nn.Linear) -> dict[str, nn.Parameter]:
    return {
        name: p for name, p in (("weight", layer.weight), ("bias", layer.bias)) if p is not None and p.requires_grad
    }


def linear_per_sample_grads(layer: nn.Linear, activations: Tensor, backprops: Tensor) -> dict[str, Tensor]:
    """Per-sample gradients ``∇_W ℓ_i = Δ_iᵀ X_i`` [B, d_out, d_in] and ``∇_b ℓ_i = Σ_t Δ_i[t]`` [B, d_out].

    A sum over time steps because a Linear shares its weight over every position of a sample; samples never mix, which
    is why the capture refuses BatchNorm in training mode.
    """
    params = _trainable(layer)
    grads = {}
    if "weight" in params:
        grads["weight"] = torch.einsum("bto,bti->boi", backprops, activations)
    if "bias" in params:
        grads["bias"] = backprops.sum(1)
    return grads


def _ghost_is_cheaper(activations: Tensor, backprops: Tensor) -> bool:
    # Ghost: B²·T²·(d_in + d_out) multiply-adds and a [B, B, T, T] buffer. Materialised: B·T·d_in·d_out to form the
    # per-sample gradients plus B²·d_in·d_out for their Gram. LoRA factors are thin (r small), so materialising wins
    # unless T is tiny (T = 1 for 2-D inputs, where the ghost form is a plain product of two small Grams).
    batch, steps, d_in = activations.shape
    d_out = backprops.shape[-1]
    ghost = batch * batch * steps * steps * (d_in + d_out)
    materialized = batch * steps * d_in * d_out + batch * batch * d_in * d_out
    return ghost < materialized


def linear_gram(layer: nn.Linear, activations: Tensor, backprops: Tensor, method: GramMethod = "auto") -> Tensor:
    """This layer's share of ``K_ij = ⟨∇ℓ_i, ∇ℓ_j⟩`` [B, B].

    The ghost form never builds a per-sample gradient: ``⟨Δ_iᵀX_i, Δ_jᵀX_j⟩_F = ⟨X_i X_jᵀ, Δ_i Δ_jᵀ⟩_F`` (trace
    cyclicity); the bias adds ``⟨Σ_t Δ_i, Σ_t Δ_j⟩``. ``method="auto"`` picks the cheaper form per layer.
    """
    params = _trainable(layer)
    batch = activations.shape[0]
    gram = activations.new_zeros(batch, batch)
    if "weight" in params:
        if method == "ghost" or (method == "auto" and _ghost_is_cheaper(activations, backprops)):
            act_gram = torch.einsum("bti,csi->bcts", activations, activations)  # [B, B, T, T]
            backprop_gram = torch.einsum("bto,cso->bcts", backprops, backprops)  # [B, B, T, T]
            gram = gram + (act_gram * backprop_gram).sum((2, 3))
        else:
            flat = torch.einsum("bto,bti->boi", backprops, activations).reshape(batch, -1)  # [B, d_out·d_in]
            gram = gram + flat @ flat.T
    if "bias" in params:
        summed = backprops.sum(1)  # [B, d_out]
        gram = gram + summed @ summed.T
    return gram


def linear_dot(layer: nn.Linear, activations: Tensor, backprops: Tensor, vector: Mapping[str, Tensor]) -> Tensor:
    """This layer's share of ``(Gᵀv)_i = ⟨∇ℓ_i, v⟩ = Σ_t Δ_i[t]·(V X_i[t])`` [B], with ``vector`` keyed like the
    layer's parameters (``"weight"`` [d_out, d_in], ``"bias"`` [d_out]).

    The product is taken on the narrower side of ``V`` so no [B, d_out, d_in] tensor appears.
    """
    params = _trainable(layer)
    out = activations.new_zeros(activations.shape[0])
    if "weight" in params:
        weight = vector["weight"].to(activations.dtype)
        if backprops.shape[-1] <= activations.shape[-1]:
            out = out + (backprops * (activations @ weight.T)).sum((1, 2))
        else:
            out = out + (activations * (backprops @ weight)).sum((1, 2))
    if "bias" in params:
        out = out + backprops.sum(1) @ vector["bias"].to(activations.dtype)
    return out


def linear_combine(
    layer: nn.Linear, activations: Tensor, backprops: Tensor, coefficients: Tensor
) -> dict[str, Tensor]:
    """``Σ_i c_i ∇ℓ_i``: for the weight ``(diag(c)·Δ)ᵀ X`` over all B·T rows, one matmul (DESIGN §3)."""
    params = _trainable(layer)
    weighted = backprops * coefficients[:, None, None]  # [B, T, d_out]
    out = {}
    if "weight" in params:
        out["weight"] = weighted.flatten(0, 1).T @ activations.flatten(0, 1)  # [d_out, d_in]
    if "bias" in params:
        out["bias"] = weighted.sum((0, 1))
    return out


# --------------------------------------------------------------------------------------------------------------------
# The capture object.
# --------------------------------------------------------------------------------------------------------------------


class _Call:
    """One forward call of a captured Linear: its input, and the gradient at its output once backward reaches it."""

    __slots__ = ("activations", "backprops")

    def __init__(self, activations: Tensor):
        self.activations = activations
        self.backprops: Tensor | None = None

    def add_backprop(self, grad: Tensor) -> None:
        # Several backward passes through the same graph add up, as `.grad` does.
        self.backprops = grad.detach() if self.backprops is None else self.backprops + grad.detach()


def _stack_calls(calls: list[_Call], dtype: torch.dtype, loss_scale: float) -> tuple[Tensor, Tensor]:
    """Concatenate a layer's calls along T: a module applied twice in one forward (shared weights) has per-sample
    gradient ``Σ_c Δ_cᵀ X_c = [Δ_1; Δ_2]ᵀ [X_1; X_2]``, so every sampler handles it unchanged."""
    batch = calls[0].activations.shape[0]
    acts = [c.activations.reshape(batch, -1, c.activations.shape[-1]) for c in calls]
    backprops = [c.backprops.reshape(batch, -1, c.backprops.shape[-1]) for c in calls]
    acts = (acts[0] if len(acts) == 1 else torch.cat(acts, 1)).to(dtype)  # [B, T, d_in]
    backprops = (backprops[0] if len(backprops) == 1 else torch.cat(backprops, 1)).to(dtype)  # [B, T, d_out]
    if loss_scale != 1.0:
        backprops = backprops / loss_scale
    return acts, backprops


def refuse_batch_norm(model: nn.Module) -> None:
    """Per-sample gradients assume sample i's loss depends on sample i only; BatchNorm with batch statistics breaks
    that, and no per-sample method can recover ``∇ℓ_i`` from a coupled forward."""
    for name, module in model.named_modules():
        if isinstance(module, _BatchNorm) and (module.training or not module.track_running_stats):
            raise ValueError(
                f"`{name}` is a {type(module).__name__} using batch statistics, so samples are not independent and "
                "per-sample gradients are undefined. Put BatchNorm layers in eval mode (`module.eval()`), or replace "
                "them with GroupNorm/LayerNorm."
            )


class LoraGradientCapture:
    r"""Per-sample gradients of a peft LoRA model's adapter weights from one ordinary backward.

    A LoRA layer computes ``y = W x + s·B(A x)``. Forward hooks on ``lora_A[adapter]`` / ``lora_B[adapter]`` keep each
    layer's input (``X`` [B, T, d_in] into ``lora_A``, after peft's ``lora_dropout``; ``U = X Aᵀ`` [B, T, r] into
    ``lora_B``) and tensor hooks keep the gradient at each output (``Δ^A`` [B, T, r], ``Δ^B`` [B, T, d_out]). The
    per-sample gradient of each factor is ``Δ_iᵀ X_i``; all readouts are formed from these factors, layer by layer,
    and are **global** over the concatenated captured parameters (DESIGN §2.2).

    **What to backpropagate.** The captured quantities are the per-sample gradients ``g_i = ∇ℓ_i`` if, inside the
    block, you backpropagate the plain sum ``Σ_i ℓ_i`` of per-example losses (``losses.model_per_example_loss``),
    e.g. with [`~LoraGradientCapture.backward`]. If you backpropagate ``s·Σ_i ℓ_i`` instead (a batch mean, s = 1/B,
    or a fixed loss-scaler factor), pass ``loss_scale=s``. Per-sample weights other than a common factor are not
    supported: they cannot be told apart from the gradients. Padded positions must be masked out of the loss, so they
    receive a zero output-gradient and contribute nothing.

    Forward and backward must both happen inside the ``with`` block (hooks, including the tensor hooks on outputs,
    are removed on exit, also on error); the readouts can be used after it. Entering again, or `clear`, drops the
    buffers. Nothing is stored on the modules.

    Supported: 2-D ([B, d]) and N-D batch-first inputs (middle dims are flattened into T); a LoRA Linear called
    several times in one forward (its calls add up); gradient checkpointing, reentrant or not (forwards that are only
    re-run to rebuild saved tensors never receive an output gradient and are ignored; note that the capture then
    keeps the LoRA inputs that checkpointing meant to drop); autocast (inputs and output gradients are kept in the
    compute dtype, readouts are formed in float32, or float64 when the captured tensors are float64).

    Refused with a `ValueError`: no trainable LoRA Linear; BatchNorm using batch statistics; LoRA variants (DoRA)
    whose weights are used outside the ``lora_A``/``lora_B`` calls; with ``strict=True``, trainable parameters the
    capture does not cover (e.g. ``modules_to_save``), since the projection must be over all trainable parameters.

    Args:
        model (`nn.Module`):
            A peft model (or any module containing peft LoRA layers).
        adapter_name (`str`, *optional*):
            Adapter to capture. Defaults to each layer's active adapters.
        strict (`bool`, *optional*, defaults to `True`):
            Raise if a trainable parameter of `model` is not a captured LoRA weight.
        loss_scale (`float`, *optional*, defaults to `1.0`):
            The common factor ``s`` of the backpropagated loss ``s·Σ_i ℓ_i``; output gradients are divided by it.
        gram_method (`str`, *optional*, defaults to `"auto"`):
            ``"ghost"`` (from ``X_i X_jᵀ`` and ``Δ_i Δ_jᵀ``), ``"materialize"`` (per-sample factor gradients), or
            ``"auto"`` (the cheaper one per layer).

    Example:

    ```python
    >>> import torch
    >>> from peft import LoraConfig, get_peft_model
    >>> from hf_unlearn.gradients import LoraGradientCapture
    >>> base = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))
    >>> model = get_peft_model(base, LoraConfig(r=2, target_modules=["0", "2"], init_lora_weights=False))
    >>> x, y = torch.randn(5, 4), torch.randint(0, 3, (5,))
    >>> with LoraGradientCapture(model) as capture:
    ...     losses = torch.nn.functional.cross_entropy(model(x), y, reduction="none")  # ℓ [B]
    ...     capture.backward(losses)
    >>> capture.gram().shape
    torch.Size([5, 5])
    ```
    """

    def __init__(
        self,
        model: nn.Module,
        adapter_name: str | None = None,
        strict: bool = True,
        loss_scale: float = 1.0,
        gram_method: GramMethod = "auto",
    ):
        if gram_method not in ("auto", "ghost", "materialize"):
            raise ValueError(f"gram_method must be 'auto', 'ghost' or 'materialize', got {gram_method!r}.")
        if loss_scale == 0:
            raise ValueError("loss_scale must be non-zero: it is the factor s of the backpropagated loss s·Σ_i ℓ_i.")
        self.model = model
        self.loss_scale = float(loss_scale)
        self.gram_method: GramMethod = gram_method
        self._layers = _find_lora_linears(model, adapter_name)  # {module name: nn.Linear}
        if not self._layers:
            raise ValueError(
                "No peft LoRA layer with trainable lora_A/lora_B weights was found"
                + (f" for adapter {adapter_name!r}" if adapter_name is not None else "")
                + ". Wrap the model with `peft.get_peft_model(model, LoraConfig(...))` and keep the adapter "
                "trainable, or use `VmapPerSampleGradients` for full fine-tuning."
            )
        names = {id(p): n for n, p in model.named_parameters()}
        # {"<module name>.weight": (module name, "weight", parameter)}, in model order.
        self._params: dict[str, tuple[str, str, nn.Parameter]] = {}
        for module_name, layer in self._layers.items():
            for local, param in _trainable(layer).items():
                self._params[names[id(param)]] = (module_name, local, param)
        self._name_of = {(module_name, local): name for name, (module_name, local, _) in self._params.items()}
        if strict:
            missing = [n for n, p in model.named_parameters() if p.requires_grad and n not in self._params]
            if missing:
                raise ValueError(
                    f"Trainable parameters outside the captured LoRA layers: {missing[:5]}"
                    + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
                    + ". The projection must cover every trainable parameter: freeze them, use "
                    "`VmapPerSampleGradients`, or pass strict=False to ignore them knowingly."
                )
        self._calls: dict[str, list[_Call]] = {name: [] for name in self._layers}
        self._module_handles: list[torch.utils.hooks.RemovableHandle] = []
        self._tensor_handles: list[torch.utils.hooks.RemovableHandle] = []

    # ---- lifecycle -------------------------------------------------------------------------------------------------

    def __enter__(self) -> "LoraGradientCapture":
        refuse_batch_norm(self.model)
        self.clear()
        try:
            for module_name, layer in self._layers.items():
                self._module_handles.append(layer.register_forward_hook(self._make_hook(module_name)))
        except BaseException:
            self._remove_hooks()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self._remove_hooks()

    def _remove_hooks(self) -> None:
        for handle in self._module_handles + self._tensor_handles:
            handle.remove()
        self._module_handles.clear()
        self._tensor_handles.clear()

    def clear(self) -> None:
        """Drop every captured input and output gradient, and the output hooks of forwards already run."""
        for handle in self._tensor_handles:
            handle.remove()
        self._tensor_handles.clear()
        self._calls = {name: [] for name in self._layers}

    def _make_hook(self, module_name: str):
        def hook(module: nn.Module, args: tuple, output: Tensor) -> None:
            # Under no_grad (the first pass of reentrant checkpointing, an eval forward) nothing can flow back.
            if not output.requires_grad:
                return
            call = _Call(args[0].detach())
            self._calls[module_name].append(call)
            self._tensor_handles.append(output.register_hook(call.add_backprop))

        return hook

    def backward(self, losses: Tensor, retain_graph: bool = False) -> None:
        """Backpropagate ``Σ_i ℓ_i`` from per-example losses ``losses`` [B] into the capture only.

        Uses `torch.autograd.grad`, so ``.grad`` is left untouched and an optimizer, gradient accumulation or DeepSpeed
        never sees this pass. Keep ``retain_graph=True`` to backpropagate a surrogate loss through the same forward
        afterwards (leave the ``with`` block first, or its hooks add that pass to the capture). Under reentrant
        gradient checkpointing, which does not support `torch.autograd.grad`, call ``losses.sum().backward()``
        instead.
        """
        if losses.ndim != 1:
            raise ValueError(f"Expected per-example losses of shape [B], got {tuple(losses.shape)}.")
        params = [p for _, _, p in self._params.values()]
        torch.autograd.grad(losses.sum(), params, retain_graph=retain_graph, allow_unused=True)

    # ---- readouts --------------------------------------------------------------------------------------------------

    @property
    def parameters(self) -> dict[str, nn.Parameter]:
        """The captured parameters, by their name in ``model.named_parameters()``; readouts use the same keys."""
        return {name: param for name, (_, _, param) in self._params.items()}

    def _completed(self) -> dict[str, list[_Call]]:
        """Each layer's calls that received an output gradient. The others are forwards that gradient checkpointing
        re-runs only to rebuild saved tensors (non-reentrant mode), or calls that do not reach the loss: their
        gradient is zero either way."""
        completed = {name: [c for c in calls if c.backprops is not None] for name, calls in self._calls.items()}
        sizes = {c.activations.shape[0] for calls in completed.values() for c in calls}
        if not sizes:
            raise ValueError(
                "Nothing was captured: run the forward and the backward of Σ_i ℓ_i inside the `with` block (the "
                "hooks are removed on exit), with the LoRA adapter enabled and gradients enabled."
            )
        if len(sizes) > 1:
            raise ValueError(
                f"LoRA layers saw batch sizes {sorted(sizes)} in one captured step. Capture one batch per step "
                "(forward the forget and retain batches as one concatenated batch, or one of them outside the block); "
                "peft's mixed-adapter `adapter_names=` batches and models that are not batch-first are unsupported "
                "(use `VmapPerSampleGradients`)."
            )
        return completed

    def _readout(self) -> tuple[dict[str, list[_Call]], int, torch.dtype]:
        completed = self._completed()
        calls = [c for cs in completed.values() for c in cs]
        float64 = any(t.dtype == torch.float64 for c in calls for t in (c.activations, c.backprops))
        return completed, calls[0].activations.shape[0], torch.float64 if float64 else torch.float32

    def _factors(self, completed: dict[str, list[_Call]], dtype: torch.dtype):
        """Yield ``(module name, layer, (X, Δ))`` one layer at a time, so at most one layer's upcast copy exists."""
        for module_name, calls in completed.items():
            if calls:
                yield module_name, self._layers[module_name], _stack_calls(calls, dtype, self.loss_scale)

    @property
    def batch_size(self) -> int:
        return self._readout()[1]

    def gram(self) -> Tensor:
        """``K = GᵀG`` [B, B], ``K_ij = ⟨∇ℓ_i, ∇ℓ_j⟩`` over all captured parameters, in float32 (float64 for float64
        models)."""
        completed, batch, dtype = self._readout()
        gram = torch.zeros(batch, batch, dtype=dtype, device=self._device)
        for _, layer, factors in self._factors(completed, dtype):
            gram += linear_gram(layer, *factors, method=self.gram_method)
        return gram

    def dot(self, vector: Mapping[str | nn.Parameter, Tensor | None]) -> Tensor:
        """``Gᵀv`` [B], ``(Gᵀv)_i = ⟨∇ℓ_i, v⟩``, for ``v`` keyed by parameter name or by the parameter itself (e.g.
        the forget gradient from ``torch.autograd.grad(L_f, list(capture.parameters.values()))``). ``None`` entries
        (autograd's unused parameters) count as zero; a missing captured parameter is an error."""
        by_name = _key_by_name(vector, self._params)
        completed, batch, dtype = self._readout()
        out = torch.zeros(batch, dtype=dtype, device=self._device)
        for module_name, layer, factors in self._factors(completed, dtype):
            local = {lp: by_name[n] for n, (m, lp, _) in self._params.items() if m == module_name}
            if all(v is None for v in local.values()):
                continue
            local = {lp: torch.zeros_like(getattr(layer, lp)) if v is None else v for lp, v in local.items()}
            out += linear_dot(layer, *factors, local)
        return out

    def combine(self, coefficients: Tensor) -> dict[str, Tensor]:
        """``Σ_i c_i ∇ℓ_i`` for each captured parameter (name → tensor of the parameter's shape and dtype)."""
        completed, batch, dtype = self._readout()
        if coefficients.shape != (batch,):
            raise ValueError(f"Expected {batch} coefficients, got shape {tuple(coefficients.shape)}.")
        coefficients = coefficients.to(device=self._device, dtype=dtype)
        out = {name: torch.zeros_like(param) for name, (_, _, param) in self._params.items()}
        for module_name, layer, factors in self._factors(completed, dtype):
            for local, grad in linear_combine(layer, *factors, coefficients).items():
                out[self._name_of[(module_name, local)]] = grad.to(getattr(layer, local).dtype)
        return out

    def per_sample_gradients(self) -> dict[str, Tensor]:
        """Materialised per-sample gradients, name → [B, *param.shape] in the readout dtype. For tests and
        debugging: this is the [B, out, in] tensor the other readouts avoid."""
        completed, batch, dtype = self._readout()
        out = {
            name: torch.zeros(batch, *param.shape, dtype=dtype, device=param.device)
            for name, (_, _, param) in self._params.items()
        }
        for module_name, layer, factors in self._factors(completed, dtype):
            for local, grad in linear_per_sample_grads(layer, *factors).items():
                out[self._name_of[(module_name, local)]] = grad
        return out

    @property
    def _device(self) -> torch.device:
        return next(iter(self._params.values()))[2].device


def _find_lora_linears(model: nn.Module, adapter_name: str | None) -> dict[str, nn.Linear]:
    layers = {}
    for name, module in model.named_modules():
        if not isinstance(module, LoraLayer):
            continue
        adapters = [adapter_name] if adapter_name is not None else list(module.active_adapters)
        for adapter in adapters:
            if adapter not in module.lora_A:
                continue
            pair = {"lora_A": module.lora_A[adapter], "lora_B": module.lora_B[adapter]}
            if not any(p.requires_grad for sub in pair.values() for p in sub.parameters()):
                continue
            if adapter in module.lora_variant:
                raise ValueError(
                    f"`{name}` uses the LoRA variant {type(module.lora_variant[adapter]).__name__} (e.g. DoRA), which "
                    "uses the lora_A/lora_B weights outside their forward calls, so hooks cannot see all of their "
                    "gradient. Use plain LoRA (use_dora=False) or `VmapPerSampleGradients`."
                )
            for kind, sub in pair.items():
                if type(sub) is not nn.Linear:
                    raise ValueError(
                        f"`{name}.{kind}.{adapter}` is a {type(sub).__name__}; fused capture supports nn.Linear LoRA "
                        "factors only. Use `VmapPerSampleGradients` for LoRA on convolutions or embeddings."
                    )
                if any(p.requires_grad for p in sub.parameters()):
                    layers[f"{name}.{kind}.{adapter}"] = sub
    return layers


def _key_by_name(vector: Mapping, params: dict[str, tuple[str, str, nn.Parameter]]) -> dict[str, Tensor | None]:
    by_id = {id(p): n for n, (_, _, p) in params.items()}
    by_name = {}
    for key, value in vector.items():
        name = by_id.get(id(key)) if isinstance(key, nn.Parameter) else key
        if name in params:
            by_name[name] = value
    missing = [n for n in params if n not in by_name]
    if missing:
        raise ValueError(
            f"The vector has no entry for captured parameters {missing[:5]}; key it by parameter name (as in "
            "`capture.parameters`) or by the parameter, with one entry per captured parameter."
        )
    return by_name
