"""Burned-in text and markers: laterality letters, "PORTABLE", projection labels, date/time
stamps, at varied places, sizes and intensities, each with its exact pixel mask.

Text is drawn with Pillow's built-in scalable font (``ImageFont.load_default(size=...)``), which
needs no font file or download. The clean image is kept: the texted image differs from it only
inside the returned mask, so text removal can be scored exactly.
"""

from __future__ import annotations

import functools

import numpy as np


@functools.lru_cache(maxsize=64)
def _font(size: int):
    from PIL import ImageFont

    return ImageFont.load_default(size=size)


def sample_text_items(view: str, context: dict, study_date: str, size: int,
                      rng: np.random.Generator) -> list[dict]:
    """Choose 1-4 annotations for one image: what, where (anchor), how large and how bright."""
    frontal = view != "LATERAL"
    pool: list[str] = []
    if frontal:
        pool.append(str(rng.choice(["L", "R"], p=[0.8, 0.2])))
        if context.get("portable"):
            pool.append("PORTABLE")
            pool.append(str(rng.choice(["AP", "SUPINE", "SEMI-ERECT", "UPRIGHT", "AP PORTABLE"])))
        else:
            pool.append(str(rng.choice(["PA", "ERECT", "STANDING", "UPRIGHT"])))
    else:
        pool += ["L", str(rng.choice(["LAT", "LATERAL", "LEFT LAT"]))]
    d = study_date if len(study_date) == 8 else "21500101"
    hh, mm, ss = int(rng.integers(0, 24)), int(rng.integers(0, 60)), int(rng.integers(0, 60))
    stamps = [f"{d[:4]}-{d[4:6]}-{d[6:]} {hh:02d}:{mm:02d}", f"{d[4:6]}/{d[6:]}/{d[:4]}",
              f"{hh:02d}:{mm:02d}:{ss:02d}", f"{d[6:]}.{d[4:6]}.{d[:4]} {hh:02d}:{mm:02d}"]
    pool.append(str(rng.choice(stamps)))
    count = int(rng.integers(1, min(4, len(pool)) + 1))
    chosen = [pool[i] for i in sorted(rng.choice(len(pool), count, replace=False))]
    anchors = ["top-left", "top-right", "bottom-left", "bottom-right", "top", "left", "right", "bottom"]
    items = []
    for k, text in enumerate(chosen):
        short = len(text) <= 2
        if short and frontal:
            # laterality markers sit near the upper corner on the side they name
            anchor = "top-right" if (text == "L") == (rng.random() < 0.85) else "top-left"
        else:
            anchor = str(rng.choice(anchors))
        items.append({
            "text": text,
            "anchor": anchor,
            "font_px": int(max(7, round(size * rng.uniform(0.03, 0.075) * (1.4 if short else 1.0)))),
            "value": int(rng.integers(205, 256) if rng.random() < 0.8 else rng.integers(140, 205)),
            "boxed": bool(short and rng.random() < 0.35),
            "jitter": [float(rng.uniform(0.02, 0.12)), float(rng.uniform(0.02, 0.12))],
        })
    return items


def _place(anchor: str, tw: int, th: int, size: int, jitter: list[float]) -> tuple[int, int]:
    jx, jy = int(jitter[0] * size), int(jitter[1] * size)
    x = {"left": jx, "right": size - tw - jx}.get(anchor.split("-")[-1], (size - tw) // 2 + jx - size // 16)
    y = {"top": jy, "bottom": size - th - jy}.get(anchor.split("-")[0], (size - th) // 2 + jy - size // 16)
    if anchor in ("left", "right"):
        y = (size - th) // 3 + jy
    if anchor in ("top", "bottom"):
        x = (size - tw) // 2 + jx - size // 16
    return max(0, min(size - tw, x)), max(0, min(size - th, y))


def burn_in(image: np.ndarray, items: list[dict]) -> tuple[np.ndarray, np.ndarray, list[dict]]:
    """Draw ``items`` on a copy of ``image`` (uint8 HxW).

    Returns the texted image, the bool mask of every pixel the text or its box touched, and the
    items with their pixel boxes ``x0, y0, x1, y1`` (x1, y1 exclusive). Anti-aliased edges are
    blended, and belong to the mask.
    """
    from PIL import Image, ImageDraw

    size = image.shape[0]
    out = image.astype(np.float32)
    mask = np.zeros(image.shape, bool)
    placed = []
    for it in items:
        font = _font(it["font_px"])
        l, t, r, b = font.getbbox(it["text"])
        pad = max(1, it["font_px"] // 5) if it["boxed"] else 0
        tw, th = r - l + 2 * pad, b - t + 2 * pad
        x, y = _place(it["anchor"], tw, th, size, it["jitter"])
        layer = Image.new("L", (image.shape[1], image.shape[0]), 0)
        draw = ImageDraw.Draw(layer)
        draw.text((x + pad - l, y + pad - t), it["text"], fill=255, font=font)
        if it["boxed"]:
            draw.rectangle([x, y, x + tw - 1, y + th - 1], outline=255, width=1)
        alpha = np.asarray(layer, np.float32) / 255.0
        hit = alpha > 0
        if not hit.any():
            continue
        out = out + (it["value"] - out) * alpha
        mask |= hit
        ys, xs = np.nonzero(hit)
        placed.append({"text": it["text"], "x0": int(xs.min()), "y0": int(ys.min()),
                       "x1": int(xs.max()) + 1, "y1": int(ys.max()) + 1})
    texted = np.clip(np.rint(out), 0, 255).astype(np.uint8)
    texted[~mask] = image[~mask]
    return texted, mask, placed
