"""The LUR meta step: a virtual unlearning step and the meta-gradient through it (DESIGN §2.3).

LUR ("Learning to Unlearn while Retaining", Patel & Qiu, https://huggingface.co/papers/2503.06339) descends on

    J(θ) = L_u(θ) + γ·L_r(θ − β·∇L_u(θ))

so that a step which helps unlearning but would hurt the retain loss *one virtual step later* is penalised.
To first order in β, L_r(θ') ≈ L_r(θ) − β·⟨∇L_r(θ), ∇L_u(θ)⟩: the meta objective carries an implicit
regulariser against conflicting unlearn/retain gradients, without an explicit projection.

Nothing here edits ``.grad``. The meta-gradient is handed over as a **surrogate scalar** whose gradient with respect
to θ is the LUR direction, so it reaches any optimizer, gradient accumulation and DeepSpeed through a plain
``accelerator.backward(surrogate)``. The model is never copied: the retain loss at the virtual point θ' is evaluated
with `torch.func.functional_call`, swapping in θ' for the trainable parameters only (LoRA ``lora_A``/``lora_B`` of a
peft model, or any trainable set); frozen weights and buffers are read from the module itself.
"""

import contextlib
import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor, nn
from torch.func import functional_call

from hf_unlearn.integrations.deepspeed import zero3_partitioned
from hf_unlearn.integrations.torch import swapped_parameters
from hf_unlearn.integrations.transformers import reentrant_checkpointing
from hf_unlearn.losses import model_per_example_loss


LossFn = Callable[[Mapping[str, Tensor] | None], Tensor]
"""A scalar loss of the model at its own parameters (argument ``None``) or at the given trainable parameters."""

MetaOrder = Literal["second", "first"]
ObjectiveOrder = Literal["unlearn_then_retain", "retain_then_unlearn"]

_DOUBLE_BACKWARD_HINT = (
    "Second-order LUR (meta_order='second') differentiates through the inner gradient (one Hessian-vector "
    "product), but an op in this model does not support double backward. Use meta_order='first' (first-order "
    "LUR: ∇L_u(θ) + γ·∇L_r(θ'), no Hessian term), or replace the op. Gradient checkpointing must use "
    "gradient_checkpointing_kwargs={'use_reentrant': False}."
)


def trainable_parameters(model: nn.Module) -> dict[str, Tensor]:
    """θ: the parameters that LUR differentiates and steps, named as in ``model.named_parameters()``.

    For a peft model these are the adapter weights (``...lora_A.default.weight``); for full fine-tuning, every
    parameter with ``requires_grad``. The names are the keys `torch.func.functional_call` expects.
    """
    params = {name: param for name, param in model.named_parameters() if param.requires_grad}
    if not params:
        raise ValueError(
            "The model has no trainable parameters (none with requires_grad=True). Wrap it with "
            "peft.get_peft_model(model, LoraConfig(...)) or unfreeze the parameters to fine-tune."
        )
    return params


class _BoundLoss(nn.Module):
    # functional_call swaps parameters only for the duration of a module call, so the whole loss computation (label
    # shifting, masking, reduction) must run inside one; the model's parameter names gain a "model." prefix.
    def __init__(self, model: nn.Module, loss: Callable[[nn.Module, Any], Tensor]):
        super().__init__()
        self.model = model
        self.loss = loss

    def forward(self, batch: Any) -> Tensor:
        return self.loss(self.model, batch)


