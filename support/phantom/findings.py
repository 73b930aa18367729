"""Findings with known truth: drawing a study's finding spec, and building each finding in 3D.

Every finding is a change of the thorax itself, so both views show it consistently: fluid that
layers in the costophrenic recess and climbs the wall (meniscus), a lung collapsed towards its
hilum with air and no vessels beyond its pleural line, a nodule inside the lung, airspace
opacity that fills part of a lobe and stops at its fissures, plate-like or lobar atelectasis.
Each finding also leaves a :class:`~support.phantom.scene.MaskPart` per side, from which the
renderer derives masks and boxes in every view.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from support.data.reports import validate_spec
from support.phantom.anatomy import SIDES, Thorax
from support.phantom.primitives import Ellipsoid, HalfSpace, Region
from support.phantom.scene import MU, MaskPart, rotation_to

LOBES = {
    "right upper lobe": "right", "right middle lobe": "right", "right lower lobe": "right",
    "left upper lobe": "left", "lingula": "left", "left lower lobe": "left",
}
CTR_RANGES = {"mild": (0.53, 0.58), "moderate": (0.58, 0.64), "severe": (0.64, 0.70)}
NORMAL_CTR_MAX = 0.48   # healthy hearts stay clear of 0.5 so the rendered ratio keeps its side
DEVICE_NAMES = ("endotracheal tube", "central line", "ECG leads", "pacemaker")


def _choice(rng: np.random.Generator, options: dict[str, float]) -> str:
    keys = list(options)
    p = np.array([options[k] for k in keys], float)
    return keys[int(rng.choice(len(keys), p=p / p.sum()))]


def sample_spec(prevalence: Mapping[str, float], context: Mapping[str, Any],
                rng: np.random.Generator) -> dict[str, dict]:
    """Draw the findings of one study (the shared finding-spec contract).

    Findings are independent draws with the given prevalence, except that support devices are
    more likely on portable AP films (the marginal rate is kept) and Consolidation/Pneumonia
    take different lobes when both occur.
    """
    spec: dict[str, dict] = {}
    portable = bool(context.get("portable", False))
    ap_share = float(context.get("ap_share", 0.25))
    for name in ("Cardiomegaly", "Pleural Effusion", "Pneumothorax", "Lung Lesion", "Consolidation",
                 "Pneumonia", "Atelectasis", "Support Devices"):
        p = float(prevalence.get(name, 0.0))
        if name == "Support Devices":
            # keep the marginal rate while favouring portable films: P = a*p_port + (1-a)*p_other
            p_port = min(0.95, 2.5 * p)
            p_other = max(0.0, (p - ap_share * p_port) / max(1e-9, 1.0 - ap_share))
            p = p_port if portable else p_other
        if rng.random() >= p:
            continue
        if name == "Cardiomegaly":
            sev = _choice(rng, {"mild": 0.55, "moderate": 0.3, "severe": 0.15})
            spec[name] = {"ctr": round(float(rng.uniform(*CTR_RANGES[sev])), 3), "severity": sev}
        elif name == "Pleural Effusion":
            spec[name] = {"side": _choice(rng, {"right": 0.4, "left": 0.3, "bilateral": 0.3}),
                          "size": _choice(rng, {"small": 0.5, "moderate": 0.35, "large": 0.15})}
        elif name == "Pneumothorax":
            spec[name] = {"side": _choice(rng, {"right": 0.5, "left": 0.5}),
                          "size": _choice(rng, {"small": 0.45, "moderate": 0.35, "large": 0.2})}
        elif name == "Lung Lesion":
            kind = _choice(rng, {"nodule": 0.7, "mass": 0.3})
            d = rng.uniform(8.0, 28.0) if kind == "nodule" else rng.uniform(32.0, 70.0)
            spec[name] = {"kind": kind, "side": _choice(rng, {"right": 0.55, "left": 0.45}),
                          "zone": _choice(rng, {"upper": 0.45, "mid": 0.3, "lower": 0.25}),
                          "diameter_mm": round(float(d), 1)}
        elif name in ("Consolidation", "Pneumonia"):
            weights = {"right upper lobe": 0.14, "right middle lobe": 0.12, "right lower lobe": 0.26,
                       "left upper lobe": 0.12, "lingula": 0.1, "left lower lobe": 0.26}
            for other in ("Consolidation", "Pneumonia"):
                if other in spec:
                    weights.pop(spec[other]["lobe"])
            lobe = _choice(rng, weights)
            spec[name] = {"side": LOBES[lobe], "lobe": lobe}
        elif name == "Atelectasis":
            spec[name] = {"side": _choice(rng, {"left": 0.35, "right": 0.35, "bilateral": 0.3}),
                          "zone": _choice(rng, {"lower": 0.8, "mid": 0.2}),
                          "kind": _choice(rng, {"plate-like": 0.45, "subsegmental": 0.35, "lobar": 0.2})}
        elif name == "Support Devices":
            rates = ({"endotracheal tube": 0.5, "central line": 0.6, "ECG leads": 0.7, "pacemaker": 0.12}
                     if portable else
                     {"endotracheal tube": 0.02, "central line": 0.3, "ECG leads": 0.3, "pacemaker": 0.5})
            devices = [d for d in DEVICE_NAMES if rng.random() < rates[d]]
            if not devices:
                devices = [_choice(rng, rates)]
            spec[name] = {"devices": devices}
    if not any(k != "Support Devices" for k in spec):
        spec["No Finding"] = {}
    validate_spec(spec)
    return spec


# ------------------------------------------------------------------------------ geometry
def _sides(side: str) -> list[str]:
    return ["right", "left"] if side == "bilateral" else [side]


def _lung_span(th: Thorax, side: str) -> tuple[float, float]:
    """(bottom, top) z of the aerated lung above the hemidiaphragm."""
    return th.dome_top[side], 0.0


def _fissures(th: Thorax, side: str) -> dict[str, tuple]:
    """Half-spaces bounding each lobe: the oblique fissure (posterior-superior to
    anterior-inferior) and, on the right, the horizontal fissure; on the left, the lingula."""
    D, H = th.anatomy.half_depth, th.anatomy.lung_height
    p1 = np.array([0.0, -0.95 * D, -0.27 * H])
    p2 = np.array([0.0, 0.95 * D, th.dome_top[side] + 8.0])
    dy, dz = p2[1] - p1[1], p2[2] - p1[2]
    n_up = np.array([0.0, -dz, dy]) / np.hypot(dy, dz)          # towards anterior-superior
    upper = HalfSpace.through(p1, -n_up)
    lower = HalfSpace.through(p1, n_up)
    # horizontal fissure (right) / upper border of the lingula (left): about the 4th anterior rib
    z_h = 0.5 * (th.dome_top[side] + (-0.45 * H if side == "right" else -0.36 * H))
    above = HalfSpace.through([0, 0, z_h], [0, 0, -1.0])
    below = HalfSpace.through([0, 0, z_h], [0, 0, 1.0])
    if side == "right":
        return {"right upper lobe": (upper, above), "right middle lobe": (upper, below),
                "right lower lobe": (lower,)}
    return {"left upper lobe": (upper, above), "lingula": (upper, below), "left lower lobe": (lower,)}


def lobe_region(th: Thorax, lobe: str) -> tuple[str, Region]:
    side = LOBES[lobe]
    return side, Region((th.lung_loft[side],) + _fissures(th, side)[lobe], th.lung_cutters)


def _sample_inside(region: Region, rng: np.random.Generator, lo: np.ndarray, hi: np.ndarray,
                   margin: float = 0.0, n: int = 256, rounds: int = 8) -> np.ndarray:
    """A random point of ``region`` within the box [lo, hi], ``margin`` mm from its boundary
    where possible (checked along the six axis directions)."""
    offs = np.vstack([np.zeros(3), margin * np.eye(3), -margin * np.eye(3)])
    fallback = None
    for _ in range(rounds):
        pts = lo + (hi - lo) * rng.random((n, 3))
        ok = region.contains((pts[:, None, :] + offs[None]).reshape(-1, 3)).reshape(n, 7)
        if ok.all(axis=1).any():
            return pts[np.argmax(ok.all(axis=1))]
        if fallback is None and ok[:, 0].any():
            fallback = pts[np.argmax(ok[:, 0])]
    if fallback is None:
        raise ValueError(f"no point of the region found in the box {lo.round(1)}..{hi.round(1)} "
                         f"after {rounds * n} draws")
    return fallback


def _lung_box(th: Thorax, side: str, z_lo: float, z_hi: float) -> tuple[np.ndarray, np.ndarray]:
    lo, hi = th.lung_loft[side].bounds()
    return np.array([lo[0], lo[1], z_lo]), np.array([hi[0], hi[1], z_hi])


def _prune_vessels(th: Thorax, side: str, inside) -> None:
    """Drop vessel segments whose midpoint ``inside`` marks (hidden in fluid or consolidation)."""
    kept = []
    for ts in th.vessels[side]:
        keep = ~inside((ts.p0 + ts.p1) / 2)
        if keep.any():
            kept.append(ts.subset(keep))
    th.vessels[side] = kept


def add_lungs_and_findings(th: Thorax, spec: Mapping[str, Any], rng: np.random.Generator) -> dict:
    """Put the aerated lungs and every finding of ``spec`` into the thorax's scene.

    Returns JSON-able truth per finding (positions in mm, sizes, lobes).
    """
    sc = th.scene
    W, D, H = th.anatomy.half_width, th.anatomy.half_depth, th.anatomy.lung_height
    soft_lung = MU["soft"] - MU["lung"]
    truth: dict[str, Any] = {}
    ptx = spec.get("Pneumothorax")

    # --- lungs, possibly one collapsed by a pneumothorax ---------------------------------------
    for side in SIDES:
        lung = th.lung[side]
        if ptx is None or ptx["side"] != side:
            sc.add(lung, MU["lung"] - MU["soft"])
            continue
        s = {"small": 0.88, "moderate": 0.76, "large": 0.6}[ptx["size"]] * float(rng.uniform(0.97, 1.03))
        centre = np.array([SIDES[side] * 0.24 * W, 0.0, th.dome_top[side] - 10.0])
        scale = np.array([s, 0.5 + 0.5 * s, s])
        collapsed = lung.scaled(centre, scale)
        pleura = lung.scaled(centre, scale * 0.988)
        vol = float(np.prod(scale))
        dense = MU["lung"] * min(2.2, 1.0 / vol)
        sc.add(lung, MU["air"] - MU["soft"])                        # hemithorax full of air...
        sc.add(collapsed, dense - MU["air"])                        # ...except the collapsed lung
        sc.add(collapsed, 0.45 * (MU["soft"] - MU["air"]))          # visceral pleura: a thin shell
        sc.add(pleura, -0.45 * (MU["soft"] - MU["air"]))
        th.vessels[side] = [ts.transformed(lambda p: centre + scale * (p - centre)) for ts in th.vessels[side]]
        sc.parts.append(MaskPart("Pneumothorax", f"Pneumothorax:{side}", include=(lung,), exclude=(collapsed,),
                                 min_chord_mm=1.0))
        truth["Pneumothorax"] = {"side": side, "size": ptx["size"], "lung_scale": round(s, 3)}

    # --- pleural effusion: fluid below a meniscus that climbs the lateral wall ---------------
    if "Pleural Effusion" in spec:
        eff = spec["Pleural Effusion"]
        levels = {}
        for side in _sides(eff["side"]):
            sg = SIDES[side]
            rise = {"small": rng.uniform(24, 34), "moderate": rng.uniform(70, 95),
                    "large": rng.uniform(125, 165)}[eff["size"]]
            z_level = th.z_base + rise * H / 262.0
            cx, cy, a, b = (x[0] for x in th.lung_loft[side].section(np.array([th.z_base + 40.0])))
            cE = 260.0
            E = Ellipsoid.from_axes([cx - sg * 0.3 * a, cy, z_level + cE], [2.3 * a, 2.3 * b, cE])
            fluid = Region((th.lung_loft[side],), th.lung_cutters + (E,))
            sc.add(fluid, MU["fluid"] - MU["lung"])
            sc.parts.append(MaskPart("Pleural Effusion", f"Pleural Effusion:{side}", include=(fluid,),
                                     min_chord_mm=2.0))
            _prune_vessels(th, side, lambda p, f=fluid: f.contains(p))
            levels[side] = round(float(z_level - th.z_base), 1)
        truth["Pleural Effusion"] = {"side": eff["side"], "size": eff["size"], "level_above_recess_mm": levels}

    # --- nodule or mass ---------------------------------------------------------------------
    if "Lung Lesion" in spec:
        les = spec["Lung Lesion"]
        side = les["side"]
        bottom, top = _lung_span(th, side)
        third = (top - bottom) / 3.0
        band = {"upper": (top - third, top - 8.0), "mid": (bottom + third, top - third),
                "lower": (bottom + 6.0, bottom + third)}[les["zone"]]
        r = 0.5 * float(les["diameter_mm"])
        lung = th.lung[side]
        lo, hi = _lung_box(th, side, *band)
        c = _sample_inside(lung, rng, lo, hi, margin=1.1 * r)
        regions = []
        lobules = [(c, r)]
        if les["kind"] == "mass":
            for _ in range(2):
                v = rng.normal(0, 1, 3)
                lobules.append((c + 0.45 * r * v / np.linalg.norm(v), r * rng.uniform(0.55, 0.75)))
        for i, (ci, ri) in enumerate(lobules):
            e = Ellipsoid.from_axes(ci, ri * rng.uniform(0.9, 1.1, 3), rotation_to(rng.normal(0, 1, 3)))
            prev = tuple(reg.members[0] for reg in regions)
            reg = Region((e, th.lung_loft[side]), th.lung_cutters + prev)
            regions.append(reg)
            sc.add(reg, MU["soft"] - MU["lung"])
        sc.parts.append(MaskPart("Lung Lesion", f"Lung Lesion:{side}", include=tuple(regions)))
        truth["Lung Lesion"] = {**les, "centre_mm": [round(float(v), 1) for v in c]}

    # --- consolidation / pneumonia: airspace opacity in part of a lobe --------------------------
    for name in ("Consolidation", "Pneumonia"):
        if name not in spec:
            continue
        side, lobe = lobe_region(th, spec[name]["lobe"])
        bottom, top = _lung_span(th, side)
        lo, hi = _lung_box(th, side, bottom + 5.0, top - 10.0)
        c = _sample_inside(lobe, rng, lo, hi, margin=12.0)
        axes = rng.uniform(38.0, 70.0, 3) * np.array([W, D, H]) / np.array([136.0, 86.0, 262.0])
        rot = rotation_to(rng.normal(0, 1, 3))
        density = float(rng.uniform(0.75, 0.95))
        shells = []
        for k, f in enumerate((1.0, 0.78, 0.56)):
            e = Ellipsoid.from_axes(c, axes * f, rot)
            reg = Region(lobe.members + (e,), lobe.cutters)
            shells.append(reg)
            sc.add(reg, density * soft_lung / 3.0, texture=0.45, texture_seed=int(rng.integers(2**31)))
        sc.parts.append(MaskPart(name, f"{name}:{side}", include=(shells[0],), min_chord_mm=2.0))
        _prune_vessels(th, side, lambda p, reg=shells[1]: reg.contains(p))
        truth[name] = {**spec[name], "centre_mm": [round(float(v), 1) for v in c]}

    # --- atelectasis -------------------------------------------------------------------------
    if "Atelectasis" in spec:
        at = spec["Atelectasis"]
        parts = {}
        for side in _sides(at["side"]):
            sg = SIDES[side]
            bottom, top = _lung_span(th, side)
            band = ((bottom + 8.0, bottom + 0.25 * (top - bottom)) if at["zone"] == "lower"
                    else (bottom + 0.38 * (top - bottom), bottom + 0.6 * (top - bottom)))
            lo, hi = _lung_box(th, side, *band)
            regions = []
            if at["kind"] == "lobar":
                lobe = ({"right": "right lower lobe", "left": "left lower lobe"}[side] if at["zone"] == "lower"
                        else {"right": "right middle lobe", "left": "lingula"}[side])
                _, lobe_reg = lobe_region(th, lobe)
                yc = -0.35 * D if at["zone"] == "lower" else 0.45 * D
                wedge = Ellipsoid.from_axes([sg * 0.32 * W, yc, 0.5 * sum(band)],
                                            [0.34 * W, 0.55 * D, 0.32 * H], rotation_to([sg * 0.2, 0.3, 1.0]))
                regions.append((Region(lobe_reg.members + (wedge,), lobe_reg.cutters), 0.85))
            else:
                count = 1 if at["kind"] == "plate-like" else int(rng.integers(2, 4))
                for _ in range(count):
                    c = _sample_inside(th.lung[side], rng, lo, hi, margin=6.0)
                    if at["kind"] == "plate-like":
                        axes = [rng.uniform(24, 42), rng.uniform(26, 46), rng.uniform(1.6, 3.0)]
                    else:
                        axes = [rng.uniform(9, 18), rng.uniform(10, 22), rng.uniform(2.5, 5.0)]
                    tilt = rotation_to([rng.normal(0, 0.15), rng.normal(0, 0.25), 1.0]).take([1, 2, 0], axis=1)
                    disc = Ellipsoid.from_axes(c, axes, tilt)
                    regions.append((Region((disc, th.lung_loft[side]), th.lung_cutters), 0.9))
            for reg, dens in regions:
                sc.add(reg, dens * soft_lung)
            sc.parts.append(MaskPart("Atelectasis", f"Atelectasis:{side}", include=tuple(r for r, _ in regions),
                                     min_chord_mm=1.0))
            parts[side] = len(regions)
        truth["Atelectasis"] = {**at, "parts": parts}
    return truth


def dome_lift_for(spec: Mapping[str, Any]) -> dict[str, float]:
    """Volume loss of lobar lower-lobe collapse raises that hemidiaphragm (mm)."""
    at = spec.get("Atelectasis")
    if not at or at["kind"] != "lobar" or at["zone"] != "lower":
        return {}
    return {side: 14.0 for side in _sides(at["side"])}
