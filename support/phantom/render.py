"""One study of the phantom: the 3D thorax with its findings and devices, exposed as a frontal
(PA or AP) and a lateral radiograph of the same body, with masks, boxes and burned-in text."""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Mapping

import cv2
import numpy as np

from support.data.reports import validate_context, validate_spec
from support.phantom.anatomy import Anatomy, Pose, Thorax, build_thorax, heart_parts, sample_pose, thorax_frame
from support.phantom.devices import add_devices
from support.phantom.findings import NORMAL_CTR_MAX, add_lungs_and_findings, dome_lift_for
from support.phantom.primitives import Region
from support.phantom.projector import Projector, ViewGeometry
from support.phantom.radiograph import display, expose
from support.phantom.scene import MaskPart
from support.phantom.text import burn_in, sample_text_items

VIEWS = ("frontal", "lateral")
DETECTOR_MM = 430.0          # a 17 x 17 inch detector


@dataclasses.dataclass
class RenderedStudy:
    """The images and annotations of one study. Views are keyed "frontal" and "lateral";
    boxes are ``{"label", "x0", "y0", "x1", "y1"}`` in pixels with exclusive ``x1, y1``;
    ``structures`` holds full-image anatomy masks per view ("lungs", "heart", "bones"), pixel for
    pixel on the image."""

    frontal: np.ndarray
    lateral: np.ndarray | None
    frontal_clean: np.ndarray
    lateral_clean: np.ndarray | None
    masks: dict[str, dict[str, np.ndarray]]
    boxes: dict[str, list[dict]]
    text_items: dict[str, list[dict]]
    text_masks: dict[str, np.ndarray]
    truth: dict[str, Any]
    structures: dict[str, dict[str, np.ndarray]] = dataclasses.field(default_factory=dict)
    seconds: dict[str, float] = dataclasses.field(default_factory=dict)

    def image(self, view: str, clean: bool = False) -> np.ndarray | None:
        return getattr(self, f"{view}_clean" if clean else view)


def view_geometries(anat: Anatomy, pose: Pose, frame, size: int) -> dict[str, ViewGeometry]:
    """Frontal (PA: detector in front, 180 cm; AP: detector behind, 100 cm) and left lateral."""
    H = anat.lung_height
    px = DETECTOR_MM / size
    ap = pose.view == "AP"
    frontal = ViewGeometry(
        "frontal", size, px, pose.rotation,
        np.array([pose.shift[0], 0.0, -0.47 * H + pose.shift[1]]),
        1000.0 if ap else 1800.0,
        (frame.back_skin - 15.0) if ap else (frame.front_skin + 15.0), -1 if ap else 1)
    lateral = ViewGeometry(
        "lateral", size, px, pose.lateral_rotation,
        np.array([0.0, 0.05 * anat.half_depth + pose.lateral_shift[0], -0.47 * H + pose.lateral_shift[1]]),
        1800.0, frame.side_skin + 15.0, 1)
    return {"frontal": frontal, "lateral": lateral}


def cardiothoracic_ratio(heart: np.ndarray, lungs: np.ndarray) -> tuple[float, int, int]:
    """CTR on a frontal mask: the heart's full transverse width over the widest internal
    thoracic width (lung fields), both in pixels."""
    cols = np.flatnonzero(heart.any(axis=0))
    if not len(cols):
        raise ValueError("cardiothoracic ratio: the heart mask is empty")
    heart_w = int(cols[-1] - cols[0] + 1)
    rows = np.flatnonzero(lungs.any(axis=1))
    if not len(rows):
        raise ValueError("cardiothoracic ratio: the lung mask is empty")
    sub = lungs[rows]
    left = np.argmax(sub, axis=1)
    right = sub.shape[1] - 1 - np.argmax(sub[:, ::-1], axis=1)
    thorax_w = int((right - left + 1).max())
    return heart_w / thorax_w, heart_w, thorax_w


def _heart_mask(pr: Projector, regions) -> np.ndarray:
    m = np.zeros((pr.n, pr.n), bool)
    for reg in regions:
        m |= pr.chord(reg) > 0
    return m


