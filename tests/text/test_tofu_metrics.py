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


def test_min_k_plus_plus_standardises_by_the_next_token_distribution():
    # p = (1/2, 1/4, 1/4): E[log p] = -1.5 ln 2, sd = 0.5 ln 2, so log(1/2) sits at +1 sd and log(1/4) at -1 sd.
    log_p = torch.log(torch.tensor([[0.5, 0.25, 0.25], [0.5, 0.25, 0.25]]))
    mean, std = tofu.next_token_moments(log_p)
    assert mean.tolist() == pytest.approx([-1.5 * math.log(2)] * 2)
    assert std.tolist() == pytest.approx([0.5 * math.log(2)] * 2)
    tokens = torch.stack([log_p[0, 0], log_p[1, 1]])
    assert tofu.min_k_plus_plus_score(tokens, mean, std, k=0.5) == pytest.approx(-1.0)
    assert tofu.min_k_plus_plus_score(tokens, mean, std, k=1.0) == pytest.approx(0.0)


def test_zlib_score_divides_by_the_compressed_length():
    assert tofu.zlib_score(2.4, "aaaa") == pytest.approx(2.4 / 12)  # zlib.compress(b"aaaa") is 12 bytes
