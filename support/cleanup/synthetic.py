"""Radiograph-like images with burned-in text whose masks, boxes and clean twins are known.

What a cleanup method is measured on when the phantom is not at hand: a smooth thorax-like
background (body, lungs, mediastinum, heart, diaphragm, faint ribs, detector noise) and the
annotations found on real films, drawn with PIL's built-in font at varied places, sizes and
intensities: laterality markers ("L", "R"), the view ("AP", "PORTABLE", ...), date and time.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import cv2
import numpy as np

VIEW_WORDS = ("AP", "PA", "PORTABLE", "SUPINE", "UPRIGHT", "ERECT", "SEMI-ERECT", "PORTABLE AP")
LATERALITY = ("L", "R")


@dataclasses.dataclass
class TextImage:
    """One synthetic radiograph with text: the image, its clean twin, the text mask and items.

    ``items`` are ``{"text", "x0", "y0", "x1", "y1"}`` in pixels (``x1``/``y1`` exclusive), the
    form of the phantom's ``text_items.csv``.
    """

    image: np.ndarray          # uint8 (H, W), text burned in
    clean: np.ndarray          # uint8 (H, W), the same image without text
    text_mask: np.ndarray      # bool (H, W), pixels the text touched
    items: list[dict]


def _blur(image: np.ndarray, sigma: float) -> np.ndarray:
    return cv2.GaussianBlur(image, (0, 0), sigmaX=sigma, sigmaY=sigma, borderType=cv2.BORDER_REFLECT)


def _ellipse(canvas: np.ndarray, centre, axes, angle: float, value: float) -> None:
    h, w = canvas.shape
    cv2.ellipse(canvas, (int(centre[0] * w), int(centre[1] * h)), (max(1, int(axes[0] * w)), max(1, int(axes[1] * h))),
                angle, 0, 360, float(value), thickness=-1, lineType=cv2.LINE_AA)


def radiograph_background(rng: np.random.Generator, size: int = 256) -> np.ndarray:
    """A smooth frontal-chest-like image, float32 (size, size) in [0, 1]; bright = dense."""
    s = int(size)
    if s < 16:
        raise ValueError(f"size {size}: expected at least 16 pixels")
    img = np.zeros((s, s), np.float32)
    # body: soft tissue, brighter towards the abdomen
    _ellipse(img, (0.5 + rng.normal(0, 0.02), 0.56), (0.46 + rng.normal(0, 0.02), 0.6), 0, 0.55 + rng.uniform(-0.08, 0.08))
    yy = np.linspace(0, 1, s, dtype=np.float32)[:, None]
    img *= 0.85 + 0.3 * yy
    # lungs (dark), mediastinum and spine (bright), heart (bright, lower left of the film)
    lungs = np.zeros_like(img)
    for side in (-1, 1):
        _ellipse(lungs, (0.5 + side * rng.uniform(0.17, 0.21), 0.45 + rng.normal(0, 0.02)),
                 (rng.uniform(0.13, 0.17), rng.uniform(0.26, 0.31)), side * rng.uniform(2, 8), 1.0)
    img -= lungs * rng.uniform(0.3, 0.4)
    spine = np.zeros_like(img)
    _ellipse(spine, (0.5, 0.5), (0.045, 0.55), 0, 1.0)
    img += spine * 0.12
    heart = np.zeros_like(img)
    _ellipse(heart, (0.5 + rng.uniform(0.03, 0.07), 0.6), (rng.uniform(0.13, 0.18), rng.uniform(0.11, 0.14)), 15, 1.0)
    img += heart * rng.uniform(0.22, 0.3) * (1 - 0.5 * lungs)
    diaphragm = np.zeros_like(img)
    _ellipse(diaphragm, (0.5, 0.93), (0.45, 0.17), 0, 1.0)
    img = np.maximum(img, diaphragm * rng.uniform(0.6, 0.75))
    img = _blur(img, s / 45)
    # ribs: faint bright arcs over the lungs, the bright structures a marker detector must ignore
    ribs = np.zeros_like(img)
    for k in range(8):
        y = 0.22 + 0.075 * k + rng.normal(0, 0.005)
        for side in (-1, 1):
            cv2.ellipse(ribs, (int((0.5 + side * 0.1) * s), int(y * s)), (int(0.22 * s), int(0.06 * s)),
                        0, 200 if side < 0 else -20, 340 if side < 0 else 160, 1.0,
                        thickness=max(1, s // 60), lineType=cv2.LINE_AA)
    img += _blur(ribs, max(0.6, s / 250)) * lungs * rng.uniform(0.06, 0.12)
    img += rng.normal(0, 0.012, img.shape).astype(np.float32)
    return np.clip(img, 0, 1)


def _random_datetime(rng: np.random.Generator) -> str:
    return (f"{rng.integers(1, 13):02d}/{rng.integers(1, 29):02d}/{rng.integers(2008, 2024)} "
            f"{rng.integers(0, 24):02d}:{rng.integers(0, 60):02d}")


def _text_plan(rng: np.random.Generator, size: int, max_items: int) -> list[tuple[str, int, bool]]:
    """(text, font size in pixels, prefer an edge) for the items of one image."""
    n = int(rng.integers(1, max_items + 1))
    kinds = rng.choice(["laterality", "view", "datetime"], size=n, p=[0.4, 0.35, 0.25])
    plan = []
    for kind in kinds:
        if kind == "laterality":
            plan.append((str(rng.choice(LATERALITY)), int(size * rng.uniform(0.06, 0.11)), True))
        elif kind == "view":
            plan.append((str(rng.choice(VIEW_WORDS)), int(size * rng.uniform(0.035, 0.06)), rng.random() < 0.8))
        else:
            plan.append((_random_datetime(rng), int(size * rng.uniform(0.032, 0.045)), True))
    return plan


def burn_text(clean: np.ndarray, plan: Sequence[tuple[str, int, bool]], rng: np.random.Generator,
              contrast: tuple[float, float] = (0.2, 0.6), intensity: tuple[float, float] | None = None,
              tries: int = 50) -> TextImage:
    """Draw ``plan``'s items on ``clean`` (uint8) at random free places -> :class:`TextImage`.

    Each item is blended with its antialiased coverage ``a``: ``out = clean * (1 - a) + v * a``;
    pixels with ``a = 0`` keep the clean value exactly. The text value ``v`` lies ``contrast``
    above the brightest background under the item (capped at white), as annotations are made
    to be read; with ``intensity`` it is drawn from that absolute range instead, which can make
    text on bright anatomy all but invisible (a stress test).
    """
    from PIL import Image, ImageDraw, ImageFont

    clean = np.asarray(clean)
    if clean.dtype != np.uint8 or clean.ndim != 2:
        raise ValueError(f"clean image: expected uint8 (H, W), got {clean.dtype} {clean.shape}")
    h, w = clean.shape
    out = clean.astype(np.float32) / 255.0
    mask = np.zeros((h, w), bool)
    taken = np.zeros((h, w), bool)
    items = []
    for text, font_px, edge in plan:
        font = ImageFont.load_default(size=max(6, int(font_px)))
        x0, y0, x1, y1 = ImageDraw.Draw(Image.new("L", (1, 1))).textbbox((0, 0), text, font=font)
        tw, th = x1 - x0, y1 - y0
        if tw + 4 > w or th + 4 > h:
            continue
        margin = max(2, int(0.02 * min(h, w)))
        for _ in range(tries):
            if edge:   # near the top or bottom band, where films carry their annotations
                x = int(rng.integers(margin, max(margin + 1, w - tw - margin)))
                band = max(1, int(0.12 * h))
                y = int(rng.integers(margin, margin + band)) if rng.random() < 0.5 else \
                    int(rng.integers(max(margin, h - th - margin - band), max(margin + 1, h - th - margin)))
            else:
                x = int(rng.integers(margin, max(margin + 1, w - tw - margin)))
                y = int(rng.integers(margin, max(margin + 1, h - th - margin)))
            box = (x, y, min(w, x + tw), min(h, y + th))
            pad = max(2, th // 3)
            if not taken[max(0, box[1] - pad):box[3] + pad, max(0, box[0] - pad):box[2] + pad].any():
                break
        else:
            continue
        layer = Image.new("L", (w, h), 0)
        ImageDraw.Draw(layer).text((x - x0, y - y0), text, font=font, fill=255)
        alpha = np.asarray(layer, np.float32) / 255.0
        if not alpha.any():
            continue
        touched = alpha > 0
        if intensity is not None:
            value = float(rng.uniform(*intensity))
        else:
            value = min(1.0, float(np.percentile(out[touched], 95)) + float(rng.uniform(*contrast)))
        out = out * (1 - alpha) + value * alpha
        mask |= touched
        ys, xs = np.nonzero(touched)
        bx0, by0, bx1, by1 = int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1
        taken[by0:by1, bx0:bx1] = True
        items.append({"text": text, "x0": bx0, "y0": by0, "x1": bx1, "y1": by1})
    image = np.clip(np.rint(out * 255.0), 0, 255).astype(np.uint8)
    image[~mask] = clean[~mask]
    return TextImage(image=image, clean=clean.copy(), text_mask=mask, items=items)


def synthetic_text_images(n: int, size: int = 256, seed: int = 0, max_items: int = 4, p_no_text: float = 0.15,
                          contrast: tuple[float, float] = (0.2, 0.6),
                          intensity: tuple[float, float] | None = None) -> list[TextImage]:
    """``n`` phantom-like radiographs at ``size`` px, a fraction ``p_no_text`` without any text
    (text contrast or intensity as :func:`burn_text`)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(int(n)):
        clean = np.clip(np.rint(radiograph_background(rng, size) * 255.0), 0, 255).astype(np.uint8)
        plan = [] if rng.random() < p_no_text else _text_plan(rng, size, max_items)
        out.append(burn_text(clean, plan, rng, contrast=contrast, intensity=intensity))
    return out


