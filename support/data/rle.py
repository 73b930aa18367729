"""SIIM-ACR run-length encoding of masks: column-major, each run as (gap since last run end, length).

``EncodedPixels`` of ``-1`` (or empty) is an image without a mask.
"""

from __future__ import annotations

import numpy as np


def rle_encode(mask: np.ndarray) -> str:
    """Binary mask (H, W) -> SIIM relative RLE string; "-1" for an empty mask."""
    flat = np.asarray(mask, dtype=bool).T.reshape(-1)  # column-major, as SIIM's mask2rle
    if not flat.any():
        return "-1"
    padded = np.concatenate([[False], flat, [False]])
    edges = np.flatnonzero(padded[1:] != padded[:-1])
    starts, ends = edges[0::2], edges[1::2]
    gaps = starts - np.concatenate([[0], ends[:-1]])
    return " ".join(f"{g} {l}" for g, l in zip(gaps, ends - starts))


def rle_decode(rle: str, width: int, height: int) -> np.ndarray:
    """SIIM relative RLE -> bool mask (height, width). Raises ValueError on malformed input."""
    mask = np.zeros(width * height, dtype=bool)
    text = (rle or "").strip()
    if text in ("", "-1"):
        return mask.reshape(width, height).T
    try:
        nums = np.array([int(t) for t in text.split()], dtype=np.int64)
    except ValueError:
        raise ValueError(f"RLE: expected integers, got {text[:40]!r}") from None
    if nums.size % 2 or (nums < 0).any():
        raise ValueError("RLE: expected non-negative (gap, length) pairs")
    pos = 0
    for gap, length in nums.reshape(-1, 2):
        start = pos + gap
        if start + length > mask.size:
            raise ValueError(f"RLE: run past the end of a {width}x{height} mask")
        mask[start:start + length] = True
        pos = start + length
    return mask.reshape(width, height).T
