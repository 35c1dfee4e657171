"""Every TOFU/MIA metric against a small case computed by hand."""

import math

import pytest
import torch

from hf_unlearn.eval import tofu


def test_truth_ratio_is_perturbed_over_paraphrased_normalised_probability():
    # Losses are mean NLLs, so P^(1/|y|) = exp(-loss); geometric mean over the perturbed answers.
    assert tofu.truth_ratio(1.0, [2.0, 3.0]) == pytest.approx(math.exp(-2.5) / math.exp(-1.0))
    assert math.isnan(tofu.truth_ratio(1.0, []))


def test_truth_ratio_score_per_split_kind():
    assert tofu.truth_ratio_score([0.5, 2.0], forget=True) == pytest.approx(0.5)  # min(R, 1/R) = 0.5 twice
    assert tofu.truth_ratio_score([0.5, 2.0], forget=False) == pytest.approx(0.25)  # (0.5 + 0) / 2


def test_forget_quality_is_the_exact_ks_p_value():
    # D = 1 between disjoint samples of 3 and 3: exact two-sided p = 2 / C(6, 3) = 0.1.
    assert tofu.forget_quality([1.0, 2.0, 3.0], [4.0, 5.0, 6.0]) == pytest.approx(0.1)
    assert tofu.forget_quality([1.0, 2.0, 3.0], [1.0, 2.0, 3.0]) == pytest.approx(1.0)


def test_rouge_l_recall():
    # LCS("the cat sat", "the cat sat on the mat") = 3 of the reference's 6 words.
    assert tofu.rouge_l_recall(["the cat sat", "mat the"], ["the cat sat on the mat", "the mat"]) == pytest.approx(
        [0.5, 0.5]
    )


def test_model_utility_is_a_harmonic_mean_that_a_zero_collapses():
    assert tofu.model_utility([1.0, 0.5]) == pytest.approx(2 / (1 + 2))
    assert tofu.model_utility([1.0, 0.0, 0.5]) == 0.0


def test_mia_auc_counts_holdout_above_forget_with_half_ties():
    assert tofu.mia_auc(forget_scores=[0.1, 0.85], holdout_scores=[0.9, 0.8]) == pytest.approx(0.75)
    assert tofu.mia_auc(forget_scores=[1.0], holdout_scores=[1.0]) == pytest.approx(0.5)


def test_min_k_takes_the_lowest_fraction():
    log_probs = torch.tensor([-1.0, -5.0, -2.0, -4.0, -3.0])
    assert tofu.min_k_score(log_probs, k=0.4) == pytest.approx(-4.5)
    assert tofu.min_k_score(log_probs, k=0.2) == pytest.approx(-5.0)


def test_min_k_count_is_open_unlearnings_floor_not_a_ceiling():
    # max(1, int(k·T)): k = 0.2 of 30 tokens is 6 (a ceiling of 0.2·30 = 6.000000000000001 gave 7), of 9 is 1
    # (ceil: 2), of 4 is still 1 (never empty).
    assert [tofu.min_k_count(t, 0.2) for t in (30, 9, 4, 1)] == [6, 1, 1, 1]
    assert tofu.min_k_count(10, 0.4) == 4
    # The 9 values -1..-9 with k = 0.2: the single lowest (-9), where a ceiling averaged -9 and -8.
    log_probs = -torch.arange(1.0, 10.0)
    assert tofu.min_k_score(log_probs, k=0.2) == pytest.approx(-9.0)
    assert tofu.min_k_score(torch.tensor([]), k=0.2) == 0.0  # open-unlearning's score of an empty answer


def test_min_k_plus_plus_standardises_by_the_next_token_distribution():
    # p = (1/2, 1/4, 1/4): E[log p] = -1.5 ln 2, sd = 0.5 ln 2, so log(1/2) sits at +1 sd and log(1/4) at -1 sd.
    log_p = torch.log(torch.tensor([[0.5, 0.25, 0.25], [0.5, 0.25, 0.25]]))
    mean, std = tofu.next_token_moments(log_p)
    assert mean.tolist() == pytest.approx([-1.5 * math.log(2)] * 2)
    assert std.tolist() == pytest.approx([0.5 * math.log(2)] * 2)
    tokens = torch.stack([log_p[0, 0], log_p[1, 1]])
    assert tofu.min_k_plus_plus_score(tokens, mean, std, k=0.5) == pytest.approx(-1.0)
    assert tofu.min_k_plus_plus_score(tokens, mean, std, k=1.0) == pytest.approx(0.0)


