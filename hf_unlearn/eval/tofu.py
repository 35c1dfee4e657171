"""TOFU-style metrics of question answering (DESIGN §6).

Definitions follow TOFU (Maini et al., https://huggingface.co/papers/2401.06121) as implemented by its code and by
the open-unlearning framework (https://github.com/locuslab/open-unlearning):

- probability: ``P(a|q)^(1/|a|) = exp(−ℓ̄)``, the length-normalised likelihood of the answer (``ℓ̄`` = mean NLL
  over the answer tokens, the per-example loss of `hf_unlearn.losses`).
- ROUGE-L recall of the greedy answer against the reference answer (`rouge-score`, with stemming).
- truth ratio ``R = exp(ℓ̄(ã) − mean_k ℓ̄(â_k))``: the geometric mean over perturbed (false) answers ``â_k`` of
  their normalised probability, over that of the paraphrased answer ``ã``. The paper writes an arithmetic mean;
  both reference implementations average the losses (a geometric mean of probabilities), which we follow. Reported
  per split as TOFU does: on the forget split ``mean(min(R, 1/R))``, elsewhere ``mean(max(0, 1 − R))`` (higher is
  better: the model prefers the truth).
- forget quality: the p-value of a two-sample Kolmogorov–Smirnov test between the forget-split truth ratios ``R``
  of the model and those of the exact-retrain model (high = indistinguishable from retraining).
- model utility: the harmonic mean of probability, ROUGE-L recall and truth ratio over the utility splits.
- membership-inference AUC, forget (members before unlearning) vs holdout (never trained), for four scores: LOSS
  (``ℓ̄``), zlib (``ℓ̄`` over the zlib-compressed length of the answer, Carlini et al. 2021), Min-K% (Shi et al.,
  https://huggingface.co/papers/2310.16789: mean of the k % lowest token log-probabilities) and Min-K%++ (Zhang et
  al., https://huggingface.co/papers/2404.02936: the same over token log-probabilities standardised by the mean and
  standard deviation of the log-probability under the model's own next-token distribution). Every score is
  oriented so that higher means "less like a training member", and the AUC is P(score(holdout) > score(forget))
  as in open-unlearning: ~1 for a model that memorised the forget set, ~0.5 for one that never saw it, below 0.5
  when unlearning overshoots and the forget set looks *less* familiar than unseen data. Two more attacks as in
  open-unlearning: GradNorm (the p-norm of the gradient of ``ℓ̄`` w.r.t. each weight tensor, averaged over the
  tensors; Wang et al., https://huggingface.co/papers/2402.17012) and the reference attack (``ℓ̄`` minus a
  reference model's ``ℓ̄``, the reference being the exact-retrain model).

Details that decide agreement with open-unlearning's numbers (its `src/evals/metrics/`, checked at d3d7cf9):

- Min-K%, Min-K%++, exact memorisation, extraction strength and GradNorm score the answer tokens *without* the
  final end-of-sequence token; LOSS, zlib, the reference attack, probability and truth ratio keep it.
- Min-K% takes the ``max(1, int(k·T))`` lowest of the ``T`` token scores (k = 0.2 ⇒ 6 of 30, not ⌈6⌉ = 7 of 31).
  Our k defaults to the Min-K% paper's 0.2; open-unlearning's TOFU configuration sets k = 0.4.
- On the non-retain utility splits (real authors, world facts) the probability is normalised over the options,
  ``p(a)/(p(a) + Σ_k p(â_k))`` with ``p = exp(−ℓ̄)``, and the truth ratio compares the *answer* (not a paraphrase)
  with the perturbed answers.
- exact memorisation (Tirumala et al. 2022): the fraction of answer tokens that are the teacher-forced argmax.
- extraction strength (Carlini et al. 2021, as used by open-unlearning): ``1 − k/T`` for the smallest ``k`` whose
  teacher-forced argmax suffix ``ŷ_{≥k}`` equals the answer's ``y_{≥k}``. When not even the last token matches,
  open-unlearning's loop ends at ``k = T − 1`` and reports ``1/T``, not 0; we do the same so numbers agree.
- privleak (MUSE, Shi et al. 2024): ``((1 − AUC) − (1 − AUC_retrain)) / (1 − AUC_retrain) · 100`` with the forget
  Min-K% AUCs above: 0 for a model as private as retraining, −100 for one that fully exposes the forget set,
  positive when the forget set looks *less* familiar than unseen data (over-unlearning).
"""

