"""The one content fingerprint of a dataset: what keys caches of models trained on it.

Two datasets with the same fingerprint yield the same training items, so a model trained on
one (the reference classifier, the default base model) can be reused for the other.
"""

from __future__ import annotations

import hashlib
import os
from typing import Any

import numpy as np

from support.data.schema import CHEXPERT_LABELS


def dataset_fingerprint(data: Any, name: str = "dataset") -> str:
    """sha256 of what ``data`` yields.

    - A record table, or a dataset over one (``.records``): per row its image id, path, file size
      and labels, plus the dataset's ``captions`` when it has them. No image is read.
    - A dataset with its own ``fingerprint`` string: that string.
    - Any other map-style dataset: every item's image and labels (one full read).
    """
    import pandas as pd

    own = getattr(data, "fingerprint", None)
    if isinstance(own, str) and own:
        return own
    records = data if isinstance(data, pd.DataFrame) else getattr(data, "records", None)
    h = hashlib.sha256()
    if isinstance(records, pd.DataFrame):
        labels = [c for c in CHEXPERT_LABELS if c in records.columns]
        for rec in records[["image_id", "path", *labels]].itertuples(index=False):
            try:
                size = os.path.getsize(rec[1])
            except OSError:
                size = -1
            h.update(("\x1f".join(str(v) for v in rec) + f"\x1f{size}\x1e").encode("utf-8"))
        for caption in getattr(data, "captions", None) or ():
            h.update(f"{caption}\x1e".encode("utf-8"))
        return h.hexdigest()
    from tqdm.auto import tqdm

    h.update(str(len(data)).encode())
    for i in tqdm(range(len(data)), desc=f"fingerprint {name}", leave=False):
        item = data[i]
        for key in ("image", "labels"):
            arr = np.ascontiguousarray(np.asarray(item[key]))
            h.update(f"{key}:{arr.dtype}:{arr.shape}".encode())
            h.update(arr.tobytes())
    return h.hexdigest()
