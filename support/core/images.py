"""Image tensors as models and pictures take them: one image to float (1, H, W) in [0, 1], batch
resizing, one grid maker, and lossless PNG files written atomically.

Images here are grayscale floats in [0, 1] ((N, H, W) or (N, 1, H, W), numpy or torch);
conversion to 8 bits is :func:`support.data.images.to_uint8`.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from support.data.images import png_bytes, to_uint8
from support.io import write_bytes_atomic

# A float image may overshoot [0, 1] by resampling; beyond this it is a different convention.
_RANGE_TOLERANCE = 1e-3


def to_unit_float(image: Any, where: str = "image") -> torch.Tensor:
    """One image -> float32 tensor (1, H, W) in [0, 1].

    Accepts (H, W), (1, H, W) or (3, H, W) (RGB is reduced to luminance). uint8 is divided by 255;
    floats must already lie in [0, 1]: an image scaled to [-1, 1] is an error rather than
    silently mis-scaled.
    """
    t = torch.as_tensor(np.asarray(image) if not isinstance(image, torch.Tensor) else image)
    if t.dtype == torch.uint8:
        t = t.float() / 255.0
    elif t.dtype == torch.bool or not torch.is_floating_point(t):
        raise TypeError(f"{where}: expected uint8 or float pixels, got {t.dtype}")
    else:
        t = t.float()
        if t.numel():
            lo, hi = float(t.min()), float(t.max())
            if lo < -_RANGE_TOLERANCE or hi > 1 + _RANGE_TOLERANCE:
                raise ValueError(f"{where}: float pixels must lie in [0, 1], found [{lo:.3g}, {hi:.3g}]")
        t = t.clamp(0.0, 1.0)
    if t.ndim == 2:
        t = t.unsqueeze(0)
    if t.ndim != 3 or t.shape[0] not in (1, 3):
        raise ValueError(f"{where}: expected (H, W), (1, H, W) or (3, H, W), got shape {tuple(t.shape)}")
    if t.shape[0] == 3:  # RGB renderings of grayscale radiographs: luminance
        t = (0.299 * t[0] + 0.587 * t[1] + 0.114 * t[2]).unsqueeze(0)
    return t


def resize(images: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear, antialiased resize of a float batch (N, C, H, W) to (size, size)."""
    if images.shape[-2:] == (size, size):
        return images
    return F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False, antialias=True)


def _as_stack(images) -> np.ndarray:
    """(N, H, W) float64 from (N, H, W) or (N, 1, H, W), numpy or torch."""
    arr = images.detach().cpu().double().numpy() if hasattr(images, "detach") else np.asarray(images, np.float64)
    if arr.ndim == 4 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim != 3:
        raise ValueError(f"expected grayscale images (N, H, W) or (N, 1, H, W), got shape {arr.shape}")
    return arr


def image_grid(images, ncol: int | None = None, gutter: int = 2) -> np.ndarray:
    """One uint8 mosaic of ``images``, ``ncol`` a row (default: a near-square grid), separated
    and framed by white ``gutter``-pixel lines."""
    arr = _as_stack(images)
    n, h, w = arr.shape
    ncol = max(1, min(n, ncol or int(math.ceil(math.sqrt(n)))))
    nrow = int(math.ceil(n / ncol))
    grid = np.ones((nrow * (h + gutter) + gutter, ncol * (w + gutter) + gutter))
    for i, im in enumerate(arr):
        r, c = divmod(i, ncol)
        top, left = gutter + r * (h + gutter), gutter + c * (w + gutter)
        grid[top:top + h, left:left + w] = im
    return to_uint8(grid)


def save_grid(images, path: str | os.PathLike, ncol: int | None = None) -> Path:
    """:func:`image_grid` of ``images`` written as a PNG, atomically."""
    write_bytes_atomic(path, png_bytes(image_grid(images, ncol)))
    return Path(path)


def save_pngs(images, directory: str | os.PathLike) -> list[Path]:
    """Each image as a lossless 8-bit PNG ``000.png``, ``001.png``, ... (atomic)."""
    paths = []
    for i, im in enumerate(to_uint8(_as_stack(images))):
        path = Path(directory) / f"{i:03d}.png"
        write_bytes_atomic(path, png_bytes(im), durable=False)
        paths.append(path)
    return paths