def solve_heart_scale(anat: Anatomy, frame, pr: Projector, target: float) -> float:
    """The heart enlargement whose rendered frontal CTR equals ``target`` (fixed-point steps on
    the measured ratio; the thoracic width does not depend on the heart). On coarse grids,
    where whole pixels limit the precision, the ratio is kept on ``target``'s side of 0.5."""
    size = pr.n
    domes = (frame.domes["right"], frame.domes["left"])
    lungs = np.zeros((size, size), bool)
    for loft in frame.lung_loft.values():
        lungs |= pr.chord(Region((loft,), domes)) > 0
    def measure(scale: float) -> float:
        heart = _heart_mask(pr, [Region((p,), domes) for p in heart_parts(anat, frame, scale)])
        return cardiothoracic_ratio(heart, lungs)[0]

    # The heart's width grows almost linearly with its transverse scale: step on the measured
    # ratio until it is within tolerance, keeping the best measured scale.
    scale, best = 1.0, None
    for _ in range(4):
        ctr = measure(scale)
        if best is None or abs(ctr - target) < abs(best[1] - target):
            best = (scale, ctr)
        if abs(ctr - target) < 0.006:
            break
        scale *= target / ctr
    scale, ctr = best
    above = target > 0.5
    for _ in range(12):
        if (ctr > 0.5) == above and ctr != 0.5:
            break
        scale *= 1.02 if above else 0.98
        ctr = measure(scale)
    return float(scale)


def _texture(shape, seed: int, view_index: int, amplitude: float) -> np.ndarray:
    """Smooth patchy modulation in [1 - amplitude, 1] (airspace disease is never uniform)."""
    rng = np.random.default_rng([seed, view_index])
    coarse = rng.random((6, 6)).astype(np.float32)
    field = cv2.resize(coarse, (shape[1], shape[0]), interpolation=cv2.INTER_CUBIC)
    return 1.0 - amplitude * np.clip(field, 0.0, 1.0)


