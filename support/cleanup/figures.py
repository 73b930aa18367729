"""Before/after figures of text removal."""

from __future__ import annotations

from typing import Sequence

import matplotlib.pyplot as plt
import numpy as np


def plot_before_after(images: Sequence[np.ndarray], results: Sequence, clean_images: Sequence[np.ndarray] | None = None):
    """One row per image: the input, the removal mask over it, the cleaned image (and the clean twin)."""
    cols = 4 if clean_images is not None else 3
    fig, axes = plt.subplots(len(results), cols, figsize=(2.8 * cols, 2.9 * len(results)), squeeze=False)
    for i, (row, res) in enumerate(zip(axes, results)):
        img = np.asarray(images[i], dtype=np.float32)
        vmax = float(img.max()) if img.max() > 1 else 1.0
        row[0].imshow(img, cmap="gray", vmin=0, vmax=vmax)
        row[0].set_title("input", fontsize=9)
        row[1].imshow(img, cmap="gray", vmin=0, vmax=vmax)
        row[1].imshow(np.ma.masked_where(~res.mask, res.mask), cmap="autumn", alpha=0.6)
        row[1].set_title(f"removal mask ({len(res.boxes)} boxes)", fontsize=9)
        row[2].imshow(np.asarray(res.image, dtype=np.float32), cmap="gray", vmin=0, vmax=vmax)
        row[2].set_title(f"cleaned ({res.backend})", fontsize=9)
        if clean_images is not None:
            row[3].imshow(np.asarray(clean_images[i], dtype=np.float32), cmap="gray", vmin=0, vmax=vmax)
            row[3].set_title("clean twin", fontsize=9)
        for ax in row:
            ax.set_xticks([]), ax.set_yticks([])
    fig.tight_layout()
    return fig
