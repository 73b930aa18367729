"""MIMIC-CXR-JPG 2.0.0 (and every set the project writes in its layout: phantom, synthetic).

Official files (plain ``.csv`` or PhysioNet's ``.csv.gz``)::

    mimic-cxr-2.0.0-metadata.csv   dicom_id, subject_id, study_id, ViewPosition, Rows, Columns, ...
    mimic-cxr-2.0.0-split.csv      dicom_id, study_id, subject_id, split (train|validate|test)
    mimic-cxr-2.0.0-chexpert.csv   subject_id, study_id, 14 labels (or -negbio.csv)
    files/pXX/pSUBJECT/sSTUDY/DICOM_ID.jpg

Reports come from MIMIC-CXR's ``mimic-cxr-reports.zip`` (``files/pXX/pSUBJECT/sSTUDY.txt``),
extracted into the root or given as ``reports_root`` (a folder or the zip itself). Optional
files written by :class:`support.data.writer.MimicLayoutWriter`: ``patients.csv`` (MIMIC-IV
style; or pass MIMIC-IV's ``hosp/patients.csv.gz`` as ``patients_csv``),
``annotations/boxes.csv``, ``annotations/masks.csv``, ``provenance.csv``, ``dataset.json``.
"""

from __future__ import annotations

import math
import os
import zipfile
from pathlib import Path
from typing import Sequence

from support.data.records import (
    DatasetSummary, UnsafePathError, apply_uncertain_policy, empty_record,
    find_file, finish, parse_age, parse_float, parse_label, parse_sex, read_table, require_root,
    safe_id,
)
from support.data.rle import rle_decode
from support.data.schema import CHEXPERT_LABELS, KNOWN_VIEWS, SPLITS
from support.data.sections import parse_sections
from support.io import read_json

KIND = "mimic-cxr-jpg"
META_COLUMNS = ("dicom_id", "subject_id", "study_id", "ViewPosition", "Rows", "Columns")
SPLIT_COLUMNS = ("dicom_id", "split")


def _csv(root: Path, stem: str, what: str) -> Path:
    return find_file(root, (f"{stem}.csv", f"{stem}.csv.gz"), KIND, what)


def _optional_csv(root: Path, stem: str) -> Path | None:
    for name in (f"{stem}.csv", f"{stem}.csv.gz"):
        if (root / name).is_file():
            return root / name
    return None


class _Reports:
    """Report texts from a folder or from ``mimic-cxr-reports.zip``."""

    def __init__(self, source: Path):
        self.source = source
        self.zip = zipfile.ZipFile(source) if source.is_file() else None
        self.names = set(self.zip.namelist()) if self.zip else None

    def relpath(self, subject: str, study: str) -> str:
        return f"files/p{subject[:2]}/p{subject}/s{study}.txt"

    def exists(self, subject: str, study: str) -> bool:
        rel = self.relpath(subject, study)
        if self.zip:
            return rel in self.names or f"mimic-cxr-reports/{rel}" in self.names
        return (self.source / rel).is_file()

    def read(self, subject: str, study: str) -> str:
        rel = self.relpath(subject, study)
        if self.zip:
            name = rel if rel in self.names else f"mimic-cxr-reports/{rel}"
            return self.zip.read(name).decode("utf-8", errors="replace")
        return (self.source / rel).read_text(encoding="utf-8", errors="replace")

    def where(self, subject: str, study: str) -> str:
        return f"{self.source}{'!' if self.zip else os.sep}{self.relpath(subject, study)}"


