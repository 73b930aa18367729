"""Radiograph arrays as they come (8- or 16-bit grayscale, RGB) and the views each stage needs.

Every stage works on a view of the input and only the final composite touches the input's own
pixels, so whatever lies outside the removal mask comes back bit for bit.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from support.data.images import ImageReadError, opened_image

SUPPORTED_DTYPES = (np.uint8, np.uint16)


def check_image(image: np.ndarray, where: str = "image") -> np.ndarray:
    """The array itself when it is uint8/uint16 (H, W) or (H, W, 3); a clear error otherwise."""
    arr = np.asarray(image)
    if arr.dtype not in SUPPORTED_DTYPES:
        raise ValueError(f"{where}: dtype {arr.dtype}, expected uint8 or uint16 pixels")
    if not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] == 3)):
        raise ValueError(f"{where}: shape {arr.shape}, expected (H, W) grayscale or (H, W, 3) RGB")
    if min(arr.shape[:2]) < 8:
        raise ValueError(f"{where}: {arr.shape[1]}x{arr.shape[0]} pixels is too small to clean (< 8)")
    return arr


def max_value(image: np.ndarray) -> int:
    return int(np.iinfo(image.dtype).max)


def luminance(image: np.ndarray) -> np.ndarray:
    """(H, W) float32 luminance (ITU-R 601, as Pillow's "L") in the input's own units."""
    arr = np.asarray(image)
    if arr.ndim == 2:
        return arr.astype(np.float32)
    return arr[..., 0] * np.float32(0.299) + arr[..., 1] * np.float32(0.587) + arr[..., 2] * np.float32(0.114)


def gray8(image: np.ndarray) -> np.ndarray:
    """uint8 (H, W): what the detectors see and what the MIMIC-CXR-JPG layout stores.

    8-bit luminance as is; 16-bit stretched over its own range (a 16-bit film rarely spans
    0..65535, and burned-in text sits at its top).
    """
    lum = luminance(image)
    if image.dtype == np.uint8:
        return np.clip(np.rint(lum), 0, 255).astype(np.uint8)
    lo, hi = float(lum.min()), float(lum.max())
    if hi <= lo:
        return np.zeros(lum.shape, np.uint8)
    return np.clip(np.rint((lum - lo) * (255.0 / (hi - lo))), 0, 255).astype(np.uint8)


def value_span(image: np.ndarray) -> tuple[float, float]:
    """The values that map to 0 and 1 for the diffusion models: 0..255 for 8-bit; for 16-bit the
    image's own range (a 12-bit film in a 16-bit container would otherwise look black)."""
    if image.dtype == np.uint8:
        return 0.0, 255.0
    lo, hi = float(image.min()), float(image.max())
    return (lo, hi) if hi > lo else (0.0, float(max_value(image)))


def to_unit(image: np.ndarray, span: tuple[float, float] | None = None) -> np.ndarray:
    """uint8/uint16 -> float32 in [0, 1] over ``span`` (default :func:`value_span`), same shape."""
    lo, hi = span or value_span(image)
    return (np.asarray(image, dtype=np.float32) - np.float32(lo)) / np.float32(hi - lo)


def from_unit(values: np.ndarray, like: np.ndarray, span: tuple[float, float] | None = None) -> np.ndarray:
    """float in [0, 1] over ``span`` -> the dtype and channel layout of ``like`` (gray <-> RGB)."""
    v = np.clip(np.asarray(values, dtype=np.float32), 0.0, 1.0)   # resampling may overshoot
    if like.ndim == 2 and v.ndim == 3:
        v = luminance(v)
    elif like.ndim == 3 and v.ndim == 2:
        v = np.repeat(v[..., None], 3, axis=2)
    lo, hi = span or value_span(like)
    return np.clip(np.rint(v * np.float32(hi - lo) + np.float32(lo)), 0, max_value(like)).astype(like.dtype)


def composite(original: np.ndarray, filled: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``original`` with the pixels under ``mask`` taken from ``filled``; all others untouched."""
    if filled.shape != original.shape or filled.dtype != original.dtype:
        raise ValueError(f"inpainted image {filled.dtype} {filled.shape} does not match the input "
                         f"{original.dtype} {original.shape}")
    out = original.copy()
    out[mask] = filled[mask]
    return out


def read_pixels(path: str | os.PathLike) -> np.ndarray:
    """An image file -> its own pixels: uint8/uint16 grayscale or uint8 RGB (alpha, palette dropped).

    Unlike :func:`support.data.images.read_image` it keeps the bit depth, so a cleaned 16-bit
    film can be compared with its source. Failures are :class:`ImageReadError` naming the file.
    """
    path = Path(path)
    with opened_image(path) as im:
        if im.mode in ("I;16", "I;16B", "I;16L", "I;16N"):
            return np.asarray(im).astype(np.uint16)
        if im.mode == "I":
            arr = np.asarray(im)
            if arr.min() < 0 or arr.max() > 65535:
                raise ImageReadError(path, "32-bit integer values outside 0..65535")
            return arr.astype(np.uint16)
        if im.mode == "L":
            return np.asarray(im, dtype=np.uint8).copy()
        if im.mode in ("RGB", "RGBA", "P", "CMYK", "YCbCr", "LA", "1"):
            rgb = im.convert("RGB")
            arr = np.asarray(rgb, dtype=np.uint8)
            if im.mode in ("LA", "1") or (arr[..., 0] == arr[..., 1]).all() and (arr[..., 1] == arr[..., 2]).all():
                return arr[..., 0].copy()   # gray stored as colour: keep one channel
            return arr.copy()
        raise ImageReadError(path, f"pixel mode {im.mode!r} is not a radiograph format this step reads")
