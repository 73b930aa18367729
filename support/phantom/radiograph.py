"""From line integrals to a displayed radiograph: Beer-Lambert transmission, scatter, detector
blur and quantum noise, then the log transform and the film-like processing of a digital CXR.

Display convention: high attenuation is bright (bone, heart), air is dark.
"""

from __future__ import annotations

import cv2
import numpy as np


def _blur(image: np.ndarray, sigma_px: float) -> np.ndarray:
    if sigma_px <= 0.05:
        return image
    return cv2.GaussianBlur(image, (0, 0), sigmaX=sigma_px, sigmaY=sigma_px, borderType=cv2.BORDER_REFLECT)


def _low_pass(image: np.ndarray, sigma_px: float) -> np.ndarray:
    """A wide Gaussian computed on a reduced grid (scatter and unsharp masks are smooth)."""
    n = image.shape[0]
    factor = max(1, int(sigma_px // 3))
    if factor == 1:
        return _blur(image, sigma_px)
    small = cv2.resize(image, (max(n // factor, 4), max(n // factor, 4)), interpolation=cv2.INTER_AREA)
    small = _blur(small, sigma_px / factor)
    return cv2.resize(small, (n, n), interpolation=cv2.INTER_LINEAR)


def expose(line_integral: np.ndarray, pixel_mm: float, rng: np.random.Generator, *,
           photons_per_mm2: float, scatter: float, blur_mm: float = 0.45) -> np.ndarray:
    """Detected log-attenuation ``-log(I / I0)`` of one exposure.

    Primary transmission ``exp(-L)``; scatter adds a broad halo proportional to the local
    transmitted signal (more for AP without a grid); the detector blurs; the photon count per
    pixel (area x fluence x transmission) sets the Poisson noise, so dense regions are noisier.
    """
    primary = np.exp(-line_integral.astype(np.float32))
    halo = _low_pass(primary, 60.0 / pixel_mm)
    signal = (primary + scatter * halo) / (1.0 + scatter)
    signal = _blur(signal, blur_mm / pixel_mm)
    counts = photons_per_mm2 * pixel_mm * pixel_mm
    noisy = signal + np.sqrt(np.maximum(signal, 1e-7) / counts) * rng.standard_normal(signal.shape, dtype=np.float32)
    return -np.log(np.maximum(noisy, 1e-5))


def display(log_image: np.ndarray, pixel_mm: float, *, reference: np.ndarray | None = None,
            unsharp: float = 1.2, gamma: float = 1.0) -> np.ndarray:
    """Log image -> uint8 as a digital CXR shows it: large-scale equalisation (unsharp mask at
    ~25 mm), a window from the dark air to the dense abdomen, and a gentle sigmoid tone curve.

    ``reference`` (bool mask) chooses the pixels the window is computed from, so that metal
    (pacemaker, wires) saturates instead of darkening the whole film.
    """
    p = log_image.astype(np.float32)
    base = _low_pass(p, 25.0 / pixel_mm)
    p = p + unsharp * (p - base) * 0.5
    # Window from the body (outside air saturates black): the most lucent lung sits in the
    # dark greys, the dense abdomen and spine near white.
    body = p > 0.25 * float(p.max())
    if reference is not None:
        body &= reference
    sample = p[body] if body.any() else p.ravel()
    lo, hi = np.percentile(sample, [0.5, 99.8])
    lo = 0.55 * lo
    y = np.clip((p - lo) / max(hi - lo, 1e-3), 0.0, 1.0) ** gamma
    # sigmoid tone curve normalised to [0, 1]
    k = 3.2
    y = (1.0 / (1.0 + np.exp(-k * (y - 0.5))) - 1.0 / (1.0 + np.exp(k / 2))) / (
        1.0 / (1.0 + np.exp(-k / 2)) - 1.0 / (1.0 + np.exp(k / 2)))
    return np.clip(np.rint(y * 255.0), 0, 255).astype(np.uint8)