def load(root: str | os.PathLike, *, strict: bool = False, verify_images: bool = False,
         views: Sequence[str] | None = None, reports: bool | str = "auto",
         reports_root: str | os.PathLike | None = None, labels: str = "chexpert",
         uncertain: str = "keep", patients_csv: str | os.PathLike | None = None,
         dataset: str | None = None, max_examples: int = 5):
    """Read a MIMIC-CXR-JPG-layout root -> (record table, summary).

    ``views``: keep only these ViewPositions (others excluded, not errors). ``reports``: True
    requires a report per study, False reads none, "auto" reads them when any is present.
    ``labels``: "chexpert", "negbio" or "none". ``uncertain``: keep, ones, zeros or ignore.
    """
    root = require_root(root, KIND)
    info = read_json(root / "dataset.json") if (root / "dataset.json").is_file() else {}
    name = dataset or info.get("name") or KIND
    summary = DatasetSummary(name, str(root), strict=strict, max_examples=max_examples)
    if views is not None:
        bad = [v for v in views if v not in KNOWN_VIEWS]
        if bad:
            raise ValueError(f"views {bad}: expected some of {list(KNOWN_VIEWS)}")
    if labels not in ("chexpert", "negbio", "none"):
        raise ValueError(f"labels {labels!r}: expected 'chexpert', 'negbio' or 'none'")
    if reports not in (True, False, "auto"):
        raise ValueError(f"reports {reports!r}: expected True, False or 'auto'")

    meta_path = _csv(root, "mimic-cxr-2.0.0-metadata", "image metadata table")
    meta = read_table(meta_path, META_COLUMNS, KIND)
    split_path = _csv(root, "mimic-cxr-2.0.0-split", "split table")
    split_table = read_table(split_path, SPLIT_COLUMNS, KIND)
    split_of = dict(zip(split_table["dicom_id"], split_table["split"]))

    study_labels: dict[tuple[str, str], dict[str, float]] = {}
    if labels != "none":
        label_path = _csv(root, f"mimic-cxr-2.0.0-{labels}", f"{labels} label table")
        table = read_table(label_path, ("subject_id", "study_id") + CHEXPERT_LABELS, KIND)
        for i, r in enumerate(table.to_dict("records")):
            try:
                study_labels[(r["subject_id"], r["study_id"])] = {
                    k: parse_label(r[k], k) for k in CHEXPERT_LABELS}
            except ValueError as exc:
                summary.skip("bad label value", f"{label_path.name} row {i + 2}", str(exc))

    patients: dict[str, tuple[str, float]] = {}
    ppath = Path(patients_csv) if patients_csv else _optional_csv(root, "patients")
    if ppath is not None:
        for r in read_table(ppath, ("subject_id", "gender", "anchor_age"), KIND).to_dict("records"):
            patients[r["subject_id"]] = (parse_sex(r["gender"]), parse_age(r["anchor_age"]))

    provenance: dict[str, dict[str, str]] = {}
    prov_path = _optional_csv(root, "provenance")
    if prov_path is not None:
        for r in read_table(prov_path, ("dicom_id",), KIND).to_dict("records"):
            provenance[r.pop("dicom_id")] = r

    source = Path(reports_root).expanduser() if reports_root else root
    if reports_root and not source.exists():
        raise FileNotFoundError(f"{KIND}: reports_root {source} not found (a folder or mimic-cxr-reports.zip)")
    report_store = _Reports(source) if reports is not False else None

    rows = meta.to_dict("records")
    sizes: dict[str, tuple[int, int]] = {}
    records = []
    seen: set[str] = set()
    for i, r in enumerate(rows):
        where = f"{meta_path.name} row {i + 2}"
        try:
            dicom, subject, study = (safe_id(r[k], k) for k in ("dicom_id", "subject_id", "study_id"))
        except UnsafePathError as exc:
            summary.skip("unsafe path", where, str(exc))
            continue
        if dicom in seen:
            summary.skip("duplicate row", where, f"dicom_id {dicom} listed again")
            continue
        seen.add(dicom)
        view = r["ViewPosition"].strip().upper()
        if view not in KNOWN_VIEWS:
            summary.skip("unknown view", where, f"dicom_id {dicom} ViewPosition {r['ViewPosition']!r}")
            continue
        if views is not None and view not in views:
            summary.exclude(f"view {view} not selected")
            continue
        split = split_of.get(dicom)
        if split not in SPLITS:
            summary.skip("unknown split", where, f"dicom_id {dicom} split {split!r}")
            continue
        try:
            height, width = int(parse_float(r["Rows"])), int(parse_float(r["Columns"]))
            if height <= 0 or width <= 0:
                raise ValueError
        except ValueError:
            summary.skip("bad image size", where, f"Rows={r['Rows']!r} Columns={r['Columns']!r}")
            continue
        sizes[dicom] = (width, height)
        rec = empty_record(name)
        rec.update(subject_id=subject, study_id=study, image_id=dicom, view=view, split=split,
                   path=str(root / "files" / f"p{subject[:2]}" / f"p{subject}" / f"s{study}" / f"{dicom}.jpg"),
                   provenance=provenance.get(dicom, {}))
        if subject in patients:
            rec["sex"], rec["age"] = patients[subject]
        if (subject, study) in study_labels:
            rec.update(study_labels[(subject, study)])
        records.append(rec)

    records = _attach_reports(records, report_store, reports, summary)
    _attach_annotations(root, records, sizes, summary)
    table, summary = finish(records, summary, verify_images)
    if labels != "none":
        table = apply_uncertain_policy(table, uncertain)
    return table, summary


