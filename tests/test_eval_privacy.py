"""Memorisation audit: planted training copies are flagged, other patients' images are not."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.ndimage import gaussian_filter
from scipy.ndimage import shift as nd_shift

from support.eval import privacy
from support.eval.features import embed_set

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
