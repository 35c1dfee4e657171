"""OrthoGrad's per-sample objectives: φ on forget samples (the unlearning objective, negated) and the retain
term (cross-entropy or KL to π_ref) whose per-sample gradients span the protected subspace."""

from dataclasses import dataclass

import torch
from torch import Tensor

from ...losses import IGNORE_INDEX, unlearning_loss


def forget_objective(log_prob: Tensor, lengths: Tensor, ref_log_prob: Tensor | None, npo_beta: float) -> Tensor:
    """φ(f_j) = −L_u(f_j) [m], the per-forget-example term whose mean gradient is ``g_f``. projection.py's convention
    is ``g_f = ∇(task loss raised by unlearning)``: ``ℓ(f_j)`` for GA (no reference), ``−npo_j`` for NPO (whose loss
    is lowered); `hf_unlearn.losses.unlearning_loss` is L_u."""
    return -unlearning_loss(log_prob, lengths, ref_log_prob, npo_beta)


@dataclass
class ReferenceOutputs:
    """What π_ref contributes to a step: forget sequence log-probs (NPO) and retain token log-probs (KL)."""

    forget_log_prob: Tensor | None = None
    retain_log_probs: Tensor | None = None


def log_softmax(logits: Tensor) -> Tensor:
    """Log-probabilities in float32 for half-precision logits, in the logits' dtype otherwise (float64 tests)."""
    return torch.log_softmax(logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits, -1)


def per_example_kl(ref_log_probs: Tensor, logits: Tensor, labels: Tensor) -> Tensor:
    """``KL(π_ref ‖ π_θ)`` per example, averaged over its own target positions (labels ≠ −100) [B], so each example
    weighs the same whatever its length (DESIGN §1)."""
    log_probs = log_softmax(logits)
    ref_log_probs = ref_log_probs.to(log_probs.dtype)
    token_kl = (ref_log_probs.exp() * (ref_log_probs - log_probs)).sum(-1)  # [B, T]
    mask = (labels != IGNORE_INDEX).to(token_kl.dtype)
    return (token_kl * mask).sum(-1) / mask.sum(-1)