@contextlib.contextmanager
def _substituted_by_hooks(model: nn.Module, params: Mapping[str, Tensor]) -> Iterator[None]:
    """Run `model` at ``params`` by re-running each owning module's forward with them, from a forward hook.

    For DeepSpeed ZeRO-3, whose module hooks walk every module's parameters (`functional_call` would show them plain
    tensors in place of its partitioned parameters, mid-forward). Here the owning modules keep their parameters, so
    ZeRO-3 gathers and traces them as usual; a hook placed before ZeRO-3's own replaces the output by the same
    forward at ``params``, and ZeRO-3's backward hooks then wrap that output. The forward at θ that is discarded
    costs one extra call of each owning module (for LoRA: the thin adapter matmuls only).
    """
    by_module: dict[str, dict[str, Tensor]] = {}
    for name, tensor in params.items():
        owner, _, local = name.rpartition(".")
        by_module.setdefault(owner, {})[local] = tensor

    def make_hook(substitutes: dict[str, Tensor]):
        def rerun_at_params(module: nn.Module, args, kwargs, output):
            with swapped_parameters(module, substitutes):
                return module.forward(*args, **kwargs)

        return rerun_at_params

    handles = [
        model.get_submodule(owner).register_forward_hook(make_hook(substitutes), prepend=True, with_kwargs=True)
        for owner, substitutes in by_module.items()
    ]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def _mean_example_loss(model: nn.Module, batch: Mapping[str, Tensor], config: object | None = None) -> Tensor:
    # (1/B)·Σ_i ℓ_i with ℓ_i the mean over example i's own target tokens (DESIGN §1), not a batch token mean.
    return model_per_example_loss(model, batch, config).mean()


def _checkpointed_modules(model: nn.Module) -> list[nn.Module]:
    # `gradient_checkpointing` is the per-module flag transformers sets and reads (`is_activation_checkpointing`);
    # checkpointing applied by hand (torch.utils.checkpoint inside custom modules) is not seen here.
    modules = [module for module in model.modules() if getattr(module, "gradient_checkpointing", False) is True]
    for module in modules:
        if reentrant_checkpointing(module):
            raise ValueError(
                "Reentrant activation checkpointing does not support torch.autograd.grad, which the LUR inner step "
                "needs: the inner gradient would silently miss the checkpointed blocks. Enable it with "
                "gradient_checkpointing_kwargs={'use_reentrant': False} (transformers' default)."
            )
    return modules


@contextlib.contextmanager
def _activation_checkpointing_disabled(modules: list[nn.Module]) -> Iterator[None]:
    # A checkpointed block re-runs its forward during backward and reads its parameters from the module *then*,
    # after functional_call has put θ back: a checkpointed forward at θ' would silently be differentiated at θ. So
    # the virtual forward keeps its activations (memory of one un-checkpointed forward); forwards at θ checkpoint.
    for module in modules:
        module.gradient_checkpointing = False
    try:
        yield
    finally:
        for module in modules:
            module.gradient_checkpointing = True


def batch_loss_fn(
    model: nn.Module,
    batch: Any,
    loss: Callable[[nn.Module, Any], Tensor] | None = None,
    config: object | None = None,
    virtual_forward: str = "auto",
) -> LossFn:
    """Bind a batch to a loss so that it can be evaluated at θ (argument ``None``) or at virtual parameters θ'.

    Args:
        model (`nn.Module`):
            The model as training calls it. Virtual parameters are named as in its ``named_parameters()``, so take
            θ from `trainable_parameters` of this same object. Pass the bare module, not a DDP wrapper: the meta
            step's several forwards per backward confuse DDP's reducer (`LURTrainer` averages the gradient itself).
        batch (`Any`):
            The collated batch, passed unchanged to ``loss``.
        loss (`Callable[[nn.Module, Any], Tensor]`, *optional*):
            ``loss(model, batch) -> scalar``. Defaults to the mean over examples of the per-example loss of
            `hf_unlearn.losses.model_per_example_loss` (each example's mean over its own target tokens).
            Negate it for gradient ascent (``L_u = −L_f``); pass NPO's loss for NPO.
        config (`PretrainedConfig`, *optional*):
            Forwarded to the default loss, for wrapped models that no longer expose ``.config``.
        virtual_forward (`str`, *optional*, defaults to `"auto"`):
            How the model runs at virtual parameters: `"functional_call"` (`torch.func.functional_call`), `"hooks"`
            (each owning module re-runs its forward with them, see `_substituted_by_hooks`), or `"auto"`: hooks when
            the model is partitioned by DeepSpeed ZeRO-3, whose own hooks cannot see swapped-in tensors.

    transformers' activation checkpointing is kept for evaluations at θ and switched off for evaluations at
    virtual parameters (see `_activation_checkpointing_disabled`); reentrant checkpointing is refused.

    Returns:
        `LossFn`: ``fn(params)`` with ``params`` `None` (the module's own parameters, a plain forward) or a mapping
        from trainable-parameter names to tensors that replace them for this one evaluation.
    """
    if loss is None:

        def loss(module: nn.Module, inputs: Any) -> Tensor:
            return _mean_example_loss(module, inputs, config)

    bound = _BoundLoss(model, loss)
    checkpointed = _checkpointed_modules(model)
    if virtual_forward not in ("auto", "functional_call", "hooks"):
        raise ValueError(f"virtual_forward must be 'auto', 'functional_call' or 'hooks', got {virtual_forward!r}.")
    if virtual_forward == "auto":
        virtual_forward = "hooks" if zero3_partitioned(model.parameters()) else "functional_call"

    def loss_fn(params: Mapping[str, Tensor] | None) -> Tensor:
        if params is None:
            return loss(model, batch)
        with _activation_checkpointing_disabled(checkpointed):
            if virtual_forward == "hooks":
                with _substituted_by_hooks(model, params):
                    return loss(model, batch)
            return functional_call(bound, {f"model.{name}": tensor for name, tensor in params.items()}, (batch,))

    return loss_fn


