"""The procedural thorax: a patient's anatomy, a study's pose, and the 3D scene built from both.

Patient frame (mm): ``x`` to the patient's left, ``y`` anterior, ``z`` superior; ``z = 0`` is the
top of the lung apices and ``x = 0`` the midline. Sizes scale with the patient's habitus; the
diaphragm, rib obliquity and lung height follow the study's depth of inspiration.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import numpy as np

from support.phantom.primitives import Ellipsoid, HalfSpace, Loft, Region
from support.phantom.projector import TubeSet
from support.phantom.scene import MU, Scene, rot_x, rot_y, rotation_to

SIDES = {"right": -1.0, "left": 1.0}   # sign of x on each side of the patient


@dataclasses.dataclass(frozen=True)
class Anatomy:
    """Patient-level parameters (the same body in every study of the patient)."""

    sex: str
    age: int
    scale: float          # overall size factor
    half_width: float     # W: inner half-width of the thoracic cage at its widest (mm)
    half_depth: float     # D: inner antero-posterior half-depth of the cage (mm)
    lung_height: float    # H: apex to posterior costophrenic recess (mm)
    fat: float            # subcutaneous fat (mm)
    muscle: float         # chest-wall muscle (mm)
    ctr: float            # cardiothoracic ratio of the healthy heart
    heart_axis: float     # extra tilt of the cardiac long axis (rad)
    dome_gap: float       # right hemidiaphragm above the left (mm)
    breast: float         # 0 (none) .. 1.4
    aorta_unfold: float   # 0 .. 1, an older patient's prominent aortic knob
    kyphosis: float       # mm of thoracic curvature
    scoliosis: float      # mm of lateral deviation at mid-thorax
    gastric: float        # gastric bubble size factor (0 = none)
    seed: int             # vessel tree, rib and vertebra jitter

    def to_dict(self) -> dict:
        return {k: (round(v, 3) if isinstance(v, float) else v) for k, v in dataclasses.asdict(self).items()}


def sample_anatomy(rng: np.random.Generator, sex: str, age: int) -> Anatomy:
    """Draw a patient's body: habitus, proportions, heart size, diaphragm, spine."""
    if sex not in ("F", "M"):
        raise ValueError(f"sex {sex!r}: expected 'F' or 'M'")
    s = float(np.clip(rng.normal(1.0, 0.045), 0.88, 1.12)) * (0.94 if sex == "F" else 1.0)
    older = float(np.clip((age - 45) / 40.0, 0.0, 1.0))
    return Anatomy(
        sex=sex, age=int(age), scale=s,
        half_width=136.0 * s * float(np.clip(rng.normal(1.0, 0.04), 0.9, 1.1)),
        half_depth=86.0 * s * float(np.clip(rng.normal(1.0, 0.06), 0.85, 1.18)) * (1 + 0.06 * older),
        lung_height=262.0 * s * float(np.clip(rng.normal(1.0, 0.04), 0.9, 1.1)),
        fat=float(np.clip(rng.lognormal(np.log(14.0), 0.5), 4.0, 55.0)) * (1.15 if sex == "F" else 1.0),
        muscle=12.0 * s,
        ctr=float(rng.uniform(0.39, 0.47)),
        heart_axis=float(rng.normal(0.0, 0.08)),
        dome_gap=float(rng.uniform(8.0, 24.0)),
        breast=float(rng.uniform(0.55, 1.35)) if sex == "F" else 0.0,
        aorta_unfold=older * float(rng.uniform(0.4, 1.0)),
        kyphosis=float(rng.normal(6.0, 4.0)) + 6.0 * older,
        scoliosis=float(rng.normal(0.0, 3.0)),
        gastric=0.0 if rng.random() < 0.15 else float(rng.uniform(0.5, 1.15)),
        seed=int(rng.integers(0, 2**31 - 1)),
    )


@dataclasses.dataclass
class Pose:
    """Study-level acquisition: projection, inspiration, rotation, positioning, exposure."""

    view: str               # "PA" | "AP"
    portable: bool
    inspiration: float      # -1 (poor) .. 1 (deep)
    rotation: float         # rad, about the long axis (frontal film)
    lateral_rotation: float
    shift: tuple[float, float]          # frontal image-plane offset of the centre (mm)
    lateral_shift: tuple[float, float]
    scapula_out: float      # 1: scapulae rotated off the lungs (PA), 0: over them (AP)
    arms_in_view: bool
    exposure: dict

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["rotation_deg"] = round(math.degrees(d.pop("rotation")), 2)
        d["lateral_rotation_deg"] = round(math.degrees(d.pop("lateral_rotation")), 2)
        return d


