"""The two objectives of LUR's meta step as `LossFn`s (``params → scalar``; ``None`` is θ itself), and the wrappers
that route a step's evaluations: which batch each point sees, what is logged at θ, which attention kernel runs."""

from collections.abc import Mapping
from typing import Any

from torch import Tensor, nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from ...losses import model_sequence_log_prob, unlearning_loss
from .meta import LossFn


class UnlearningObjective:
    """``L_u(module, batch)``: the mean unlearning loss (`hf_unlearn.losses.unlearning_loss`: −ℓ for GA, NPO's loss
    with ``ref_log_prob``); every evaluation leaves L_f (and NPO's log-ratio) in `measured` for logging."""

    def __init__(self, config: object, ref_log_prob: Tensor | None, npo_beta: float):
        self.config, self.ref_log_prob, self.npo_beta = config, ref_log_prob, npo_beta
        self.measured: dict[str, Tensor] = {}

    def __call__(self, module: nn.Module, inputs: Any) -> Tensor:
        log_prob, lengths = model_sequence_log_prob(module, inputs, self.config)
        self.measured["forget/loss"] = (-log_prob / lengths).mean()  # L_f: mean of per-example token means
        if self.ref_log_prob is not None:
            self.measured["npo/log_ratio"] = (log_prob - self.ref_log_prob).mean()
        return unlearning_loss(log_prob, lengths, self.ref_log_prob, self.npo_beta).mean()


class RecordedAtTheta:
    """A `LossFn` that, when evaluated at θ itself, copies what it measured into ``record`` (detached): the
    objective's `measured` values, and its own value under ``value_key``. Evaluations at θ' record nothing."""

    def __init__(
        self,
        loss_fn: LossFn,
        record: dict[str, Tensor] | None,
        measured: dict[str, Tensor] | None = None,
        value_key: str | None = None,
    ):
        self.loss_fn, self.record, self.measured, self.value_key = loss_fn, record, measured, value_key

    def __call__(self, params: Mapping[str, Tensor] | None) -> Tensor:
        value = self.loss_fn(params)
        if params is None and self.record is not None:
            if self.measured is not None:
                self.record.update({key: tensor.detach() for key, tensor in self.measured.items()})
            if self.value_key is not None:
                self.record[self.value_key] = value.detach()
        return value


class SplitByPoint:
    """``inner_batch="fresh"``: evaluations at θ use the step's batch (``at_theta``), evaluations at θ' the fresh
    draw (``at_virtual``)."""

    def __init__(self, at_theta: LossFn, at_virtual: LossFn):
        self.at_theta, self.at_virtual = at_theta, at_virtual

    def __call__(self, params: Mapping[str, Tensor] | None) -> Tensor:
        return self.at_theta(None) if params is None else self.at_virtual(params)


class TwiceDifferentiableAtTheta:
    """Runs the evaluation at θ with SDPA's math backend, built from differentiable ops.

    The fused SDPA kernels (flash/memory-efficient on GPU, flash on CPU) have no double backward, so the exact
    meta-gradient would fail on every model with transformers' default attention. Only the inner forward at θ is
    differentiated twice (its gradient's graph carries the Hessian-vector product); every other forward keeps the
    fused kernels, which are faster and leaner.
    """

    def __init__(self, loss_fn: LossFn):
        self.loss_fn = loss_fn

    def __call__(self, params: Mapping[str, Tensor] | None) -> Tensor:
        if params is not None:
            return self.loss_fn(params)
        with sdpa_kernel([SDPBackend.MATH]):
            return self.loss_fn(None)
