"""What a projection needs: attenuating items (regions, tube sets) and how to mask each finding.

Attenuation coefficients are linear (1/mm) at an effective energy near 70 keV; items carry the
*difference* to what they displace (a lung is air-filled tissue inside soft tissue), so
overlapping structures add as their physical line integrals do.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from support.phantom.primitives import Region
from support.phantom.projector import TubeSet

# Linear attenuation (1/mm), ~70 keV effective energy.
MU = {
    "air": 0.0,
    "lung": 0.0050,     # inflated lung, density ~0.26 g/cm3
    "fat": 0.0175,
    "soft": 0.0200,     # muscle, blood, heart, fluid
    "fluid": 0.0197,
    "cortical": 0.0480,
    "trabecular": 0.0300,
    "plastic": 0.0190,
    "contrast": 0.30,   # barium stripe of a tube, lead marker
    "metal": 0.80,      # steel wire, electrode snap
    "titanium": 0.6,    # pacemaker can with its battery and circuits (effective)
}


@dataclasses.dataclass(eq=False)
class RegionItem:
    """A region that changes attenuation by ``mu`` (1/mm) along every ray through it."""

    region: Region
    mu: float
    views: tuple[str, ...] = ("frontal", "lateral")
    texture: float = 0.0          # relative amplitude of a smooth patchy modulation (consolidation)
    texture_seed: int = 0
    device: bool = False          # excluded when the display window is chosen


@dataclasses.dataclass(eq=False)
class MaskPart:
    """One annotated object (a finding on one side, one device): its mask in a view is the
    union of its regions' and tube tags' footprints, minus the footprints of ``exclude``."""

    label: str
    name: str
    include: tuple[Region, ...] = ()
    tube_tags: tuple[str, ...] = ()
    exclude: tuple[Region, ...] = ()
    min_chord_mm: float = 0.5
    views: tuple[str, ...] = ("frontal", "lateral")


@dataclasses.dataclass(eq=False)
class Scene:
    """Everything attenuating in one study, in the patient frame, plus annotation recipes."""

    regions: list[RegionItem] = dataclasses.field(default_factory=list)
    tubes: list[TubeSet] = dataclasses.field(default_factory=list)
    parts: list[MaskPart] = dataclasses.field(default_factory=list)
    # Named regions the renderer measures (heart silhouette, lung fields for the CTR).
    heart: list[Region] = dataclasses.field(default_factory=list)
    lungs: dict[str, Region] = dataclasses.field(default_factory=dict)
    device_tags: set[str] = dataclasses.field(default_factory=set)

    def add(self, region: Region, mu: float, **kw) -> RegionItem:
        item = RegionItem(region, float(mu), **kw)
        self.regions.append(item)
        return item


def rotation_to(axis: np.ndarray, up_hint=(0.0, 0.0, 1.0)) -> np.ndarray:
    """A rotation whose first column is ``axis`` (normalised); the others complete a frame."""
    a = np.asarray(axis, float)
    a = a / np.linalg.norm(a)
    h = np.asarray(up_hint, float)
    if abs(a @ h) > 0.95:
        h = np.array([1.0, 0.0, 0.0]) if abs(a[0]) < 0.9 else np.array([0.0, 1.0, 0.0])
    b = np.cross(h, a)
    b /= np.linalg.norm(b)
    c = np.cross(a, b)
    return np.stack([a, b, c], axis=1)


def rot_x(angle: float) -> np.ndarray:
    """Rotation about the patient's x axis (tilts the z axis towards +y for negative angles)."""
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[1.0, 0, 0], [0, c, -s], [0, s, c]])


def rot_y(angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[c, 0, s], [0, 1.0, 0], [-s, 0, c]])
