"""Parameters of a phantom dataset (loadable from a profile with ``support.params.from_mapping``)."""

from __future__ import annotations

import dataclasses
import math
from typing import Iterable

from support.data.schema import PHANTOM_FINDINGS
from support.params import Check, Checked

# Findings drawn independently per study ("No Finding" follows from the others).
DRAWN_FINDINGS = tuple(f for f in PHANTOM_FINDINGS if f != "No Finding")

DEFAULT_PREVALENCE = {
    "Cardiomegaly": 0.2,
    "Pleural Effusion": 0.18,
    "Pneumothorax": 0.08,
    "Lung Lesion": 0.1,
    "Consolidation": 0.08,
    "Pneumonia": 0.08,
    "Atelectasis": 0.15,
    "Support Devices": 0.2,
}


@dataclasses.dataclass
class PhantomConfig(Checked):
    """How many patients and studies, image size, seed, and how often each finding and artifact
    appears. ``lateral_share`` applies to non-portable studies (portable AP films have no
    lateral, as in practice); ``text_share`` is the share of images with burned-in text."""

    n_patients: int = 200
    studies_per_patient: tuple[int, int] = (1, 3)
    image_size: int = 256
    seed: int = 0
    text_share: float = 0.3
    lateral_share: float = 0.8
    ap_share: float = 0.25
    prevalence: dict[str, float] = dataclasses.field(default_factory=lambda: dict(DEFAULT_PREVALENCE))
    split_fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)
    portable_share_of_ap: float = 0.85
    jpeg_quality: int = 95
    name: str = "phantom"

    title = "phantom parameters"

    def __post_init__(self) -> None:
        self.validate()

    def checks(self) -> Iterable[Check]:
        yield isinstance(self.n_patients, int) and self.n_patients >= 1, "n_patients", "a positive integer"
        lo, hi = self.studies_per_patient
        yield isinstance(lo, int) and isinstance(hi, int) and 1 <= lo <= hi, "studies_per_patient", \
            "(min, max) with 1 <= min <= max"
        yield isinstance(self.image_size, int) and 32 <= self.image_size <= 2048, "image_size", \
            "an integer in 32..2048"
        for name in ("text_share", "lateral_share", "ap_share", "portable_share_of_ap"):
            value = getattr(self, name)
            yield isinstance(value, (int, float)) and 0.0 <= value <= 1.0, name, "a probability in [0, 1]"
        yield isinstance(self.prevalence, dict), "prevalence", "a mapping finding -> probability"
        yield set(self.prevalence) <= set(DRAWN_FINDINGS), "prevalence", \
            f"keyed by some of {list(DRAWN_FINDINGS)} ('No Finding' follows from the others)"
        yield all(isinstance(p, (int, float)) and not isinstance(p, bool) and 0.0 <= p <= 1.0
                  for p in self.prevalence.values()), "prevalence", "probabilities in [0, 1]"
        fr = self.split_fractions
        yield len(fr) == 3 and all(f >= 0 for f in fr) and math.isclose(sum(fr), 1.0, abs_tol=1e-6), \
            "split_fractions", "three non-negative shares (train, validate, test) summing to 1"
        yield 1 <= int(self.jpeg_quality) <= 100, "jpeg_quality", "in 1..100"
        yield isinstance(self.name, str) and bool(self.name), "name", "a non-empty dataset name"