def sample_pose(rng: np.random.Generator, view: str, portable: bool) -> Pose:
    """Draw the acquisition of one study; AP portable films are shallower, rotated, noisier."""
    if view not in ("PA", "AP"):
        raise ValueError(f"frontal view {view!r}: expected 'PA' or 'AP'")
    ap = view == "AP"
    deg = math.radians
    exposure = {
        "photons_per_mm2": float(rng.uniform(1.2e4, 5e4) if not ap else rng.uniform(5e3, 2e4)),
        "scatter": float(rng.uniform(0.15, 0.3) if not ap else rng.uniform(0.35, 0.6)),
        "unsharp": float(rng.uniform(0.9, 1.6)),
        "gamma": float(rng.uniform(0.9, 1.15)),
        "lateral_photons_per_mm2": float(rng.uniform(1.5e4, 5e4)),
    }
    return Pose(
        view=view, portable=bool(portable),
        inspiration=float(np.clip(rng.normal(-0.45, 0.4) if ap else rng.normal(0.35, 0.35), -1, 1)),
        rotation=float(np.clip(rng.normal(0, deg(4.0) if ap else deg(2.0)), -deg(9), deg(9))),
        lateral_rotation=float(np.clip(rng.normal(0, deg(2.5)), -deg(6), deg(6))),
        shift=(float(rng.normal(0, 12 if ap else 6)), float(rng.normal(0, 16 if ap else 8))),
        lateral_shift=(float(rng.normal(0, 8)), float(rng.normal(0, 8))),
        scapula_out=float(rng.uniform(0.0, 0.35) if ap else rng.uniform(0.7, 1.0)),
        arms_in_view=bool(rng.random() < (0.7 if ap else 0.4)),
        exposure=exposure,
    )


# ------------------------------------------------------------------------------ the thorax
@dataclasses.dataclass(eq=False)
class Thorax:
    """The built body of one study: shapes findings refer to, and the scene to render."""

    anatomy: Anatomy
    pose: Pose
    scene: Scene
    cage: Loft
    body: Loft
    lung_loft: dict[str, Loft]
    lung: dict[str, Region]           # aerated lung fields (before findings)
    lung_cutters: tuple
    domes: dict[str, Ellipsoid]
    heart_parts: list[Ellipsoid]
    hilum: dict[str, np.ndarray]
    carina: np.ndarray
    trachea: np.ndarray               # centreline points, top to carina
    vertebra_z: list[float]           # T1..T12 body centres
    spine_y: float
    dome_top: dict[str, float]
    z_base: float                     # posterior recess (lowest lung)
    front_skin: float                 # y of the anterior skin at mid-chest
    back_skin: float
    side_skin: float                  # |x| of the lateral skin at the widest level
    vessels: dict[str, list[TubeSet]]
    heart_scale: float


def _spline(points: np.ndarray, n: int) -> np.ndarray:
    """A smooth curve through control points (centripetal Catmull-Rom, ``n`` samples)."""
    p = np.asarray(points, float)
    ext = np.vstack([2 * p[0] - p[1], p, 2 * p[-1] - p[-2]])
    seg = len(p) - 1
    u = np.linspace(0.0, seg, n)
    k = np.minimum(u.astype(int), seg - 1)
    t = (u - k)[:, None]
    p0, p1, p2, p3 = ext[k], ext[k + 1], ext[k + 2], ext[k + 3]
    return 0.5 * ((2 * p1) + (-p0 + p2) * t + (2 * p0 - 5 * p1 + 4 * p2 - p3) * t * t
                  + (-p0 + 3 * p1 - 3 * p2 + p3) * t ** 3)


def _bone(points, radii, cortex: float = 0.25, density: float = 1.0, **kw) -> TubeSet:
    """A long bone or rib: dense cortex of relative thickness ``cortex`` around marrow."""
    return TubeSet.polyline(points, radii, density * (MU["cortical"] - MU["soft"]), tag="bone",
                            inner_ratio=1.0 - cortex, inner_mu=density * (MU["trabecular"] - MU["cortical"]), **kw)


@dataclasses.dataclass(eq=False)
class Frame:
    """The parts of a study's thorax that size the rest: cage, body wall, diaphragm, lung lofts."""

    cage: Loft
    body: Loft
    inner: Loft
    front_skin: float
    back_skin: float
    side_skin: float
    lung_height: float                # at this inspiration
    z_base: float
    dome_top: dict[str, float]
    domes: dict[str, Ellipsoid]
    lung_loft: dict[str, Loft]


