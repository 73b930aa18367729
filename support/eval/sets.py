"""The image sets one evaluation compares: the real splits and every synthetic set of a run."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from support.data.adapters import load_dataset
from support.data.datasets import ImageDataset
from support.data.schema import CHEXPERT_LABELS, FRONTAL_VIEWS


def discover_sets(run_dir: str | os.PathLike, extra: Sequence[str] = ()) -> dict[str, Path]:
    """Synthetic (or cleaned) datasets in the run's ``samples/`` plus any given by path, by name."""
    found = {}
    samples = Path(run_dir) / "samples"
    if samples.is_dir():
        for info in sorted(samples.glob("*/dataset.json")):
            found[info.parent.name] = info.parent
    for path in extra:
        path = Path(path).expanduser().resolve()
        if not (path / "dataset.json").is_file() and not (path / "mimic-cxr-2.0.0-metadata.csv").is_file():
            raise FileNotFoundError(f"{path}: not a dataset in the MIMIC-CXR-JPG layout (no metadata CSV)")
        found[path.name] = path
    return found


def frontal_images(records: pd.DataFrame, size: int, split: str | None = None,
                   views: Sequence[str] = FRONTAL_VIEWS) -> ImageDataset:
    """Frontal images of ``split`` (all splits when None) as {"image" (1,S,S) in [0,1], "labels"}."""
    chosen = records[records["view"].isin(views)]
    if split is not None:
        chosen = chosen[chosen["split"] == split]
    return ImageDataset(chosen.reset_index(drop=True), size=size, value_range=(0.0, 1.0))


def load_set(root: str | os.PathLike, size: int) -> tuple[ImageDataset, pd.DataFrame | None]:
    """A synthetic set's images, and the finding labels it was asked for when it records any."""
    records, _ = load_dataset("mimic-cxr-jpg", root, reports="auto")
    data = frontal_images(records, size)
    labels = data.records[list(CHEXPERT_LABELS)]
    requested = labels if np.isfinite(labels.to_numpy(dtype=float)).any() else None
    return data, requested
