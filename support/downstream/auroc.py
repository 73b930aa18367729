"""Per-finding AUROC over CheXpert-style label matrices, with seeded bootstrap intervals.

Labels are 1 (positive), 0 (negative), -1 (uncertain) or NaN (not mentioned); only 0/1 entries
count, per finding, so each finding is scored on the images where its truth is known.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


def known_mask(labels: np.ndarray) -> np.ndarray:
    """True where a label is a definite 0 or 1."""
    labels = np.asarray(labels, dtype=np.float64)
    return (labels == 0.0) | (labels == 1.0)


def _auroc(y: np.ndarray, s: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    if y.size == 0 or y.min() == y.max():
        return float("nan")  # undefined without both classes
    return float(roc_auc_score(y, s))


def per_finding_auroc(labels, scores, names: Sequence[str]) -> dict[str, float]:
    """AUROC per finding (column) over known labels; NaN where a finding lacks either class."""
    labels = np.asarray(labels, dtype=np.float64)
    scores = np.asarray(scores, dtype=np.float64)
    if labels.shape != scores.shape or labels.ndim != 2 or labels.shape[1] != len(names):
        raise ValueError(f"labels {labels.shape} and scores {scores.shape} must both be (N, {len(names)})")
    known = known_mask(labels)
    return {name: _auroc(labels[known[:, j], j], scores[known[:, j], j]) for j, name in enumerate(names)}


def bootstrap_auroc(y_true, y_score, n_boot: int = 1000, seed: int = 0,
                    confidence: float = 0.95) -> dict[str, float]:
    """AUROC of one finding with a percentile bootstrap interval (cases resampled, seeded).

    Entries whose label is not a definite 0/1 are dropped first. Resamples are scored in
    vectorised batches (AUROC as the Mann-Whitney statistic); those that happen to hold a single
    class are skipped; ``n_boot_valid`` says how many counted. Returns
    ``{"auroc", "ci_low", "ci_high", "n", "n_pos", "n_boot_valid"}`` (NaN where undefined).
    """
    y = np.asarray(y_true, dtype=np.float64).ravel()
    s = np.asarray(y_score, dtype=np.float64).ravel()
    if y.shape != s.shape:
        raise ValueError(f"labels {y.shape} and scores {s.shape} differ in length")
    keep = known_mask(y)
    y, s = y[keep], s[keep]
    out = {"auroc": _auroc(y, s), "ci_low": float("nan"), "ci_high": float("nan"),
           "n": int(y.size), "n_pos": int(y.sum()), "n_boot_valid": 0}
    if np.isnan(out["auroc"]):
        return out
    rng = np.random.default_rng(seed)
    values = []
    chunk = max(1, 2_000_000 // y.size)  # resamples per vectorised batch, bounded memory
    for start in range(0, n_boot, chunk):
        idx = rng.integers(0, y.size, (min(chunk, n_boot - start), y.size))
        values.append(_auroc_rows(y[idx], s[idx]))
    values = np.concatenate(values)
    values = values[np.isfinite(values)]
    if values.size:
        alpha = (1.0 - confidence) / 2.0
        out["ci_low"], out["ci_high"] = (float(q) for q in np.quantile(values, [alpha, 1.0 - alpha]))
        out["n_boot_valid"] = int(values.size)
    return out


def _auroc_rows(y: np.ndarray, s: np.ndarray) -> np.ndarray:
    """AUROC of each row (Mann-Whitney U from mid-ranks, so ties count one half); NaN where a
    row holds a single class."""
    from scipy.stats import rankdata

    ranks = rankdata(s, axis=1)
    n_pos = y.sum(axis=1)
    n_neg = y.shape[1] - n_pos
    u = (ranks * y).sum(axis=1) - n_pos * (n_pos + 1) / 2.0
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where((n_pos > 0) & (n_neg > 0), u / (n_pos * n_neg), np.nan)
