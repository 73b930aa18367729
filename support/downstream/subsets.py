"""Label fractions (1 %, 10 %, 100 %) drawn by patient, stratified so rare findings survive."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd


def stratified_subset(labels: np.ndarray, fraction: float, seed: int = 0, min_per_stratum: int = 1) -> np.ndarray:
    """Seeded subset of about ``fraction`` of the rows, stratified by each row's rarest positive finding.

    Rows with no positive finding form one more stratum. Every stratum keeps at least
    ``min_per_stratum`` rows, so rare findings are not lost at 1 %. Returns sorted row indices.
    """
    labels = np.asarray(labels, dtype=np.float64)
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    if fraction == 1.0:
        return np.arange(len(labels))
    positive = labels == 1.0
    prevalence = positive.sum(axis=0)
    rarity = np.where(positive, prevalence[None, :], np.inf)
    strata = np.where(positive.any(axis=1), rarity.argmin(axis=1), -1)
    rng = np.random.default_rng(seed)
    keep = []
    for stratum in np.unique(strata):
        members = np.flatnonzero(strata == stratum)
        n = min(len(members), max(min_per_stratum, int(round(fraction * len(members)))))
        keep.append(rng.choice(members, n, replace=False))
    return np.sort(np.concatenate(keep))


def patient_labels(labels: np.ndarray, groups: Sequence) -> tuple[np.ndarray, np.ndarray]:
    """(patient of each row as an index into the patients, labels per patient): a patient is
    positive for a finding when any of their images is, negative when none is and some image
    says so, unknown (NaN) otherwise."""
    labels = np.asarray(labels, dtype=np.float64)
    groups = np.asarray(groups)
    if labels.ndim != 2 or len(labels) != len(groups):
        raise ValueError(f"labels {labels.shape} and groups ({len(groups)},): expected (N, L) labels and "
                         f"one patient id per row")
    _, patient = np.unique(groups, return_inverse=True)
    frame = pd.DataFrame(labels)
    positive = (frame == 1.0).groupby(patient).any().to_numpy()
    known = ((frame == 0.0) | (frame == 1.0)).groupby(patient).any().to_numpy()
    return patient, np.where(positive, 1.0, np.where(known, 0.0, np.nan))


def patient_subset(labels: np.ndarray, groups: Sequence, fraction: float, seed: int = 0,
                   min_per_stratum: int = 1) -> np.ndarray:
    """Sorted row indices of about ``fraction`` of the patients, every image of a chosen patient
    included; patients are stratified by their rarest positive finding (:func:`stratified_subset`)."""
    patient, per_patient = patient_labels(labels, groups)
    chosen = stratified_subset(per_patient, fraction, seed, min_per_stratum)
    return np.flatnonzero(np.isin(patient, chosen))
