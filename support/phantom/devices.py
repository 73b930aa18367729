"""Support devices: endotracheal tube, central venous line, ECG electrodes and leads, pacemaker.

Each device is placed along the anatomy it follows (the airway, the great veins, the skin, the
heart) and tagged, so its footprint in every view becomes the "Support Devices" mask.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from support.phantom.anatomy import Thorax, _spline
from support.phantom.primitives import Ellipsoid, Region
from support.phantom.projector import TubeSet
from support.phantom.scene import MU, MaskPart, rot_x, rot_y


def _skin_point(th: Thorax, x: float, z: float, offset: float = 1.0) -> np.ndarray:
    """The anterior skin surface at (x, z), ``offset`` mm in front of it."""
    cx, cy, a, b = (v[0] for v in th.body.section(np.array([z])))
    t = np.clip((x - cx) / max(a, 1e-6), -0.98, 0.98)
    return np.array([x, cy + b * np.sqrt(1.0 - t * t) + offset, z])


def _wire(start: np.ndarray, end: np.ndarray, rng: np.random.Generator, sag: float, n: int = 24) -> np.ndarray:
    """A loosely hanging wire from ``start`` to ``end`` through two random bends."""
    c1 = start + (end - start) * 0.33 + rng.normal(0, sag, 3) * [1, 0.2, 1]
    c2 = start + (end - start) * 0.66 + rng.normal(0, sag, 3) * [1, 0.2, 1]
    c1[1] = max(c1[1], start[1])
    c2[1] = max(c2[1], start[1])
    return _spline(np.array([start, c1, c2, end]), n)


def add_devices(th: Thorax, devices: Sequence[str], rng: np.random.Generator) -> dict:
    """Add the named devices to the scene; returns JSON-able truth (tip positions etc.)."""
    sc = th.scene
    W, D, H, s = th.anatomy.half_width, th.anatomy.half_depth, th.anatomy.lung_height, th.anatomy.scale
    truth: dict[str, dict] = {}
    for name in devices:
        tag = f"device:{name}"
        regions: list[Region] = []
        if name == "endotracheal tube":
            tip_z = th.carina[2] + float(rng.uniform(30.0, 60.0))
            path = th.trachea[th.trachea[:, 2] >= tip_z]
            tip = th.trachea[np.argmin(np.abs(th.trachea[:, 2] - tip_z))].copy()
            tip[2] = tip_z
            path = np.vstack([path[:1] + [0, 25.0, 160.0], path, tip])
            wall = TubeSet.polyline(path, 4.3 * s, MU["plastic"], inner_ratio=0.78, inner_mu=-MU["plastic"],
                                    tag=tag)
            stripe = TubeSet.polyline(path + [2.8 * s, 0.0, 0.0], 0.45, MU["contrast"], tag=tag)
            sc.tubes += [wall, stripe]
            truth[name] = {"tip_above_carina_mm": round(float(tip_z - th.carina[2]), 1)}
        elif name == "central line":
            top_r = th.dome_top["right"]
            tip = np.array([-0.15 * W, 0.12 * D, top_r + 0.22 * H + rng.uniform(-12, 12)])
            svc = [np.array([-0.18 * W, 0.1 * D, -0.12 * H]), np.array([-0.17 * W, 0.11 * D, -0.3 * H])]
            if rng.random() < 0.6:       # right internal jugular
                entry = [np.array([-0.22 * W, 0.05 * D, 0.7 * H]), np.array([-0.2 * W, 0.0, 0.25 * H]),
                         np.array([-0.19 * W, 0.05 * D, 0.02 * H])]
                route = "right internal jugular"
            else:                        # left subclavian, crossing the mediastinum
                entry = [np.array([0.85 * W, 0.75 * D, -0.12 * H]), np.array([0.45 * W, 0.55 * D, -0.14 * H]),
                         np.array([0.1 * W, 0.35 * D, -0.17 * H])]
                route = "left subclavian"
            path = _spline(np.array(entry + svc + [tip]), 26)
            sc.tubes.append(TubeSet.polyline(path, 1.1, 0.08, tag=tag))
            truth[name] = {"route": route, "tip_mm": [round(float(v), 1) for v in tip]}
        elif name == "ECG leads":
            sites = [(-0.75 * W, -0.10 * H), (0.75 * W, -0.10 * H), (0.72 * W, -0.9 * H),
                     (-0.7 * W, -0.92 * H), (0.35 * W, -0.75 * H)]
            count = int(rng.integers(3, 6))
            snaps = []
            for i in rng.permutation(len(sites))[:count]:
                x, z = sites[i]
                x += rng.normal(0, 10)
                z += rng.normal(0, 12)
                p = _skin_point(th, x, z, 1.5)
                pad = Ellipsoid.from_axes(p, [12.0 * s, 1.2, 12.0 * s], rot_x(rng.normal(0, 0.1)))
                snap = Ellipsoid.from_axes(p + [0, 2.5, 0], [2.6, 2.0, 2.6])
                regions += [Region((pad,)), Region((snap,))]
                sc.add(regions[-2], 0.012, device=True)
                sc.add(regions[-1], MU["metal"] * 0.35, device=True)
                # the lead leaves the film towards the nearest edge, sagging in front of the body
                out = p + np.array([np.sign(x) * rng.uniform(120, 260), rng.uniform(20, 60),
                                    rng.uniform(-80, 260)])
                wire = _wire(p + [0, 3.0, 0], out, rng, 35.0)
                sc.tubes.append(TubeSet.polyline(wire, 0.55, MU["metal"] * 0.4, tag=tag))
                snaps.append([round(float(v), 1) for v in p])
            truth[name] = {"electrodes_mm": snaps}
        elif name == "pacemaker":
            sg = 1.0 if rng.random() < 0.8 else -1.0
            z = -0.2 * H + rng.normal(0, 10)
            p = _skin_point(th, sg * 0.55 * W, z, -12.0)
            can = Ellipsoid.from_axes(p, [26.0, 4.5, 23.0], rot_y(rng.normal(0, 0.3)))
            header = Ellipsoid.from_axes(p + [0, 0, 22.0], [12.0, 3.5, 6.0])
            regions += [Region((can,)), Region((header,), (can,))]
            sc.add(regions[-2], MU["titanium"], device=True)
            sc.add(regions[-1], 0.01, device=True)
            top_r, top_l = th.dome_top["right"], th.dome_top["left"]
            common = [p + [-sg * 14.0, -2.0, 20.0], np.array([sg * 0.3 * W, 0.55 * D, -0.13 * H]),
                      np.array([sg * 0.08 * W, 0.35 * D, -0.2 * H]), np.array([-0.17 * W, 0.12 * D, -0.3 * H]),
                      np.array([-0.15 * W, 0.14 * D, top_r + 0.16 * H])]
            rv = _spline(np.array(common + [np.array([0.02 * W, 0.45 * D, top_l + 0.07 * H]),
                                            np.array([0.24 * W, 0.45 * D, top_l + 0.04 * H])]), 30)
            ra = _spline(np.array(common[:-1] + [np.array([-0.14 * W, 0.16 * D, top_r + 0.1 * H]),
                                                 np.array([-0.05 * W, 0.35 * D, top_r + 0.2 * H])]), 26)
            sc.tubes += [TubeSet.polyline(rv, 1.1, 0.35, tag=tag), TubeSet.polyline(ra, 1.0, 0.35, tag=tag)]
            truth[name] = {"side": "left" if sg > 0 else "right", "can_mm": [round(float(v), 1) for v in p]}
        else:
            raise ValueError(f"support device {name!r}: expected one of "
                             "'endotracheal tube', 'central line', 'ECG leads', 'pacemaker'")
        sc.device_tags.add(tag)
        sc.parts.append(MaskPart("Support Devices", f"Support Devices:{name}", include=tuple(regions),
                                 tube_tags=(tag,), min_chord_mm=0.2))
    return truth

