"""The source domain the small base model is pretrained in: the same phantom, shown through another
detector's response and another contrast curve.

Stable Diffusion reads language before it ever sees a radiograph, and LoRA adapts what it knows
to a new look. The small default base must stand in for both halves: it is pretrained on full
captions (findings included) in a domain that looks different from the target radiographs, so
"pleural effusion" already means something to it while the target's appearance is new.

:class:`SourceDomain` maps a displayed image in [0, 1] to its source-domain rendering: a wider
detector blur (the line-spread of a thicker scintillator), a flatter tone curve with a lifted
black level (no film-like equalisation: a washed-out look) and a power-law gamma. The mapping is
deterministic, so the source set is a fixed dataset like any other.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import numpy as np

from support.params import Check, Checked


@dataclass
class SourceDomain(Checked):
    """Another detector response and contrast curve; ``identity()`` leaves images as they are."""

    title = "source domain parameters"

    blur: float = 0.015          # Gaussian sigma as a fraction of the image side (1 px at 64 px)
    gamma: float = 0.5           # y ** gamma: below 1 lifts the dark lungs towards the mediastinum
    black: float = 0.25          # the output's black level: air is grey, not black
    white: float = 0.9           # the output's white level

    def checks(self) -> Iterable[Check]:
        yield self.blur >= 0, "blur", "a non-negative fraction of the image side"
        yield self.gamma > 0, "gamma", "positive"
        yield 0.0 <= self.black < self.white <= 1.0, "black", "0 <= black < white <= 1"

    def is_identity(self) -> bool:
        return self.blur == 0 and self.gamma == 1 and self.black == 0 and self.white == 1

    def __call__(self, image: np.ndarray) -> np.ndarray:
        """``image`` (H, W) float in [0, 1] as the source domain's detector would show it."""
        y = np.asarray(image, dtype=np.float32)
        sigma = self.blur * max(y.shape[-2:])
        if sigma > 0.05:
            import cv2

            y = cv2.GaussianBlur(y, (0, 0), sigmaX=sigma, sigmaY=sigma, borderType=cv2.BORDER_REFLECT)
        y = np.clip(y, 0.0, 1.0) ** self.gamma
        return (self.black + (self.white - self.black) * y).astype(np.float32)

    def undo(self, image: np.ndarray) -> np.ndarray:
        """The tone curve inverted (levels, then gamma) on images (..., H, W) in [0, 1]: a
        source-domain image shown in the target's tones, so a target-trained classifier can
        read it. The blur stays (it is small beside the findings' scale)."""
        x = (np.asarray(image, dtype=np.float32) - self.black) / (self.white - self.black)
        return (np.clip(x, 0.0, 1.0) ** (1.0 / self.gamma)).astype(np.float32)


def identity() -> SourceDomain:
    return SourceDomain(blur=0.0, gamma=1.0, black=0.0, white=1.0)
