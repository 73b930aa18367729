"""The lateral images of sets that carry them (XGeM's pairs): the same measures as the frontal
table, against the real lateral images, in a feature space trained on the real laterals, with a
memorisation audit against the real lateral training images. A generated lateral copied from a
training study is as much a privacy leak as a frontal one."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping, Sequence

import pandas as pd

from support.data.adapters import load_dataset
from support.data.schema import LATERAL_VIEWS

from .sets import frontal_images, requested_labels


def sets_with_view(sets: Mapping[str, str | os.PathLike], views: Sequence[str] = LATERAL_VIEWS) -> dict[str, Path]:
    """The sets holding at least one image of ``views``."""
    found = {}
    for name, root in sets.items():
        records, _ = load_dataset("mimic-cxr-jpg", root, reports="auto")
        if records["view"].isin(list(views)).any():
            found[name] = Path(root)
    return found


def evaluate_view(sets: Mapping[str, str | os.PathLike], records: pd.DataFrame, encoder, config, size: int,
                  views: Sequence[str] = LATERAL_VIEWS) -> tuple[pd.DataFrame, dict, dict[str, str]]:
    """(table, details, skipped): one row per set of its ``views`` images, and the real validation
    split's images of those views as the control row, each against the real test split's. ``encoder``
    is a feature space trained on real images of these views
    (:func:`~support.eval.sets.real_reference_encoder` with ``views``). A set or a real split too small
    to score is skipped and named with the reason, never scored on noise."""
    from support.eval.evaluate import evaluate_set, prepare_real
    from support.eval.features import embed_set
    from support.eval.privacy import build_privacy_index

    views = list(views)
    train, val, test = (frontal_images(records, size, split, views) for split in ("train", "validate", "test"))
    what = "/".join(views)
    if len(test) <= config.k:
        reason = f"too few samples: {len(test)} real {what} test images, more than k = {config.k} needed"
        return pd.DataFrame(), {}, {name: reason for name in sets}
    real = prepare_real(test, encoder, config)
    index = build_privacy_index(embed_set(encoder, train, name=f"real train ({what})"), train,
                                train.records["subject_id"].tolist())
    rows, details, skipped = [], {}, {}
    for name, root in sets.items():
        recs, _ = load_dataset("mimic-cxr-jpg", root, reports="auto")
        data = frontal_images(recs, size, None, views)
        if len(data) <= config.k:
            skipped[name] = f"too few samples: {len(data)} {what} images, more than k = {config.k} needed"
            continue
        row, details[name] = evaluate_set(data, real, encoder, name=name, config=config,
                                          requested_labels=requested_labels(data.records), privacy_index=index,
                                          return_details=True)
        rows.append(row)
    if len(val) > config.k:
        rows.append(evaluate_set(val, real, encoder, name="real (validate split)", config=config,
                                 privacy_index=index))
    else:
        skipped["real (validate split)"] = (f"too few samples: {len(val)} real {what} validation images, "
                                            f"more than k = {config.k} needed")
    table = pd.DataFrame(rows).set_index("set") if rows else pd.DataFrame()
    return table, {"train": train, "details": details}, skipped
