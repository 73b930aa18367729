"""Memorisation audit: is a synthetic image too close to a training image?

For each synthetic image the nearest training image is found twice:

- in feature space (the reference encoder by default) by cosine similarity;
- in pixels by SSIM on images downsampled to ``pixel_size`` (candidates are the training images
  with the highest normalised cross-correlation of those pixels, then re-ranked by SSIM, so the
  search stays a matrix product however large the training set).

Thresholds are calibrated on real *same-patient* pairs of the training set: two different images
of one patient are the most similar pairs that are legitimately distinct. A synthetic image more
similar to a training image than the ``quantile`` of those pairs is flagged -- by default only
when it is so in *both* spaces (``rule="all"``): a classifier's feature space places different
patients with the same findings closer together than one patient's studies with different
findings, so the feature test alone flags faithful new images; the pixel test alone would flag
near-blank images. ``rule="any"`` flags on either. :func:`release_gate` keeps the unflagged.
The audit table holds training-set positions, never patient ids.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import numpy as np
import torch

from .images import as_image_set


@dataclasses.dataclass
class PrivacyIndex:
    """What the audit compares against: the training set, its calibration, its thresholds."""

    train_features: np.ndarray      # (N, D) L2-normalised
    train_pixels: np.ndarray        # (N, pixel_size, pixel_size) float32 in [0, 1]
    pixel_size: int
    feature_threshold: float
    pixel_threshold: float
    quantile: float
    calibration: dict               # same-patient pair statistics


@dataclasses.dataclass
class MemorisationAudit:
    """Per synthetic image: nearest training images, similarities, flags; plus a summary."""

    table: Any                      # pandas.DataFrame, one row per synthetic image
    summary: dict

    @property
    def flagged(self) -> np.ndarray:
        return np.flatnonzero(self.table["flagged"].to_numpy())


def _l2_normalise(x) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"expected features (N, D), got shape {x.shape}")
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.clip(norm, 1e-12, None)


def _standardise_pixels(p: np.ndarray) -> np.ndarray:
    flat = p.reshape(len(p), int(np.prod(p.shape[1:]))).astype(np.float64)   # -1 fails on an empty set
    flat = flat - flat.mean(axis=1, keepdims=True)
    return flat / np.clip(np.linalg.norm(flat, axis=1, keepdims=True), 1e-12, None)


def downsample_set(images: Any, size: int, name: str = "images", batch_size: int = 128) -> np.ndarray:
    """An image set resized (bilinear, antialiased) to ``size`` pixels: float32 (N, size, size)."""
    return as_image_set(images, name=name).load(size=size, batch_size=batch_size)[:, 0].numpy().astype(np.float32)


def ssim_pairs(a: np.ndarray, b: np.ndarray, kernel_size: int = 7) -> np.ndarray:
    """SSIM of each pair (a[i], b[i]) of images (N, H, W) in [0, 1] -> (N,), with a Gaussian window
    ``kernel_size`` pixels wide."""
    from torchmetrics.functional.image import structural_similarity_index_measure

    from support.eval.diversity import gaussian_window

    if len(a) == 0:
        return np.zeros(0)
    ta = torch.as_tensor(np.asarray(a), dtype=torch.float32).unsqueeze(1)
    tb = torch.as_tensor(np.asarray(b), dtype=torch.float32).unsqueeze(1)
    out = [structural_similarity_index_measure(ta[i:i + 512], tb[i:i + 512], **gaussian_window(kernel_size),
                                               data_range=1.0, reduction="none")
           for i in range(0, len(ta), 512)]
    return torch.cat(out).double().numpy()


def same_patient_pairs(patient_ids: Sequence[Any], max_pairs: int = 20000, seed: int = 0) -> np.ndarray:
    """Index pairs (P, 2) of different images of the same patient (a seeded sample if many)."""
    ids = np.asarray([str(p) for p in patient_ids])
    order = np.argsort(ids, kind="stable")
    pairs = []
    start = 0
    for end in range(1, len(order) + 1):
        if end == len(order) or ids[order[end]] != ids[order[start]]:
            members = order[start:end]
            pairs += [(members[i], members[j]) for i in range(len(members)) for j in range(i + 1, len(members))]
            start = end
    pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    if len(pairs) > max_pairs:
        pairs = pairs[np.sort(np.random.default_rng(seed).choice(len(pairs), max_pairs, replace=False))]
    return pairs


def build_privacy_index(train_features, train_images: Any, patient_ids: Sequence[Any], quantile: float = 0.95,
                        pixel_size: int = 32, max_pairs: int = 20000, seed: int = 0) -> PrivacyIndex:
    """Index the training set and calibrate both thresholds on its same-patient pairs.

    ``train_features`` (N, D) in the audit's feature space; ``train_images`` any image source of
    the same N images in the same order; ``patient_ids`` one subject id per image.
    """
    if not 0.0 < quantile <= 1.0:
        raise ValueError(f"quantile must be in (0, 1], got {quantile}")
    feats = _l2_normalise(train_features)
    if len(patient_ids) != len(feats):
        raise ValueError(f"{len(patient_ids)} patient ids for {len(feats)} training feature rows")
    pixels = downsample_set(train_images, pixel_size, name="training images")
    if len(pixels) != len(feats):
        raise ValueError(f"{len(pixels)} training images for {len(feats)} training feature rows")
    pairs = same_patient_pairs(patient_ids, max_pairs, seed)
    if len(pairs) == 0:
        raise ValueError("no patient has two or more training images: same-patient pairs are needed "
                         "to calibrate the memorisation thresholds")
    feat_sim = (feats[pairs[:, 0]] * feats[pairs[:, 1]]).sum(axis=1)
    pix_sim = ssim_pairs(pixels[pairs[:, 0]], pixels[pairs[:, 1]])
    calibration = {"same_patient_pairs": int(len(pairs)),
                   "n_patients_with_pairs": int(len(np.unique(np.asarray(patient_ids, dtype=str)[pairs[:, 0]]))),
                   "feature_similarity_median": float(np.median(feat_sim)),
                   "pixel_ssim_median": float(np.median(pix_sim))}
    return PrivacyIndex(feats, pixels, pixel_size, float(np.quantile(feat_sim, quantile)),
                        float(np.quantile(pix_sim, quantile)), quantile, calibration)


def nearest_by_cosine(query, index_features: np.ndarray, chunk: int = 2048) -> tuple[np.ndarray, np.ndarray]:
    """(index, cosine similarity) of each query row's nearest row of L2-normalised ``index_features``."""
    q = _l2_normalise(query)
    if q.shape[1] != index_features.shape[1]:
        raise ValueError(f"feature width {q.shape[1]} differs from the index's {index_features.shape[1]}")
    idx, sim = np.empty(len(q), np.int64), np.empty(len(q))
    for i in range(0, len(q), chunk):
        s = q[i:i + chunk] @ index_features.T
        idx[i:i + chunk] = s.argmax(axis=1)
        sim[i:i + chunk] = s[np.arange(len(s)), idx[i:i + chunk]]
    return idx, sim