def _attach_reports(records: list[dict], store: _Reports | None, mode, summary: DatasetSummary) -> list[dict]:
    if store is None:
        return records
    studies = sorted({(r["subject_id"], r["study_id"]) for r in records})
    present = {s for s in studies if store.exists(*s)}
    if mode == "auto" and not present:
        summary.note(f"no reports found under {store.source}; findings and impression are empty")
        return records
    from tqdm.auto import tqdm

    sections: dict[tuple[str, str], dict[str, str] | None] = {}
    for s in tqdm(studies, desc="reading reports", unit="report", disable=len(studies) < 2000, leave=False):
        if s not in present:
            summary.skip("missing report", store.where(*s), f"study {s[1]}")
            sections[s] = None
            continue
        text = store.read(*s)
        if not text.strip():
            summary.skip("empty report", store.where(*s), f"study {s[1]}")
            sections[s] = None
            continue
        sections[s] = parse_sections(text)
    kept, no_sections = [], 0
    for rec in records:
        sec = sections[(rec["subject_id"], rec["study_id"])]
        if sec is None:
            continue
        rec["findings"], rec["impression"] = sec["findings"], sec["impression"]
        no_sections += not (sec["findings"] or sec["impression"])
        kept.append(rec)
    if no_sections:
        summary.note(f"{no_sections} image(s) have a report with neither FINDINGS nor IMPRESSION")
    return kept


def _attach_annotations(root: Path, records: list[dict], sizes: dict[str, tuple[int, int]],
                        summary: DatasetSummary) -> None:
    by_id = {r["image_id"]: r for r in records}
    box_path = root / "annotations" / "boxes.csv"
    if box_path.is_file():
        table = read_table(box_path, ("dicom_id", "label", "x", "y", "width", "height"), KIND)
        for i, r in enumerate(table.to_dict("records")):
            rec = by_id.get(r["dicom_id"])
            if rec is None:
                summary.exclude("box of an image not in the table")
                continue
            w, h = sizes[r["dicom_id"]]
            try:
                x, y, bw, bh = (parse_float(r[k]) for k in ("x", "y", "width", "height"))
                if not all(map(math.isfinite, (x, y, bw, bh))) or bw <= 0 or bh <= 0:
                    raise ValueError("needs finite numbers and positive size")
            except ValueError as exc:
                summary.skip("bad box", f"{box_path} row {i + 2}", str(exc))
                continue
            rec["boxes"].append({"label": r["label"], "x0": max(0.0, x / w), "y0": max(0.0, y / h),
                                 "x1": min(1.0, (x + bw) / w), "y1": min(1.0, (y + bh) / h)})
    mask_path = root / "annotations" / "masks.csv"
    if mask_path.is_file():
        table = read_table(mask_path, ("ImageId", "label", "EncodedPixels", "width", "height"), KIND)
        for i, r in enumerate(table.to_dict("records")):
            rec = by_id.get(r["ImageId"])
            if rec is None:
                summary.exclude("mask of an image not in the table")
                continue
            try:
                w, h = int(r["width"]), int(r["height"])
                rle_decode(r["EncodedPixels"], w, h)   # refuse a malformed run list now, not in training
            except ValueError as exc:
                summary.skip("bad mask", f"{mask_path} row {i + 2}", str(exc))
                continue
            rec["masks"].append({"label": r["label"], "rle": r["EncodedPixels"].strip(), "width": w, "height": h})
