"""Fused per-sample gradient capture from one ordinary backward (DESIGN §3).

A Linear's weight gradient for sample ``i`` is a product of two things an ordinary backward already computes: the
layer input ``X_i`` and the gradient at the layer output ``Δ_i``. Hooks keep both, so one backward of ``Σ_i ℓ_i``
yields everything OrthoGrad needs (the k×k Gram, per tensor or global, ``Gᵀv``, ``Σ_i c_i ∇ℓ_i``) without a backward
per sample and without materialising ``[B, out, in]`` unless that is the cheaper form. Convolutions, embeddings and
LayerNorm reduce to the same two factors (`samplers`); peft's LoRA factors are plain ``nn.Linear`` modules.

The per-layer maths lives in `hf_unlearn.gradients.samplers`; the capture object owns hooks and buffers only.
"""

from collections.abc import Mapping

import torch
from peft.tuners.lora import LoraLayer
from torch import Tensor, nn
from torch.autograd.graph import get_gradient_edge

from ..integrations.peft import lora_variants
from ..integrations.torch import is_batch_norm
from .samplers import LINEAR, GramMethod, LayerSampler, UnsupportedLayerError, sampler_for, trainable


class _Call:
    """One forward call of a captured layer: its input, and the gradient at its output once backward reaches it."""

    __slots__ = ("activations", "backprops")

    def __init__(self, activations: Tensor):
        self.activations = activations
        self.backprops: Tensor | None = None

    def add_backprop(self, grad: Tensor) -> None:
        # Several backward passes through the same graph add up, as `.grad` does.
        self.backprops = grad.detach() if self.backprops is None else self.backprops + grad.detach()


def refuse_batch_norm(model: nn.Module) -> None:
    """Per-sample gradients assume sample i's loss depends on sample i only; BatchNorm with batch statistics breaks
    that, and no per-sample method can recover ``∇ℓ_i`` from a coupled forward."""
    for name, module in model.named_modules():
        if is_batch_norm(module) and (module.training or not module.track_running_stats):
            raise ValueError(
                f"`{name}` is a {type(module).__name__} using batch statistics, so samples are not independent and "
                "per-sample gradients are undefined. Put BatchNorm layers in eval mode (`module.eval()`), or replace "
                "them with GroupNorm/LayerNorm."
            )