def thorax_frame(anat: Anatomy, pose: Pose, dome_lift: dict[str, float] | None = None) -> Frame:
    """Cage, body wall, hemidiaphragms and lung envelopes for this patient at this inspiration."""
    W, D, H, s = anat.half_width, anat.half_depth, anat.lung_height, anat.scale
    Hl = H * (1.0 + 0.07 * pose.inspiration)
    dome_lift = dome_lift or {}
    # thoracic cage (inner surface of the ribs)
    zf = np.array([0.16, 0.08, 0.0, -0.08, -0.2, -0.4, -0.6, -0.8, -1.0, -1.2, -1.6])
    af = np.array([0.40, 0.47, 0.56, 0.67, 0.80, 0.91, 0.975, 1.0, 0.99, 0.95, 0.9])
    bf = np.array([0.46, 0.52, 0.60, 0.70, 0.82, 0.92, 0.98, 1.0, 1.0, 0.98, 0.95])
    cyf = np.array([-0.28, -0.24, -0.19, -0.12, -0.06, -0.02, 0.0, 0.0, 0.0, 0.0, 0.0])
    order = np.argsort(zf)
    cage = Loft.build((zf * H)[order], 0.0, (cyf * D)[order], (af * W)[order], (bf * D)[order])
    # body wall: fat outside, muscle and chest contents inside; tapers into the neck
    wall_x = anat.muscle + 1.3 * anat.fat
    wall_y = anat.muscle + anat.fat
    zb = np.r_[np.linspace(-H - 260.0, -0.04 * H, 10), 0.03 * H, 0.08 * H]
    _, ccy, ca, cb = cage.section(np.clip(zb, -1.6 * H, 0.16 * H))
    taper = np.r_[np.ones(10), 0.85, 0.62]
    # the back is thicker than the front: paraspinal muscles behind the ribs
    body = Loft.build(zb, 0.0, ccy - 14.0, (ca + wall_x) * taper, (cb + wall_y + 12.0) * taper)
    inner = Loft.build(zb[:-1], 0.0, ccy[:-1] - 4.0, (ca + 0.7 * anat.muscle)[:-1] * taper[:-1],
                       (cb + 0.8 * anat.muscle)[:-1] * taper[:-1])
    mid = body.section(np.array([-0.55 * H]))
    # hemidiaphragms: the right higher; the posterior recess deepest
    z_base = -Hl
    dome_rise = 0.22 * H
    dome_top = {"right": z_base + dome_rise + dome_lift.get("right", 0.0),
                "left": z_base + dome_rise - anat.dome_gap + dome_lift.get("left", 0.0)}
    cd = 0.25 * H
    domes = {side: Ellipsoid.from_axes([sg * 0.38 * W, 0.28 * D, dome_top[side] - cd],
                                       [0.62 * W, 1.2 * D, cd]) for side, sg in SIDES.items()}
    # lung envelopes: rounded apex and recesses; medial surfaces come from the cutters
    zl = np.array([0.0, -3.0, -8.0, -16.0, -28.0, -45.0, -70.0, -110.0, -150.0, -190.0]) * (Hl / 262.0)
    zl = np.unique(np.r_[zl[zl > z_base + 30], z_base + 26.0, z_base + 12.0, z_base])
    _, ccy, ca, cb = cage.section(zl)
    f = np.sqrt(np.clip(1.0 - np.square(np.clip(1.0 + zl / (42.0 * s), 0.0, 1.0)), 0.0, 1.0))
    f *= np.interp(zl, [z_base, z_base + 12.0, z_base + 26.0], [0.35, 0.8, 1.0])
    medial = 8.0
    half = np.maximum((ca - 5.0 - medial) / 2.0, 1.0)
    lung_loft = {side: Loft.build(zl, sg * (medial + half), ccy, half * f, (cb - 5.0) * f)
                 for side, sg in SIDES.items()}
    return Frame(cage=cage, body=body, inner=inner, front_skin=float(mid[1][0] + mid[3][0]),
                 back_skin=float(mid[1][0] - mid[3][0]), side_skin=float(body.section(np.array([-0.8 * H]))[2][0]),
                 lung_height=Hl, z_base=z_base, dome_top=dome_top, domes=domes, lung_loft=lung_loft)


def heart_parts(anat: Anatomy, frame: Frame, scale: float = 1.0) -> list[Ellipsoid]:
    """Left ventricle, right atrium and right ventricle, enlarged by ``scale`` mostly sideways."""
    W, D, H = anat.half_width, anat.half_depth, anat.lung_height
    top_r, top_l = frame.dome_top["right"], frame.dome_top["left"]
    centre = np.array([0.06 * W, 0.30 * D, top_l + 0.05 * H])
    axis = np.array([0.78, 0.35, -0.52 - anat.heart_axis])
    parts = [
        Ellipsoid.from_axes([0.21 * W, 0.30 * D, top_l + 0.10 * H], [0.50 * W, 0.40 * W, 0.36 * W], rotation_to(axis)),
        Ellipsoid.from_axes([-0.15 * W, 0.12 * D, top_r + 0.15 * H], [0.22 * W, 0.36 * D, 0.16 * H]),
        Ellipsoid.from_axes([0.04 * W, 0.55 * D, top_l + 0.09 * H], [0.36 * W, 0.38 * D, 0.15 * H],
                            rotation_to(np.array([0.9, 0.1, -0.4]))),
    ]
    return [p.scaled(centre, np.array([scale, scale ** 0.6, scale ** 0.5])) for p in parts]


