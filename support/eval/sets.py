"""The image sets one evaluation compares: the real splits and every synthetic set of a run."""

from __future__ import annotations

import hashlib
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


def choose_sources(sets: dict, wanted: Sequence[str] = (), parameter: str = "sources") -> dict:
    """The sets a pretraining notebook uses: those named in ``wanted``, or, when it is empty, every set
    but 05's cleaned copies (near-duplicates of their originals). A name that is not among ``sets`` is
    an error naming what there is: a typo would otherwise pretrain on nothing synthetic, silently."""
    wanted = list(wanted)
    unknown = [name for name in wanted if name not in sets]
    if unknown:
        raise ValueError(f"{parameter}: no set named {unknown} in this run; expected some of {sorted(sets)}")
    return {name: value for name, value in sets.items()
            if (name in wanted if wanted else not name.endswith("-cleaned"))}


def frontal_images(records: pd.DataFrame, size: int, split: str | None = None,
                   views: Sequence[str] = FRONTAL_VIEWS) -> ImageDataset:
    """Frontal images of ``split`` (all splits when None) as {"image" (1,S,S) in [0,1], "labels"}."""
    chosen = records[records["view"].isin(views)]
    if split is not None:
        chosen = chosen[chosen["split"] == split]
    return ImageDataset(chosen.reset_index(drop=True), size=size, value_range=(0.0, 1.0))


def real_reference_encoder(records: pd.DataFrame, cache_root: str | os.PathLike, config=None,
                           fingerprint: str | None = None, views: Sequence[str] = FRONTAL_VIEWS):
    """The reference encoder/classifier of a run: trained on the real frontal (or ``views``) training
    split, held-out AUROC on the validate split (or on held-out patients when there is none), cached
    under ``cache_root`` by dataset fingerprint and config, so every notebook that asks with the
    same config (01 for finding rates, 06 for the evaluation) trains it once. ``fingerprint`` names
    the dataset; other ``views`` are another training set, so it is kept apart from the frontal one."""
    from support.eval.reference_encoder import ReferenceEncoderConfig, reference_encoder_for

    config = config or ReferenceEncoderConfig()
    views = tuple(views)
    train = frontal_images(records, config.image_size, "train", views)
    what = "frontal" if views == tuple(FRONTAL_VIEWS) else "/".join(views)
    if len(train) < 4:
        raise ValueError(f"reference encoder: {len(train)} real {what} training image(s); need at least 4")
    val = frontal_images(records, config.image_size, "validate", views)
    if fingerprint and views != tuple(FRONTAL_VIEWS):
        fingerprint = hashlib.sha256(f"{fingerprint}|{what}".encode()).hexdigest()
    return reference_encoder_for(train, cache_root, config, fingerprint=fingerprint,
                                 groups=list(train.records["subject_id"]) if "subject_id" in train.records else None,
                                 val_dataset=val if len(val) else None,
                                 name="real train" if what == "frontal" else f"real train ({what})")


def load_set(root: str | os.PathLike, size: int) -> tuple[ImageDataset, pd.DataFrame | None]:
    """A synthetic set's images, and the finding labels it was asked for when it records any."""
    records, _ = load_dataset("mimic-cxr-jpg", root, reports="auto")
    data = frontal_images(records, size)
    return data, requested_labels(data.records)


def requested_labels(records: pd.DataFrame) -> pd.DataFrame | None:
    """The finding labels a synthetic set's images were asked for, or None when it records none."""
    labels = records[list(CHEXPERT_LABELS)]
    return labels if np.isfinite(labels.to_numpy(dtype=float)).any() else None