class FusedGradientCapture:
    r"""Per-sample gradients of every trainable parameter from one ordinary backward, for models built from
    ``nn.Linear``, transformers ``Conv1D``, ``nn.Conv1d``/``nn.Conv2d`` (groups = 1), ``nn.Embedding`` and
    ``nn.LayerNorm`` (full fine-tuning), or peft LoRA adapters (whose factors are ``nn.Linear``).

    Forward hooks keep each captured layer's input and tensor hooks the gradient at its output; the readouts are
    formed layer by layer from these two factors (`samplers`). ``gram()`` is global over all captured parameters
    (DESIGN §2.2); ``gram(per_tensor=True)`` gives each parameter tensor's own Gram, and ``combine`` takes one
    coefficient vector per tensor, which is what a per-tensor projection needs.

    **What to backpropagate.** The captured quantities are the per-sample gradients ``g_i = ∇ℓ_i`` if, inside the
    block, you backpropagate the plain sum ``Σ_i ℓ_i`` of per-example losses (``losses.model_per_example_loss``),
    e.g. with [`~FusedGradientCapture.backward`]. If you backpropagate ``s·Σ_i ℓ_i`` instead (a batch mean, s = 1/B,
    or a fixed loss-scaler factor), pass ``loss_scale=s``. Per-sample weights other than a common factor are not
    supported: they cannot be told apart from the gradients. Padded positions must be masked out of the loss, so they
    receive a zero output-gradient and contribute nothing.

    Forward and backward must both happen inside the ``with`` block (hooks, including the tensor hooks on outputs,
    are removed on exit, also on error); the readouts can be used after it. Entering again, or `clear`, drops the
    buffers. Nothing is stored on the modules.

    Supported: batch-first inputs (middle dims are flattened into T); a layer called several times in one forward
    (its calls add up); gradient checkpointing, reentrant or not (forwards that are only re-run to rebuild saved
    tensors never receive an output gradient and are ignored; the capture then keeps the inputs that checkpointing
    meant to drop); autocast (inputs and output gradients are kept in the compute dtype, readouts are formed in
    float32, or float64 when the captured tensors are float64).

    Refused with [`~hf_unlearn.gradients.samplers.UnsupportedLayerError`] (a `ValueError` naming the layer): a
    trainable parameter held by a layer type without a sampler (e.g. a custom RMSNorm), by a subclass of a supported
    type, or shared by two modules (tied embeddings); LoRA variants (DoRA). Refused with `ValueError`: BatchNorm using
    batch statistics. Weights read outside their module's call (``F.linear(x, module.weight)``) cannot be seen by
    hooks and are not detected: such models must use `VmapPerSampleGradients`.

    Args:
        model (`nn.Module`): the model; every trainable parameter is captured.
        strict (`bool`, *optional*, defaults to `True`): raise on a trainable parameter that cannot be captured;
            `False` captures the supported layers and ignores the rest knowingly.
        loss_scale (`float`, *optional*, defaults to `1.0`): the common factor ``s`` of the backpropagated loss.
        gram_method (`str`, *optional*, defaults to `"auto"`): ``"ghost"`` (Linear layers: from ``X_i X_jᵀ`` and
            ``Δ_i Δ_jᵀ``), ``"materialize"`` (per-sample gradients), or ``"auto"`` (the cheaper one per layer).

    Example:

    ```python
    >>> import torch
    >>> from hf_unlearn.gradients import FusedGradientCapture
    >>> model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.LayerNorm(8), torch.nn.Linear(8, 3))
    >>> x, y = torch.randn(5, 4), torch.randint(0, 3, (5,))
    >>> with FusedGradientCapture(model) as capture:
    ...     capture.backward(torch.nn.functional.cross_entropy(model(x), y, reduction="none"))  # ℓ [B]
    >>> capture.gram().shape, sorted(capture.gram(per_tensor=True))[0]
    (torch.Size([5, 5]), '0.bias')
    ```
    """

    def __init__(
        self, model: nn.Module, strict: bool = True, loss_scale: float = 1.0, gram_method: GramMethod = "auto"
    ):
        self._init(model, loss_scale, gram_method, _find_layers(model, strict))

    def _init(self, model, loss_scale, gram_method, layers: dict[str, tuple[nn.Module, LayerSampler]]) -> None:
        if gram_method not in ("auto", "ghost", "materialize"):
            raise ValueError(f"gram_method must be 'auto', 'ghost' or 'materialize', got {gram_method!r}.")
        if loss_scale == 0:
            raise ValueError("loss_scale must be non-zero: it is the factor s of the backpropagated loss s·Σ_i ℓ_i.")
        self.model = model
        self.loss_scale = float(loss_scale)
        self.gram_method: GramMethod = gram_method
        self._layers = {name: layer for name, (layer, _) in layers.items()}
        self._samplers = {name: sampler for name, (_, sampler) in layers.items()}
        names = {id(p): n for n, p in model.named_parameters()}
        # {"<module name>.weight": (module name, "weight", parameter)}, in model order.
        self._params: dict[str, tuple[str, str, nn.Parameter]] = {}
        for module_name, layer in self._layers.items():
            for local, param in trainable(layer).items():
                self._params[names[id(param)]] = (module_name, local, param)
        self._name_of = {(module_name, local): name for name, (module_name, local, _) in self._params.items()}
        self._calls: dict[str, list[_Call]] = {name: [] for name in self._layers}
        self._edges = []
        self._factor_cache: dict[str, tuple[Tensor, Tensor]] = {}
        self._module_handles: list[torch.utils.hooks.RemovableHandle] = []
        self._tensor_handles: list[torch.utils.hooks.RemovableHandle] = []

    # ---- lifecycle -------------------------------------------------------------------------------------------------

    def __enter__(self) -> "FusedGradientCapture":
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
        self._edges = []  # where each captured output enters the graph: what `backward` differentiates to
        self._factor_cache = {}

    def _make_hook(self, module_name: str):
        def hook(module: nn.Module, args: tuple, output: Tensor) -> None:
            # Under no_grad (the first pass of reentrant checkpointing, an eval forward) nothing can flow back.
            if not output.requires_grad:
                return
            call = _Call(args[0].detach())
            self._calls[module_name].append(call)
            self._tensor_handles.append(output.register_hook(lambda grad: self._add_backprop(call, grad)))
            self._edges.append(get_gradient_edge(output))

        return hook

    def _add_backprop(self, call: _Call, grad: Tensor) -> None:
        self._factor_cache.clear()  # a later backward adds to the output gradients: readouts must see the sum
        call.add_backprop(grad)

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
        # Differentiating to the captured outputs (not the parameters) stops the pass where the hooks have what they
        # need: no weight gradient is formed, only the output gradients the per-sample readouts are made of.
        inputs = list(self._edges) or [p for _, _, p in self._params.values()]
        torch.autograd.grad(losses.sum(), inputs, retain_graph=retain_graph, allow_unused=True)

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
        if len(sizes) == 2 and 1 in sizes:
            # A layer run once on a batch of 1 and broadcast (GPT-2's learned positions): its output gradient is
            # already summed over the samples, so no per-sample gradient can be read from it.
            broadcast = [n for n, calls in completed.items() if any(c.activations.shape[0] == 1 for c in calls)]
            raise UnsupportedLayerError(
                broadcast[0],
                f"was called on a batch of 1 and broadcast to the batch of {max(sizes)} (e.g. a learned position "
                "embedding), so its output gradient is already summed over samples; freeze it or use torch.func.",
            )
        if len(sizes) > 1:
            raise ValueError(
                f"Captured layers saw batch sizes {sorted(sizes)} in one captured step. Capture one batch per step "
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
        """Yield ``(module name, layer, sampler, (rows, Δ))`` one layer at a time, so at most one layer's upcast copy
        exists. A layer called several times (shared weights) has per-sample gradient ``Σ_c Δ_cᵀ X_c``, which is the
        single-call form on the calls' rows concatenated along T."""
        for module_name, calls in completed.items():
            if not calls:
                continue
            layer, sampler = self._layers[module_name], self._samplers[module_name]
            cached = self._factor_cache.get(module_name)
            if cached is not None and cached[1].dtype == dtype:
                yield module_name, layer, sampler, cached
                continue
            rows = [sampler.rows(layer, c.activations, dtype) for c in calls]
            backprops = [sampler.backprop_rows(layer, c.backprops, dtype) for c in calls]
            rows = rows[0] if len(rows) == 1 else torch.cat(rows, 1)
            backprops = backprops[0] if len(backprops) == 1 else torch.cat(backprops, 1)
            if self.loss_scale != 1.0:
                backprops = backprops / self.loss_scale
            if all(c.backprops.dtype == dtype for c in calls):
                # Kept for the next readout (a step reads the Gram, then combines): no upcast copy is held, and the
                # rows a layer derives (unfolded patches, normalised inputs) are built once per step.
                self._factor_cache[module_name] = (rows, backprops)
            yield module_name, layer, sampler, (rows, backprops)

    def _local_names(self, module_name: str) -> dict[str, str]:
        return {local: name for name, (m, local, _) in self._params.items() if m == module_name}

    @property
    def batch_size(self) -> int:
        return self._readout()[1]

    def gram(
        self, per_tensor: bool = False, weights: Mapping[str, Tensor] | None = None
    ) -> Tensor | dict[str, Tensor]:
        """``K = GᵀG`` [B, B], ``K_ij = ⟨∇ℓ_i, ∇ℓ_j⟩`` over all captured parameters, in float32 (float64 for float64
        models). ``per_tensor=True``: ``{parameter name: its own [B, B] Gram}`` (they sum to the global one).
        ``weights`` (name → parameter-shaped tensor, e.g. a diagonal preconditioner D) give ``⟨∇ℓ_i, D ∇ℓ_j⟩``;
        weighted Grams of Linear layers are formed from materialised per-sample gradients, one layer at a time."""
        completed, batch, dtype = self._readout()
        grams = {}
        for module_name, layer, sampler, factors in self._factors(completed, dtype):
            names = self._local_names(module_name)
            local_weights = None if weights is None else {lp: weights[n] for lp, n in names.items()}
            for local, gram in sampler.gram(layer, *factors, method=self.gram_method, weights=local_weights).items():
                grams[names[local]] = gram
        for name in self._params:  # layers whose calls never reached the loss have zero gradient
            grams.setdefault(name, torch.zeros(batch, batch, dtype=dtype, device=self._device))
        if per_tensor:
            return {name: grams[name] for name in self._params}
        return sum(grams.values())

    def dot(self, vector: Mapping[str | nn.Parameter, Tensor | None]) -> Tensor:
        """``Gᵀv`` [B], ``(Gᵀv)_i = ⟨∇ℓ_i, v⟩``, for ``v`` keyed by parameter name or by the parameter itself (e.g.
        the forget gradient from ``torch.autograd.grad(L_f, list(capture.parameters.values()))``). ``None`` entries
        (autograd's unused parameters) count as zero; a missing captured parameter is an error."""
        by_name = _key_by_name(vector, self._params)
        completed, batch, dtype = self._readout()
        out = torch.zeros(batch, dtype=dtype, device=self._device)
        for module_name, layer, sampler, factors in self._factors(completed, dtype):
            local = {lp: by_name[n] for lp, n in self._local_names(module_name).items()}
            if all(v is None for v in local.values()):
                continue
            local = {lp: torch.zeros_like(getattr(layer, lp)) if v is None else v for lp, v in local.items()}
            out += sampler.dot(layer, *factors, local)
        return out

    def combine(self, coefficients: Tensor | Mapping[str, Tensor]) -> dict[str, Tensor]:
        """``Σ_i c_i ∇ℓ_i`` for each captured parameter (name → tensor of the parameter's shape and dtype).
        ``coefficients`` is one [B] vector for every parameter, or a mapping name → [B] (one per tensor)."""
        completed, batch, dtype = self._readout()
        per_name = _coefficients_by_name(coefficients, self._params, batch)
        per_name = {n: c.to(device=self._device, dtype=dtype) for n, c in per_name.items()}
        out = {name: torch.zeros_like(param) for name, (_, _, param) in self._params.items()}
        for module_name, layer, sampler, factors in self._factors(completed, dtype):
            names = self._local_names(module_name)
            local = {lp: per_name[n] for lp, n in names.items()}
            for lp, grad in sampler.combine(layer, *factors, local).items():
                out[names[lp]] = grad.to(getattr(layer, lp).dtype)
        return out

    def squares(self) -> dict[str, Tensor]:
        """``Σ_i (∇ℓ_i)²`` elementwise for each captured parameter (name → parameter-shaped, readout dtype): the
        batch's second moment of per-sample gradients, as an Adam-style preconditioner needs. Materialises each
        layer's per-sample gradients in turn (embeddings one sample at a time)."""
        completed, _, dtype = self._readout()
        out = {
            name: torch.zeros(param.shape, dtype=dtype, device=param.device)
            for name, (_, _, param) in self._params.items()
        }
        for module_name, layer, sampler, factors in self._factors(completed, dtype):
            names = self._local_names(module_name)
            for local, value in sampler.squares(layer, *factors).items():
                out[names[local]] = value
        return out

    def per_sample_gradients(self) -> dict[str, Tensor]:
        """Materialised per-sample gradients, name → [B, *param.shape] in the readout dtype. For tests, debugging and
        the global Gram across processes: this is the [B, out, in] tensor the other readouts avoid."""
        completed, batch, dtype = self._readout()
        out = {
            name: torch.zeros(batch, *param.shape, dtype=dtype, device=param.device)
            for name, (_, _, param) in self._params.items()
        }
        for module_name, layer, sampler, factors in self._factors(completed, dtype):
            names = self._local_names(module_name)
            for local, grad in sampler.per_sample(layer, *factors).items():
                out[names[local]] = grad
        return out

    @property
    def _device(self) -> torch.device:
        return next(iter(self._params.values()))[2].device


class LoraGradientCapture(FusedGradientCapture):
    r"""Per-sample gradients of a peft LoRA model's adapter weights from one ordinary backward.

    A LoRA layer computes ``y = W x + s·B(A x)``. Forward hooks on ``lora_A[adapter]`` / ``lora_B[adapter]`` keep each
    layer's input (``X`` [B, T, d_in] into ``lora_A``, after peft's ``lora_dropout``; ``U = X Aᵀ`` [B, T, r] into
    ``lora_B``) and tensor hooks keep the gradient at each output (``Δ^A`` [B, T, r], ``Δ^B`` [B, T, d_out]). The
    per-sample gradient of each factor is ``Δ_iᵀ X_i``; all readouts are formed from these factors, layer by layer,
    and are **global** over the concatenated captured parameters (DESIGN §2.2).

    What to backpropagate (the plain sum of per-example losses, or ``loss_scale``), and the ``with`` block's rules,
    are those of [`FusedGradientCapture`].

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
        layers = _find_lora_linears(model, adapter_name)  # {module name: nn.Linear}
        if not layers:
            raise ValueError(
                "No peft LoRA layer with trainable lora_A/lora_B weights was found"
                + (f" for adapter {adapter_name!r}" if adapter_name is not None else "")
                + ". Wrap the model with `peft.get_peft_model(model, LoraConfig(...))` and keep the adapter "
                "trainable, or use `FusedGradientCapture` / `VmapPerSampleGradients` for full fine-tuning."
            )
        self._init(model, loss_scale, gram_method, {name: (layer, LINEAR) for name, layer in layers.items()})
        if strict:
            missing = [n for n, p in model.named_parameters() if p.requires_grad and n not in self._params]
            if missing:
                raise ValueError(
                    f"Trainable parameters outside the captured LoRA layers: {missing[:5]}"
                    + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
                    + ". The projection must cover every trainable parameter: freeze them, use "
                    "`FusedGradientCapture` or `VmapPerSampleGradients`, or pass strict=False to ignore them knowingly."
                )


def _find_layers(model: nn.Module, strict: bool) -> dict[str, tuple[nn.Module, LayerSampler]]:
    """Every module owning a trainable parameter, with its sampler; `UnsupportedLayerError` for the first that has
    none (with ``strict``), for shared parameters and for LoRA variants."""
    owners: dict[int, list[str]] = {}
    layers = {}
    for name, module in model.named_modules():
        if isinstance(module, LoraLayer):
            for adapter, variant in lora_variants(module).items():
                if adapter in module.lora_A and any(p.requires_grad for p in module.lora_A[adapter].parameters()):
                    raise UnsupportedLayerError(
                        name,
                        f"uses the LoRA variant {type(variant).__name__} (e.g. DoRA), whose weights are used outside "
                        "their forward calls, so hooks cannot see all of their gradient.",
                    )
        own = [p for p in module.parameters(recurse=False) if p.requires_grad]
        if not own:
            continue
        for p in own:
            owners.setdefault(id(p), []).append(name)
        try:
            sampler = sampler_for(name, module)
        except UnsupportedLayerError:
            if strict:
                raise
            continue
        unknown = [
            n for n, p in module.named_parameters(recurse=False) if p.requires_grad and n not in trainable(module)
        ]
        if unknown:
            if strict:
                raise UnsupportedLayerError(name, f"trainable parameters {unknown} beyond weight and bias.")
            continue
        layers[name] = (module, sampler)
    for holders in owners.values():
        if len(holders) > 1:
            raise UnsupportedLayerError(
                holders[0],
                f"its parameter is shared with {holders[1:]} (tied weights); the per-sample gradient would need the "
                "cross terms between the two uses.",
            )
    if not layers:
        raise ValueError("No trainable parameter in a supported layer: set requires_grad on the parameters to train.")
    return layers


def _coefficients_by_name(coefficients, params: Mapping, batch: int) -> dict[str, Tensor]:
    if isinstance(coefficients, Tensor):
        if coefficients.shape != (batch,):
            raise ValueError(f"Expected {batch} coefficients, got shape {tuple(coefficients.shape)}.")
        return dict.fromkeys(params, coefficients)
    missing = [n for n in params if n not in coefficients]
    if missing:
        raise ValueError(f"No coefficients for captured parameters {missing[:5]}; give one [B] vector per parameter.")
    bad = {n: tuple(coefficients[n].shape) for n in params if coefficients[n].shape != (batch,)}
    if bad:
        raise ValueError(f"Expected {batch} coefficients per parameter, got shapes {bad}.")
    return {n: coefficients[n] for n in params}


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
            if adapter in lora_variants(module):
                raise ValueError(
                    f"`{name}` uses the LoRA variant {type(lora_variants(module)[adapter]).__name__} (e.g. DoRA), which "
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