def build_thorax(anat: Anatomy, pose: Pose, heart_scale: float = 1.0,
                 dome_lift: dict[str, float] | None = None, frame: "Frame | None" = None) -> Thorax:
    """The 3D body for one study: body wall, lungs, heart and mediastinum, skeleton, vessels."""
    rng = np.random.default_rng(anat.seed)          # patient-constant jitter (ribs, vessels)
    W, D, H, s = anat.half_width, anat.half_depth, anat.lung_height, anat.scale
    insp = pose.inspiration
    fr = frame if frame is not None else thorax_frame(anat, pose, dome_lift)
    Hl = fr.lung_height
    cage, body, inner = fr.cage, fr.body, fr.inner
    front_skin, back_skin, side_skin = fr.front_skin, fr.back_skin, fr.side_skin
    scene = Scene()

    # --- soft tissue: body wall, neck, shoulders ----------------------------------------------
    neck = Loft.build([-0.05 * H, 0.3 * H, 0.6 * H, 1.6 * H], 0.0, -0.22 * D,
                      np.array([60, 52, 50, 50]) * s, np.array([60, 54, 53, 53]) * s)
    sh = {side: Ellipsoid.from_axes([sg * 0.92 * W, -0.14 * D, -0.10 * H],
                                    [0.60 * W + 0.3 * anat.fat, 0.66 * D + 0.3 * anat.fat, 30 * s + 0.3 * anat.fat],
                                    rot_y(sg * 0.32))
          for side, sg in SIDES.items()}
    scene.add(Region((body,)), MU["fat"])
    scene.add(Region((inner,)), MU["soft"] - MU["fat"])
    scene.add(Region((neck,), (body,)), MU["fat"])
    # a lateral film is taken with the arms raised: the shoulder girdle leaves the chest
    scene.add(Region((sh["right"],), (body, neck)), MU["fat"], views=("frontal",))
    scene.add(Region((sh["left"],), (body, neck)), MU["fat"], views=("frontal",))

    # --- vertebral column: cervical 5-7, thoracic 1-12, lumbar 1-3 -------------------------
    sv = Hl / 262.0
    levels = []                                     # (z centre, body height, body radius)
    z = 16.0 * sv
    prev_h = None
    for k in range(12):
        h = (15.5 + 0.8 * k) * sv
        if prev_h is not None:
            z -= prev_h / 2 + (3.2 + 0.2 * k) * sv + h / 2
        levels.append((z, h, (12.0 + 0.55 * k) * s))
        prev_h = h
    top = levels[0][0]
    cervical = [(top + (3 - k) * 18.0 * sv, 13.0 * sv, 10.0 * s) for k in range(3)]
    lumbar = [(levels[-1][0] - (k + 1) * 33.0 * sv, 25.0 * sv, 19.0 * s) for k in range(3)]
    levels = cervical + levels + lumbar
    vertebra_z = [lv[0] for lv in levels[3:15]]
    spine_y = -0.58 * D

    def spine_xy(zz):
        t = np.clip((zz - 16.0) / (-H), -0.5, 1.6)
        return (anat.scoliosis * np.sin(np.pi * t),
                spine_y - anat.kyphosis * np.sin(np.pi * np.clip(t, 0, 1)) + 4.0 * np.clip(-t, 0, None))

    zc = np.array([lv[0] for lv in levels])
    hv = np.array([lv[1] for lv in levels])
    rb = np.array([lv[2] for lv in levels])
    xs, ys = spine_xy(zc)
    lo, hi = np.stack([xs, ys, zc - hv / 2], 1), np.stack([xs, ys, zc + hv / 2], 1)
    bone = MU["cortical"] - MU["soft"]
    # vertebral bodies: short cylinders, a thin cortical shell round trabecular bone
    scene.tubes.append(TubeSet(lo, hi, rb, rb, bone, caps=False, tag="bone",
                               inner_ratio=float(1.0 - 1.4 / rb.mean()),
                               inner_mu=MU["trabecular"] - MU["cortical"]))
    # pedicles, transverse processes, laminae, spinous processes
    yb = ys - rb
    ped = np.where(np.arange(len(levels)) < 3, 3.2, 4.2) * s
    tpl = np.where(np.arange(len(levels)) < 3, 16.0, np.where(np.arange(len(levels)) < 15, 24.0, 30.0)) * s
    p0s, p1s, rr = [], [], []
    for sg in (-1.0, 1.0):
        p_in = np.stack([xs + sg * 0.62 * rb, yb + 0.3 * rb, zc + 0.15 * hv], 1)
        p_out = np.stack([xs + sg * 0.66 * rb, yb - 9.0 * s, zc + 0.15 * hv], 1)
        tp = np.stack([xs + sg * (rb + tpl), yb - 12.0 * s, zc + 0.1 * hv], 1)
        lam = np.stack([xs, yb - 14.0 * s, zc], 1)
        p0s += [p_in, p_out, p_out]
        p1s += [p_out, tp, lam]
        rr += [ped, 0.85 * ped, 0.75 * ped]
    p0s.append(np.stack([xs, yb - 14.0 * s, zc], 1))
    p1s.append(np.stack([xs, yb - 42.0 * s, zc - 0.9 * hv], 1))
    rr.append(np.full(len(levels), 3.8 * s))
    rr = np.concatenate(rr)
    scene.tubes.append(TubeSet(np.concatenate(p0s), np.concatenate(p1s), rr, rr, 0.7 * bone, tag="bone",
                               inner_ratio=0.6, inner_mu=0.7 * (MU["trabecular"] - MU["cortical"])))

    # --- diaphragm, heart, mediastinum --------------------------------------------------------
    z_base, dome_top, domes = fr.z_base, fr.dome_top, fr.domes
    top_r, top_l = dome_top["right"], dome_top["left"]
    parts = heart_parts(anat, fr, heart_scale)
    trunk = Ellipsoid.from_axes([0.16 * W, 0.16 * D, top_l + 0.33 * H], [0.12 * W, 0.2 * D, 0.08 * H])

    carina = np.array([-2.0, -0.22 * D, -0.36 * H])         # the hila hang below it (see hila)
    unf = anat.aorta_unfold
    mz = np.array([top_l + 0.18 * H, carina[2] - 0.06 * H, -0.22 * H, -0.06 * H, 0.02 * H, 0.06 * H])
    mediast = Loft.build(mz, np.array([-0.03, -0.03, -0.025, -0.02, -0.01, 0.0]) * W,
                         np.array([0.12, 0.08, 0.03, -0.04, -0.12, -0.16]) * D,
                         np.array([0.18, 0.16, 0.145, 0.13, 0.125, 0.12]) * W,
                         np.array([0.55, 0.52, 0.48, 0.45, 0.42, 0.42]) * D)
    svc = Loft.build([top_r + 0.2 * H, carina[2], -0.06 * H], [-0.18 * W, -0.185 * W, -0.16 * W], 0.12 * D,
                     0.075 * W, 0.14 * D)
    knob = Ellipsoid.from_axes([(0.15 + 0.05 * unf) * W, -0.10 * D, carina[2] + 0.11 * H],
                               [(0.12 + 0.04 * unf) * W, 0.28 * D, 0.07 * H])
    desc_ao = Loft.build([top_l - 0.1 * H, carina[2] + 0.11 * H], (0.15 + 0.03 * unf) * W, spine_y + 0.08 * D,
                         0.085 * W, 0.15 * D)
    spine_col = Loft.build([z_base - 10.0, 0.05 * H], 0.0, spine_y - 4.0, 0.17 * W, 0.3 * D)
    lung_cutters = tuple(parts) + (trunk, domes["right"], domes["left"], mediast, svc, knob, desc_ao, spine_col)

    # --- lungs: rounded apex and recesses, medial surfaces shaped by the cutters -----------
    lung_loft = fr.lung_loft
    lung = {side: Region((lung_loft[side],), lung_cutters) for side in SIDES}
    scene.lungs.update(lung)
    scene.heart = [Region((p,), (domes["right"], domes["left"])) for p in parts]

    # --- airway ---------------------------------------------------------------------------
    trachea = _spline(np.array([[0.0, -0.02 * D, 0.62 * H], [0.0, -0.08 * D, 0.2 * H],
                                [-3.0 - 2.0 * unf, -0.16 * D, -0.15 * H], carina]), 12)
    bronchi = [
        _spline(np.array([carina, [-0.12 * W, -0.25 * D, carina[2] - 16], [-0.24 * W, -0.28 * D, carina[2] - 42]]), 5),
        _spline(np.array([carina, [0.12 * W, -0.24 * D, carina[2] - 12], [0.26 * W, -0.28 * D, carina[2] - 34]]), 5),
    ]
    air = -(MU["soft"] - MU["air"])
    scene.tubes.append(TubeSet.join([TubeSet.polyline(trachea, 8.5 * s, air),
                                     TubeSet.polyline(bronchi[0], np.linspace(6.5, 5.0, 5) * s, air),
                                     TubeSet.polyline(bronchi[1], np.linspace(6.0, 4.8, 5) * s, air)],
                                    tag="airway"))

    # --- ribs: from the vertebra round the cage, descending to the costal cartilage ----------
    drops = np.array([34, 56, 70, 80, 88, 96, 102, 106, 104, 96, 55, 35], float)
    alpha_end = np.array([2.55, 2.5, 2.42, 2.36, 2.3, 2.22, 2.12, 1.98, 1.86, 1.72, 1.35, 1.05])
    n = 22
    u = np.linspace(0.0, 1.0, n)
    descent = 0.3 * u + 0.7 * np.clip((u - 0.42) / 0.58, 0.0, 1.0) ** 1.3
    for side, sg in SIDES.items():
        for k in range(12):
            zc_k, h, rb_k = levels[k + 3]
            x0, y0 = spine_xy(zc_k)
            r = (4.4 + 0.12 * k) * s if k else 5.8 * s
            jit = rng.normal(0, 1, 3)
            z_head = zc_k + 0.3 * h
            head = np.array([x0 + sg * 0.85 * rb_k, y0 - 0.55 * rb_k, z_head])
            tub = np.array([x0 + sg * (rb_k + 18.0 * s), y0 - rb_k - 11.0 * s, z_head + 2.0])
            drop = drops[k] * (Hl / 262.0) * (1.0 - 0.18 * insp) * (1 + 0.04 * jit[0])
            zz = z_head + 5.0 * np.sin(np.pi * np.clip(u / 0.25, 0, 1)) - drop * descent
            _, cy_, a_, b_ = cage.section(zz)
            a0 = float(np.arcsin(np.clip((abs(tub[0]) + 12.0) / (a_[0] + r), 0.05, 0.95)))
            al = a0 + u * (alpha_end[k] * (1 + 0.02 * jit[1]) - a0)
            pts = np.stack([sg * (a_ + r + 1.5) * np.sin(al), cy_ - (b_ + r + 1.5) * np.cos(al), zz], 1)
            pts = np.vstack([head, tub, pts])
            radii = np.r_[0.8 * r, r, r * np.linspace(1.0, 1.12, n)]
            fade = np.r_[1.0, 1.0, np.clip((1.0 - u) / 0.14, 0.25, 1.0)]
            scene.tubes.append(_bone(pts, radii, cortex=0.28, fade=fade, min_sin=0.45))

    # --- clavicles, scapulae, humeri, sternum ------------------------------------------------
    lift = 14.0 if pose.view == "AP" else 0.0
    for side, sg in SIDES.items():
        ctrl = np.array([[0.19, 0.95, -0.165], [0.42, 1.05, -0.145], [0.70, 0.90, -0.12],
                         [0.95, 0.42, -0.09], [1.12, 0.0, -0.07], [1.22, -0.22, -0.065]])
        pts = _spline(np.stack([sg * ctrl[:, 0] * W, ctrl[:, 1] * D, ctrl[:, 2] * H + lift], 1), 20)
        radii = np.interp(np.linspace(0, 1, 20), [0, 0.3, 0.7, 1], [8.0, 6.4, 5.6, 6.8]) * s
        scene.tubes.append(_bone(pts, radii, cortex=0.3))

        # scapula: a thin blade on the posterolateral wall with a thick lateral border
        ang = 0.80 + 0.45 * pose.scapula_out
        zs = -0.30 * H
        _, cy_, a_, b_ = (x[0] for x in cage.section(np.array([zs])))
        centre = np.array([sg * (a_ + 16) * np.sin(ang), cy_ - (b_ + 16) * np.cos(ang), zs])
        tangent = np.array([sg * (a_ + 16) * np.cos(ang), (b_ + 16) * np.sin(ang), 0.0])
        tangent /= np.linalg.norm(tangent)
        normal = np.cross(tangent, [0, 0, 1.0])
        blade = Ellipsoid.from_axes(centre, [44 * s, 66 * s, 2.2 * s], np.stack([tangent, [0, 0, 1.0], normal], 1))
        scene.add(Region((blade,)), 0.8 * bone)
        glen = centre + tangent * 40 * s + np.array([0, 0, 58 * s])
        inf_angle = centre - tangent * 20 * s - np.array([0, 0, 70 * s])
        border = _spline(np.array([glen, centre + tangent * 22 * s - np.array([0, 0, 10 * s]), inf_angle]), 10)
        scene.tubes.append(_bone(border, 4.3 * s, cortex=0.35))
        spine_s = _spline(np.array([centre - tangent * 38 * s + np.array([0, 0, 30 * s]),
                                    centre + np.array([0, 0, 45 * s]) - normal * 8, pts[-1]]), 10)
        scene.tubes.append(_bone(spine_s, 4.0 * s, cortex=0.35))

        # humerus: head at the glenoid; shaft down at the side (frontal), raised (lateral)
        head_c = glen + tangent * 26 * s + np.array([0, 0, -8 * s])
        head_c[0] = sg * max(abs(head_c[0]), W + 38 * s)
        for view, direction in (("frontal", np.array([sg * 0.22, 0.05, -1.0])),
                                ("lateral", np.array([sg * 0.12, 0.28, 1.0]))):
            direction = direction / np.linalg.norm(direction)
            if view == "frontal" and not pose.arms_in_view:
                continue                     # arms held away from the field
            start = head_c if view == "frontal" else head_c + direction * 90 * s
            shaft = start + np.outer(np.linspace(0.5, 9.0, 8), direction * 28 * s)
            scene.tubes.append(_bone(shaft, 11.0 * s, cortex=0.3, views=(view,)))
            if view == "lateral":
                continue
            arm = Ellipsoid.from_axes(head_c + direction * 150 * s,
                                      [150 * s, 42 * s + 0.5 * anat.fat, 44 * s + 0.5 * anat.fat],
                                      rotation_to(direction))
            scene.add(Region((arm,), (body, neck, sh[side])), MU["fat"], views=(view,))
        # the raised arms of a lateral film take the humeral heads above the field
        scene.add(Region((Ellipsoid.from_axes(head_c, [24 * s] * 3),)), bone, views=("frontal",))
        scene.add(Region((Ellipsoid.from_axes(head_c, [21 * s] * 3),)), 0.8 * (MU["trabecular"] - MU["cortical"]),
                  views=("frontal",))

    y_st = float(cage.section(np.array([-0.35 * H]))[1][0] + cage.section(np.array([-0.35 * H]))[3][0]) + 6.0
    # sternum: manubrium and body, cortex round marrow (a dense strip on the lateral film)
    for centre, axes, rot in (([0, y_st - 4, -0.15 * H], np.array([24 * s, 7 * s, 22 * s]), None),
                              ([0, y_st + 2, -0.41 * H], np.array([14 * s, 6 * s, 0.22 * H]), rot_x(-0.25))):
        scene.add(Region((Ellipsoid.from_axes(centre, axes, rot),)), bone)
        scene.add(Region((Ellipsoid.from_axes(centre, axes - 1.6, rot),)), MU["trabecular"] - MU["cortical"])

    # --- breasts: hanging on the lower anterior wall, upper pole tucked into the body ------
    if anat.breast > 0:
        br = anat.breast
        for side, sg in SIDES.items():
            c = [sg * 0.48 * W, front_skin - 40.0 * s, -0.60 * H - 8 * br]
            e = Ellipsoid.from_axes(c, [70 * s * br ** 0.4, (34 + 22 * br) * s, 64 * s * br ** 0.5],
                                    rot_y(sg * 0.3) @ rot_x(-0.45))
            scene.add(Region((e,), (body,)), MU["fat"] + 0.0008)

    # --- gastric bubble (air over fluid under the left hemidiaphragm) ------------------------
    if anat.gastric > 0:
        g = anat.gastric
        c = np.array([0.42 * W, 0.22 * D, top_l - 22.0 * g - 8.0])
        e = Ellipsoid.from_axes(c, [30 * g * s, 26 * g * s, 18 * g * s])
        level = HalfSpace.through(c - [0, 0, 8 * g], [0, 0, -1.0])
        scene.add(Region((e, level, domes["left"])), -(MU["soft"] - MU["air"]))

    th = Thorax(anatomy=anat, pose=pose, scene=scene, cage=cage, body=body, lung_loft=lung_loft, lung=lung,
                lung_cutters=lung_cutters, domes=domes, heart_parts=parts, hilum=hila(anat), carina=carina,
                trachea=trachea, vertebra_z=vertebra_z, spine_y=spine_y, dome_top=dome_top, z_base=z_base,
                front_skin=front_skin, back_skin=back_skin, side_skin=side_skin, vessels={},
                heart_scale=heart_scale)
    # The patient's vascular tree, grown once in a reference inspiration, follows the lungs'
    # height at this one (the lungs stretch from the apex, z = 0).
    stretch = np.array([1.0, 1.0, Hl / reference_frame(anat).lung_height])
    for side, sets in patient_vessels(anat).items():
        th.vessels[side] = [ts.transformed(lambda p: p * stretch) for ts in sets]
    return th


