"""Conditional fidelity: do synthetic images show the findings they were asked for?

The reference encoder, trained on real images, scores each synthetic image; the AUROC of those
scores against the *requested* labels, per finding, says how well the condition is rendered
(0.5: ignored; near the encoder's own real held-out AUROC: rendered as well as real disease looks).
A finding requested for fewer than 10 images, or withheld from fewer than 10, gets NaN ("too few
samples"), as every AUROC of the project does: a handful of cases ranks by chance.
"""

from __future__ import annotations

from typing import Any, Protocol, Sequence

import numpy as np
import torch

from support.downstream.auroc import known_mask, per_finding_auroc
from support.downstream.metrics import too_few_of_a_class

from .images import as_image_set


class FindingClassifier(Protocol):
    label_names: tuple[str, ...]

    def predict_proba(self, images: torch.Tensor) -> torch.Tensor: ...


def predict_set(classifier: FindingClassifier, images: Any, batch_size: int = 64,
                name: str = "images") -> np.ndarray:
    """Per-finding probabilities (N, L) of an image set, in ``classifier.label_names`` order."""
    image_set = as_image_set(images, name=name)
    with torch.inference_mode():
        parts = [classifier.predict_proba(b).double().numpy()
                 for b in image_set.batches(batch_size, desc=f"classify {name}")]
    return np.concatenate(parts)


def _requested_matrix(requested, names: Sequence[str] | None, n: int) -> tuple[np.ndarray, list[str]]:
    import pandas as pd

    if isinstance(requested, pd.DataFrame):
        cols = list(names) if names is not None else list(requested.columns)
        missing = [c for c in cols if c not in requested.columns]
        if missing:
            raise KeyError(f"requested labels: columns {missing} not found")
        matrix, cols = requested[cols].to_numpy(dtype=np.float64), cols
    else:
        matrix = np.asarray(requested, dtype=np.float64)
        if names is None:
            raise ValueError("requested labels given as an array need label_names for their columns")
        cols = list(names)
        if matrix.ndim != 2 or matrix.shape[1] != len(cols):
            raise ValueError(f"requested labels: expected shape (N, {len(cols)}), got {matrix.shape}")
    if len(matrix) != n:
        raise ValueError(f"requested labels have {len(matrix)} rows for {n} images")
    return matrix, cols


def conditional_fidelity(classifier: FindingClassifier, images: Any, requested,
                         label_names: Sequence[str] | None = None, batch_size: int = 64,
                         scores: np.ndarray | None = None) -> dict[str, float]:
    """AUROC per finding of the classifier's scores on synthetic images against requested labels.

    ``requested``: a DataFrame with one column per finding, or an (N, L) array with
    ``label_names``; values 1/0 (NaN or -1: not part of the request, left out). Findings the
    classifier does not predict are an error. ``scores`` reuses probabilities already computed
    with :func:`predict_set`. NaN where a finding was requested for (or withheld from) fewer than
    10 images.
    """
    image_set = as_image_set(images, name="synthetic")
    matrix, cols = _requested_matrix(requested, label_names, len(image_set))
    unknown = [c for c in cols if c not in classifier.label_names]
    if unknown:
        raise KeyError(f"the classifier does not predict {unknown}; it knows {list(classifier.label_names)}")
    probs = predict_set(classifier, image_set, batch_size, "synthetic") if scores is None else np.asarray(scores)
    if probs.shape != (len(image_set), len(classifier.label_names)):
        raise ValueError(f"scores have shape {probs.shape}, expected ({len(image_set)}, {len(classifier.label_names)})")
    picked = probs[:, [classifier.label_names.index(c) for c in cols]]
    scores = per_finding_auroc(matrix, picked, cols)
    for j, name in enumerate(cols):
        definite = matrix[known_mask(matrix[:, j]), j]
        if too_few_of_a_class(definite):
            scores[name] = float("nan")
    return scores