def nearest_by_ssim(query_pixels: np.ndarray, index_pixels: np.ndarray, candidates: int = 16,
                    chunk: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """(index, SSIM) of each query image's most similar index image: top ``candidates`` by
    normalised cross-correlation, re-ranked by SSIM."""
    q, t = _standardise_pixels(query_pixels), _standardise_pixels(index_pixels)
    k = min(candidates, len(t))
    idx, sim = np.empty(len(q), np.int64), np.empty(len(q))
    for i in range(0, len(q), chunk):
        ncc = q[i:i + chunk] @ t.T
        cand = np.argpartition(-ncc, k - 1, axis=1)[:, :k]
        rows = np.repeat(np.arange(i, i + len(cand)), k)
        s = ssim_pairs(query_pixels[rows], index_pixels[cand.ravel()]).reshape(len(cand), k)
        best = s.argmax(axis=1)
        idx[i:i + len(cand)] = cand[np.arange(len(cand)), best]
        sim[i:i + len(cand)] = s[np.arange(len(cand)), best]
    return idx, sim


def audit_memorisation(index: PrivacyIndex, synthetic_features, synthetic_images: Any,
                       rule: str = "all") -> MemorisationAudit:
    """Nearest training neighbours of every synthetic image in both spaces, with flags.

    ``flagged_feature``: cosine similarity >= the feature threshold; ``flagged_pixel``: SSIM >=
    the pixel threshold; ``flagged``: both (``rule="all"``) or either (``rule="any"``).
    """
    import pandas as pd

    if rule not in ("all", "any"):
        raise ValueError(f"rule must be 'all' or 'any', got {rule!r}")
    pixels = downsample_set(synthetic_images, index.pixel_size, name="synthetic images")
    f_idx, f_sim = nearest_by_cosine(synthetic_features, index.train_features)
    if len(pixels) != len(f_idx):
        raise ValueError(f"{len(pixels)} synthetic images for {len(f_idx)} synthetic feature rows")
    p_idx, p_sim = nearest_by_ssim(pixels, index.train_pixels)
    table = pd.DataFrame({
        "synthetic_index": np.arange(len(f_idx)),
        "nn_feature_index": f_idx, "feature_similarity": f_sim,
        "nn_pixel_index": p_idx, "pixel_ssim": p_sim,
        "flagged_feature": f_sim >= index.feature_threshold,
        "flagged_pixel": p_sim >= index.pixel_threshold,
    })
    table["flagged"] = (table["flagged_feature"] & table["flagged_pixel"] if rule == "all"
                        else table["flagged_feature"] | table["flagged_pixel"])
    summary = {"n_synthetic": int(len(table)), "n_flagged": int(table["flagged"].sum()),
               "share_flagged": float(table["flagged"].mean()) if len(table) else 0.0,
               "share_flagged_feature": float(table["flagged_feature"].mean()) if len(table) else 0.0,
               "share_flagged_pixel": float(table["flagged_pixel"].mean()) if len(table) else 0.0,
               "rule": rule,
               "feature_threshold": index.feature_threshold, "pixel_threshold": index.pixel_threshold,
               "quantile": index.quantile,
               "feature_similarity_max": float(f_sim.max()) if len(f_sim) else float("nan"),
               "pixel_ssim_max": float(p_sim.max()) if len(p_sim) else float("nan"),
               **{f"calibration_{k}": v for k, v in index.calibration.items()}}
    return MemorisationAudit(table, summary)


def release_gate(audit: MemorisationAudit) -> np.ndarray:
    """Indices of the synthetic images that pass the audit (not flagged), in their original order."""
    return np.flatnonzero(~audit.table["flagged"].to_numpy())


def plot_closest_pairs(audit: MemorisationAudit, synthetic_images: Any, train_images: Any, n: int = 8,
                       by: str = "feature"):
    """A gallery of the ``n`` synthetic images closest to a training image (top row) above their
    nearest training images (bottom row), titled with the similarity; flagged pairs in red."""
    import matplotlib.pyplot as plt

    if by not in ("feature", "pixel"):
        raise ValueError(f"by must be 'feature' or 'pixel', got {by!r}")
    sim_col, nn_col = ("feature_similarity", "nn_feature_index") if by == "feature" else ("pixel_ssim", "nn_pixel_index")
    flag_col = "flagged_feature" if by == "feature" else "flagged_pixel"
    top = audit.table.sort_values(sim_col, ascending=False).head(n)
    synth, train = as_image_set(synthetic_images, "synthetic"), as_image_set(train_images, "training")
    cols = max(len(top), 1)
    fig, axes = plt.subplots(2, cols, figsize=(1.8 * cols, 4.0), squeeze=False)
    for c, (_, row) in enumerate(top.iterrows()):
        pair = (synth[int(row["synthetic_index"])], train[int(row[nn_col])])
        for r, img in enumerate(pair):
            ax = axes[r, c]
            ax.imshow(img[0].numpy(), cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([]), ax.set_yticks([])
            if row[flag_col]:
                for spine in ax.spines.values():
                    spine.set_edgecolor("red"), spine.set_linewidth(2)
        axes[0, c].set_title(f"{row[sim_col]:.3f}", fontsize=8, color="red" if row[flag_col] else "black")
    for c in range(len(top), cols):
        axes[0, c].axis("off"), axes[1, c].axis("off")
    axes[0, 0].set_ylabel("synthetic"), axes[1, 0].set_ylabel("nearest training")
    fig.suptitle(f"closest pairs by {'feature cosine' if by == 'feature' else 'pixel SSIM'} "
                 f"(threshold {audit.summary[f'{by}_threshold']:.3f})", fontsize=9)
    fig.tight_layout()
    return fig