REFERENCE_POSE = Pose(view="PA", portable=False, inspiration=0.0, rotation=0.0, lateral_rotation=0.0,
                      shift=(0.0, 0.0), lateral_shift=(0.0, 0.0), scapula_out=1.0, arms_in_view=False,
                      exposure={})


@functools.lru_cache(maxsize=16)
def reference_frame(anat: Anatomy) -> "Frame":
    """The patient's frame at mid inspiration (where the vascular tree is grown)."""
    return thorax_frame(anat, REFERENCE_POSE)


def hila(anat: Anatomy) -> dict[str, np.ndarray]:
    """Where each lung's vessels enter: below the carina, the left hilum higher than the right."""
    W, D, H = anat.half_width, anat.half_depth, anat.lung_height
    carina_z = -0.36 * H
    return {"right": np.array([-0.25 * W, -0.1 * D, carina_z - 32.0]),
            "left": np.array([0.23 * W, -0.1 * D, carina_z - 16.0])}


@functools.lru_cache(maxsize=16)
def patient_vessels(anat: Anatomy) -> dict[str, list[TubeSet]]:
    """The patient's pulmonary vessels, grown in the lungs at the reference inspiration.

    Cached per patient: every study of a patient shows the same tree.
    """
    fr = reference_frame(anat)
    W, D, H = anat.half_width, anat.half_depth, anat.lung_height
    domes = (fr.domes["right"], fr.domes["left"])
    hilum = hila(anat)
    # inside test: the lung envelope minus diaphragm, heart and the midline (cheap and enough)
    midline = Loft.build([-1.5 * H, 0.4 * H], 0.0, 0.0, 0.15 * W, 1.2 * D)
    cutters = tuple(heart_parts(anat, fr)) + domes + (midline,)
    out = {}
    for side in SIDES:
        lung = Region((fr.lung_loft[side],), cutters)
        out[side] = grow_vessels(lung, hilum[side], side, anat.scale,
                                 np.random.default_rng([anat.seed, 1 if side == "left" else 2]))
    return out


