"""Set metrics: Frechet distance, KID, precision/recall/density/coverage, MS-SSIM diversity, Turing test."""

import numpy as np
import pytest
import scipy.linalg
import torch

from support.eval.distribution import (frechet_distance, frechet_distance_from_stats, gaussian_stats,
                                       kernel_inception_distance, precision_recall_density_coverage)
from support.eval.diversity import ms_ssim_diversity, ms_ssim_settings
from support.eval.turing import automated_turing_test

torch.set_num_threads(1)


def _correlated(rng, n, d, shift=0.0, scale=1.0):
    mix = rng.standard_normal((d, d)) / np.sqrt(d)
    return rng.standard_normal((n, d)) @ mix * scale + shift


def _scipy_fd(a, b):
    """Independent reference: the classic sqrtm of the (non-symmetric) product."""
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = scipy.linalg.sqrtm(s1 @ s2)
    covmean = np.real(covmean)
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


@pytest.mark.parametrize("d", [4, 32])
def test_frechet_distance_matches_an_independent_scipy_computation(d):
    rng = np.random.default_rng(d)
    a = _correlated(rng, 400, d)
    b = _correlated(rng, 300, d, shift=0.3, scale=1.4)
    ours, ref = frechet_distance(a, b), _scipy_fd(a, b)
    assert ours == pytest.approx(ref, abs=1e-3, rel=1e-6)
    assert ours > 1.0


def test_frechet_distance_of_known_gaussians_is_exact():
    # 1-D: FD = (m1 - m2)^2 + (s1 - s2)^2
    assert frechet_distance_from_stats([0.0], [[4.0]], [3.0], [[1.0]]) == pytest.approx(9.0 + 1.0)
    mu, sig = gaussian_stats(np.random.default_rng(0).standard_normal((50, 3)))
    assert frechet_distance_from_stats(mu, sig, mu, sig) == pytest.approx(0.0, abs=1e-9)


def test_frechet_distance_real_vs_real_small_real_vs_noise_large():
    rng = np.random.default_rng(1)
    real_a, real_b = _correlated(rng, 2000, 16), _correlated(np.random.default_rng(1), 2000, 16)
    rng2 = np.random.default_rng(2)
    real_b = real_a[rng2.permutation(2000)[:1000]]
    real_c = real_a[np.setdiff1d(np.arange(2000), rng2.permutation(2000)[:1000])]
    noise = rng.uniform(-3, 3, (1000, 16))
    rr = frechet_distance(real_b, real_c)
    rn = frechet_distance(real_a, noise)
    assert rr < 0.2 and rn > 20 * rr


def test_frechet_distance_rejects_bad_input():
    with pytest.raises(ValueError, match="dimensions differ"):
        frechet_distance(np.zeros((5, 3)), np.zeros((5, 4)))
    with pytest.raises(ValueError, match="NaN"):
        frechet_distance(np.full((5, 3), np.nan), np.zeros((5, 3)))


def test_kid_is_near_zero_for_one_distribution_and_positive_for_two():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((600, 8))
    same = kernel_inception_distance(x[:300], x[300:], subsets=20, subset_size=100, seed=0)
    other = kernel_inception_distance(x[:300], rng.standard_normal((300, 8)) + 1.0, subsets=20, subset_size=100)
    assert abs(same["kid_mean"]) < 3 * same["kid_std"] + 1e-3
    assert other["kid_mean"] > 0.1 and other["kid_mean"] > 10 * abs(same["kid_mean"])
    assert same["kid_std"] > 0 and same["kid_subset_size"] == 100


def test_kid_matches_the_unbiased_mmd_formula_on_one_subset():
    rng = np.random.default_rng(4)
    x, y = rng.standard_normal((7, 3)), rng.standard_normal((7, 3)) + 0.5
    k = lambda a, b: (a @ b.T / 3 + 1) ** 3
    m = 7
    ref = ((k(x, x).sum() - np.trace(k(x, x))) / (m * (m - 1)) + (k(y, y).sum() - np.trace(k(y, y))) / (m * (m - 1))
           - 2 * k(x, y).mean())
    got = kernel_inception_distance(x, y, subsets=3, subset_size=7)
    assert got["kid_mean"] == pytest.approx(ref) and got["kid_std"] == pytest.approx(0.0, abs=1e-12)