import math
import zlib
from collections.abc import Sequence

import numpy as np
import torch
from scipy import stats
from torch import Tensor


MIA_ATTACKS = ("loss", "zlib", "min_k", "min_k_plus_plus", "gradnorm", "reference")


def truth_ratio(paraphrased_loss: float, perturbed_losses: Sequence[float]) -> float:
    """TOFU's ``R`` for one question from mean-NLL losses; NaN when there are no perturbed answers."""
    if len(perturbed_losses) == 0:
        return math.nan
    return math.exp(paraphrased_loss - float(np.mean(perturbed_losses)))


def truth_ratio_score(ratios: Sequence[float], forget: bool) -> float:
    """The split-level truth ratio TOFU reports: ``mean(min(R, 1/R))`` on forget, ``mean(max(0, 1 − R))`` else."""
    values = np.asarray(ratios, dtype=np.float64)
    if forget:
        return float(np.mean(np.minimum(values, 1.0 / values)))
    return float(np.mean(np.maximum(0.0, 1.0 - values)))


def forget_quality(ratios: Sequence[float], reference_ratios: Sequence[float]) -> float:
    """Two-sample KS-test p-value between the model's forget truth ratios and the exact-retrain model's."""
    return float(stats.ks_2samp(np.asarray(ratios), np.asarray(reference_ratios)).pvalue)


def model_utility(values: Sequence[float]) -> float:
    """Harmonic mean (TOFU's aggregate: one collapsed metric drags it to 0)."""
    values = np.asarray(values, dtype=np.float64)
    if (values <= 0).any():
        return 0.0
    return float(stats.hmean(values))


