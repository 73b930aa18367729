"""RSNA Pneumonia Detection Challenge (stage 2): labels CSV + DICOMs.

``stage_2_train_labels.csv``: ``patientId,x,y,width,height,Target``, one row per box (or one
row with blank box and Target 0). ``stage_2_detailed_class_info.csv`` (optional):
``patientId,class`` ("Lung Opacity", "Normal", "No Lung Opacity / Not Normal").
Images: ``stage_2_train_images/<patientId>.dcm``. ``patientId`` is already an anonymised UID and
is the subject id; view, sex and age come from the non-identifying DICOM header fields.
The challenge's test images carry no labels, so splits are drawn by patient hash.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

from support.data.records import (
    BoxSpace, DatasetSummary, UnsafePathError, dicom_header_and_view, empty_record, find_file, finish, index_rows,
    parse_float, patient_split, read_table, require_root, safe_id,
)

KIND = "rsna-pneumonia"
LABEL_COLUMNS = ("patientId", "x", "y", "width", "height", "Target")


def _target_and_box(r: dict) -> tuple[float, tuple[float, float, float, float] | None]:
    """One label row -> (Target, its box in pixels or None); ValueError naming the bad cell."""
    target = parse_float(r["Target"])
    if target not in (0.0, 1.0):
        raise ValueError(f"Target {r['Target']!r}, expected 0 or 1")
    if target == 0.0:
        return target, None
    x, y, w, h = (parse_float(r[k]) for k in ("x", "y", "width", "height"))
    if not all(map(math.isfinite, (x, y, w, h))) or w <= 0 or h <= 0:
        raise ValueError(f"Target 1 needs a box with positive size, got ({r['x']}, {r['y']}, "
                         f"{r['width']}, {r['height']})")
    return target, (x, y, w, h)


def _read_labels(path: Path, summary: DatasetSummary) -> tuple[dict[str, float], dict[str, list]]:
    """patientId -> Target, and -> [(box, where)], from the label rows in file order.

    One bad row, or rows that disagree on Target, leave the patient out (each counted with its
    row): its Target is then unknown, and no row is taken over another.
    """
    rows, refused = [], set()
    for i, r in enumerate(read_table(path, LABEL_COLUMNS, KIND).to_dict("records")):
        where = f"{path.name} row {i + 2}"
        try:
            pid = safe_id(r["patientId"], "patientId")
        except UnsafePathError as exc:
            summary.skip("unsafe path", where, str(exc))
            continue
        try:
            rows.append((pid, *_target_and_box(r), where))
        except ValueError as exc:
            summary.skip("bad label value", where, f"patientId {pid}: {exc}; its image is left out")
            refused.add(pid)
    targets, conflicts = index_rows(((pid, t, where) for pid, t, _, where in rows),
                                    summary, path.name, "patientId")
    boxes: dict[str, list] = {}
    for pid, _, box, where in rows:
        if box:
            boxes.setdefault(pid, []).append((box, where))
    return {p: t for p, t in targets.items() if p not in refused}, boxes


def load(root: str | os.PathLike, *, strict: bool = False, verify_images: bool = False,
         fractions: tuple[float, float, float] = (0.8, 0.1, 0.1), max_examples: int = 5):
    """Read RSNA Pneumonia -> (record table, summary); boxes normalised to [0, 1]."""
    from tqdm.auto import tqdm

    root = require_root(root, KIND)
    summary = DatasetSummary(KIND, str(root), strict=strict, max_examples=max_examples)
    label_path = find_file(root, ("stage_2_train_labels.csv", "stage_1_train_labels.csv"), KIND, "label table")
    image_dir = root / ("stage_2_train_images" if label_path.name.startswith("stage_2") else "stage_1_train_images")
    targets, boxes = _read_labels(label_path, summary)
    classes: dict[str, str] = {}
    class_path = root / "stage_2_detailed_class_info.csv"
    if class_path.is_file():
        rows = read_table(class_path, ("patientId", "class"), KIND).to_dict("records")
        classes, conflicts = index_rows(
            ((r["patientId"].strip(), r["class"].strip(), f"{class_path.name} row {i + 2}")
             for i, r in enumerate(rows)), summary, class_path.name, "patientId")
        targets = {p: t for p, t in targets.items() if p not in conflicts}

    records = []
    for pid, target in tqdm(targets.items(), desc="reading RSNA headers", unit="file",
                            disable=len(targets) < 2000, leave=False):
        path = image_dir / f"{pid}.dcm"
        if not path.is_file():
            summary.skip("missing file", path, f"patientId {pid}")
            continue
        read = dicom_header_and_view(path, summary)
        if read is None:
            continue
        header, view = read
        cls = classes.get(pid, "")
        rec = empty_record(KIND)
        rec.update(subject_id=pid, study_id=pid, image_id=pid, view=view, path=str(path),
                   split=patient_split(pid, fractions), sex=header.sex, age=header.age,
                   source_labels=[cls] if cls else ["Lung Opacity" if target else "No Lung Opacity"],
                   Pneumonia=target)
        if cls:
            rec["Lung Opacity"] = 1.0 if cls == "Lung Opacity" else 0.0
            rec["No Finding"] = 1.0 if cls == "Normal" else 0.0
        space = BoxSpace(header.columns, header.rows, f"{path.name} (Rows, Columns)")
        for (x, y, w, h), where in boxes.get(pid, []):
            try:
                rec["boxes"].append(space.normalise("Lung Opacity", x, y, x + w, y + h))
            except ValueError as exc:
                summary.skip("box outside the image", where, f"patientId {pid}: {exc}")
        records.append(rec)
    return finish(records, summary, verify_images)
