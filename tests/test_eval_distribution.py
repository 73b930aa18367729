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
    # computing in small blocks changes nothing (a real set of its own size: no freed buffer of the
    # radii above can stand in for rows a block loop skipped)
    x2 = rng.standard_normal((130, 5))
    y = x2[:100] + rng.normal(0, 0.5, (100, 5))
    assert precision_recall_density_coverage(x2, y, chunk=7) == precision_recall_density_coverage(x2, y)
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


# ------------------------------------------------------------------------------------ closed forms and guards
def test_frechet_distance_of_gaussians_in_closed_form():
    # diagonal covariances commute: FD = |mu1 - mu2|^2 + sum (sqrt a - sqrt b)^2
    a, b = np.array([1.0, 4.0, 9.0]), np.array([4.0, 4.0, 1.0])
    mu1, mu2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
    assert frechet_distance_from_stats(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(5.0 + 1.0 + 0.0 + 4.0)
    # S1 = 4 I and a rotated S2 with eigenvalues 1, 9: Tr (S1 S2)^(1/2) = 2 (1 + 3), so FD = |dmu|^2 + 4 + 4 + 10 - 16
    rot = np.array([[np.cos(0.3), -np.sin(0.3)], [np.sin(0.3), np.cos(0.3)]])
    s2 = rot @ np.diag([1.0, 9.0]) @ rot.T
    assert frechet_distance_from_stats([0.0, 0.0], 4 * np.eye(2), [3.0, 4.0], s2) == pytest.approx(25.0 + 2.0)
    assert frechet_distance_from_stats([3.0, 4.0], s2, [0.0, 0.0], 4 * np.eye(2)) == pytest.approx(27.0)
    # from samples: close to the population value of the Gaussians they were drawn from
    rng = np.random.default_rng(8)
    x = rng.standard_normal((20000, 2)) * 2.0
    y = rng.standard_normal((20000, 2)) @ np.diag([1.0, 3.0]) @ rot.T + [3.0, 4.0]
    assert frechet_distance(x, y) == pytest.approx(27.0, rel=0.02)


def test_frechet_distance_of_rank_deficient_covariances_is_finite():
    # fewer samples than dimensions: singular covariances whose eigenvalues round to tiny negatives
    a = np.random.default_rng(0).standard_normal((3, 10))
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    mu, sigma = gaussian_stats(a)
    assert np.isfinite(frechet_distance_from_stats(mu, sigma, mu + 1.0, 2.0 * sigma))
    # S2 = 4 S1 (same eigenvectors): Tr (S1 S2)^(1/2) = 2 Tr S1, so FD = |dmu|^2 + Tr S1
    assert frechet_distance_from_stats(mu, sigma, mu + 1.0, 4.0 * sigma) == pytest.approx(10.0 + np.trace(sigma))


def test_statistics_that_do_not_match_are_refused():
    two, three = np.eye(2), np.eye(3)
    for mu1, s1, mu2, s2 in (([0.0, 0.0], two, [0.0, 0.0, 0.0], two),     # means differ in length
                             ([0.0, 0.0], two, [0.0, 0.0], three),         # covariances differ in size
                             ([0.0, 0.0], three, [0.0, 0.0], three)):      # covariances do not fit the means
        with pytest.raises(ValueError, match="statistics do not match"):
            frechet_distance_from_stats(mu1, s1, mu2, s2)


def test_float32_and_integer_features_are_computed_in_float64():
    rng = np.random.default_rng(9)
    x32 = (rng.standard_normal((60, 6)) * 3 + 100).astype(np.float32)
    y32 = (rng.standard_normal((50, 6)) * 2 + 101).astype(np.float32)
    x64, y64 = x32.astype(np.float64), y32.astype(np.float64)
    assert frechet_distance(x32, y32) == frechet_distance(x64, y64)
    for got, ref in zip(gaussian_stats(x32), gaussian_stats(x64)):
        assert got.dtype == np.float64 and np.array_equal(got, ref)
    mu1, s1 = (v.astype(np.float32) for v in gaussian_stats(x64))
    mu2, s2 = (v.astype(np.float32) for v in gaussian_stats(y64))
    ref = frechet_distance_from_stats(*(v.astype(np.float64) for v in (mu1, s1, mu2, s2)))
    assert frechet_distance_from_stats(mu1, s1, mu2, s2) == ref
    assert frechet_distance_from_stats(mu1.astype(np.float64), s1, mu2, s2.astype(np.float64)) == ref
    assert frechet_distance_from_stats(mu1, s1.astype(np.float64), mu2.astype(np.float64), s2) == ref
    kid = dict(subsets=3, subset_size=40, seed=1)
    u32, v32 = (x64 / 100).astype(np.float32), (y64 / 100).astype(np.float32)
    assert kernel_inception_distance(u32, v32, **kid) == kernel_inception_distance(u32.astype(float), v32.astype(float),
                                                                                     **kid)
    ints = rng.integers(0, 5, (30, 3))
    assert frechet_distance(ints, ints[::-1] + 1) == pytest.approx(3.0)      # a shift by 1 in each of 3 dims


@pytest.mark.parametrize("metric", [frechet_distance, kernel_inception_distance, precision_recall_density_coverage])
def test_each_metric_names_the_set_it_refuses(metric):
    ok, kw = np.random.default_rng(0).standard_normal((10, 2)), {"k": 1} if metric is precision_recall_density_coverage else {}
    for bad, why in ((np.full((10, 2), np.nan), "features contain NaN or inf"), (ok[:1], "at least 2 samples are needed, got 1"),
                     (ok[:, 0], r"expected a feature matrix \(N, D\)")):
        with pytest.raises(ValueError, match=f"^real features: {why}"):
            metric(bad, ok, **kw)
        with pytest.raises(ValueError, match=f"^synthetic features: {why}"):
            metric(ok, bad, **kw)
    with pytest.raises(ValueError, match="^feature dimensions differ: real 2 vs synthetic 3"):
        metric(ok, np.zeros((10, 3)), **kw)
    with pytest.raises(ValueError, match="^features: at least 2 samples"):
        gaussian_stats(ok[:1])
    # two samples are enough
    assert np.isfinite(frechet_distance(ok[:2], ok[2:4]))
    assert np.isfinite(kernel_inception_distance(ok[:2], ok[2:4], subsets=2)["kid_mean"])


def test_kid_subsets_are_seeded_sized_by_the_smaller_set_and_use_the_given_kernel():
    rng = np.random.default_rng(10)
    x, y = rng.standard_normal((30, 4)), rng.standard_normal((40, 4)) + 0.3
    run = kernel_inception_distance(x, y, subsets=5, subset_size=20, seed=3)
    assert run == kernel_inception_distance(x, y, subsets=5, subset_size=20, seed=3)
    assert run["kid_mean"] != kernel_inception_distance(x, y, subsets=5, subset_size=20, seed=4)["kid_mean"]
    assert kernel_inception_distance(x, y, subsets=2)["kid_subset_size"] == 30
    assert kernel_inception_distance(y, x, subsets=2)["kid_subset_size"] == 30
    big = rng.standard_normal((1001, 2))
    assert kernel_inception_distance(big, big, subsets=1)["kid_subset_size"] == 1000     # the published 1000
    # explicit kernel settings: (gamma x.y + coef0)^degree, all subsets whole sets (m = 7, std 0)
    a, b = x[:7], y[:7]
    k = lambda u, v: (0.5 * u @ v.T + 2.0) ** 2
    m = 7
    ref = ((k(a, a).sum() - np.trace(k(a, a))) / (m * (m - 1)) + (k(b, b).sum() - np.trace(k(b, b))) / (m * (m - 1))
           - 2 * k(a, b).mean())
    got = kernel_inception_distance(a, b, subsets=2, degree=2, gamma=0.5, coef0=2.0)
    assert got["kid_mean"] == pytest.approx(ref, rel=1e-12) and got["kid_subset_size"] == 7


def test_kid_is_unbiased_near_zero_for_one_distribution_even_on_small_subsets():
    rng = np.random.default_rng(11)
    x = rng.standard_normal((4000, 4))
    same = kernel_inception_distance(x[:2000], x[2000:], subsets=200, subset_size=20, seed=0)
    # a biased (diagonal-included) estimate sits at about 2 E k(x, x) / m > 0.1 here
    assert abs(same["kid_mean"]) < 4 * same["kid_std"] / np.sqrt(200)
    assert abs(same["kid_mean"]) < 0.02


def test_prdc_on_the_boundary_of_a_ball_with_k_2():
    # 1-D, k=2. real 0, 1, 2, 3 -> radii 2, 1, 1, 2; synthetic 5, 6, 7, 8 -> radii 2, 1, 1, 2
    real = np.array([[0.0], [1.0], [2.0], [3.0]])
    fake = np.array([[5.0], [6.0], [7.0], [8.0]])
    got = precision_recall_density_coverage(real, fake, k=2)
    # synthetic 5 lies exactly on the ball of real 3 (distance 2 = radius 2): a ball includes its boundary
    assert got["precision"] == pytest.approx(1 / 4)
    assert got["density"] == pytest.approx(1 / 4 / 2)       # one ball holds one of 4 samples, over k = 2
    assert got["coverage"] == pytest.approx(1 / 4)          # only real 3's ball holds a synthetic sample
    assert got["recall"] == pytest.approx(1 / 4)            # real 3 lies exactly on synthetic 5's ball
    # a power-of-two rescaling changes no distance comparison
    small = precision_recall_density_coverage(real * 2.0 ** -10, fake * 2.0 ** -10, k=2)
    assert small == got
    rng = np.random.default_rng(12)
    x, y = rng.standard_normal((100, 3)), rng.standard_normal((80, 3)) + 0.5
    assert (precision_recall_density_coverage(x * 2.0 ** -12, y * 2.0 ** -12, k=3)
            == precision_recall_density_coverage(x, y, k=3))
    with pytest.raises(ValueError, match="k=4 needs more than k samples in each set .real 4, synthetic 4."):
        precision_recall_density_coverage(real, fake, k=4)
    with pytest.raises(ValueError, match="k=3 needs more than k samples"):
        precision_recall_density_coverage(np.r_[real, real], fake[:3], k=3)
    # k = n - 1 is allowed: synthetic radii 3, 2, 2, 3 reach real 3 and real 2 (exactly 3 from synthetic 5)
    assert precision_recall_density_coverage(real, fake, k=3)["recall"] == 0.5


def test_the_ssim_window_is_the_width_asked_for():
    from support.eval.diversity import gaussian_window

    for k in range(3, 44, 2):          # torchmetrics' Gaussian is 2 int(3.5 sigma + 0.5) + 1 pixels wide
        sigma = gaussian_window(k)["sigma"]
        assert 2 * int(3.5 * sigma + 0.5) + 1 == k
    assert gaussian_window(11)["sigma"] == 1.5
    for bad in (4, 45):
        with pytest.raises(ValueError, match=f"SSIM window {bad}"):
            gaussian_window(bad)
