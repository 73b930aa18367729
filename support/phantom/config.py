"""Parameters of a phantom dataset (loadable from a profile with ``support.params.from_mapping``)."""

from __future__ import annotations

import dataclasses
import math

from support.data.schema import PHANTOM_FINDINGS

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
class PhantomConfig:
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

    def __post_init__(self) -> None:
        where = "PhantomConfig"
        if not isinstance(self.n_patients, int) or self.n_patients < 1:
            raise ValueError(f"{where}.n_patients: expected a positive integer, got {self.n_patients!r}")
        lo, hi = self.studies_per_patient
        if not (isinstance(lo, int) and isinstance(hi, int) and 1 <= lo <= hi):
            raise ValueError(f"{where}.studies_per_patient: expected (min, max) with 1 <= min <= max, "
                             f"got {self.studies_per_patient!r}")
        if not isinstance(self.image_size, int) or not 32 <= self.image_size <= 2048:
            raise ValueError(f"{where}.image_size: expected an integer in 32..2048, got {self.image_size!r}")
        for name in ("text_share", "lateral_share", "ap_share", "portable_share_of_ap"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
                raise ValueError(f"{where}.{name}: expected a probability in [0, 1], got {value!r}")
        if not isinstance(self.prevalence, dict):
            raise ValueError(f"{where}.prevalence: expected a mapping finding -> probability")
        unknown = sorted(set(self.prevalence) - set(DRAWN_FINDINGS))
        if unknown:
            raise ValueError(f"{where}.prevalence: unknown finding(s) {unknown}; expected some of "
                             f"{list(DRAWN_FINDINGS)} ('No Finding' follows from the others)")
        for name, p in self.prevalence.items():
            if not isinstance(p, (int, float)) or isinstance(p, bool) or not 0.0 <= p <= 1.0:
                raise ValueError(f"{where}.prevalence[{name!r}]: expected a probability in [0, 1], got {p!r}")
        fr = self.split_fractions
        if len(fr) != 3 or any(f < 0 for f in fr) or not math.isclose(sum(fr), 1.0, abs_tol=1e-6):
            raise ValueError(f"{where}.split_fractions: expected three non-negative shares "
                             f"(train, validate, test) summing to 1, got {fr!r}")
        if not 1 <= int(self.jpeg_quality) <= 100:
            raise ValueError(f"{where}.jpeg_quality: expected 1..100, got {self.jpeg_quality!r}")
        if not self.name or not isinstance(self.name, str):
            raise ValueError(f"{where}.name: expected a non-empty dataset name")
