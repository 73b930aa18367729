"""Run-length encoding of masks, column-major (top to bottom, then left to right), in the two
conventions of SIIM-ACR's label files:

- ``relative``: each run is (gap since the end of the previous run, length), counting from 0.
  The original ``train-rle.csv`` and the organisers' ``mask_functions.py`` use it, and so do the
  record tables of this project.
- ``absolute``: each run is (start, length) with pixels numbered from 1, Kaggle's standard RLE,
  used by the stage-2 ``stage_2_train.csv``.

Decoding in the wrong convention fails instead of giving a shifted mask: relative runs read as
absolute go back over earlier runs (the starts are small gaps), absolute runs read as relative run
past the end of the mask (the starts add up). ``EncodedPixels`` of ``-1`` (or empty) is an image
without a mask.
"""

from __future__ import annotations

import numpy as np

CONVENTIONS = ("relative", "absolute")


def rle_encode(mask: np.ndarray) -> str:
    """Binary mask (H, W) -> relative RLE string; "-1" for an empty mask."""
    flat = np.asarray(mask, dtype=bool).T.reshape(-1)  # column-major, as SIIM's mask2rle
    if not flat.any():
        return "-1"
    padded = np.concatenate([[False], flat, [False]])
    edges = np.flatnonzero(padded[1:] != padded[:-1])
    starts, ends = edges[0::2], edges[1::2]
    gaps = starts - np.concatenate([[0], ends[:-1]])
    return " ".join(f"{g} {l}" for g, l in zip(gaps, ends - starts))


def _runs(text: str) -> np.ndarray:
    """The (first, length) pairs of an RLE string as an (N, 2) array."""
    try:
        nums = np.array([int(t) for t in text.split()], dtype=np.int64)
    except (ValueError, OverflowError):   # OverflowError: a number past int64 ("99999999999999999999")
        raise ValueError(f"RLE: expected integers, got {text[:40]!r}") from None
    if nums.size % 2 or (nums < 0).any():
        raise ValueError("RLE: expected non-negative (start or gap, length) pairs")
    return nums.reshape(-1, 2)


def _starts(runs: np.ndarray, convention: str) -> np.ndarray:
    """0-based first pixel of each run."""
    firsts, lengths = runs[:, 0], runs[:, 1]
    if convention == "relative":
        return np.cumsum(firsts) + np.concatenate([[0], np.cumsum(lengths)[:-1]])
    if (firsts < 1).any():
        raise ValueError("RLE (absolute): a run starts at pixel 0; expected pixels numbered from 1")
    return firsts - 1


def rle_decode(rle: str, width: int, height: int, convention: str = "relative") -> np.ndarray:
    """RLE -> bool mask (height, width). Raises ValueError on malformed input: a run past the end
    of the mask, or (absolute) runs out of order or overlapping."""
    if convention not in CONVENTIONS:
        raise ValueError(f"RLE convention {convention!r}: expected one of {list(CONVENTIONS)}")
    mask = np.zeros(width * height, dtype=bool)
    text = (rle or "").strip()
    if text in ("", "-1"):
        return mask.reshape(width, height).T
    runs = _runs(text)
    if runs.max() > mask.size:   # past the end whatever the convention; also keeps the sums below int64
        raise ValueError(f"RLE ({convention}): {runs.max()} is past the end of a {width}x{height} mask")
    starts = _starts(runs, convention)
    ends = starts + runs[:, 1]
    if ends.max() > mask.size:
        run = int(np.argmax(ends > mask.size))
        raise ValueError(f"RLE ({convention}): run {run + 1} ends at pixel {ends[run]}, past the end of "
                         f"a {width}x{height} mask")
    if (starts[1:] < ends[:-1]).any():
        run = int(np.argmax(starts[1:] < ends[:-1])) + 1
        raise ValueError(f"RLE ({convention}): run {run + 1} starts at pixel {starts[run]}, before run "
                         f"{run} ends at {ends[run - 1]}; expected sorted, non-overlapping runs")
    for start, end in zip(starts, ends):
        mask[start:end] = True
    return mask.reshape(width, height).T
