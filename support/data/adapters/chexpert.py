"""CheXpert v1.0 (full or "-small"): ``train.csv``, ``valid.csv`` and, when present, the test labels.

``train.csv``/``valid.csv`` columns: ``Path,Sex,Age,Frontal/Lateral,AP/PA,<14 labels>``, where
``Path`` starts with the release folder (``CheXpert-v1.0-small/train/patient00001/study1/
view1_frontal.jpg``). Labels are 1.0 / 0.0 / -1.0 (uncertain) / blank (unmentioned); the
uncertainty policy of the CheXpert paper is chosen with ``uncertain``. ``test_labels.csv``
(or ``test.csv``) of the later test release has ``Path`` and the labels only.
"""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath

from support.data.records import (
    DatasetSummary, UnsafePathError, apply_uncertain_policy, empty_record, finish, parse_age,
    parse_label, parse_sex, read_table, relative_parts, require_root, resolve_inside,
)
from support.data.schema import CHEXPERT_LABELS

KIND = "chexpert"
COLUMNS = ("Path", "Sex", "Age", "Frontal/Lateral", "AP/PA") + CHEXPERT_LABELS
SPLIT_FILES = (("train.csv", "train"), ("valid.csv", "validate"))
TEST_FILES = ("test_labels.csv", "test.csv")   # the later test release; optional
TOP_FOLDERS = ("train", "valid", "test")


def _relative(path_text: str, root: Path) -> str:
    """CSV ``Path`` -> path relative to the root: the leading release folder is dropped."""
    parts = relative_parts(path_text, root)
    if parts[0] not in TOP_FOLDERS and len(parts) > 1:
        parts = parts[1:]
    return "/".join(parts)


class _ViewError(ValueError):
    pass


def _view(frontal_lateral: str, ap_pa: str, rel: str) -> str:
    fl, ap = frontal_lateral.strip().lower(), ap_pa.strip().upper()
    if not fl:  # test release: the file name says it
        fl = "lateral" if "lateral" in rel.lower() else "frontal" if "frontal" in rel.lower() else ""
    if fl == "lateral":
        if ap not in ("", "LATERAL", "LL"):
            raise _ViewError(f"Lateral image with AP/PA {ap_pa!r}")
        return ap or "LATERAL"
    if fl == "frontal":
        # a few frontal rows say "LL"/"RL" (decubitus): no frontal view we model
        if ap not in ("AP", "PA", ""):
            raise _ViewError(f"Frontal image with AP/PA {ap_pa!r}")
        return ap  # "" when the CSV leaves it blank
    raise _ViewError(f"Frontal/Lateral {frontal_lateral!r}, expected Frontal or Lateral")


def load(root: str | os.PathLike, *, strict: bool = False, verify_images: bool = False,
         uncertain: str = "keep", unmentioned: str = "nan", frontal_only: bool = False,
         max_examples: int = 5):
    """Read CheXpert -> (record table, summary).

    ``uncertain``: "keep" (-1), "ones" (U-Ones), "zeros" (U-Zeros), "ignore" (U-Ignore: NaN).
    ``unmentioned``: "nan" (blank stays NaN) or "zeros" (blank read as negative).
    """
    root = require_root(root, KIND)
    if unmentioned not in ("nan", "zeros"):
        raise ValueError(f"unmentioned {unmentioned!r}: expected 'nan' or 'zeros'")
    summary = DatasetSummary(KIND, str(root), strict=strict, max_examples=max_examples)
    sources = []
    for fname, split in SPLIT_FILES:
        if not (root / fname).is_file():
            raise FileNotFoundError(f"{KIND} dataset at {root}: {fname} not found; expected the "
                                    f"official train.csv and valid.csv beside train/ and valid/")
        sources.append((fname, split, COLUMNS))
    test = next((f for f in TEST_FILES if (root / f).is_file()), None)
    if test:
        sources.append((test, "test", ("Path",) + CHEXPERT_LABELS))
    records, seen = [], set()
    for fname, split, required in sources:
        path = root / fname
        table = read_table(path, required, KIND)
        for i, r in enumerate(table.to_dict("records")):
            where = f"{fname} row {i + 2}"
            try:
                rel = _relative(r["Path"], root)
                image_path = resolve_inside(root, rel)
            except UnsafePathError as exc:
                summary.skip("unsafe path", where, str(exc))
                continue
            parts = PurePosixPath(rel).parts
            if len(parts) < 4:
                summary.skip("bad path", where, f"{r['Path']!r}: expected .../patientNNNNN/studyN/viewN_*.jpg")
                continue
            patient, study, stem = parts[-3], parts[-2], PurePosixPath(parts[-1]).stem
            image_id = f"{patient}_{study}_{stem}"
            if image_id in seen:
                summary.skip("duplicate row", where, f"{image_id} listed again; expected one row per image")
                continue
            try:
                view = _view(r.get("Frontal/Lateral", ""), r.get("AP/PA", ""), rel)
            except _ViewError as exc:
                summary.skip("unknown view", where, f"{image_id}: {exc}")
                continue
            try:
                labels = {k: parse_label(r[k], k) for k in CHEXPERT_LABELS}
            except ValueError as exc:
                summary.skip("bad label value", where, str(exc))
                continue
            if frontal_only and view in ("LATERAL", "LL"):
                summary.exclude("lateral view (frontal_only)")
                continue
            seen.add(image_id)
            rec = empty_record(KIND)
            rec.update(subject_id=patient, study_id=f"{patient}_{study}", image_id=image_id, view=view,
                       path=str(image_path), split=split, sex=parse_sex(r.get("Sex", "")),
                       age=parse_age(r.get("Age", "")), **labels)
            records.append(rec)
    table, summary = finish(records, summary, verify_images)
    # blanks first: U-Ignore's NaN means "ignore", not "unmentioned"
    if unmentioned == "zeros":
        table[list(CHEXPERT_LABELS)] = table[list(CHEXPERT_LABELS)].fillna(0.0)
    return apply_uncertain_policy(table, uncertain), summary
