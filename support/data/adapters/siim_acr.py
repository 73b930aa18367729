"""SIIM-ACR Pneumothorax Segmentation: ``train-rle.csv`` + DICOMs in nested folders.

``train-rle.csv`` (header ``ImageId, EncodedPixels`` with a leading space in the original) or the
stage-2 ``stage_2_train.csv``: one row per pneumothorax component, ``-1`` for none, column-major
RLE (:mod:`support.data.rle`): relative in ``train-rle.csv``, absolute (Kaggle's standard) in
``stage_2_train.csv``. Each is decoded in its own file's convention and kept in the record table in
the project's relative one. DICOMs sit anywhere below the root as
``.../<StudyUID>/<SeriesUID>/<ImageId>.dcm``. The split is by patient (the original split is by
row and can leak images of one patient across splits): images are grouped by the DICOM
``PatientID``, which is never copied out; the subject id is a salted hash of it
(:func:`pseudonym`). An image without a PatientID is its own subject (its ``ImageId``), counted
in a note of the summary.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from support.data.records import (
    DatasetSummary, UnsafePathError, dicom_header_and_view, empty_record, find_file, finish, patient_split,
    read_table, require_root, safe_id,
)
from support.data.rle import rle_decode, rle_encode

KIND = "siim-acr"
# The label files, in the order they are looked for, and the RLE convention each is written in.
RLE_TABLES = {"train-rle.csv": "relative", "stage_2_train.csv": "absolute"}


# Salt of the pseudonymous subject ids: the same PatientID gives the same subject id on any machine.
PSEUDONYM_SALT = "synthcxr:siim-acr:subject"


def pseudonym(patient_id: str) -> str:
    """A subject id for a DICOM PatientID that does not contain it: a salted sha256, shortened."""
    return "siim-" + hashlib.sha256(f"{PSEUDONYM_SALT}:{patient_id}".encode()).hexdigest()[:16]


def _patient_id(path: Path) -> str:
    """The file's PatientID, only to group its images ("" when absent or unreadable); the header
    reader (:class:`support.data.dicom.DicomHeader`) deliberately leaves it out."""
    from support.data.dicom import DicomError, _dcmread

    try:
        ds = _dcmread(path, stop_before_pixels=True, specific_tags=["PatientID"])
    except (DicomError, FileNotFoundError):   # its header was read just before: only a vanished file
        return ""
    return str(ds.get("PatientID", "") or "").strip()


def _index_dicoms(root: Path) -> dict[str, Path]:
    index: dict[str, Path] = {}
    for dirpath, dirnames, files in os.walk(root):
        dirnames.sort()
        for f in sorted(files):
            if f.lower().endswith(".dcm"):
                index.setdefault(f[:-4], Path(dirpath) / f)
    return index


def load(root: str | os.PathLike, *, strict: bool = False, verify_images: bool = False,
         fractions: tuple[float, float, float] = (0.8, 0.1, 0.1), max_examples: int = 5):
    """Read SIIM-ACR -> (record table, summary); each component is one mask entry."""
    from tqdm.auto import tqdm

    root = require_root(root, KIND)
    summary = DatasetSummary(KIND, str(root), strict=strict, max_examples=max_examples)
    label_path = find_file(root, tuple(RLE_TABLES), KIND, "RLE table")
    convention = RLE_TABLES[label_path.name]
    summary.note(f"{label_path.name}: {convention} RLE")
    table = read_table(label_path, ("ImageId", "EncodedPixels"), KIND)
    dicoms = _index_dicoms(root)

    rles: dict[str, list[str]] = {}
    for i, r in enumerate(table.to_dict("records")):
        try:
            image_id = safe_id(r["ImageId"], "ImageId")
        except UnsafePathError as exc:
            summary.skip("unsafe path", f"{label_path.name} row {i + 2}", str(exc))
            continue
        rles.setdefault(image_id, []).append(r["EncodedPixels"].strip())

    records, without_patient = [], 0
    for image_id, runs in tqdm(rles.items(), desc="reading SIIM headers", unit="file",
                               disable=len(rles) < 2000, leave=False):
        path = dicoms.get(image_id)
        if path is None:
            summary.skip("missing file", label_path.name, f"no DICOM named {image_id}.dcm below {root}")
            continue
        read = dicom_header_and_view(path, summary)
        if read is None:
            continue
        header, view = read
        positive = [r for r in runs if r not in ("-1", "")]
        if positive and len(positive) != len(runs):
            summary.skip("bad mask", path, f"{image_id} has both -1 and mask rows")
            continue
        try:  # refuse a malformed run list now, not in the middle of training
            masks = [rle_encode(rle_decode(run, header.columns, header.rows, convention)) for run in positive]
        except ValueError as exc:
            summary.skip("bad mask", path, f"{image_id}: {exc}")
            continue
        patient = _patient_id(path)
        without_patient += not patient
        subject = pseudonym(patient) if patient else image_id
        rec = empty_record(KIND)
        rec.update(subject_id=subject, study_id=image_id, image_id=image_id, view=view,
                   path=str(path), split=patient_split(subject, fractions), sex=header.sex,
                   age=header.age, Pneumothorax=1.0 if positive else 0.0,
                   source_labels=["Pneumothorax"] if positive else ["No Pneumothorax"],
                   masks=[{"label": "Pneumothorax", "rle": rle, "width": header.columns,
                           "height": header.rows} for rle in (masks or ["-1"])])
        records.append(rec)
    if without_patient:
        summary.note(f"{without_patient} image(s) without a PatientID: each is its own subject (its ImageId)")
    return finish(records, summary, verify_images)
