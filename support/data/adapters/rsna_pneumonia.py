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

from support.data.dicom import DicomError, read_dicom_header
from support.data.records import (
    DatasetSummary, UnsafePathError, empty_record, find_file, finish, parse_float, patient_split,
    read_table, require_root, safe_id,
)
from support.data.schema import KNOWN_VIEWS

KIND = "rsna-pneumonia"
LABEL_COLUMNS = ("patientId", "x", "y", "width", "height", "Target")


def load(root: str | os.PathLike, *, strict: bool = False, verify_images: bool = False,
         fractions: tuple[float, float, float] = (0.8, 0.1, 0.1), max_examples: int = 5):
    """Read RSNA Pneumonia -> (record table, summary); boxes normalised to [0, 1]."""
    from tqdm.auto import tqdm

    root = require_root(root, KIND)
    summary = DatasetSummary(KIND, str(root), strict=strict, max_examples=max_examples)
    label_path = find_file(root, ("stage_2_train_labels.csv", "stage_1_train_labels.csv"), KIND, "label table")
    table = read_table(label_path, LABEL_COLUMNS, KIND)
    image_dir = root / ("stage_2_train_images" if label_path.name.startswith("stage_2") else "stage_1_train_images")
    classes: dict[str, str] = {}
    class_path = root / "stage_2_detailed_class_info.csv"
    if class_path.is_file():
        for r in read_table(class_path, ("patientId", "class"), KIND).to_dict("records"):
            classes[r["patientId"].strip()] = r["class"].strip()

    # Rows -> per-patient target and boxes (pixels), in file order.
    patients: dict[str, dict] = {}
    for i, r in enumerate(table.to_dict("records")):
        where = f"{label_path.name} row {i + 2}"
        try:
            pid = safe_id(r["patientId"], "patientId")
            target = parse_float(r["Target"])
            if target not in (0.0, 1.0):
                raise ValueError(f"Target {r['Target']!r}, expected 0 or 1")
            box = None
            if target == 1.0:
                x, y, w, h = (parse_float(r[k]) for k in ("x", "y", "width", "height"))
                if not all(map(math.isfinite, (x, y, w, h))) or w <= 0 or h <= 0:
                    raise ValueError(f"Target 1 needs a box with positive size, got ({r['x']}, {r['y']}, "
                                     f"{r['width']}, {r['height']})")
                box = (x, y, w, h)
        except UnsafePathError as exc:
            summary.skip("unsafe path", where, str(exc))
            continue
        except ValueError as exc:
            summary.skip("bad label value", where, str(exc))
            continue
        entry = patients.setdefault(pid, {"target": target, "boxes": []})
        if entry["target"] != target:
            summary.skip("bad label value", where, f"{pid}: Target {target} contradicts an earlier row")
            continue
        if box:
            entry["boxes"].append(box)

    records = []
    for pid, entry in tqdm(patients.items(), desc="reading RSNA headers", unit="file",
                           disable=len(patients) < 2000, leave=False):
        path = image_dir / f"{pid}.dcm"
        if not path.is_file():
            summary.skip("missing file", path, f"patientId {pid}")
            continue
        try:
            header = read_dicom_header(path)
        except DicomError as exc:
            summary.skip("corrupt image", path, str(exc).split(": ", 1)[-1])
            continue
        view = header.view
        if view not in KNOWN_VIEWS:
            summary.skip("unknown view", path, f"ViewPosition {view!r}")
            continue
        cls = classes.get(pid, "")
        rec = empty_record(KIND)
        target = entry["target"]
        rec.update(subject_id=pid, study_id=pid, image_id=pid, view=view, path=str(path),
                   split=patient_split(pid, fractions), sex=header.sex, age=header.age,
                   source_labels=[cls] if cls else ["Lung Opacity" if target else "No Lung Opacity"],
                   Pneumonia=target)
        if cls:
            rec["Lung Opacity"] = 1.0 if cls == "Lung Opacity" else 0.0
            rec["No Finding"] = 1.0 if cls == "Normal" else 0.0
        W, H = header.columns, header.rows
        rec["boxes"] = [{"label": "Lung Opacity", "x0": max(0.0, x / W), "y0": max(0.0, y / H),
                         "x1": min(1.0, (x + w) / W), "y1": min(1.0, (y + h) / H)}
                        for x, y, w, h in entry["boxes"]]
        records.append(rec)
    return finish(records, summary, verify_images)
