"""Memorisation audit: planted training copies are flagged, other patients' images are not."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.ndimage import gaussian_filter
from scipy.ndimage import shift as nd_shift

from support.eval import privacy
from support.eval.features import embed_set

# privacy imports torchmetrics' SSIM when first called; importing it here once makes each forked
# mutation-test process (tests/mutation.py) start with it loaded
import torchmetrics.functional.image  # noqa: E402,F401

torch.set_num_threads(1)
SIZE = 64


class PooledPixels:
    """A fixed feature map for the test: 16 x 16 area-pooled pixels, mean removed."""

    name = "pooled-pixels"

    def embed(self, images):
        x = F.adaptive_avg_pool2d(images, 16).flatten(1)
        return x - x.mean(dim=1, keepdim=True)


def _field(rng, sigma, amplitude):
    f = gaussian_filter(rng.standard_normal((SIZE, SIZE)), sigma, mode="wrap")
    return f / f.std() * amplitude


def _study(anatomy, rng):
    """One image of a patient: their anatomy plus per-study variation and positioning."""
    img = nd_shift(anatomy + _field(rng, 4, 0.45), rng.uniform(-2, 2, 2), mode="nearest")
    return np.clip(0.5 + 0.15 * img, 0, 1).astype(np.float32)


def _patients(rng, n_patients, studies):
    images, ids = [], []
    for p in range(n_patients):
        anatomy = _field(rng, 6, 1.0)
        for _ in range(studies):
            images.append(_study(anatomy, rng))
            ids.append(f"1{p:07d}")
    return np.stack(images), ids


@pytest.fixture(scope="module")
def setting():
    rng = np.random.default_rng(0)
    train, ids = _patients(rng, 60, 3)
    held_out, _ = _patients(rng, 300, 1)                  # other patients, never trained on
    genuine, _ = _patients(rng, 40, 1)                    # synthetic images of new anatomy
    copy_idx = [0, 31, 62, 93, 124]
    copies = [train[i] for i in copy_idx]
    perturbed_idx = [10, 50, 77, 140, 170]
    perturbed = []
    for i in perturbed_idx:
        x = nd_shift(train[i], rng.uniform(-1.5, 1.5, 2), mode="nearest")       # small shift
        x = x * rng.uniform(1.05, 1.1) + rng.uniform(-0.04, 0.04)            # brightness / contrast
        perturbed.append(np.clip(x + rng.normal(0, 0.02, x.shape), 0, 1))    # noise
    synthetic = np.concatenate([genuine, np.stack(copies), np.stack(perturbed)]).astype(np.float32)
    enc = PooledPixels()
    index = privacy.build_privacy_index(embed_set(enc, train), train, ids, quantile=0.95)
    return dict(train=train, ids=ids, held_out=held_out, synthetic=synthetic, enc=enc, index=index,
                copy_idx=copy_idx, perturbed_idx=perturbed_idx)


def test_same_patient_pairs():
    pairs = privacy.same_patient_pairs(["b", "a", "b", "c", "b", "a"])
    assert {tuple(sorted(p)) for p in pairs.tolist()} == {(0, 2), (0, 4), (2, 4), (1, 5)}
    assert len(privacy.same_patient_pairs(["a"] * 10, max_pairs=7)) == 7
    with pytest.raises(ValueError, match="same-patient pairs are needed"):
        privacy.build_privacy_index(np.eye(3), np.zeros((3, 8, 8), np.float32), ["a", "b", "c"])


def test_calibration_uses_same_patient_pairs(setting):
    cal = setting["index"].calibration
    assert cal["same_patient_pairs"] == 180 and cal["n_patients_with_pairs"] == 60
    # thresholds sit above the typical same-patient pair and below an exact copy
    assert cal["feature_similarity_median"] < setting["index"].feature_threshold < 1.0
    assert cal["pixel_ssim_median"] < setting["index"].pixel_threshold < 1.0


def test_planted_copies_are_flagged_and_released_set_excludes_them(setting):
    s = setting
    audit = privacy.audit_memorisation(s["index"], embed_set(s["enc"], s["synthetic"]), s["synthetic"])
    t = audit.table
    planted = np.arange(40, 50)
    assert t.loc[planted, "flagged"].all()
    # exact copies find their source in both spaces; perturbed copies at least by feature or pixels
    assert (t.loc[40:44, "nn_feature_index"].to_numpy() == s["copy_idx"]).all()
    assert (t.loc[40:44, "nn_pixel_index"].to_numpy() == s["copy_idx"]).all()
    assert np.allclose(t.loc[40:44, "pixel_ssim"], 1.0, atol=1e-4)
    found = (t.loc[45:49, "nn_feature_index"].to_numpy() == s["perturbed_idx"]) | \
            (t.loc[45:49, "nn_pixel_index"].to_numpy() == s["perturbed_idx"])
    assert found.all()
    assert t.loc[:39, "flagged"].sum() <= 1  # genuine new samples pass
    assert audit.summary["rule"] == "all" and (t["flagged"] == (t["flagged_feature"] & t["flagged_pixel"])).all()
    either = privacy.audit_memorisation(s["index"], embed_set(s["enc"], s["synthetic"]), s["synthetic"], rule="any")
    assert (either.table["flagged"] >= t["flagged"]).all()
    assert (either.table["flagged"] == (t["flagged_feature"] | t["flagged_pixel"])).all()
    keep = privacy.release_gate(audit)
    assert not set(planted) & set(keep.tolist()) and len(keep) == 50 - audit.summary["n_flagged"]
    assert audit.summary["share_flagged"] == pytest.approx(audit.summary["n_flagged"] / 50)


def test_held_out_patients_are_rarely_flagged(setting):
    s = setting
    audit = privacy.audit_memorisation(s["index"], embed_set(s["enc"], s["held_out"]), s["held_out"])
    assert audit.summary["share_flagged"] <= 0.01


def test_closest_pairs_gallery(setting, tmp_path):
    import matplotlib
    matplotlib.use("Agg")
    s = setting
    audit = privacy.audit_memorisation(s["index"], embed_set(s["enc"], s["synthetic"]), s["synthetic"])
    fig = privacy.plot_closest_pairs(audit, s["synthetic"], s["train"], n=6, by="pixel")
    axes = fig.get_axes()
    assert len(axes) == 12
    # the closest pairs are the planted copies, titled with SSIM 1.000 in red
    assert axes[0].get_title() == "1.000" and axes[0].title.get_color() == "red"
    fig.savefig(tmp_path / "closest.png")
    assert (tmp_path / "closest.png").stat().st_size > 1000
    with pytest.raises(ValueError, match="by must be"):
        privacy.plot_closest_pairs(audit, s["synthetic"], s["train"], by="both")


# ------------------------------------------------------------------------------------ small hand-built cases
def test_same_patient_pairs_are_every_pair_within_a_patient_and_a_seeded_sample_of_them():
    ids = [7, "7", 3, 9, 3, 3, 7, 10]                                    # ids compare as text: 7 and "7" are one patient
    pairs = privacy.same_patient_pairs(ids)
    assert pairs.dtype == np.int64 and pairs.shape == (6, 2)
    assert sorted(tuple(sorted(p)) for p in pairs.tolist()) == [(0, 1), (0, 6), (1, 6), (2, 4), (2, 5), (4, 5)]
    for none in (privacy.same_patient_pairs(["a", "b", "c"]), privacy.same_patient_pairs([])):
        assert none.shape == (0, 2) and none.dtype == np.int64            # usable as indices even when empty
    # many images, shuffled: every pair once, the earlier image first
    shuffled = [f"p{i % 3}" for i in np.random.default_rng(0).permutation(300)]
    big = privacy.same_patient_pairs(shuffled)
    assert len(big) == 3 * 100 * 99 // 2 and (big[:, 0] < big[:, 1]).all()
    assert all(shuffled[i] == shuffled[j] for i, j in big[::97].tolist())
    every = privacy.same_patient_pairs(["a"] * 10)                       # 45 pairs of one patient
    assert len(every) == 45 and len({tuple(p) for p in every.tolist()}) == 45
    assert (every[:, 0] != every[:, 1]).all()
    assert np.array_equal(privacy.same_patient_pairs(["a"] * 10, max_pairs=45), every)
    some = privacy.same_patient_pairs(["a"] * 10, max_pairs=7, seed=1)
    rows = [every.tolist().index(p) for p in some.tolist()]            # a subset, in enumeration order, no repeats
    assert len(some) == 7 and rows == sorted(set(rows))
    assert np.array_equal(some, privacy.same_patient_pairs(["a"] * 10, max_pairs=7, seed=1))
    assert not np.array_equal(some, privacy.same_patient_pairs(["a"] * 10, max_pairs=7, seed=2))
    most = privacy.same_patient_pairs(["a"] * 10, max_pairs=40)
    assert len({tuple(p) for p in most.tolist()}) == 40                  # drawn without replacement


def _patterns(n, size=8, seed=0):
    return np.random.default_rng(seed).random((n, size, size)).astype(np.float32)


def test_thresholds_are_the_quantile_of_same_patient_similarities():
    e1, e2 = [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]
    # same-patient pairs: p1 cosine 1, p2 cosine 0, p3 cosine 1/sqrt 2; p4 has one image. Rows unscaled.
    feats = np.array([e1, [3.0, 0, 0], e1, e2, [2.0, 0, 0], [5.0, 5.0, 0], [1.0, 1.0, 1.0]])
    ids = ["p1", "p1", "p2", "p2", "p3", "p3", "p4"]
    images = _patterns(7, 16)
    images[1] = images[0]                                              # p1: the same image twice, SSIM 1
    index = privacy.build_privacy_index(feats, images, ids, quantile=0.5, pixel_size=8)
    assert index.feature_threshold == pytest.approx(1 / np.sqrt(2))
    assert np.allclose(np.linalg.norm(index.train_features, axis=1), 1.0)
    assert index.train_pixels.shape == (7, 8, 8) and index.pixel_size == 8 and index.quantile == 0.5
    pix = privacy.ssim_pairs(index.train_pixels[[0, 2, 4]], index.train_pixels[[1, 3, 5]])
    assert pix[0] == pytest.approx(1.0, abs=1e-5) and pix[1:].max() < 0.5
    assert index.pixel_threshold == pytest.approx(np.median(pix))
    assert index.calibration == {"same_patient_pairs": 3, "n_patients_with_pairs": 3,
                                 "feature_similarity_median": pytest.approx(1 / np.sqrt(2)),
                                 "pixel_ssim_median": pytest.approx(np.median(pix))}
    top = privacy.build_privacy_index(feats, images, ids, quantile=1.0, pixel_size=8)
    assert top.feature_threshold == pytest.approx(1.0) and top.pixel_threshold == pytest.approx(pix.max())
    low = privacy.build_privacy_index(feats, images, ids, quantile=0.25, pixel_size=8)
    assert low.feature_threshold == pytest.approx(0.5 / np.sqrt(2))     # linear between 0 and 1/sqrt 2
    assert privacy.build_privacy_index(feats, images, ids, pixel_size=12).train_pixels.shape == (7, 12, 12)
    # a seeded sample of the pairs: seed 0 draws p2 and p3 (two of them) or p3 alone, seed 1 p2 alone
    capped = privacy.build_privacy_index(feats, images, ids, max_pairs=2, seed=0, pixel_size=8)
    assert capped.calibration["same_patient_pairs"] == 2 and capped.calibration["n_patients_with_pairs"] == 2
    assert capped.calibration["feature_similarity_median"] == pytest.approx(0.5 / np.sqrt(2))
    assert privacy.build_privacy_index(feats, images, ids, max_pairs=1, pixel_size=8).feature_threshold == \
        pytest.approx(1 / np.sqrt(2))
    assert privacy.build_privacy_index(feats, images, ids, max_pairs=1, seed=1, pixel_size=8).feature_threshold == 0.0


def test_build_privacy_index_refuses_inconsistent_input():
    feats, images, ids = np.eye(4), _patterns(4), ["a", "a", "b", "b"]
    for q in (0.0, -0.1, 1.5):
        with pytest.raises(ValueError, match=rf"quantile must be in \(0, 1\], got {q}"):
            privacy.build_privacy_index(feats, images, ids, quantile=q)
    with pytest.raises(ValueError, match="3 patient ids for 4 training feature rows"):
        privacy.build_privacy_index(feats, images, ids[:3])
    with pytest.raises(ValueError, match="3 training images for 4 training feature rows"):
        privacy.build_privacy_index(feats, images[:3], ids)
    with pytest.raises(ValueError, match="same-patient pairs are needed"):
        privacy.build_privacy_index(feats, images, ["a", "b", "c", "d"])
    with pytest.raises(ValueError, match=r"^training images: expected images"):
        privacy.build_privacy_index(feats, images[:, None, None], ids)
    index, features, synthetic = _hand_audit_setting()
    with pytest.raises(ValueError, match=r"^synthetic images: expected images"):
        privacy.audit_memorisation(index, features, synthetic[:, None, None])


def test_nearest_by_cosine_by_hand():
    index = privacy._l2_normalise(np.array([[1.0, 0, 0], [0, 1.0, 0], [1.0, 1.0, 0], [0, 0, 1.0]]))
    query = np.array([[5.0, 0, 0], [1.0, 2.0, 0], [0, 0.1, -1.0], [0.5, 0, 1.0]])
    idx, sim = privacy.nearest_by_cosine(query, index)
    assert idx.tolist() == [0, 2, 1, 3]
    assert sim == pytest.approx([1.0, 3 / np.sqrt(10), 0.1 / np.sqrt(1.01), 1 / np.sqrt(1.25)])
    for chunk in (1, 3):
        got = privacy.nearest_by_cosine(query, index, chunk=chunk)
        assert got[0].tolist() == idx.tolist() and got[1] == pytest.approx(sim)
    with pytest.raises(ValueError, match="feature width 2 differs from the index's 3"):
        privacy.nearest_by_cosine(query[:, :2], index)


def test_ssim_pairs_is_one_for_copies_and_pairs_images_in_order():
    a = _patterns(3, 16, seed=1)
    b = np.stack([a[0], _patterns(1, 16, seed=2)[0], np.clip(a[2] + 0.05, 0, 1)])
    s = privacy.ssim_pairs(a, b)
    assert s.shape == (3,) and s.dtype == np.float64
    assert s[0] == pytest.approx(1.0, abs=1e-5) and s[1] < 0.2 and 0.5 < s[2] < 1.0
    assert privacy.ssim_pairs(a[::-1].copy(), b[::-1].copy()) == pytest.approx(s[::-1])
    assert privacy.ssim_pairs(a[:0], b[:0]).shape == (0,)
    # more pairs than one batch of 512: each pair still scored once, against its own partner
    many = np.repeat(a[1:2], 515, axis=0)
    partner = many.copy()
    partner[-1] = b[1]
    got = privacy.ssim_pairs(many, partner)
    assert got.shape == (515,) and got[:-1] == pytest.approx(1.0, abs=1e-5) and got[-1] < 0.2


def _ssim_by_hand(a: np.ndarray, b: np.ndarray, size: int = 7, sigma: float = 1.5) -> float:
    """SSIM of two images in [0, 1] (data range 1): a Gaussian window of ``size`` pixels around every
    pixel (the image mirrored at its edges), averaged."""
    from scipy.signal import convolve2d

    g = np.exp(-((np.arange(size) - size // 2) ** 2) / (2 * sigma ** 2))
    w = np.outer(g, g) / np.outer(g, g).sum()

    def mean(x):
        return convolve2d(np.pad(x, size // 2, mode="reflect"), w, mode="valid")

    mu_a, mu_b = mean(a), mean(b)
    var_a, var_b, cov = mean(a * a) - mu_a ** 2, mean(b * b) - mu_b ** 2, mean(a * b) - mu_a * mu_b
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    return float((((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2))).mean())


def test_ssim_pairs_is_the_published_ssim_at_data_range_1_and_its_window():
    a = _patterns(2, 24, seed=4)
    b = np.stack([np.clip(0.7 * a[0] + 0.2, 0, 1), _patterns(1, 24, seed=5)[0]])
    for k in (7, 11):   # the window asked for (torchmetrics sizes its Gaussian from sigma alone)
        got = privacy.ssim_pairs(a, b, kernel_size=k)
        assert got == pytest.approx([_ssim_by_hand(a[i], b[i], k, 1.5 * k / 11) for i in range(2)], abs=1e-5), k
    assert not np.allclose(privacy.ssim_pairs(a, b, kernel_size=7), privacy.ssim_pairs(a, b, kernel_size=11))
    # flat images: the luminance term alone, (2 m1 m2 + C1) / (m1^2 + m2^2 + C1) with C1 = (0.01 x range)^2
    flat = privacy.ssim_pairs(np.full((1, 16, 16), 0.02), np.full((1, 16, 16), 0.01))
    assert flat[0] == pytest.approx((2 * 0.02 * 0.01 + 1e-4) / (0.02 ** 2 + 0.01 ** 2 + 1e-4), rel=1e-4)


def _hand_audit_setting():
    """Four training images and features; synthetic images flagged in both spaces, one, or neither."""
    e = np.eye(3)
    train_pixels = _patterns(4, 8, seed=3)
    index = privacy.PrivacyIndex(train_features=privacy._l2_normalise(np.array([e[0], e[1], e[2], e[0] + e[1]])),
                                 train_pixels=train_pixels, pixel_size=8, feature_threshold=0.9,
                                 pixel_threshold=0.9, quantile=0.95, calibration={"same_patient_pairs": 3})
    features = np.array([2 * e[0], e[0] + 0.1 * e[2], e[0] - e[1], e[2] + 0.5 * e[0]])
    fresh = _patterns(2, 8, seed=4)
    images = np.stack([train_pixels[1], fresh[0], train_pixels[2], fresh[1]])
    return index, features, images


def test_audit_flags_by_rule_and_the_gate_keeps_the_rest():
    index, features, images = _hand_audit_setting()
    audit = privacy.audit_memorisation(index, features, images)
    t = audit.table
    assert t["synthetic_index"].tolist() == [0, 1, 2, 3]
    assert t["nn_feature_index"].tolist() == [0, 0, 0, 2]
    assert t["feature_similarity"].to_numpy() == pytest.approx([1.0, 1 / np.sqrt(1.01), 1 / np.sqrt(2), 1 / np.sqrt(1.25)])
    assert t["nn_pixel_index"].tolist()[0] == 1 and t["nn_pixel_index"].tolist()[2] == 2
    assert t["flagged_feature"].tolist() == [True, True, False, False]
    assert t["flagged_pixel"].tolist() == [True, False, True, False]
    assert t["flagged"].tolist() == [True, False, False, False]
    assert audit.flagged.tolist() == [0] and privacy.release_gate(audit).tolist() == [1, 2, 3]
    s = audit.summary
    assert (s["n_synthetic"], s["n_flagged"], s["rule"]) == (4, 1, "all")
    assert (s["share_flagged"], s["share_flagged_feature"], s["share_flagged_pixel"]) == (0.25, 0.5, 0.5)
    assert (s["feature_threshold"], s["pixel_threshold"], s["quantile"]) == (0.9, 0.9, 0.95)
    assert s["feature_similarity_max"] == pytest.approx(1.0) and s["pixel_ssim_max"] == pytest.approx(1.0, abs=1e-5)
    assert s["calibration_same_patient_pairs"] == 3
    either = privacy.audit_memorisation(index, features, images, rule="any")
    assert either.table["flagged"].tolist() == [True, True, True, False] and either.summary["rule"] == "any"
    assert either.flagged.tolist() == [0, 1, 2] and privacy.release_gate(either).tolist() == [3]
    assert either.summary["n_flagged"] == 3 and either.summary["share_flagged"] == 0.75
    with pytest.raises(ValueError, match="rule must be 'all' or 'any', got 'both'"):
        privacy.audit_memorisation(index, features, images, rule="both")
    with pytest.raises(ValueError, match="3 synthetic images for 4 synthetic feature rows"):
        privacy.audit_memorisation(index, features, images[:3])


def test_a_similarity_equal_to_its_threshold_is_flagged():
    import dataclasses

    index, features, images = _hand_audit_setting()
    copy_ssim = privacy.ssim_pairs(images[:1], index.train_pixels[1:2])[0]
    at = dataclasses.replace(index, feature_threshold=1.0, pixel_threshold=float(copy_ssim))
    t = privacy.audit_memorisation(at, features[:1], images[:1]).table       # an exact copy: cosine exactly 1
    assert t.loc[0, "feature_similarity"] == 1.0 and t.loc[0, "pixel_ssim"] == copy_ssim
    assert t.loc[0, "flagged_feature"] and t.loc[0, "flagged_pixel"] and t.loc[0, "flagged"]


def test_an_empty_synthetic_set_flags_nothing():
    index, features, images = _hand_audit_setting()
    audit = privacy.audit_memorisation(index, features[:0], images[:0])
    s = audit.summary
    assert (s["n_synthetic"], s["n_flagged"]) == (0, 0)
    assert (s["share_flagged"], s["share_flagged_feature"], s["share_flagged_pixel"]) == (0.0, 0.0, 0.0)
    assert np.isnan(s["feature_similarity_max"]) and np.isnan(s["pixel_ssim_max"])
    assert audit.flagged.tolist() == [] and privacy.release_gate(audit).tolist() == []
