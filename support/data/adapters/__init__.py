"""Readers of the official layouts of the public chest X-ray datasets, one module per dataset.

Every reader returns ``(records, summary)``: the record table of :mod:`support.data.records`
and a :class:`~support.data.records.DatasetSummary` of what was skipped and why.
"""

from __future__ import annotations

import importlib
import os
from typing import Any

import pandas as pd

from support.data.records import DatasetSummary

# kind -> module under support.data.adapters
KINDS: dict[str, str] = {
    "mimic-cxr-jpg": "mimic_cxr_jpg",
    "chexpert": "chexpert",
    "nih-cxr14": "nih_cxr14",
    "rsna-pneumonia": "rsna_pneumonia",
    "siim-acr": "siim_acr",
    "covidx": "covidx",
    "object-cxr": "object_cxr",
}


def load_dataset(kind: str, root: str | os.PathLike, **options: Any) -> tuple[pd.DataFrame, DatasetSummary]:
    """Read dataset ``kind`` from ``root`` in its official layout -> (record table, summary).

    Options common to every kind: ``strict`` (raise on the first bad record), ``verify_images``
    (decode every image at load time), ``max_examples`` (examples kept per skip reason).
    The phantom and synthetic sets are read with kind ``"mimic-cxr-jpg"``.
    """
    if kind not in KINDS:
        raise ValueError(f"dataset kind {kind!r}: expected one of {sorted(KINDS)}")
    module = importlib.import_module(f"{__name__}.{KINDS[kind]}")
    return module.load(root, **options)


__all__ = ["KINDS", "load_dataset"]