def rouge_l_recall(predictions: Sequence[str], references: Sequence[str]) -> list[float]:
    """ROUGE-L recall of each prediction against its reference (`rouge-score`, Porter stemming as in TOFU)."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    return [scorer.score(ref, pred)["rougeL"].recall for pred, ref in zip(predictions, references, strict=True)]


def min_k_count(num_tokens: int, k: float) -> int:
    """How many lowest-scoring tokens Min-K% averages: ``max(1, int(k·T))`` (open-unlearning's count)."""
    return max(1, int(num_tokens * k))


def min_k_score(token_log_probs: Tensor, k: float = 0.2) -> float:
    """Min-K%: mean of the ``max(1, int(k·T))`` lowest token log-probabilities of one sequence ``[T]`` (members:
    high). Pass the answer tokens without the final eos. An empty sequence scores 0, as in open-unlearning."""
    if token_log_probs.numel() == 0:
        return 0.0
    count = min_k_count(token_log_probs.numel(), k)
    return float(torch.topk(token_log_probs, count, largest=False).values.mean())


def min_k_plus_plus_score(token_log_probs: Tensor, mean_log_probs: Tensor, std_log_probs: Tensor, k: float = 0.2):
    """Min-K%++: Min-K% over ``(log p(x_t) − μ_t)/σ_t``, with ``μ_t = E_z[log p(z)]`` and ``σ_t`` the standard
    deviation of ``log p(z)``, ``z`` drawn from the model's next-token distribution at step t. All ``[T]``."""
    # σ ≥ 1e-3, i.e. open-unlearning's variance floor of 1e-6.
    standardised = (token_log_probs - mean_log_probs) / std_log_probs.clamp_min(1e-3)
    return min_k_score(standardised, k)


def next_token_moments(log_probs: Tensor) -> tuple[Tensor, Tensor]:
    """Mean and standard deviation of ``log p(z)`` under ``z ~ p`` for next-token log-probs ``[..., V]`` (Min-K%++)."""
    probs = log_probs.exp()
    mean = (probs * log_probs).sum(-1)
    variance = (probs * log_probs.square()).sum(-1) - mean.square()
    return mean, variance.clamp_min(0).sqrt()


def probability_with_options(answer_loss: float, perturbed_losses: Sequence[float]) -> float:
    """``p(a)/(p(a) + Σ_k p(â_k))`` with ``p = exp(−ℓ̄)``: the answer's share of the options' normalised
    probability (open-unlearning's `probability_w_options`); NaN when there are no perturbed answers."""
    if len(perturbed_losses) == 0:
        return math.nan
    # Shift by the smallest loss so that no exp underflows to 0/0.
    shift = min(answer_loss, *perturbed_losses)
    answer = math.exp(shift - answer_loss)
    return answer / (answer + sum(math.exp(shift - loss) for loss in perturbed_losses))


def exact_memorization(predicted_ids: Tensor, label_ids: Tensor) -> float:
    """Fraction of the answer tokens ``[T]`` that the teacher-forced argmax predictions ``[T]`` reproduce."""
    if label_ids.numel() == 0:
        return math.nan
    return float((predicted_ids == label_ids).float().mean())


def extraction_strength(predicted_ids: Tensor, label_ids: Tensor) -> float:
    """``1 − k/T`` for the smallest ``k`` from which the teacher-forced argmax suffix equals the answer's suffix.

    Follows open-unlearning's loop: when no suffix matches (not even the last token) ``k`` stops at ``T − 1``, so
    the score is ``1/T``; an empty answer scores 0.
    """
    length = label_ids.numel()
    if length == 0:
        return 0.0
    matches = (predicted_ids == label_ids).tolist()
    trailing = next((i for i, match in enumerate(reversed(matches)) if not match), length)  # matching suffix length
    k = length - trailing if trailing > 0 else length - 1
    return 1.0 - k / length


def gradient_norm(gradients: Sequence[Tensor], p: float = 2.0) -> float:
    """GradNorm's statistic: the mean over weight tensors of each tensor's gradient p-norm (not the global norm)."""
    if p not in (1, 2, math.inf):
        raise ValueError(f"GradNorm's p must be 1, 2 or inf (as in open-unlearning), got {p}.")
    return float(torch.stack([g.detach().norm(p=p) for g in gradients]).mean())


def privleak(auc: float, reference_auc: float) -> float:
    """MUSE's PrivLeak in percent from forget-vs-holdout AUCs of the model and the exact-retrain model.

    open-unlearning flips its AUCs to MUSE's orientation first (``1 − AUC``) and adds 1e-10 to the denominator;
    so do we. 0: as private as retraining; −100: the forget set fully exposed; > 0: over-unlearned.
    """
    score, reference = 1.0 - auc, 1.0 - reference_auc
    return (score - reference) / (reference + 1e-10) * 100.0


def zlib_score(mean_nll: float, text: str) -> float:
    """zlib attack: the loss over the zlib-compressed size of the text (in bytes), as in open-unlearning."""
    return mean_nll / len(zlib.compress(text.encode("utf-8")))


def mia_auc(forget_scores: Sequence[float], holdout_scores: Sequence[float]) -> float:
    """ROC AUC with holdout as the positive class: P(holdout score > forget score), ties counted half.

    That is the Mann–Whitney U statistic of the holdout sample over ``n_holdout · n_forget`` (scipy computes it).
    """
    statistic = stats.mannwhitneyu(np.asarray(holdout_scores), np.asarray(forget_scores)).statistic
    return float(statistic / (len(holdout_scores) * len(forget_scores)))