def test_min_k_plus_plus_floors_the_variance_at_1e_6():
    # A one-hot next-token distribution has σ = 0: open-unlearning divides by sqrt(max(σ², 1e-6)) = 1e-3.
    score = tofu.min_k_plus_plus_score(torch.tensor([-0.002]), torch.tensor([0.0]), torch.tensor([0.0]), k=1.0)
    assert score == pytest.approx(-2.0)


def test_probability_with_options_normalises_over_the_answer_and_its_perturbations():
    # p = exp(-loss): answer 0.5, perturbed 0.25 and 0.125 -> 0.5 / 0.875.
    value = tofu.probability_with_options(math.log(2), [math.log(4), math.log(8)])
    assert value == pytest.approx(0.5 / 0.875)
    # Losses so large that exp underflows still give the ratio (e^-1000 / (e^-1000 + e^-1001)).
    assert tofu.probability_with_options(1000.0, [1001.0]) == pytest.approx(1 / (1 + math.exp(-1)))
    assert math.isnan(tofu.probability_with_options(1.0, []))


def test_exact_memorization_is_the_fraction_of_argmax_hits():
    assert tofu.exact_memorization(torch.tensor([5, 6, 9, 8]), torch.tensor([5, 6, 7, 8])) == pytest.approx(0.75)
    assert math.isnan(tofu.exact_memorization(torch.tensor([]), torch.tensor([])))


@pytest.mark.parametrize(
    ("predicted", "expected"),
    [
        ([5, 6, 7, 8], 1.0),  # the whole answer from the question alone: k = 0
        ([0, 6, 7, 8], 0.75),  # a prefix of one token needed: k = 1, 1 - 1/4
        ([5, 6, 0, 8], 0.25),  # only the last token follows: k = 3
        ([5, 0, 7, 8], 0.5),  # the first hit is not enough: the suffix must match from k on (k = 2)
        ([5, 6, 7, 0], 0.25),  # nothing matches at the end: open-unlearning's loop stops at k = T - 1 -> 1/T
    ],
)
def test_extraction_strength_by_hand(predicted, expected):
    assert tofu.extraction_strength(torch.tensor(predicted), torch.tensor([5, 6, 7, 8])) == pytest.approx(expected)


def test_gradient_norm_averages_the_per_tensor_norms():
    grads = [torch.tensor([3.0, 4.0]), torch.tensor([[1.0, 0.0], [0.0, 0.0]])]
    assert tofu.gradient_norm(grads, p=2) == pytest.approx((5.0 + 1.0) / 2)  # not the global norm sqrt(26)
    assert tofu.gradient_norm(grads, p=1) == pytest.approx((7.0 + 1.0) / 2)
    assert tofu.gradient_norm(grads, p=math.inf) == pytest.approx((4.0 + 1.0) / 2)
    with pytest.raises(ValueError, match="1, 2 or inf"):
        tofu.gradient_norm(grads, p=3)


def test_privleak_is_the_relative_gap_in_muse_orientation():
    # Our AUC 0.9 (forget looks like members) vs retrain's 0.5: ((0.1) - (0.5)) / 0.5 = -80 %.
    assert tofu.privleak(0.9, 0.5) == pytest.approx(-80.0)
    assert tofu.privleak(0.6, 0.6) == pytest.approx(0.0)
    assert tofu.privleak(0.3, 0.5) == pytest.approx(40.0)  # over-unlearned: positive


def test_zlib_score_divides_by_the_compressed_length():
    assert tofu.zlib_score(2.4, "aaaa") == pytest.approx(2.4 / 12)  # zlib.compress(b"aaaa") is 12 bytes
