"""NIH ChestX-ray14: ``Data_Entry_2017.csv``, ``BBox_List_2017.csv``, split lists, ``images*/``.

``Data_Entry_2017.csv`` (or ``Data_Entry_2017_v2020.csv``): ``Image Index, Finding Labels
("A|B" or "No Finding"), Follow-up #, Patient ID, Patient Age, Patient Gender, View Position,
...``. ``BBox_List_2017.csv``: ``Image Index, Finding Label, Bbox [x, y, w, h]`` in pixels of
the released 1024 px PNG (its header splits ``Bbox [x,y,w,h]`` over four columns).
``train_val_list.txt`` / ``test_list.txt``: the official patient-wise split (validation is
carved out of train_val by patient). Images sit in ``images/`` or ``images_001/images/`` ...
Boxes are normalised by that 1024 px space whatever the size of the files, so resized copies
keep their boxes; ``OriginalImage[Width, Height]`` is the size of the DICOM before the release
was resized, not the space of the boxes.

The 14 NIH labels are kept in ``source_labels``; those with a CheXpert counterpart also set the
CheXpert columns (NIH marks absence of every one of its labels, so unmatched ones are 0).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

from support.data.records import (
    BoxSpace, DatasetSummary, UnsafePathError, chest_view_or_skip, empty_record, find_file, finish, index_rows,
    parse_age, parse_count, parse_float, parse_sex, patient_split, read_table, require_root, safe_id, text_lines,
)
from support.data.schema import CHEXPERT_LABELS

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
BOX_SPACE = BoxSpace(1024, 1024, "the released 1024x1024 PNGs (BBox_List_2017.csv)")
SPLIT_LISTS = {"train_val_list.txt": "train_val", "test_list.txt": "test"}
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


def _official_split(root: Path, summary: DatasetSummary) -> tuple[dict[str, str], set[str]] | None:
    """Image Index -> "train_val" or "test" from the two split lists, and the images listed in
    both (left out, counted); None when the lists are not there."""
    if not all((root / name).is_file() for name in SPLIT_LISTS):
        return None
    rows = ((line.strip(), part, f"{name} line {number}")
            for name, part in SPLIT_LISTS.items()
            for number, line in text_lines(root / name, summary) if line.strip())
    return index_rows(rows, summary, " and ".join(SPLIT_LISTS), "Image Index")


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

    official = _official_split(root, summary)
    listed, in_both = official or ({}, set())
    if official is None:
        summary.note("train_val_list.txt/test_list.txt not found: split by a hash of Patient ID")
    fractions = (1 - validate_fraction, validate_fraction, 0.0)

    records, by_name = [], {}
    for i, r in enumerate(table.to_dict("records")):
        where = f"{entry_path.name} row {i + 2}"
        try:
            name = safe_id(r["Image Index"], "Image Index")
            patient = str(parse_count(r["Patient ID"], "Patient ID"))
            followup = str(parse_count(r["Follow-up #"], "Follow-up #"))
        except (UnsafePathError, ValueError) as exc:
            summary.skip("bad id", where, str(exc))
            continue
        if name in by_name:
            summary.skip("duplicate row", where, f"{name} listed again; expected one row per image")
            continue
        if name in in_both:
            continue   # counted where the split lists were read
        findings = [f.strip() for f in r["Finding Labels"].split("|") if f.strip()]
        if findings == ["No Finding"]:
            findings = []
        unknown = [f for f in findings if f not in NIH_LABELS]
        if unknown or not r["Finding Labels"].strip():
            summary.skip("bad label value", where, f"Finding Labels {r['Finding Labels']!r}")
            continue
        view = chest_view_or_skip(r["View Position"], summary, where, f"{name}: ")
        if view is None:
            continue
        if official is None:
            split = patient_split(patient)
        elif name not in listed:
            summary.exclude("image in neither split list")
            continue
        elif listed[name] == "test":
            split = "test"
        else:
            split = "validate" if patient_split(patient, fractions) == "validate" else "train"
        rec = empty_record(KIND)
        rec.update(subject_id=patient, study_id=f"{patient}_{followup}", image_id=Path(name).stem, view=view,
                   path=str(images.get(name, root / "images" / name)), split=split,
                   sex=parse_sex(r["Patient Gender"]), age=parse_age(r["Patient Age"]),
                   source_labels=findings or ["No Finding"], **nih_to_chexpert(findings))
        records.append(rec)
        by_name[name] = rec

    _attach_boxes(root, by_name, summary)
    return finish(records, summary, verify_images,
                  box_spaces={rec["image_id"]: BOX_SPACE for rec in records if rec["boxes"]})


def _attach_boxes(root: Path, by_name: dict[str, dict], summary: DatasetSummary) -> None:
    path = root / "BBox_List_2017.csv"
    if not path.is_file():
        return
    table = read_table(path, ("Image Index", "Finding Label"), KIND)
    if table.shape[1] < 6:
        raise ValueError(f"{KIND}: {path} has {table.shape[1]} columns; expected Image Index, "
                         f"Finding Label and the four Bbox [x, y, w, h] columns")
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
        try:
            rec["boxes"].append(BOX_SPACE.normalise(label, x, y, x + w, y + h))
        except ValueError as exc:
            summary.skip("box outside the image", where, f"{name}: {exc}")
