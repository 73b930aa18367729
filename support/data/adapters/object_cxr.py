"""Object-CXR (foreign objects on chest X-rays): ``train.csv``/``dev.csv`` + folders ``train/ dev/``.

Columns ``image_name,annotation``; ``annotation`` is empty (no object) or ";"-separated objects
``type x1 y1 x2 y2 [x3 y3 ...]`` in pixels: type 0 rectangle (two corners), 1 ellipse (its
bounding box), 2 polygon (three or more points). Each object becomes a box; with
``masks=True`` the shapes are also filled into one SIIM-RLE mask per image. There are no
patient ids: each image is its own subject. The released test set has no annotations.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from support.data.images import ImageReadError, image_size
from support.data.records import (
    BoxSpace, DatasetSummary, UnsafePathError, empty_record, finish, read_table, require_root,
    resolve_inside,
)
from support.data.rle import rle_encode

KIND = "object-cxr"
SHAPES = {0: "rectangle", 1: "ellipse", 2: "polygon"}


def parse_annotation(text: str) -> list[tuple[int, np.ndarray]]:
    """``"0 x1 y1 x2 y2;2 x1 y1 x2 y2 x3 y3"`` -> [(type, (N, 2) points)]; ValueError when malformed."""
    objects = []
    for part in (p.strip() for p in str(text or "").split(";")):
        if not part:
            continue
        nums = part.split()
        try:
            kind = int(nums[0])
            values = np.array([float(v) for v in nums[1:]], dtype=np.float64)
        except ValueError:
            raise ValueError(f"object {part[:40]!r}: expected integers 'type x1 y1 x2 y2 ...'") from None
        if kind not in SHAPES:
            raise ValueError(f"object {part[:40]!r}: type {kind}, expected 0, 1 or 2")
        if values.size % 2 or (kind in (0, 1) and values.size != 4) or (kind == 2 and values.size < 6):
            raise ValueError(f"object {part[:40]!r}: wrong number of coordinates for a {SHAPES[kind]}")
        if not np.isfinite(values).all() or (values < 0).any():
            raise ValueError(f"object {part[:40]!r}: coordinates must be finite and non-negative")
        objects.append((kind, values.reshape(-1, 2)))
    return objects


def rasterise(objects: list[tuple[int, np.ndarray]], width: int, height: int) -> np.ndarray:
    """Fill the shapes into a bool (height, width) mask."""
    import cv2

    canvas = np.zeros((height, width), np.uint8)
    for kind, pts in objects:
        if kind == 0:
            (x0, y0), (x1, y1) = np.rint(pts.min(0)).astype(int), np.rint(pts.max(0)).astype(int)
            cv2.rectangle(canvas, (x0, y0), (x1, y1), 1, thickness=-1)
        elif kind == 1:
            (x0, y0), (x1, y1) = pts.min(0), pts.max(0)
            centre = (int(round((x0 + x1) / 2)), int(round((y0 + y1) / 2)))
            axes = (max(1, int(round((x1 - x0) / 2))), max(1, int(round((y1 - y0) / 2))))
            cv2.ellipse(canvas, centre, axes, 0, 0, 360, 1, thickness=-1)
        else:
            cv2.fillPoly(canvas, [np.rint(pts).astype(np.int32)], 1)
    return canvas.astype(bool)


def _objects_inside(objects: list[tuple[int, np.ndarray]], space: BoxSpace, rec: dict, where: str,
                    summary: DatasetSummary) -> list[tuple[int, np.ndarray]]:
    """Add each object's box to ``rec``; an object that leaves the image is skipped and counted
    (for boxes and masks alike), never clipped to the border."""
    inside = []
    for kind, pts in objects:
        (x0, y0), (x1, y1) = pts.min(0), pts.max(0)
        try:
            box = space.normalise("foreign object", x0, y0, x1, y1)
        except ValueError as exc:
            summary.skip("box outside the image", where, f"{rec['image_id']}: {SHAPES[kind]} {exc}")
            continue
        rec["boxes"].append({**box, "shape": SHAPES[kind]})
        inside.append((kind, pts))
    return inside


def load(root: str | os.PathLike, *, strict: bool = False, verify_images: bool = False,
         masks: bool = False, dev_split: str = "validate", max_examples: int = 5):
    """Read Object-CXR -> (record table, summary). ``dev_split``: "validate" or "test"."""
    root = require_root(root, KIND)
    if dev_split not in ("validate", "test"):
        raise ValueError(f"dev_split {dev_split!r}: expected 'validate' or 'test'")
    summary = DatasetSummary(KIND, str(root), strict=strict, max_examples=max_examples)
    records, seen = [], set()
    for fname, folder, split in (("train.csv", "train", "train"), ("dev.csv", "dev", dev_split)):
        path = root / fname
        if not path.is_file():
            raise FileNotFoundError(f"{KIND} dataset at {root}: {fname} not found; expected train.csv "
                                    f"and dev.csv beside train/ and dev/")
        table = read_table(path, ("image_name", "annotation"), KIND)
        for i, r in enumerate(table.to_dict("records")):
            where = f"{fname} row {i + 2}"
            try:
                image_path = resolve_inside(root / folder, r["image_name"])
                objects = parse_annotation(r["annotation"])
            except UnsafePathError as exc:
                summary.skip("unsafe path", where, str(exc))
                continue
            except ValueError as exc:
                summary.skip("bad annotation", where, str(exc))
                continue
            image_id = Path(r["image_name"]).stem
            if image_id in seen:
                summary.skip("duplicate row", where, f"{image_id} listed again; expected one row per image")
                continue
            seen.add(image_id)
            rec = empty_record(KIND)
            rec.update(subject_id=image_id, study_id=image_id, image_id=image_id, path=str(image_path),
                       split=split, source_labels=["foreign object"] if objects else [])
            if objects or masks:
                try:
                    width, height = image_size(image_path)
                except ImageReadError as exc:
                    reason = "missing file" if "not found" in exc.reason else "corrupt image"
                    summary.skip(reason, image_path, exc.reason)
                    continue
                objects = _objects_inside(objects, BoxSpace(width, height, image_path.name), rec, where, summary)
                if masks:
                    rec["masks"] = [{"label": "foreign object", "width": width, "height": height,
                                     "rle": rle_encode(rasterise(objects, width, height))}]
            records.append(rec)
    return finish(records, summary, verify_images)