def test_prdc_identical_sets_disjoint_sets_and_a_hand_example():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((200, 5))
    same = precision_recall_density_coverage(x, x.copy(), k=5)
    assert same["precision"] == same["recall"] == same["coverage"] == 1.0
    assert same["density"] >= 1.0
    far = precision_recall_density_coverage(x, x + 100.0, k=5)
    assert far == {"precision": 0.0, "recall": 0.0, "density": 0.0, "coverage": 0.0}
    # half the synthetic samples collapse onto one real point: precision stays high, recall/coverage drop
    collapsed = np.repeat(x[:1], 200, axis=0) + rng.normal(0, 1e-3, (200, 5))
    m = precision_recall_density_coverage(x, collapsed, k=5)
    assert m["precision"] == 1.0 and m["coverage"] < 0.05 and m["recall"] < 0.05
    # computing in small blocks changes nothing
    y = x[:150] + rng.normal(0, 0.5, (150, 5))
    assert precision_recall_density_coverage(x, y, chunk=7) == precision_recall_density_coverage(x, y)
    # 1-D hand example, k=1: real radii are 1 (points 0,1,2 -> nearest neighbour at distance 1)
    real = np.array([[0.0], [1.0], [2.0]])
    fake = np.array([[0.5], [10.0], [10.5]])
    hand = precision_recall_density_coverage(real, fake, k=1)
    assert hand["precision"] == pytest.approx(1 / 3)
    assert hand["density"] == pytest.approx(2 / 3)      # 0.5 lies in the balls of 0 and 1
    assert hand["coverage"] == pytest.approx(2 / 3)     # real 0 and 1 have a fake within radius 1
    # fake radii (k=1) are 9.5, 0.5, 0.5: the isolated fake at 0.5 has a ball reaching every real
    # point, the outlier-inflated recall that density/coverage were introduced to correct
    assert hand["recall"] == pytest.approx(1.0)


def test_prdc_needs_more_samples_than_k():
    with pytest.raises(ValueError, match="k=5"):
        precision_recall_density_coverage(np.zeros((4, 2)), np.zeros((10, 2)))


def test_ms_ssim_settings_fit_small_images():
    kernel, betas = ms_ssim_settings(64)
    assert kernel == 11 and len(betas) == 3 and sum(betas) == pytest.approx(1.0)
    assert ms_ssim_settings(256) == (11, pytest.approx((0.0448, 0.2856, 0.3001, 0.2363, 0.1333), rel=1e-3))
    assert ms_ssim_settings(32)[0] == 11 and len(ms_ssim_settings(32)[1]) == 2
    with pytest.raises(ValueError, match="too small"):
        ms_ssim_settings(4)


def test_ms_ssim_diversity_ranks_identical_below_varied_sets():
    rng = np.random.default_rng(6)
    base = rng.random((64, 64)).astype(np.float32)
    identical = np.repeat(base[None], 10, axis=0)
    varied = rng.random((10, 64, 64)).astype(np.float32)
    same = ms_ssim_diversity(identical, n_pairs=20, seed=0)
    diverse = ms_ssim_diversity(varied, n_pairs=20, seed=0)
    assert same["ms_ssim_mean"] == pytest.approx(1.0, abs=1e-4)
    assert diverse["ms_ssim_mean"] < 0.3
    # uint8 input and a resize to a common size take the same path
    as_uint8 = ms_ssim_diversity((varied * 255).round().astype(np.uint8), n_pairs=20, seed=0, size=48)
    assert as_uint8["ms_ssim_pairs"] == 20 and 0 <= as_uint8["ms_ssim_mean"] < 0.3


def test_turing_test_is_chance_on_real_splits_and_perfect_on_noise():
    from support.eval.features import embed_set
    from support.eval.reference_encoder import ReferenceEncoder, ReferenceEncoderConfig, ReferenceNet
    from test_eval_helpers import FindingsDataset

    torch.manual_seed(0)
    config = ReferenceEncoderConfig(width=8, blocks=(1, 1), image_size=32, device="cpu")
    encoder = ReferenceEncoder(ReferenceNet(14, 8, (1, 1)), config)  # untrained: a fixed random feature map
    real = embed_set(encoder, FindingsDataset(300, seed=11), name="real")
    noise = embed_set(encoder, np.random.default_rng(7).random((150, 32, 32), dtype=np.float32), name="noise")
    rr = automated_turing_test(real[:150], real[150:], folds=5, seed=0)
    rn = automated_turing_test(real[:150], noise, folds=5, seed=0)
    assert 0.35 < rr["turing_auroc"] < 0.65
    assert rn["turing_auroc"] > 0.97
    assert rr["turing_n"] == 150
    with pytest.raises(ValueError, match="at least 5 samples"):
        automated_turing_test(real[:3], noise[:3])