def _as_objective_dtype(loss: Tensor, name: str) -> Tensor:
    if loss.ndim != 0:
        raise ValueError(
            f"The {name} must be a scalar, got shape {tuple(loss.shape)}. Reduce per-example losses with .mean()."
        )
    # Under autocast a loss can come back in fp16/bf16; the meta objective and the inner step are formed in float32
    # (float64 stays float64 for exact references).
    return loss.float() if loss.dtype in (torch.float16, torch.bfloat16) else loss


def _inner_gradient(
    inner_loss: Tensor, params: list[Tensor], second_order: bool, retain_graph: bool = True
) -> tuple[Tensor | None, ...]:
    try:
        # retain_graph=True (`virtual_step`) leaves L_inner(θ)'s graph to the caller; `LURObjective` does not need it
        # in first order, and create_graph keeps it in second order anyway.
        return torch.autograd.grad(
            inner_loss, params, retain_graph=retain_graph, create_graph=second_order, allow_unused=True
        )
    except torch.OutOfMemoryError:
        raise
    except RuntimeError as err:
        hint = (
            _DOUBLE_BACKWARD_HINT
            if second_order
            else "Gradient checkpointing must use gradient_checkpointing_kwargs={'use_reentrant': False}: reentrant "
            "checkpointing does not support torch.autograd.grad."
        )
        raise RuntimeError(f"Computing the LUR inner gradient failed: {err}\n{hint}") from err


def virtual_step(
    params: Mapping[str, Tensor], inner_loss: Tensor, inner_lr: float, second_order: bool = True
) -> dict[str, Tensor]:
    """The virtual point θ' = θ − β·∇L_inner(θ), β = ``inner_lr``, as tensors that stay functions of θ.

    With ``second_order=True`` the inner gradient is built with ``create_graph=True``, so a backward through
    anything evaluated at θ' applies (I − β·∇²L_inner(θ)) — one Hessian-vector product, never a Hessian. With
    ``second_order=False`` the inner gradient is a constant and ∂θ'/∂θ = I (the first-order approximation).
    Parameters the inner loss does not reach have zero inner gradient and stay where they are.

    Args:
        params (`Mapping[str, Tensor]`):
            θ, e.g. from `trainable_parameters`; the tensors ``inner_loss`` was computed from.
        inner_loss (`Tensor`):
            Scalar L_inner(θ) (L_u in LUR's default order).
        inner_lr (`float`):
            β ≥ 0.
        second_order (`bool`, *optional*, defaults to `True`):
            Keep the graph of the inner gradient for the exact meta-gradient.

    Returns:
        `dict[str, Tensor]`: θ', with the keys of ``params``.
    """
    _check_inner_lr(inner_lr)
    return _step(params, _inner_gradient(inner_loss, list(params.values()), second_order), inner_lr)


