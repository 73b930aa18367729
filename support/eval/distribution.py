"""Distances between a real and a synthetic feature set: Frechet distance, KID, and
precision / recall / density / coverage (Naeem et al. 2020). All in float64 on (N, D) arrays."""

from __future__ import annotations

import numpy as np


def _features(x, name: str) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64)
    if a.ndim != 2:
        raise ValueError(f"{name}: expected a feature matrix (N, D), got shape {a.shape}")
    if a.shape[0] < 2:
        raise ValueError(f"{name}: at least 2 samples are needed, got {a.shape[0]}")
    if not np.isfinite(a).all():
        raise ValueError(f"{name}: features contain NaN or inf")
    return a


def _same_dim(a: np.ndarray, b: np.ndarray) -> None:
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"feature dimensions differ: real {a.shape[1]} vs synthetic {b.shape[1]}")


def gaussian_stats(features) -> tuple[np.ndarray, np.ndarray]:
    """Mean and unbiased covariance (rows are samples), float64."""
    f = _features(features, "features")
    return f.mean(axis=0), np.cov(f, rowvar=False)


def _psd_sqrt(m: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh((m + m.T) / 2)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def frechet_distance_from_stats(mu1, sigma1, mu2, sigma2) -> float:
    """||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2)).

    Tr((S1 S2)^(1/2)) = Tr((sqrt(S1) S2 sqrt(S1))^(1/2)): the inner matrix is symmetric PSD, so
    its square root comes from a real symmetric eigendecomposition, with no complex round-off
    to discard (unlike ``sqrtm`` of the non-symmetric product).
    """
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    s1, s2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != (mu1.size, mu1.size):
        raise ValueError(f"statistics do not match: mu {mu1.shape}/{mu2.shape}, sigma {s1.shape}/{s2.shape}")
    root1 = _psd_sqrt(s1)
    inner = root1 @ s2 @ root1
    tr_covmean = np.sqrt(np.clip(np.linalg.eigvalsh((inner + inner.T) / 2), 0, None)).sum()
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * tr_covmean)


def frechet_distance(real, synthetic) -> float:
    """Frechet distance between Gaussians fitted to two feature sets (FID on a given feature space)."""
    r, s = _features(real, "real features"), _features(synthetic, "synthetic features")
    _same_dim(r, s)
    return frechet_distance_from_stats(*gaussian_stats(r), *gaussian_stats(s))


def _polynomial_kernel(x: np.ndarray, y: np.ndarray, degree: int, gamma: float, coef0: float) -> np.ndarray:
    return (gamma * (x @ y.T) + coef0) ** degree


def kernel_inception_distance(real, synthetic, subsets: int = 100, subset_size: int = 1000,
                              degree: int = 3, gamma: float | None = None, coef0: float = 1.0,
                              seed: int = 0) -> dict[str, float]:
    """KID: unbiased MMD^2 with the kernel (x.y / D + 1)^3, averaged over random subsets.

    Each subset draws ``min(subset_size, N_real, N_synthetic)`` samples without replacement from
    each set (Binkowski et al. 2018). Returns ``{"kid_mean", "kid_std", "kid_subset_size"}``.
    """
    r, s = _features(real, "real features"), _features(synthetic, "synthetic features")
    _same_dim(r, s)
    m = min(subset_size, len(r), len(s))
    gamma = 1.0 / r.shape[1] if gamma is None else gamma
    rng = np.random.default_rng(seed)
    values = np.empty(subsets)
    for i in range(subsets):
        x = r[rng.choice(len(r), m, replace=False)]
        y = s[rng.choice(len(s), m, replace=False)]
        kxx = _polynomial_kernel(x, x, degree, gamma, coef0)
        kyy = _polynomial_kernel(y, y, degree, gamma, coef0)
        kxy = _polynomial_kernel(x, y, degree, gamma, coef0)
        # unbiased: the diagonals (a sample with itself) are left out of the within-set terms
        values[i] = ((kxx.sum() - np.trace(kxx)) / (m * (m - 1))
                     + (kyy.sum() - np.trace(kyy)) / (m * (m - 1))
                     - 2.0 * kxy.mean())
    return {"kid_mean": float(values.mean()), "kid_std": float(values.std()), "kid_subset_size": m}


def _distances(a: np.ndarray, b: np.ndarray, b_sq: np.ndarray) -> np.ndarray:
    d2 = (a * a).sum(1)[:, None] + b_sq[None, :] - 2.0 * (a @ b.T)
    return np.sqrt(np.clip(d2, 0, None))


def _knn_radii(x: np.ndarray, k: int, chunk: int) -> np.ndarray:
    """Distance of each row to its k-th nearest other row (rows in chunks: memory chunk x N)."""
    x_sq = (x * x).sum(1)
    radii = np.empty(len(x))
    for i in range(0, len(x), chunk):
        d = _distances(x[i:i + chunk], x, x_sq)
        # the point itself sits at sorted position 0, so position k is its k-th neighbour
        radii[i:i + chunk] = np.partition(d, k, axis=1)[:, k]
    return radii


def precision_recall_density_coverage(real, synthetic, k: int = 5, chunk: int = 2048) -> dict[str, float]:
    """Precision, recall, density and coverage with k nearest neighbours (Naeem et al. 2020).

    The real manifold is the union of balls around each real sample with radius its distance to
    its k-th nearest real neighbour (likewise for the synthetic manifold, used only by recall).
    precision: share of synthetic samples inside the real manifold;
    recall: share of real samples inside the synthetic manifold;
    density: mean number of real balls containing a synthetic sample, divided by k;
    coverage: share of real samples whose ball contains at least one synthetic sample.
    Distances are computed in blocks of ``chunk`` rows, so memory stays chunk x N.
    """
    r, s = _features(real, "real features"), _features(synthetic, "synthetic features")
    _same_dim(r, s)
    if k >= min(len(r), len(s)):
        raise ValueError(f"k={k} needs more than k samples in each set (real {len(r)}, synthetic {len(s)})")
    real_radii = _knn_radii(r, k, chunk)
    fake_radii = _knn_radii(s, k, chunk)
    r_sq = (r * r).sum(1)
    in_real_manifold = np.empty(len(s), dtype=bool)
    balls_containing = np.empty(len(s))
    real_covered = np.zeros(len(r), dtype=bool)      # some synthetic sample within the real ball
    real_in_fake = np.zeros(len(r), dtype=bool)      # the real sample within some synthetic ball
    for i in range(0, len(s), chunk):
        d = _distances(s[i:i + chunk], r, r_sq)      # (chunk, N_real)
        inside = d <= real_radii[None, :]
        in_real_manifold[i:i + chunk] = inside.any(axis=1)
        balls_containing[i:i + chunk] = inside.sum(axis=1)
        real_covered |= inside.any(axis=0)
        real_in_fake |= (d <= fake_radii[i:i + chunk, None]).any(axis=0)
    return {
        "precision": float(in_real_manifold.mean()),
        "recall": float(real_in_fake.mean()),
        "density": float(balls_containing.mean() / k),
        "coverage": float(real_covered.mean()),
    }
