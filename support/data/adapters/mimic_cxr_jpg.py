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
    BoxSpace, DatasetSummary, UnsafePathError, apply_uncertain_policy, chest_view_or_skip, decode_utf8,
    empty_record, find_file, finish, index_rows, parse_age, parse_count, parse_float, parse_label, parse_sex,
    read_table, require_root, safe_id,
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
        """The report's text; ValueError when it is not UTF-8 (never silently replaced)."""
        rel = self.relpath(subject, study)
        if self.zip:
            name = rel if rel in self.names else f"mimic-cxr-reports/{rel}"
            return decode_utf8(self.zip.read(name))
        return decode_utf8((self.source / rel).read_bytes())

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
    # images, subjects and studies whose rows were refused: left out, already counted
    split_of, refused_images = _splits(_csv(root, "mimic-cxr-2.0.0-split", "split table"), summary)

    study_labels: dict[tuple[str, str], dict[str, float]] = {}
    refused_studies: set[tuple[str, str]] = set()
    if labels != "none":
        label_path = _csv(root, f"mimic-cxr-2.0.0-{labels}", f"{labels} label table")
        study_labels, refused_studies = _study_labels(label_path, summary)

    patients: dict[str, tuple[str, float]] = {}
    refused_subjects: set[str] = set()
    ppath = Path(patients_csv) if patients_csv else _optional_csv(root, "patients")
    if ppath is not None:
        rows = read_table(ppath, ("subject_id", "gender", "anchor_age"), KIND).to_dict("records")
        patients, refused_subjects = index_rows(
            ((r["subject_id"].strip(), (parse_sex(r["gender"]), parse_age(r["anchor_age"])),
              f"{ppath.name} row {i + 2}") for i, r in enumerate(rows)), summary, ppath.name, "subject_id")

    provenance: dict[str, dict[str, str]] = {}
    prov_path = _optional_csv(root, "provenance")
    if prov_path is not None:
        rows = read_table(prov_path, ("dicom_id",), KIND).to_dict("records")
        provenance, conflicts = index_rows(
            ((r.pop("dicom_id").strip(), r, f"{prov_path.name} row {i + 2}") for i, r in enumerate(rows)),
            summary, prov_path.name, "dicom_id")
        refused_images |= conflicts

    source = Path(reports_root).expanduser() if reports_root else root
    if reports_root and not source.exists():
        raise FileNotFoundError(f"{KIND}: reports_root {source} not found (a folder or mimic-cxr-reports.zip)")
    report_store = _Reports(source) if reports is not False else None

    rows = meta.to_dict("records")
    spaces: dict[str, BoxSpace] = {}
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
            summary.skip("duplicate row", where, f"dicom_id {dicom} listed again; expected one row per image")
            continue
        seen.add(dicom)
        if dicom in refused_images or subject in refused_subjects or (subject, study) in refused_studies:
            continue
        view = chest_view_or_skip(r["ViewPosition"], summary, where, f"dicom_id {dicom}: ")
        if view is None:
            continue
        if views is not None and view not in views:
            summary.exclude(f"view {view} not selected")
            continue
        split = split_of.get(dicom)
        if split not in SPLITS:
            summary.skip("unknown split", where, f"dicom_id {dicom} split {split!r}; expected one of {list(SPLITS)}")
            continue
        try:
            height, width = parse_count(r["Rows"], "Rows", 1), parse_count(r["Columns"], "Columns", 1)
        except ValueError as exc:
            summary.skip("bad image size", where, f"dicom_id {dicom}: {exc}")
            continue
        spaces[dicom] = BoxSpace(width, height, f"{where} (Rows, Columns)")
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
    _attach_annotations(root, records, spaces, summary)
    table, summary = finish(records, summary, verify_images, box_spaces=spaces)
    if labels != "none":
        table = apply_uncertain_policy(table, uncertain)
    return table, summary


def _splits(path: Path, summary: DatasetSummary) -> tuple[dict[str, str], set[str]]:
    """dicom_id -> split, and the dicom_ids whose rows disagree (left out, counted)."""
    rows = read_table(path, SPLIT_COLUMNS, KIND).to_dict("records")
    return index_rows(((r["dicom_id"].strip(), r["split"].strip(), f"{path.name} row {i + 2}")
                       for i, r in enumerate(rows)), summary, path.name, "dicom_id")


def _study_labels(path: Path, summary: DatasetSummary) -> tuple[dict[tuple[str, str], dict[str, float]],
                                                                set[tuple[str, str]]]:
    """(subject, study) -> labels, and the studies left out: a bad cell or disagreeing rows.

    A study's labels are all or nothing: its images are never kept with a row that was refused.
    """
    parsed, refused = [], set()
    table = read_table(path, ("subject_id", "study_id") + CHEXPERT_LABELS, KIND)
    for i, r in enumerate(table.to_dict("records")):
        where, key = f"{path.name} row {i + 2}", (r["subject_id"].strip(), r["study_id"].strip())
        try:
            parsed.append((key, {k: parse_label(r[k], k) for k in CHEXPERT_LABELS}, where))
        except ValueError as exc:
            summary.skip("bad label value", where, f"study {key[1]}: {exc}; its images are left out")
            refused.add(key)
    labels, conflicts = index_rows(parsed, summary, path.name, "study")
    return {k: v for k, v in labels.items() if k not in refused}, refused | conflicts


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
        try:
            text = store.read(*s)
        except ValueError as exc:
            summary.skip("report not UTF-8", store.where(*s), f"study {s[1]}: {exc}")
            sections[s] = None
            continue
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


def _attach_annotations(root: Path, records: list[dict], spaces: dict[str, BoxSpace],
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
            where = f"{box_path} row {i + 2}"
            try:
                x, y, bw, bh = (parse_float(r[k]) for k in ("x", "y", "width", "height"))
                if not all(map(math.isfinite, (x, y, bw, bh))) or bw <= 0 or bh <= 0:
                    raise ValueError("needs finite numbers and positive size")
            except ValueError as exc:
                summary.skip("bad box", where, str(exc))
                continue
            try:
                rec["boxes"].append(spaces[r["dicom_id"]].normalise(r["label"], x, y, x + bw, y + bh))
            except ValueError as exc:
                summary.skip("box outside the image", where, f"dicom_id {r['dicom_id']}: {exc}")
    mask_path = root / "annotations" / "masks.csv"
    if mask_path.is_file():
        table = read_table(mask_path, ("ImageId", "label", "EncodedPixels", "width", "height"), KIND)
        for i, r in enumerate(table.to_dict("records")):
            rec = by_id.get(r["ImageId"])
            if rec is None:
                summary.exclude("mask of an image not in the table")
                continue
            try:
                w, h = parse_count(r["width"], "width", 1), parse_count(r["height"], "height", 1)
                rle_decode(r["EncodedPixels"], w, h)   # refuse a malformed run list now, not in training
            except ValueError as exc:
                summary.skip("bad mask", f"{mask_path} row {i + 2}", str(exc))
                continue
            rec["masks"].append({"label": r["label"], "rle": r["EncodedPixels"].strip(), "width": w, "height": h})