def _boxes(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    rows = np.flatnonzero(mask.any(axis=1))
    if not len(rows):
        return None
    cols = np.flatnonzero(mask.any(axis=0))
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def _project(th: Thorax, pr: Projector, view_index: int):
    """Line integrals of anatomy and of devices, and each annotated part's footprint."""
    sc = th.scene
    geom = pr.geom
    n = geom.size
    anatomy = np.zeros((n, n))
    devices = np.zeros((n, n))
    rects: dict[int, tuple | None] = {}

    def chord(reg: Region) -> np.ndarray:
        """Full-image chord of a region, reusing the rendering pass when it was an item."""
        key = id(reg)
        if key not in rects:
            rects[key] = pr.chord_rect(reg)
        full = np.zeros((n, n))
        if rects[key] is not None:
            (i0, i1, j0, j1), ch = rects[key]
            full[i0:i1, j0:j1] = ch
        return full

    for item in sc.regions:
        if geom.name not in item.views:
            continue
        key = id(item.region)
        if key not in rects:
            rects[key] = pr.chord_rect(item.region)
        if rects[key] is None:
            continue
        (i0, i1, j0, j1), ch = rects[key]
        if item.texture:
            ch = ch * _texture(ch.shape, item.texture_seed, view_index, item.texture)
        (devices if item.device else anatomy)[i0:i1, j0:j1] += item.mu * ch
    body_sets = [t for t in sc.tubes if t.tag not in sc.device_tags]
    body_sets += [t for sets in th.vessels.values() for t in sets]
    tubes, bone_cover = pr.tubes(body_sets, masks_for={"bone"})
    anatomy += tubes
    dev_sets = [t for t in sc.tubes if t.tag in sc.device_tags]
    dev, cover = pr.tubes(dev_sets, masks_for=sc.device_tags)
    devices += dev
    footprints: dict[str, np.ndarray] = {}
    for part in sc.parts:
        if geom.name not in part.views:
            continue
        m = np.zeros((n, n), bool)
        for reg in part.include:
            m |= chord(reg) > part.min_chord_mm
        for tag in part.tube_tags:
            if tag in cover:
                m |= cover[tag]
        for reg in part.exclude:
            m &= ~(chord(reg) > 0)
        footprints[part.name] = m
    heart = np.zeros((n, n), bool)
    for reg in sc.heart:
        heart |= chord(reg) > 0
    lungs = np.zeros((n, n), bool)
    for reg in sc.lungs.values():
        lungs |= chord(reg) > 0
    structures = {"lungs": lungs, "heart": heart, "bones": bone_cover.get("bone", np.zeros((n, n), bool))}
    return anatomy, devices, footprints, structures


def render_study(spec: Mapping[str, Any], context: Mapping[str, Any], anatomy: Anatomy, size: int,
                 rng: np.random.Generator, *, text_share: float = 0.0, study_date: str = "") -> RenderedStudy:
    """Render one study: a frontal view (``context["view"]`` PA or AP) and, when
    ``context["has_lateral"]``, a left lateral of the same 3D body.

    The heart is sized so that the cardiothoracic ratio measured on the rendered frontal masks
    equals ``spec["Cardiomegaly"]["ctr"]`` (or ``context["ctr"]``, or the patient's own), kept
    above 0.5 exactly when Cardiomegaly is present; the measured value is in ``truth["ctr"]``.
    Each image gets burned-in text with probability ``text_share``.
    """
    validate_spec(spec)
    validate_context({**{"ctr": 0.45}, **dict(context)})
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"render_study: rng must be a numpy.random.Generator, got {type(rng).__name__}")
    if not 32 <= int(size) <= 2048:
        raise ValueError(f"render_study: size {size} outside 32..2048")
    t0 = time.perf_counter()
    cardiomegaly = "Cardiomegaly" in spec
    target = float(spec["Cardiomegaly"]["ctr"]) if cardiomegaly else float(context.get("ctr") or anatomy.ctr)
    if cardiomegaly and target <= 0.52:
        raise ValueError(f"finding spec: 'Cardiomegaly'.ctr {target} must exceed 0.52 to render clearly above 0.5")
    if not cardiomegaly:
        target = min(target, NORMAL_CTR_MAX)
    pose = sample_pose(rng, context["view"], bool(context["portable"]))
    dome_lift = dome_lift_for(spec)
    frame = thorax_frame(anatomy, pose, dome_lift)
    geoms = view_geometries(anatomy, pose, frame, size)
    # one projector per view: shapes shared by the heart solve, lungs and findings are
    # projected once
    projectors = {view: Projector(g) for view, g in geoms.items()}
    heart_scale = solve_heart_scale(anatomy, frame, projectors["frontal"], target)
    th = build_thorax(anatomy, pose, heart_scale=heart_scale, dome_lift=dome_lift, frame=frame)
    findings_truth = add_lungs_and_findings(th, spec, rng)
    devices_truth = add_devices(th, spec["Support Devices"]["devices"], rng) if "Support Devices" in spec else {}
    if cardiomegaly:
        th.scene.parts.append(MaskPart("Cardiomegaly", "Cardiomegaly", include=tuple(th.scene.heart),
                                       min_chord_mm=0.0))
    t1 = time.perf_counter()

    views = ["frontal"] + (["lateral"] if context["has_lateral"] else [])
    images, cleans, masks, boxes, text_items, text_masks, structures = {}, {}, {}, {}, {}, {}, {}
    ctr = heart_w = thorax_w = None
    exposure = pose.exposure
    for vi, view in enumerate(views):
        g = geoms[view]
        anat_l, dev_l, footprints, structures[view] = _project(th, projectors[view], vi)
        if view == "frontal":
            ctr, heart_w, thorax_w = cardiothoracic_ratio(structures[view]["heart"], structures[view]["lungs"])
            if (ctr > 0.5) != cardiomegaly:
                raise RuntimeError(f"rendered cardiothoracic ratio {ctr:.3f} for target {target:.3f} "
                                   f"falls on the wrong side of 0.5 (Cardiomegaly {cardiomegaly})")
        photons = exposure["photons_per_mm2"] if view == "frontal" else exposure["lateral_photons_per_mm2"]
        scatter = exposure["scatter"] if view == "frontal" else 0.35
        log_img = expose(anat_l + dev_l, g.pixel_mm, rng, photons_per_mm2=photons, scatter=scatter)
        clean = display(log_img, g.pixel_mm, reference=dev_l < 0.01, unsharp=exposure["unsharp"],
                        gamma=exposure["gamma"] * (1.15 if view == "lateral" else 1.0))
        view_masks: dict[str, np.ndarray] = {}
        view_boxes = []
        for part in th.scene.parts:
            m = footprints.get(part.name)
            if m is None or not m.any():
                continue
            view_masks[part.label] = view_masks.get(part.label, np.zeros_like(m)) | m
            x0, y0, x1, y1 = _boxes(m)
            view_boxes.append({"label": part.label, "x0": x0, "y0": y0, "x1": x1, "y1": y1})
        masks[view], boxes[view] = view_masks, view_boxes
        texted, tmask, items = clean, np.zeros(clean.shape, bool), []
        if text_share > 0 and rng.random() < text_share:
            meta_view = context["view"] if view == "frontal" else "LATERAL"
            texted, tmask, items = burn_in(clean, sample_text_items(meta_view, dict(context), study_date, size, rng))
        images[view], cleans[view], text_items[view], text_masks[view] = texted, clean, items, tmask
    t2 = time.perf_counter()

    truth = {
        "ctr": round(float(ctr), 4),
        "heart_width_px": heart_w,
        "thorax_width_px": thorax_w,
        "heart_scale": round(float(heart_scale), 4),
        "pixel_mm": round(DETECTOR_MM / size, 4),
        "pose": pose.to_dict(),
        "anatomy": anatomy.to_dict(),
        "findings": findings_truth,
        "devices": devices_truth,
    }
    return RenderedStudy(
        frontal=images["frontal"], lateral=images.get("lateral"),
        frontal_clean=cleans["frontal"], lateral_clean=cleans.get("lateral"),
        masks=masks, boxes=boxes, text_items=text_items, text_masks=text_masks, truth=truth,
        structures=structures,
        seconds={"anatomy": t1 - t0, "projection": t2 - t1},
    )
