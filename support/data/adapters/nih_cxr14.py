"""NIH ChestX-ray14: ``Data_Entry_2017.csv``, ``BBox_List_2017.csv``, split lists, ``images*/``.

``Data_Entry_2017.csv`` (or ``Data_Entry_2017_v2020.csv``): ``Image Index, Finding Labels
("A|B" or "No Finding"), Follow-up #, Patient ID, Patient Age, Patient Gender, View Position,
...``. ``BBox_List_2017.csv``: ``Image Index, Finding Label, Bbox [x, y, w, h]`` in pixels of
the released 1024 px PNG (its header splits ``Bbox [x,y,w,h]`` over four columns).
``train_val_list.txt`` / ``test_list.txt``: the official patient-wise split (validation is
carved out of train_val by patient). Images sit in ``images/`` or ``images_001/images/`` ...

The 14 NIH labels are kept in ``source_labels``; those with a CheXpert counterpart also set the
CheXpert columns (NIH marks absence of every one of its labels, so unmatched ones are 0).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

from support.data.images import ImageReadError, image_size
from support.data.records import (
    DatasetSummary, UnsafePathError, empty_record, find_file, finish, parse_age, parse_float,
    parse_sex, patient_split, read_table, require_root, safe_id,
)
from support.data.schema import CHEXPERT_LABELS, KNOWN_VIEWS

KIND = "nih-cxr14"
NIH_LABELS = ("Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule", "Pneumonia",
              "Pneumothorax", "Consolidation", "Edema", "Emphysema", "Fibrosis", "Pleural_Thickening",
              "Hernia")
# NIH label -> CheXpert column. Emphysema, Fibrosis and Hernia have none.
TO_CHEXPERT = {"Atelectasis": "Atelectasis", "Cardiomegaly": "Cardiomegaly", "Effusion": "Pleural Effusion",
               "Infiltration": "Lung Opacity", "Mass": "Lung Lesion", "Nodule": "Lung Lesion",
               "Pneumonia": "Pneumonia", "Pneumothorax": "Pneumothorax", "Consolidation": "Consolidation",
               "Edema": "Edema", "Pleural_Thickening": "Pleural Other"}
# CheXpert's hierarchy: these findings are kinds of lung opacity.
OPACITY_CHILDREN = ("Edema", "Consolidation", "Pneumonia", "Lung Lesion", "Atelectasis")
ENTRY_COLUMNS = ("Image Index", "Finding Labels", "Follow-up #", "Patient ID", "Patient Age",
                 "Patient Gender", "View Position")


def nih_to_chexpert(findings: list[str]) -> dict[str, float]:
    """NIH finding names (no "No Finding") -> CheXpert label values (1/0, NaN where NIH is silent)."""
    out = {k: math.nan for k in CHEXPERT_LABELS}
    for col in set(TO_CHEXPERT.values()) | {"No Finding"}:
        out[col] = 0.0
    for f in findings:
        if f in TO_CHEXPERT:
            out[TO_CHEXPERT[f]] = 1.0
    if any(out[c] == 1.0 for c in OPACITY_CHILDREN):
        out["Lung Opacity"] = 1.0
    out["No Finding"] = 0.0 if findings else 1.0
    return out


def _index_images(root: Path) -> dict[str, Path]:
    index: dict[str, Path] = {}
    for top in sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith("images")):
        for dirpath, _, files in os.walk(top):
            for f in files:
                if f.lower().endswith(".png"):
                    index.setdefault(f, Path(dirpath) / f)
    return index


def _read_list(path: Path) -> set[str]:
    return {line.strip() for line in path.read_text().splitlines() if line.strip()}


def load(root: str | os.PathLike, *, strict: bool = False, verify_images: bool = False,
         validate_fraction: float = 0.1, max_examples: int = 5):
    """Read ChestX-ray14 -> (record table, summary). Without the split lists, split by patient hash."""
    root = require_root(root, KIND)
    if not 0 <= validate_fraction < 1:
        raise ValueError(f"validate_fraction {validate_fraction}: expected 0 <= f < 1")
    summary = DatasetSummary(KIND, str(root), strict=strict, max_examples=max_examples)
    entry_path = find_file(root, ("Data_Entry_2017.csv", "Data_Entry_2017_v2020.csv"), KIND, "label table")
    table = read_table(entry_path, ENTRY_COLUMNS, KIND)
    images = _index_images(root)
    if not images:
        summary.note(f"no PNG found under {root}/images*/; every row will count as a missing file")

    lists = {name: root / name for name in ("train_val_list.txt", "test_list.txt")}
    have_lists = all(p.is_file() for p in lists.values())
    train_val = _read_list(lists["train_val_list.txt"]) if have_lists else set()
    test = _read_list(lists["test_list.txt"]) if have_lists else set()
    if not have_lists:
        summary.note("train_val_list.txt/test_list.txt not found: split by a hash of Patient ID")
    fractions = (1 - validate_fraction, validate_fraction, 0.0)

    records, by_name = [], {}
    for i, r in enumerate(table.to_dict("records")):
        where = f"{entry_path.name} row {i + 2}"
        try:
            name = safe_id(r["Image Index"], "Image Index")
            patient = str(int(parse_float(r["Patient ID"])))
            followup = str(int(parse_float(r["Follow-up #"])))
        except (UnsafePathError, ValueError) as exc:
            summary.skip("bad id", where, str(exc))
            continue
        if name in by_name:
            summary.skip("duplicate row", where, name)
            continue
        findings = [f.strip() for f in r["Finding Labels"].split("|") if f.strip()]
        if findings == ["No Finding"]:
            findings = []
        unknown = [f for f in findings if f not in NIH_LABELS]
        if unknown or not r["Finding Labels"].strip():
            summary.skip("bad label value", where, f"Finding Labels {r['Finding Labels']!r}")
            continue
        view = r["View Position"].strip().upper()
        if view not in KNOWN_VIEWS:
            summary.skip("unknown view", where, f"{name}: View Position {r['View Position']!r}")
            continue
        if have_lists:
            if name in test:
                split = "test"
            elif name in train_val:
                split = "validate" if patient_split(patient, fractions) == "validate" else "train"
            else:
                summary.exclude("image in neither split list")
                continue
        else:
            split = patient_split(patient)
        rec = empty_record(KIND)
        rec.update(subject_id=patient, study_id=f"{patient}_{followup}", image_id=Path(name).stem, view=view,
                   path=str(images.get(name, root / "images" / name)), split=split,
                   sex=parse_sex(r["Patient Gender"]), age=parse_age(r["Patient Age"]),
                   source_labels=findings or ["No Finding"], **nih_to_chexpert(findings))
        records.append(rec)
        by_name[name] = rec

    _attach_boxes(root, by_name, summary)
    return finish(records, summary, verify_images)


def _attach_boxes(root: Path, by_name: dict[str, dict], summary: DatasetSummary) -> None:
    path = root / "BBox_List_2017.csv"
    if not path.is_file():
        return
    table = read_table(path, ("Image Index", "Finding Label"), KIND)
    if table.shape[1] < 6:
        raise ValueError(f"{KIND}: {path} has {table.shape[1]} columns; expected Image Index, "
                         f"Finding Label and the four Bbox [x, y, w, h] columns")
    sizes: dict[str, tuple[int, int]] = {}
    for i, row in enumerate(table.itertuples(index=False)):
        name, label = row[0].strip(), row[1].strip()
        rec = by_name.get(name)
        if rec is None:
            summary.exclude("box of an image not in the table")
            continue
        where = f"{path.name} row {i + 2}"
        try:
            x, y, w, h = (parse_float(v) for v in row[2:6])
            if not all(map(math.isfinite, (x, y, w, h))) or w <= 0 or h <= 0:
                raise ValueError(f"box ({row[2]}, {row[3]}, {row[4]}, {row[5]}) needs positive size")
        except ValueError as exc:
            summary.skip("bad box", where, str(exc))
            continue
        if name not in sizes:
            try:
                sizes[name] = image_size(rec["path"])
            except ImageReadError:
                continue  # the image itself is reported missing or corrupt by finish()
        W, H = sizes[name]
        rec["boxes"].append({"label": label, "x0": max(0.0, x / W), "y0": max(0.0, y / H),
                             "x1": min(1.0, (x + w) / W), "y1": min(1.0, (y + h) / H)})