# ------------------------------------------------------------------------------ vessels
def grow_vessels(lung: Region, h: np.ndarray, side: str, s: float, rng: np.random.Generator,
                 min_radius: float = 0.5, max_tips: int = 650) -> list[TubeSet]:
    """A branching pulmonary vascular tree inside one lung, grown generation by generation.

    Branches taper and fork (a main continuation and a thinner side branch), wander a little,
    lean away from the hilum and stop at the pleura, so markings thin out towards the
    periphery as on a real film. Returns tube sets by generation, each max-combined.
    """
    sg = SIDES[side]
    dirs = np.array([[0.3 * sg, 0.05, 0.95], [0.55 * sg, -0.3, 0.75], [0.95 * sg, 0.15, 0.2],
                     [0.8 * sg, 0.45, -0.3], [0.55 * sg, 0.1, -0.85], [0.35 * sg, -0.55, -0.75],
                     [0.35 * sg, 0.8, -0.45], [0.8 * sg, -0.5, -0.2]])
    r = np.array([5.4, 4.8, 5.4, 5.2, 6.6, 6.2, 5.0, 5.2]) * s
    pos = np.repeat(h[None], len(dirs), 0) + dirs * 4.0
    d = dirs / np.linalg.norm(dirs, axis=1, keepdims=True)
    seg0, seg1, rad0, rad1, gens = [], [], [], [], []
    for gen in range(16):
        if not len(pos):
            break
        length = (5.0 * r + 7.0) * rng.uniform(0.7, 1.3, len(r))
        out = pos - h
        out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-6)
        d = d + 0.18 * out + rng.normal(0, 0.14, d.shape)
        d /= np.linalg.norm(d, axis=1, keepdims=True)
        end = pos + d * length[:, None]
        ok = lung.contains(end)
        half = pos + d * (0.5 * length)[:, None]
        retry = ~ok & lung.contains(half)
        end = np.where(retry[:, None], half, end)
        ok |= retry
        mid = (pos + end) / 2 + rng.normal(0, 0.07, pos.shape) * length[:, None]
        rt = r * 0.9
        seg0 += [pos[ok], mid[ok]]
        seg1 += [mid[ok], end[ok]]
        rad0 += [r[ok], (r[ok] + rt[ok]) / 2]
        rad1 += [(r[ok] + rt[ok]) / 2, rt[ok]]
        gens.append(np.full(2 * int(ok.sum()), gen))
        pos, d, r = end[ok], d[ok], rt[ok]
        if not len(pos):
            break
        # fork: a main continuation and one (sometimes two) side branches
        kids = np.where(rng.random(len(pos)) < 0.2, 3, 2)
        idx = np.repeat(np.arange(len(pos)), kids)
        rank = np.arange(len(idx)) - np.repeat(np.cumsum(kids) - kids, kids)
        main = rank == 0
        ratio = np.where(main, rng.uniform(0.78, 0.9, len(idx)), rng.uniform(0.5, 0.72, len(idx)))
        perp = np.cross(d[idx], rng.normal(0, 1, (len(idx), 3)))
        perp /= np.maximum(np.linalg.norm(perp, axis=1, keepdims=True), 1e-9)
        angle = np.where(main, rng.uniform(0.1, 0.35, len(idx)), rng.uniform(0.55, 1.0, len(idx)))
        d = d[idx] * np.cos(angle)[:, None] + perp * np.sin(angle)[:, None]
        pos, r = pos[idx], r[idx] * ratio
        alive = r >= min_radius * s
        if alive.sum() > max_tips:             # keep the largest: the film shows those
            alive &= r >= np.sort(r[alive])[-max_tips]
        pos, d, r = pos[alive], d[alive], r[alive]
    if not seg0:
        return []
    p0, p1 = np.concatenate(seg0), np.concatenate(seg1)
    r0, r1 = np.concatenate(rad0), np.concatenate(rad1)
    g = np.concatenate(gens)
    mu = MU["soft"] - MU["lung"]
    sets = []
    for lo, hi in ((0, 2), (2, 4), (4, 6), (6, 9), (9, 99)):
        keep = (g >= lo) & (g < hi)
        if keep.any():
            sets.append(TubeSet(p0[keep], p1[keep], r0[keep], r1[keep], mu, tag=f"vessels:{side}"))
    return sets
