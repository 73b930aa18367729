"""MS-SSIM diversity of an image set: the mean MS-SSIM of random pairs of different images.

Lower means more diverse. The value means little alone: show it beside the same measure on real
images of the same size (a generator that collapses scores well above real; one that copies
training images can match it, which the privacy audit checks).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from .images import as_image_set

# Wang et al. 2003 weights of the five scales (finest first), torchmetrics' defaults.
MS_SSIM_BETAS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)


def gaussian_window(kernel_size: int) -> dict:
    """torchmetrics' SSIM arguments for a Gaussian window ``kernel_size`` pixels wide. With its
    Gaussian window torchmetrics ignores ``kernel_size`` and sizes the window from ``sigma``
    (2 int(3.5 sigma + 0.5) + 1 pixels), so sigma is scaled with the window: 1.5 at 11 pixels, the
    standard SSIM window (Wang et al. 2004)."""
    sigma = 1.5 * kernel_size / 11
    if kernel_size % 2 == 0 or 2 * int(3.5 * sigma + 0.5) + 1 != kernel_size:
        raise ValueError(f"SSIM window {kernel_size}: expected an odd size from 3 to 43")
    return {"kernel_size": kernel_size, "sigma": sigma}


def ms_ssim_settings(size: int, kernel_size: int = 11) -> tuple[int, tuple[float, ...]]:
    """Kernel size and scale weights that fit a ``size``-pixel image.

    Five scales with an 11-pixel Gaussian need images larger than 160 pixels. For smaller images
    the coarsest scales are dropped first (keeping the standard kernel while the coarsest scale
    still spans it), then the kernel shrinks; the remaining weights are renormalised to sum to 1.
    The conditions are those torchmetrics checks: side >= 2**scales and
    side // max(1, scales - 1)**2 > kernel - 1, plus the coarsest scale at least one kernel wide.
    """
    for kernel in (k for k in (kernel_size, 7, 5, 3) if k <= kernel_size):
        for scales in range(len(MS_SSIM_BETAS), 1, -1):
            coarsest = size // 2 ** (scales - 1)
            if size >= 2 ** scales and size // max(1, scales - 1) ** 2 > kernel - 1 and coarsest >= kernel:
                betas = np.asarray(MS_SSIM_BETAS[:scales])
                return kernel, tuple(float(b) for b in betas / betas.sum())
    raise ValueError(f"images of {size} pixels are too small for MS-SSIM (at least 2 scales of a 3-pixel kernel)")


def ms_ssim_pairs(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """MS-SSIM of each pair (a[i], b[i]) of float images (N, 1, H, W) in [0, 1] -> (N,)."""
    from torchmetrics.functional.image import multiscale_structural_similarity_index_measure

    kernel, betas = ms_ssim_settings(min(a.shape[-2:]))
    return multiscale_structural_similarity_index_measure(
        a.float(), b.float(), **gaussian_window(kernel), betas=betas, data_range=1.0, reduction="none")


def ms_ssim_diversity(images: Any, n_pairs: int = 500, seed: int = 0, size: int | None = None,
                      batch_size: int = 64, name: str = "images") -> dict[str, float]:
    """Mean (and std) MS-SSIM over ``n_pairs`` random pairs of distinct images of a set.

    ``size`` resizes every image to a square first (use the same size for the real comparison set).
    Returns ``{"ms_ssim_mean", "ms_ssim_std", "ms_ssim_pairs"}``.
    """
    image_set = as_image_set(images, name=name)
    n = len(image_set)
    if n < 2:
        raise ValueError(f"{name}: MS-SSIM diversity needs at least 2 images, got {n}")
    rng = np.random.default_rng(seed)
    first = rng.integers(0, n, n_pairs)
    second = (first + rng.integers(1, n, n_pairs)) % n  # never the same image
    values = []
    for start in range(0, n_pairs, batch_size):
        i, j = first[start:start + batch_size], second[start:start + batch_size]
        a = image_set.load(i.tolist(), size=size)
        b = image_set.load(j.tolist(), size=size)
        values.append(ms_ssim_pairs(a, b).cpu().numpy())
    v = np.concatenate(values)
    return {"ms_ssim_mean": float(v.mean()), "ms_ssim_std": float(v.std()), "ms_ssim_pairs": int(n_pairs)}