def write_text_dataset(root, images: Sequence[TextImage], name: str = "synthetic-text", seed: int = 0) -> list[str]:
    """Write ``images`` as a MIMIC-CXR-JPG-layout dataset with the phantom's text truth beside it
    (``phantom/text_masks``, ``phantom/clean``, ``phantom/text_items.csv``); returns the dicom ids.

    One study per image, a short normal report, "No Finding" labels and a patient row each, so
    a cleaned copy can be checked for what it carries over.
    """
    import csv
    import io

    from support.data.images import png_bytes
    from support.data.writer import MimicLayoutWriter, make_dicom_id, make_study_id, make_subject_id

    rng = np.random.default_rng(seed)
    ids, rows = [], []
    with MimicLayoutWriter(root, name) as writer:
        for i, item in enumerate(images):
            subject, study = make_subject_id(i), make_study_id(i)
            dicom = make_dicom_id(name, seed, i)
            view = "AP" if any("AP" in it["text"] or "PORTABLE" in it["text"] for it in item.items) else "PA"
            writer.add_image(subject_id=subject, study_id=study, dicom_id=dicom, image=item.image, view=view,
                             split="train" if i % 5 else "test")
            writer.add_report(subject, study, "                                 FINAL REPORT\n"
                              " EXAMINATION:  CHEST (PA AND LAT)\n\n FINDINGS:\n\n The lungs are clear. "
                              "The cardiomediastinal silhouette is normal.\n\n IMPRESSION:\n\n No acute "
                              "cardiopulmonary process.\n")
            writer.add_labels(subject, study, {"No Finding": 1.0})
            writer.add_patient(subject, "F" if rng.random() < 0.5 else "M", int(rng.integers(20, 90)))
            if item.text_mask.any():
                text_mask = np.where(item.text_mask, 255, 0).astype(np.uint8)
                writer.write_extra(f"phantom/text_masks/{dicom}.png", png_bytes(text_mask))
                writer.write_extra(f"phantom/clean/{dicom}.png", png_bytes(item.clean))
            rows += [(dicom, it["text"], it["x0"], it["y0"], it["x1"], it["y1"]) for it in item.items]
            ids.append(dicom)
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(("dicom_id", "text", "x0", "y0", "x1", "y1"))
        w.writerows(sorted(rows))
        writer.write_extra("phantom/text_items.csv", buf.getvalue().encode("utf-8"))
    return ids
