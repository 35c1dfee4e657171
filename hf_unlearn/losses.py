"""Per-example sequence (and classification) losses shared by every method.

Every loss here is reduced **per example**: ``ℓ_i`` is the mean cross-entropy over example ``i``'s own target
tokens (labels ``!= -100``), never a token mean over the whole batch. With that convention the batch loss
``(1/B) Σ ℓ_i`` is an exact average of per-sample losses, so per-sample gradients sum to the batch gradient
(DESIGN §1) and a sample's weight does not depend on its length.
"""

import torch
from torch import Tensor

from .integrations.transformers import shift_tokens_right


IGNORE_INDEX = -100


def token_log_probs(logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """Log-probability of each target token and the mask of real targets.

    ``logits`` must already be aligned with ``labels`` (logits[:, t] predicts labels[:, t]). Low-precision logits
    are promoted to float32; float64 stays float64 so tests can check against float64 references.

    Returns:
        `(log_probs, mask)`, both ``[B, T]``; ``log_probs`` is zero where ``mask`` is false.
    """
    if logits.dtype in (torch.float16, torch.bfloat16):
        logits = logits.float()
    mask = labels != IGNORE_INDEX  # [B, T]
    safe_labels = labels.masked_fill(~mask, 0)
    log_probs = torch.log_softmax(logits, dim=-1).gather(-1, safe_labels.unsqueeze(-1)).squeeze(-1)  # [B, T]
    return log_probs * mask, mask


def sequence_log_prob(logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """``log π(y|x)`` summed over each example's target tokens, and each example's target length ``|y|``."""
    log_probs, mask = token_log_probs(logits, labels)
    return log_probs.sum(-1), mask.sum(-1)


def per_example_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """``ℓ_i``: mean token cross-entropy over example ``i``'s own targets, shape ``[B]``.

    An example with no target token would divide by zero; it is a data error, so it raises instead.
    """
    return per_example_loss_from_log_prob(*sequence_log_prob(logits, labels))


def per_example_loss_from_log_prob(seq_log_prob: Tensor, lengths: Tensor) -> Tensor:
    """``ℓ_i = −log π(y_i|x_i) / |y_i|``."""
    if bool((lengths == 0).any()):
        raise ValueError(
            "An example has no target token (all labels are -100). Drop empty transcripts/answers from the "
            "dataset or raise the truncation length."
        )
    return -seq_log_prob / lengths


def npo_per_example_loss(seq_log_prob: Tensor, ref_seq_log_prob: Tensor, beta: float) -> Tensor:
    """NPO's per-example term ``(2/β)·log(1 + (π_θ/π_ref)^β) = (2/β)·softplus(β·(log π_θ − log π_ref))``, ``[B]``.

    π is the sequence likelihood; the softplus form is the numerically stable one. NPO's loss is its mean.
    """
    return (2.0 / beta) * torch.nn.functional.softplus(beta * (seq_log_prob - ref_seq_log_prob))


def unlearning_loss(
    seq_log_prob: Tensor, lengths: Tensor, ref_seq_log_prob: Tensor | None = None, npo_beta: float = 0.1
) -> Tensor:
    """The unlearning objective ``L_u`` per example, ``[B]``, which GA, NPO, OrthoGrad and LUR lower (written once):
    gradient ascent's ``−ℓ_j = log π(y_j|x_j)/|y_j|`` without a reference, NPO's
    ``(2/β)·softplus(β·(log π_θ − log π_ref))`` (`npo_per_example_loss`) with one."""
    if ref_seq_log_prob is None:
        return seq_log_prob / lengths
    return npo_per_example_loss(seq_log_prob, ref_seq_log_prob, npo_beta)


def align_logits_and_labels(logits: Tensor, labels: Tensor, is_encoder_decoder: bool) -> tuple[Tensor, Tensor]:
    """Causal LMs predict token t+1 at position t (labels are the inputs, unshifted, as in transformers);
    seq2seq decoders are fed shifted inputs, so their logits already line up with their labels."""
    if is_encoder_decoder:
        return logits, labels
    return logits[:, :-1], labels[:, 1:]


def shift_labels_right(labels: Tensor, pad_token_id: int, decoder_start_token_id: int) -> Tensor:
    """transformers' seq2seq convention: ``decoder_input_ids`` are the labels shifted one step right (−100 → pad),
    with transformers' own `shift_tokens_right` (`hf_unlearn.integrations.transformers`)."""
    return shift_tokens_right(labels, pad_token_id, decoder_start_token_id)


def model_target_logits(
    model: torch.nn.Module, inputs: dict[str, Tensor], config: object | None = None
) -> tuple[Tensor, Tensor]:
    """Run ``model`` on a collated batch; return ``(logits [B, T, V], labels [B, T])``, aligned target by target.

    ``labels`` are taken out of the model call so the model does not also compute its own batch-token-mean loss
    (a wasted vocabulary-sized cross-entropy, and a different reduction). For an encoder-decoder batch without
    ``decoder_input_ids`` they are derived from the labels the way transformers' seq2seq models do. Pass
    ``config`` when ``model`` is wrapped (DDP, DeepSpeed) and no longer exposes ``.config``.

    A classifier's batch (``labels`` of shape ``[B]``, one class per example, logits ``[B, C]``) comes back as a
    one-target sequence (``[B, 1, C]``, ``[B, 1]``): every per-example loss of this module is then the cross-entropy
    of the example's label and ``log π(y|x)`` the label's log-probability, so each method trains classifiers with
    the code it runs on sequences.
    """
    inputs = dict(inputs)
    labels = inputs.pop("labels")
    if labels.ndim == 1:
        return model(**inputs).logits.unsqueeze(1), labels.unsqueeze(1)
    config = config if config is not None else model.config
    is_encoder_decoder = bool(getattr(config, "is_encoder_decoder", False))
    if is_encoder_decoder and "decoder_input_ids" not in inputs:
        inputs["decoder_input_ids"] = shift_labels_right(labels, config.pad_token_id, config.decoder_start_token_id)
    outputs = model(**inputs)
    return align_logits_and_labels(outputs.logits, labels, is_encoder_decoder)


def model_sequence_log_prob(
    model: torch.nn.Module, inputs: dict[str, Tensor], config: object | None = None
) -> tuple[Tensor, Tensor]:
    """Run ``model`` on a collated batch; return ``(log π(y|x) [B], |y| [B])`` over each example's targets (see
    `model_target_logits`; for a classifier, the label's log-probability and ``|y| = 1``)."""
    return sequence_log_prob(*model_target_logits(model, inputs, config))


def target_lengths(labels: Tensor, is_encoder_decoder: bool) -> Tensor:
    """``|y|`` [B] of a collated batch's labels without a forward: 1 per example for class labels ``[B]``; for a causal
    LM the first position predicts nothing (`align_logits_and_labels`)."""
    if labels.ndim == 1:
        return torch.ones_like(labels)
    if not is_encoder_decoder:
        labels = labels[:, 1:]
    return (labels != IGNORE_INDEX).sum(1)


def model_per_example_loss(model: torch.nn.Module, inputs: dict[str, Tensor], config: object | None = None) -> Tensor:
    """ℓ [B]: ``model_sequence_log_prob`` turned into the per-example mean token cross-entropy."""
    seq_log_prob, lengths = model_sequence_log_prob(model, inputs, config)
    return per_example_loss_from_log_prob(seq_log_prob, lengths)