def _step(params: Mapping[str, Tensor], grads: tuple[Tensor | None, ...], inner_lr: float) -> dict[str, Tensor]:
    # θ' = θ − β·∇L_inner(θ)
    return {name: p if g is None else p - inner_lr * g for (name, p), g in zip(params.items(), grads, strict=True)}


def _check_inner_lr(inner_lr: float) -> None:
    if not math.isfinite(inner_lr) or inner_lr < 0:
        raise ValueError(
            f"inner_lr (β, the virtual step size) must be a finite number >= 0, got {inner_lr}. "
            "inner_lr=0 reduces LUR to GradDiff."
        )


def _check_double_backward(inner_grads: tuple[Tensor | None, ...]) -> None:
    # An op without double backward leaves an error node in the graph of the inner gradient (`once_differentiable`
    # custom Functions, derivatives marked not_implemented). `autograd.grad(..., inputs=θ)` prunes such a node when it
    # has no path to θ and silently drops its term, but the Trainer's `backward()` executes it and fails there, far
    # from the cause; find it up front instead.
    stack = [g.grad_fn for g in inner_grads if g is not None and g.grad_fn is not None]
    seen = set()
    while stack:
        node = stack.pop()
        if node in seen:
            continue
        seen.add(node)
        if node.name() in ("torch::autograd::Error", "torch::autograd::NotImplemented"):
            raise RuntimeError(f"The graph of the LUR inner gradient contains {node.name()}.\n{_DOUBLE_BACKWARD_HINT}")
        stack.extend(next_node for next_node, _ in node.next_functions if next_node is not None)


def _dot(xs: list[Tensor | None], ys: list[Tensor | None], like: Tensor) -> Tensor:
    # ⟨x, y⟩ over the concatenation of all trainable parameters (a global, not per-layer, inner product).
    terms = [(x.detach() * y.detach()).sum() for x, y in zip(xs, ys, strict=True) if x is not None and y is not None]
    return torch.stack(terms).sum() if terms else like.new_zeros(())


def _linear(params: list[Tensor], vectors, like: Tensor) -> Tensor:
    """``Σ ⟨v, p − sg(p)⟩``: value 0, gradient v with respect to each p (None entries count as zero)."""
    terms = [(v.detach() * (p - p.detach())).sum() for p, v in zip(params, vectors, strict=True) if v is not None]
    return torch.stack(terms).sum().to(like.dtype) if terms else like.new_zeros(())


def _detached(tensors: list[Tensor | None]) -> list[Tensor | None]:
    return [None if t is None else t.detach() for t in tensors]


@dataclass
class LURStep:
    """What one LUR meta step returns.

    Attributes:
        loss (`Tensor`):
            The surrogate scalar J; ``accelerator.backward(loss)`` deposits the LUR direction in ``.grad``. Its value
            is the meta objective, which is what should be logged as the training loss.
        metrics (`dict[str, float]`):
            Log values under ``lur/`` keys (see `LURObjective`).
    """

    loss: Tensor
    metrics: dict[str, float] = field(default_factory=dict)


