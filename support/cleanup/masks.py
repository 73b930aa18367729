"""From detected boxes to the removal mask: polygons (or SAM masks), growth and dilation."""

from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np

from support.cleanup.detect import TextBox


def _disk(radius: int) -> np.ndarray:
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))


def grow(mask: np.ndarray, pixels: int) -> np.ndarray:
    """``mask`` grown by ``pixels`` in every direction (a round offset of its outline)."""
    if pixels <= 0 or not mask.any():
        return mask.astype(bool)
    return cv2.dilate(mask.astype(np.uint8), _disk(int(pixels))).astype(bool)


def polygon_mask(boxes: Sequence[TextBox], shape: tuple[int, int], grow_px: int = 4) -> np.ndarray:
    """The union of the boxes' polygons, filled and grown by ``grow_px``: bool (H, W)."""
    mask = np.zeros(shape[:2], np.uint8)
    for box in boxes:
        pts = np.rint(np.asarray(box.polygon, np.float32)).astype(np.int32).reshape(-1, 1, 2)
        cv2.fillPoly(mask, [pts], 1)
    return grow(mask, grow_px)


def box_region(box: TextBox, shape: tuple[int, int], margin: int) -> np.ndarray:
    """bool (H, W): the axis-aligned box grown by ``margin`` pixels."""
    h, w = shape[:2]
    region = np.zeros((h, w), bool)
    x0, y0 = max(0, int(np.floor(box.x0)) - margin), max(0, int(np.floor(box.y0)) - margin)
    x1, y1 = min(w, int(np.ceil(box.x1)) + margin), min(h, int(np.ceil(box.y1)) + margin)
    region[y0:y1, x0:x1] = True
    return region


def sam_mask(refiner, image8: np.ndarray, boxes: Sequence[TextBox], margin: int = 4,
             grow_px: int = 4) -> tuple[np.ndarray, int]:
    """Union of SAM's masks for the boxes, each kept inside its box grown by ``margin``.

    A box for which SAM returns nothing (a prompt it cannot segment) falls back to its polygon
    grown by ``grow_px``, so a detection is never dropped. Returns the mask and that fallback count.
    """
    shape = image8.shape[:2]
    union = np.zeros(shape, bool)
    if not boxes:
        return union, 0
    masks = refiner.box_masks(image8, [[b.x0, b.y0, b.x1, b.y1] for b in boxes])
    fallbacks = 0
    for box, m in zip(boxes, masks):
        kept = m & box_region(box, shape, margin)
        if not kept.any():
            kept = polygon_mask([box], shape, grow_px)
            fallbacks += 1
        union |= kept
    return union, fallbacks


def dilate(mask: np.ndarray, kernel: int = 5, iterations: int = 2) -> np.ndarray:
    """The published dilation: a ``kernel`` x ``kernel`` square, ``iterations`` times."""
    if iterations <= 0 or kernel <= 1 or not mask.any():
        return mask.astype(bool)
    return cv2.dilate(mask.astype(np.uint8), np.ones((kernel, kernel), np.uint8), iterations=iterations).astype(bool)