class LURObjective:
    r"""The LUR meta objective as a surrogate loss whose gradient is the meta-gradient (DESIGN §2.3).

    Default order, ``"unlearn_then_retain"`` (the paper's): a virtual unlearning step, then the retain loss where it
    lands::

        θ'  = θ − β·∇L_u(θ)
        J   = L_u(θ) + γ·L_r(θ')
        ∇J  = ∇L_u(θ) + γ·(I − β·∇²L_u(θ))·∇L_r(θ')        meta_order="second" (exact)
        ∇J ≈ ∇L_u(θ) + γ·∇L_r(θ')                          meta_order="first"

    Mirrored order, ``"retain_then_unlearn"``: a virtual retain step, then the unlearning objective where it lands.
    The inner step is an unweighted gradient step of the inner objective in both orders, and γ always weights the
    retain term::

        θ'  = θ − β·∇L_r(θ)
        J   = γ·L_r(θ) + L_u(θ')
        ∇J  = γ·∇L_r(θ) + (I − β·∇²L_r(θ))·∇L_u(θ')         meta_order="second" (exact)
        ∇J ≈ γ·∇L_r(θ) + ∇L_u(θ')                          meta_order="first"

    Its implicit regulariser is −β·⟨∇L_u, ∇L_r⟩ (weight β rather than γβ). In both orders ``inner_lr=0`` gives
    GradDiff, L_u + γ·L_r.

    The second-order surrogate keeps the graph of the inner gradient, so its backward costs about one extra backward
    (the Hessian-vector product) and the inner forward's activations stay alive until then. The first-order one
    costs a forward and backward of each batch, like GradDiff, and frees the inner batch's graph before the outer
    forward. Neither backpropagates through L_inner(θ) twice: the surrogate carries the inner gradient already
    computed as a linear term.

    The first second-order call also walks the inner gradient's graph and runs one Hessian-vector product on its
    own, so that a model with an op without double backward fails here with a message naming the fix
    (``meta_order="first"``) rather than inside the Trainer's backward. Every call syncs with the device once, to read
    the metrics and refuse a non-finite inner loss or virtual-point loss with an error saying which.

    In a Trainer: take θ and build the loss functions from the bare module, backward ``step.loss`` once per
    micro-batch through ``accelerator.backward``. With several processes pass ``all_reduce_mean`` (the virtual step
    and, in second order, the outer gradient then use global means, see `_distributed_outer`) and average the
    surrogate's gradient over processes after the backward (DeepSpeed's engine does it). Under DeepSpeed ZeRO-3, call
    it and the backward inside `hf_unlearn.integrations.deepspeed.whole_parameters(θ)`: ZeRO-3 keeps θ whole only inside the
    forward of the module that owns it, and the step reads θ outside (`batch_loss_fn` then evaluates θ' through
    forward hooks rather than `functional_call`).

    Metrics (``inner``/``outer`` are L_u/L_r in the default order, L_r/L_u in the mirrored one):

    - every call: ``lur/inner_loss`` = L_inner(θ), ``lur/virtual_outer_loss`` = L_outer(θ'), ``lur/inner_grad_norm``
      = ‖∇L_inner(θ)‖, ``lur/meta_loss`` = J.
    - with ``compute_diagnostics=True`` (meant for logging steps only): ``lur/outer_loss`` = L_outer(θ),
      ``lur/outer_loss_change`` = L_outer(θ') − L_outer(θ), ``lur/grad_dot`` = ⟨∇L_r(θ), ∇L_u(θ)⟩ and
      ``lur/grad_cosine``; they cost one extra forward and backward of the outer batch at θ. In second order also
      ``lur/hvp_norm`` = β·‖∇²L_inner(θ)·∇L_outer(θ')‖, the norm of the term that distinguishes exact from
      first-order LUR (a backward of L_outer(θ') to θ' and one Hessian-vector product, both extra).

    Args:
        inner_lr (`float`):
            β, the virtual step size, ≥ 0.
        retain_weight (`float`, *optional*, defaults to `1.0`):
            γ, the weight of the retain term, ≥ 0.
        meta_order (`str`, *optional*, defaults to `"second"`):
            `"second"` for the exact meta-gradient, `"first"` to drop the Hessian term (no double backward).
        objective_order (`str`, *optional*, defaults to `"unlearn_then_retain"`):
            Which objective takes the virtual step; see above.
        all_reduce_mean (`Callable[[list[Tensor]], list[Tensor]]`, *optional*):
            Averages tensors over processes (e.g. `hf_unlearn.distributed.all_reduce_mean_`). Give it when each
            process holds a shard of the batch: the result then equals one process with the whole batch.

    Example:

    ```python
    >>> import torch
    >>> from hf_unlearn.methods.lur.meta import LURObjective, trainable_parameters

    >>> model = torch.nn.Linear(4, 1)
    >>> forget_x, retain_x = torch.randn(3, 4), torch.randn(5, 4)

    >>> def loss_on(x, sign=1.0):
    ...     def loss_fn(params):
    ...         out = model(x) if params is None else torch.func.functional_call(model, params, (x,))
    ...         return sign * out.pow(2).mean()
    ...     return loss_fn

    >>> lur = LURObjective(inner_lr=0.1, retain_weight=1.0)
    >>> step = lur(trainable_parameters(model), loss_on(forget_x, sign=-1.0), loss_on(retain_x))
    >>> step.loss.backward()  # in a Trainer: self.accelerator.backward(step.loss)
    ```
    """

    def __init__(
        self,
        inner_lr: float,
        retain_weight: float = 1.0,
        meta_order: MetaOrder = "second",
        objective_order: ObjectiveOrder = "unlearn_then_retain",
        all_reduce_mean: Callable[[list[Tensor]], list[Tensor]] | None = None,
    ):
        _check_inner_lr(inner_lr)
        if not math.isfinite(retain_weight) or retain_weight < 0:
            raise ValueError(f"retain_weight (γ) must be a finite number >= 0, got {retain_weight}.")
        if meta_order not in ("second", "first"):
            raise ValueError(f"meta_order must be 'second' or 'first', got {meta_order!r}.")
        if objective_order not in ("unlearn_then_retain", "retain_then_unlearn"):
            raise ValueError(
                f"objective_order must be 'unlearn_then_retain' or 'retain_then_unlearn', got {objective_order!r}."
            )
        self.inner_lr = inner_lr
        self.retain_weight = retain_weight
        self.meta_order = meta_order
        self.objective_order = objective_order
        self.all_reduce_mean = all_reduce_mean
        self._double_backward_checked = False

    def __call__(
        self,
        params: Mapping[str, Tensor],
        unlearn_loss_fn: LossFn,
        retain_loss_fn: LossFn,
        compute_diagnostics: bool = False,
    ) -> LURStep:
        """Build the surrogate J for one (micro-)batch.

        Args:
            params (`Mapping[str, Tensor]`):
                θ, from `trainable_parameters` of the model the loss functions run.
            unlearn_loss_fn (`LossFn`):
                L_u, the objective to *minimise* for unlearning (−L_f for gradient ascent, NPO's loss, ...).
            retain_loss_fn (`LossFn`):
                L_r. Whether it closes over the same retain batch as the rest of the step or a fresh draw is the
                caller's choice; each function is evaluated on its own batch wherever it appears.
            compute_diagnostics (`bool`, *optional*, defaults to `False`):
                Also compute the gradient-conflict diagnostics (extra cost, see the class docstring).

        Returns:
            `LURStep`: the surrogate to backward once (per micro-batch, scaled as any loss) and the metrics.
        """
        beta, second_order = self.inner_lr, self.meta_order == "second"
        if self.objective_order == "unlearn_then_retain":
            inner_fn, outer_fn, inner_weight, outer_weight = unlearn_loss_fn, retain_loss_fn, 1.0, self.retain_weight
        else:
            inner_fn, outer_fn, inner_weight, outer_weight = retain_loss_fn, unlearn_loss_fn, self.retain_weight, 1.0

        tensors = list(params.values())
        inner_loss = _as_objective_dtype(inner_fn(None), "inner loss")
        inner_grads = _inner_gradient(inner_loss, tensors, second_order, retain_graph=second_order)
        # J's first term has the inner gradient already in hand as its gradient: the surrogate carries it as
        # ⟨∇L_inner, θ − sg(θ)⟩ (value 0, gradient ∇L_inner) rather than backpropagating through L_inner(θ) a second
        # time — one backward of the inner batch saved, and in first order its graph is freed before the outer forward.
        inner_term = inner_loss.detach() + _linear(tensors, inner_grads, like=inner_loss)
        if self.all_reduce_mean is None:
            virtual = _step(params, inner_grads, beta)
            outer_loss = _as_objective_dtype(outer_fn(virtual), "outer loss")
            # J = w_in·L_inner(θ) + w_out·L_outer(θ − β·∇L_inner(θ)); its backward is the meta-gradient.
            outer_term = outer_loss
        else:
            virtual, outer_loss, outer_term = self._distributed_outer(
                params, inner_grads, outer_fn, compute_diagnostics
            )
        meta_loss = inner_weight * inner_term + outer_weight * outer_term

        values = {
            "lur/inner_loss": inner_loss.detach(),
            "lur/virtual_outer_loss": outer_loss.detach(),
            "lur/inner_grad_norm": _dot(inner_grads, inner_grads, inner_loss).sqrt(),
            "lur/meta_loss": meta_loss.detach(),
        }
        if second_order and not self._double_backward_checked:
            _check_double_backward(inner_grads)
            if not compute_diagnostics:  # the diagnostics run a Hessian-vector product anyway
                self._hessian_vector_product(tensors, inner_grads, _detached(inner_grads))
            self._double_backward_checked = True
        if compute_diagnostics:
            values.update(self._diagnostics(tensors, inner_grads, virtual, outer_fn, outer_loss, second_order))

        # One host sync per step for all logged values; it also serves the finiteness check.
        metrics = dict(
            zip(values, torch.stack([v.to(inner_loss.dtype) for v in values.values()]).tolist(), strict=True)
        )
        if not math.isfinite(metrics["lur/inner_loss"]):
            raise FloatingPointError(
                f"The LUR inner loss L_{self._inner_name}(θ) is {metrics['lur/inner_loss']}. Check the batch for "
                "examples without target tokens or inf inputs, and lower the learning rate if θ has diverged."
            )
        if not math.isfinite(metrics["lur/virtual_outer_loss"]):
            raise FloatingPointError(
                f"The LUR outer loss at the virtual point, L_{self._outer_name}(θ'), is "
                f"{metrics['lur/virtual_outer_loss']} while L_{self._inner_name}(θ) is finite: the virtual step "
                f"θ' = θ − β·∇L_{self._inner_name}(θ) overshoots (‖∇L_{self._inner_name}‖ = "
                f"{metrics['lur/inner_grad_norm']:.3g}). Lower inner_lr (now {beta})."
            )
        return LURStep(loss=meta_loss, metrics=metrics)

    def _distributed_outer(
        self,
        params: Mapping[str, Tensor],
        inner_grads: tuple[Tensor | None, ...],
        outer_fn: LossFn,
        keep_graph: bool,
    ) -> tuple[dict[str, Tensor], Tensor, Tensor]:
        """The outer term when each process holds a shard of the batch (DESIGN §5).

        One process with the whole batch steps to θ' = θ − β·ḡ with ḡ the *global* inner gradient, and its exact
        meta-gradient applies (I − β·H̄) to v̄ = ∇L_outer(θ'), both global means. Each process therefore averages its
        inner gradient before the virtual step and, in second order, its v before the Hessian-vector product. The
        surrogate's gradient on process r is then ``v̄ − β·H_r·v̄`` (plus the inner term), and the gradient
        all-reduce, which averages over processes, yields exactly ``(I − β·H̄)·v̄``.
        """
        beta = self.inner_lr
        names = list(params)
        local = [
            torch.zeros_like(p) if g is None else g.detach().clone()
            for p, g in zip(params.values(), inner_grads, strict=True)
        ]
        mean_inner = self.all_reduce_mean(local)
        if self.meta_order == "first":
            virtual = {name: p - beta * g for (name, p), g in zip(params.items(), mean_inner, strict=True)}
            outer_loss = _as_objective_dtype(outer_fn(virtual), "outer loss")
            return virtual, outer_loss, outer_loss
        with torch.no_grad():
            points = [(p - beta * g) for p, g in zip(params.values(), mean_inner, strict=True)]
        virtual = {name: point.requires_grad_() for name, point in zip(names, points, strict=True)}
        outer_loss = _as_objective_dtype(outer_fn(virtual), "outer loss")
        local_v = torch.autograd.grad(outer_loss, list(virtual.values()), retain_graph=keep_graph, allow_unused=True)
        v = self.all_reduce_mean(
            [torch.zeros_like(p) if g is None else g for p, g in zip(virtual.values(), local_v, strict=True)]
        )
        tensors = list(params.values())
        # ⟨v̄, θ − sg(θ)⟩ has gradient v̄; −β·(⟨∇L_inner(θ), v̄⟩ − its value) has gradient −β·H_r·v̄ and value 0.
        pairs = [(g, u.detach()) for g, u in zip(inner_grads, v, strict=True) if g is not None]
        hvp_term = sum(((g - g.detach()) * u).sum() for g, u in pairs) if pairs else outer_loss.new_zeros(())
        outer_term = outer_loss.detach() + _linear(tensors, v, like=outer_loss) - beta * hvp_term
        return virtual, outer_loss, outer_term

    @property
    def _inner_name(self) -> str:
        return "u" if self.objective_order == "unlearn_then_retain" else "r"

    @property
    def _outer_name(self) -> str:
        return "r" if self.objective_order == "unlearn_then_retain" else "u"

    @staticmethod
    def _hessian_vector_product(
        params: list[Tensor], inner_grads: tuple[Tensor | None, ...], vectors: list[Tensor | None]
    ) -> list[Tensor | None]:
        # ∇²L·v = ∇_θ⟨∇L(θ), v⟩ with v held constant: a vector-Jacobian product through the inner gradient's graph,
        # kept (retain_graph) for the surrogate's own backward.
        pairs = [
            (g, v)
            for g, v in zip(inner_grads, vectors, strict=True)
            if g is not None and v is not None and g.requires_grad
        ]
        if not pairs:
            return [None] * len(params)
        try:
            return list(
                torch.autograd.grad(
                    [g for g, _ in pairs], params, [v for _, v in pairs], retain_graph=True, allow_unused=True
                )
            )
        except torch.OutOfMemoryError:
            raise
        except RuntimeError as err:
            raise RuntimeError(f"The LUR Hessian-vector product failed: {err}\n{_DOUBLE_BACKWARD_HINT}") from err

    def _diagnostics(
        self,
        params: list[Tensor],
        inner_grads: tuple[Tensor | None, ...],
        virtual: dict[str, Tensor],
        outer_fn: LossFn,
        outer_loss: Tensor,
        second_order: bool,
    ) -> dict[str, Tensor]:
        with torch.enable_grad():
            outer_at_theta = _as_objective_dtype(outer_fn(None), "outer loss")
            outer_grads = torch.autograd.grad(outer_at_theta, params, allow_unused=True)
        grad_dot = _dot(inner_grads, outer_grads, outer_loss)
        norms = _dot(inner_grads, inner_grads, outer_loss).sqrt() * _dot(outer_grads, outer_grads, outer_loss).sqrt()
        values = {
            "lur/outer_loss": outer_at_theta.detach(),
            "lur/outer_loss_change": outer_loss.detach() - outer_at_theta.detach(),
            "lur/grad_dot": grad_dot,
            "lur/grad_cosine": grad_dot / norms.clamp_min(torch.finfo(norms.dtype).tiny),
        }
        if second_order:
            # v = ∇L_outer(θ'), the vector the surrogate's backward multiplies by (I − β·∇²L_inner(θ)).
            virtual_grads = torch.autograd.grad(
                outer_loss, list(virtual.values()), retain_graph=True, allow_unused=True
            )
            hvp = self._hessian_vector_product(params, inner_grads, _detached(list(virtual_grads)))
            values["lur/hvp_norm"] = self.inner_lr * _dot(hvp, hvp, outer_loss).sqrt()
        return values
