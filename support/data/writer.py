"""Write a dataset in the MIMIC-CXR-JPG 2.0.0 layout (plus RSNA-style boxes, SIIM-style masks).

The phantom and every synthetic set are written through :class:`MimicLayoutWriter`, so they are
read back by the same adapter as the real MIMIC-CXR-JPG. Everything is deterministic: the same
calls give the same bytes (JPEG through PIL at a fixed quality, CSV rows sorted, no timestamps).

Layout under ``root``::

    mimic-cxr-2.0.0-metadata.csv  mimic-cxr-2.0.0-chexpert.csv  mimic-cxr-2.0.0-split.csv
    files/pXX/pSUBJECT/sSTUDY/DICOM_ID.jpg  files/pXX/pSUBJECT/sSTUDY.txt
    patients.csv  annotations/boxes.csv  annotations/masks.csv  provenance.csv  dataset.json
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
import re
from pathlib import Path, PurePosixPath
from typing import Any, Mapping, Sequence

import numpy as np

from support.data.rle import rle_encode
from support.data.schema import CHEXPERT_LABELS, KNOWN_VIEWS, LATERAL_VIEWS, SPLITS
from support.io import read_json, write_bytes_atomic, write_json_atomic, write_text_atomic

LAYOUT = "mimic-cxr-jpg-2.0.0"
METADATA_CSV = "mimic-cxr-2.0.0-metadata.csv"
CHEXPERT_CSV = "mimic-cxr-2.0.0-chexpert.csv"
SPLIT_CSV = "mimic-cxr-2.0.0-split.csv"
PATIENTS_CSV = "patients.csv"
BOXES_CSV = "annotations/boxes.csv"
MASKS_CSV = "annotations/masks.csv"
PROVENANCE_CSV = "provenance.csv"
DATASET_JSON = "dataset.json"
MANAGED_FILES = (METADATA_CSV, CHEXPERT_CSV, SPLIT_CSV, PATIENTS_CSV, BOXES_CSV, MASKS_CSV,
                 PROVENANCE_CSV, DATASET_JSON)

METADATA_COLUMNS = (
    "dicom_id", "subject_id", "study_id", "PerformedProcedureStepDescription", "ViewPosition",
    "Rows", "Columns", "StudyDate", "StudyTime", "ProcedureCodeSequence_CodeMeaning",
    "ViewCodeSequence_CodeMeaning", "PatientOrientationCodeSequence_CodeMeaning",
)
CHEXPERT_COLUMNS = ("subject_id", "study_id") + CHEXPERT_LABELS
SPLIT_COLUMNS = ("dicom_id", "study_id", "subject_id", "split")
PATIENTS_COLUMNS = ("subject_id", "gender", "anchor_age")
BOXES_COLUMNS = ("dicom_id", "label", "x", "y", "width", "height")
MASKS_COLUMNS = ("ImageId", "label", "EncodedPixels", "width", "height")

# DICOM code meanings as they appear in MIMIC-CXR's metadata.
VIEW_CODE_MEANING = {"PA": "postero-anterior", "AP": "antero-posterior",
                     "LATERAL": "lateral", "LL": "left lateral"}

# MIMIC-CXR's subject ids are 8 digits starting with "1", its study ids 8 digits starting with "5".
# Every set this project makes (the phantom, the generators' samples) numbers subjects and studies
# "9" + 7 digits, a range real MIMIC never uses, so a synthetic set mixed with real MIMIC never
# collides; readers accept both.
SUBJECT_ID_RE = re.compile(r"[19]\d{7}")
STUDY_ID_RE = re.compile(r"[59]\d{7}")
SYNTHETIC_ID_PREFIX = "9"
DICOM_ID_RE = re.compile(r"[0-9a-f]{8}(?:-[0-9a-f]{8}){4}")
STUDY_DATE_RE = re.compile(r"\d{8}")


# ----------------------------------------------------------------------------------------- ids
def make_subject_id(index: int) -> str:
    """The ``index``-th synthetic subject id: 8 digits, as MIMIC's ``subject_id``, starting with "9"
    where MIMIC's start with "1"."""
    if not 0 <= int(index) < 10**7:
        raise ValueError(f"subject index {index} outside 0..9999999")
    return f"{SYNTHETIC_ID_PREFIX}{int(index):07d}"


def make_study_id(index: int) -> str:
    """The ``index``-th synthetic study id: 8 digits, as MIMIC's ``study_id``, starting with "9"
    where MIMIC's start with "5"."""
    if not 0 <= int(index) < 10**7:
        raise ValueError(f"study index {index} outside 0..9999999")
    return f"{SYNTHETIC_ID_PREFIX}{int(index):07d}"


def make_dicom_id(*key: Any) -> str:
    """A stable MIMIC-style dicom id (five groups of 8 hex digits) derived from ``key``."""
    digest = hashlib.sha1("\x1f".join(str(k) for k in key).encode("utf-8")).hexdigest()
    return "-".join(digest[i:i + 8] for i in range(0, 40, 8))


def image_relpath(subject_id, study_id, dicom_id) -> Path:
    """``files/pXX/pSUBJECT/sSTUDY/DICOM_ID.jpg``: where the layout keeps an image, ids checked."""
    s = _subject(subject_id)
    return Path("files") / f"p{s[:2]}" / f"p{s}" / f"s{_study(study_id)}" / f"{_dicom(dicom_id)}.jpg"


def _check_id(value: Any, pattern: re.Pattern, what: str, example: str) -> str:
    text = str(value)
    if not pattern.fullmatch(text):
        raise ValueError(f"{what} {text!r}: expected the MIMIC-CXR form like {example!r}")
    return text


def _subject(value: Any) -> str:
    return _check_id(value, SUBJECT_ID_RE, "subject_id", "10000032")


def _study(value: Any) -> str:
    return _check_id(value, STUDY_ID_RE, "study_id", "50414267")


def _dicom(value: Any) -> str:
    return _check_id(value, DICOM_ID_RE, "dicom_id", "02aa804e-bde0afdd-112c0b34-7bc16630-4e384014")


# -------------------------------------------------------------------------------------- values
def _fmt_number(value: float) -> str:
    """Numbers as short, stable text: integers without a decimal part, others to 3 decimals."""
    v = round(float(value), 3)
    if v == 0:
        v = 0.0  # no "-0"
    return str(int(v)) if v.is_integer() else f"{v:.3f}".rstrip("0")


def _fmt_label(value: float) -> str:
    # MIMIC's chexpert.csv writes 1.0 / 0.0 / -1.0 and leaves unmentioned labels blank.
    return "" if math.isnan(value) else f"{value:.1f}"


def _fmt_provenance(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value, sort_keys=True, separators=(",", ":"))
    if isinstance(value, float):
        return repr(value)
    return str(value)


def encode_jpeg(image: np.ndarray, quality: int = 95) -> bytes:
    """uint8 (H, W) grayscale -> baseline JPEG bytes; identical input gives identical bytes."""
    from PIL import Image

    arr = np.asarray(image)
    if arr.dtype != np.uint8 or arr.ndim != 2:
        raise ValueError(f"image: expected a uint8 (H, W) grayscale array, got {arr.dtype} {arr.shape}")
    if not 1 <= int(quality) <= 100:
        raise ValueError(f"JPEG quality {quality}: expected 1..100")
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(arr), mode="L").save(
        buf, format="JPEG", quality=int(quality), optimize=False, progressive=False)
    return buf.getvalue()


def _procedure_description(views: set[str]) -> str:
    """The study-level procedure name MIMIC uses, from the views the study holds."""
    lateral = bool(views & set(LATERAL_VIEWS))
    if "PA" in views:
        return "CHEST (PA AND LAT)" if lateral else "CHEST (PA)"
    if "AP" in views:
        return "CHEST (AP AND LAT)" if lateral else "CHEST (PORTABLE AP)"
    return "CHEST (SINGLE VIEW)"


def _read_csv(path: Path, columns: Sequence[str]) -> list[dict[str, str]]:
    """Rows of a CSV this writer wrote earlier, as strings; its header must hold ``columns``."""
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        missing = [c for c in columns if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{path}: missing column(s) {missing}; expected {list(columns)}")
        return list(reader)


def _csv_text(columns: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(columns)
    w.writerows(rows)
    return buf.getvalue()


class MimicLayoutWriter:
    """Write images, reports, labels and annotations of one dataset in the MIMIC-CXR-JPG layout.

    Use as a context manager. Opening a root that already holds a dataset loads its rows, so an
    interrupted job resumes: ``has_image`` tells which images are already on disk. Files (JPEG,
    reports, extras) are written atomically when added; the CSV tables when :meth:`flush` runs
    (on close, and every ``flush_every`` added images).
    """

    def __init__(self, root: str | os.PathLike, dataset: str, provenance_columns: Sequence[str] = (),
                 info: dict | None = None, flush_every: int = 1000):
        if not dataset or not isinstance(dataset, str):
            raise ValueError(f"dataset name: expected a non-empty string, got {dataset!r}")
        self.root = Path(root).expanduser().resolve()
        self.dataset = dataset
        self.info = dict(info or {})
        self.flush_every = int(flush_every)
        self._images: dict[str, dict[str, Any]] = {}       # dicom_id -> image row
        self._labels: dict[tuple[str, str], dict[str, float]] = {}
        self._patients: dict[str, tuple[str, str]] = {}     # subject_id -> (gender, age text)
        self._boxes: set[tuple[str, ...]] = set()
        self._masks: set[tuple[str, ...]] = set()
        self._provenance: dict[str, dict[str, str]] = {}
        self._study_subject: dict[str, str] = {}
        self._subject_split: dict[str, str] = {}
        self._reports: set[tuple[str, str]] = set()
        self._since_flush = 0
        self.provenance_columns: list[str] = []
        self.root.mkdir(parents=True, exist_ok=True)
        self._load_existing()
        for col in provenance_columns:
            self._add_provenance_column(col)

    # ---------------------------------------------------------------------------- lifecycle
    def __enter__(self) -> "MimicLayoutWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close()

    def close(self) -> None:
        """Write every table (see :meth:`flush`)."""
        self.flush()

    def _add_provenance_column(self, col: str) -> None:
        if not isinstance(col, str) or not col or col == "dicom_id":
            raise ValueError(f"provenance column {col!r}: expected a non-empty name other than dicom_id")
        if col not in self.provenance_columns:
            self.provenance_columns.append(col)

    def _load_existing(self) -> None:
        meta = self.root / DATASET_JSON
        if meta.exists():
            old = read_json(meta)
            if old.get("layout") != LAYOUT:
                raise ValueError(f"{meta}: layout {old.get('layout')!r}, expected {LAYOUT!r}")
            if old.get("name") != self.dataset:
                raise ValueError(f"{meta}: this root holds dataset {old.get('name')!r}, "
                                 f"not {self.dataset!r}; choose another root")
            self.info = {**old.get("info", {}), **self.info}
        path = self.root / METADATA_CSV
        if path.exists():
            splits = {}
            if (self.root / SPLIT_CSV).exists():
                splits = {r["dicom_id"]: r["split"] for r in _read_csv(self.root / SPLIT_CSV, SPLIT_COLUMNS)}
            for r in _read_csv(path, METADATA_COLUMNS):
                if r["dicom_id"] not in splits:
                    raise ValueError(f"{self.root / SPLIT_CSV}: no split row for dicom_id {r['dicom_id']}")
                self._commit_image(self._image_row(
                    r["subject_id"], r["study_id"], r["dicom_id"], r["ViewPosition"],
                    splits[r["dicom_id"]], int(r["Rows"]), int(r["Columns"]), r["StudyDate"],
                    r["StudyTime"]))
        path = self.root / CHEXPERT_CSV
        if path.exists():
            for r in _read_csv(path, CHEXPERT_COLUMNS):
                self._labels[(r["subject_id"], r["study_id"])] = {
                    k: float(r[k]) if r[k] != "" else math.nan for k in CHEXPERT_LABELS}
        path = self.root / PATIENTS_CSV
        if path.exists():
            for r in _read_csv(path, PATIENTS_COLUMNS):
                self._patients[r["subject_id"]] = (r["gender"], r["anchor_age"])
        path = self.root / BOXES_CSV
        if path.exists():
            self._boxes = {tuple(r[c] for c in BOXES_COLUMNS) for r in _read_csv(path, BOXES_COLUMNS)}
        path = self.root / MASKS_CSV
        if path.exists():
            self._masks = {tuple(r[c] for c in MASKS_COLUMNS) for r in _read_csv(path, MASKS_COLUMNS)}
        path = self.root / PROVENANCE_CSV
        if path.exists():
            with open(path, newline="", encoding="utf-8") as fh:
                reader = csv.DictReader(fh)
                if not reader.fieldnames or reader.fieldnames[0] != "dicom_id":
                    raise ValueError(f"{path}: expected dicom_id as the first column")
                for col in reader.fieldnames[1:]:
                    self._add_provenance_column(col)
                for r in reader:
                    self._provenance[r["dicom_id"]] = {k: v for k, v in r.items() if k != "dicom_id"}
        for study, subject in self._study_subject.items():
            if self.report_path(subject, study).is_file():
                self._reports.add((subject, study))

    # ---------------------------------------------------------------------------- images
    def image_path(self, subject_id, study_id, dicom_id) -> Path:
        """``root/files/pXX/pSUBJECT/sSTUDY/DICOM_ID.jpg``."""
        return self.root / image_relpath(subject_id, study_id, dicom_id)

    def report_path(self, subject_id, study_id) -> Path:
        """``root/files/pXX/pSUBJECT/sSTUDY.txt``."""
        s = _subject(subject_id)
        return self.root / "files" / f"p{s[:2]}" / f"p{s}" / f"s{_study(study_id)}.txt"

    def has_image(self, dicom_id: str) -> bool:
        """True when the image has a row and its file exists (so a resumed job can skip it)."""
        row = self._images.get(str(dicom_id))
        return row is not None and self.image_path(row["subject_id"], row["study_id"], row["dicom_id"]).is_file()

    def _image_row(self, subject_id, study_id, dicom_id, view, split, rows, columns,
                   study_date="", study_time="") -> dict[str, Any]:
        """Check one image row against the ids, views, splits and studies seen so far."""
        subject, study, dicom = _subject(subject_id), _study(study_id), _dicom(dicom_id)
        if view not in KNOWN_VIEWS:
            raise ValueError(f"dicom_id {dicom}: view {view!r}, expected one of {list(KNOWN_VIEWS)}")
        if split not in SPLITS:
            raise ValueError(f"dicom_id {dicom}: split {split!r}, expected one of {list(SPLITS)}")
        if study_date and not STUDY_DATE_RE.fullmatch(str(study_date)):
            raise ValueError(f"dicom_id {dicom}: study_date {study_date!r}, expected YYYYMMDD")
        if int(rows) <= 0 or int(columns) <= 0:
            raise ValueError(f"dicom_id {dicom}: image size {rows}x{columns} must be positive")
        owner = self._study_subject.get(study)
        if owner is not None and owner != subject:
            raise ValueError(f"study_id {study} already belongs to subject {owner}, not {subject}")
        # One split per patient: a patient on both sides of a split leaks into evaluation.
        held = self._subject_split.get(subject)
        if held is not None and held != split:
            raise ValueError(f"subject_id {subject} is already in split {held!r}; "
                             f"dicom_id {dicom} asks for {split!r} (splits must be by patient)")
        old = self._images.get(dicom)
        if old is not None and (old["subject_id"], old["study_id"]) != (subject, study):
            raise ValueError(f"dicom_id {dicom} already belongs to subject {old['subject_id']} "
                             f"study {old['study_id']}")
        return {"dicom_id": dicom, "subject_id": subject, "study_id": study, "view": view,
                "split": split, "rows": int(rows), "columns": int(columns),
                "study_date": str(study_date or ""), "study_time": str(study_time or "")}

    def _commit_image(self, row: dict[str, Any]) -> None:
        self._study_subject[row["study_id"]] = row["subject_id"]
        self._subject_split[row["subject_id"]] = row["split"]
        self._images[row["dicom_id"]] = row

    def _provenance_row(self, dicom_id: str, provenance: Mapping[str, Any] | None) -> dict[str, str] | None:
        if not provenance:
            return None
        unknown = sorted(set(provenance) - set(self.provenance_columns))
        if unknown:
            raise ValueError(f"dicom_id {dicom_id}: provenance key(s) {unknown} are not among the "
                             f"declared provenance_columns {self.provenance_columns}")
        return {k: _fmt_provenance(v) for k, v in provenance.items()}

    def _count_added(self) -> None:
        self._since_flush += 1
        if self.flush_every > 0 and self._since_flush >= self.flush_every:
            self.flush()

    def add_image(self, *, subject_id, study_id, dicom_id, image: np.ndarray, view: str, split: str,
                  provenance: dict | None = None, study_date: str = "", quality: int = 95) -> Path:
        """Write ``image`` (uint8 (H, W)) as JPEG atomically and record its metadata and split rows."""
        arr = np.asarray(image)
        if arr.dtype != np.uint8 or arr.ndim != 2:
            raise ValueError(f"dicom_id {dicom_id}: image must be a uint8 (H, W) array, "
                             f"got {arr.dtype} {arr.shape}")
        # Validate everything before touching the disk, and record the row only once the file is there.
        row = self._image_row(subject_id, study_id, dicom_id, view, split, arr.shape[0], arr.shape[1],
                              study_date)
        prov = self._provenance_row(row["dicom_id"], provenance)
        path = self.image_path(subject_id, study_id, dicom_id)
        write_bytes_atomic(path, encode_jpeg(arr, quality), durable=False)  # the CSVs are the durable index
        self._commit_image(row)
        if prov is not None:
            self._provenance[row["dicom_id"]] = prov
        self._count_added()
        return path

    def add_existing_image(self, *, subject_id, study_id, dicom_id, view, split, rows, columns,
                           provenance=None, study_date="") -> Path:
        """Record an image that another process already wrote at :meth:`image_path`."""
        path = self.image_path(subject_id, study_id, dicom_id)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: image file for dicom_id {dicom_id} not found; "
                                    f"write it before recording it")
        row = self._image_row(subject_id, study_id, dicom_id, view, split, rows, columns, study_date)
        prov = self._provenance_row(row["dicom_id"], provenance)
        self._commit_image(row)
        if prov is not None:
            self._provenance[row["dicom_id"]] = prov
        self._count_added()
        return path

    # ---------------------------------------------------------------------------- study level
    def add_report(self, subject_id, study_id, text: str) -> Path:
        """Write the study's report text file atomically."""
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"report of study {study_id}: expected non-empty text")
        subject, study = _subject(subject_id), _study(study_id)
        owner = self._study_subject.get(study)
        if owner is not None and owner != subject:
            raise ValueError(f"study_id {study} belongs to subject {owner}, not {subject}")
        path = self.report_path(subject, study)
        write_text_atomic(path, text if text.endswith("\n") else text + "\n", durable=False)
        self._reports.add((subject, study))
        return path

    def add_labels(self, subject_id, study_id, labels: Mapping[str, float]) -> None:
        """Set the study's CheXpert labels (1, 0, -1, NaN); labels not given are NaN (blank)."""
        subject, study = _subject(subject_id), _study(study_id)
        unknown = sorted(set(labels) - set(CHEXPERT_LABELS))
        if unknown:
            raise ValueError(f"labels of study {study}: unknown name(s) {unknown}; "
                             f"expected names from CHEXPERT_LABELS")
        row = {}
        for name in CHEXPERT_LABELS:
            value = labels.get(name, math.nan)
            value = math.nan if value is None else float(value)
            if not (math.isnan(value) or value in (1.0, 0.0, -1.0)):
                raise ValueError(f"labels of study {study}: {name}={value!r}, expected 1, 0, -1 or NaN")
            row[name] = value
        self._labels[(subject, study)] = row

    def add_patient(self, subject_id, sex: str, age: float) -> None:
        """Set the patient's sex ("F"/"M") and age (years) in ``patients.csv``."""
        subject = _subject(subject_id)
        if sex not in ("F", "M"):
            raise ValueError(f"subject {subject}: sex {sex!r}, expected 'F' or 'M'")
        if not (isinstance(age, (int, float, np.number)) and 0 <= float(age) <= 130):
            raise ValueError(f"subject {subject}: age {age!r}, expected a number of years in 0..130")
        self._patients[subject] = (sex, _fmt_number(age))

    # ---------------------------------------------------------------------------- annotations
    def _known_image(self, dicom_id, what: str) -> dict[str, Any]:
        dicom = _dicom(dicom_id)
        row = self._images.get(dicom)
        if row is None:
            raise ValueError(f"{what} for dicom_id {dicom}: no image row yet; add the image first")
        return row

    def add_box(self, dicom_id, label, x, y, width, height) -> None:
        """A box in pixels of the image (top-left ``x, y``), RSNA style."""
        row = self._known_image(dicom_id, "box")
        if not isinstance(label, str) or not label:
            raise ValueError(f"box for dicom_id {row['dicom_id']}: label must be a non-empty string")
        x, y, width, height = (float(v) for v in (x, y, width, height))
        if not all(map(math.isfinite, (x, y, width, height))) or width <= 0 or height <= 0:
            raise ValueError(f"box for dicom_id {row['dicom_id']}: ({x}, {y}, {width}, {height}) "
                             f"needs finite coordinates and positive size")
        eps = 1e-6
        if x < -eps or y < -eps or x + width > row["columns"] + eps or y + height > row["rows"] + eps:
            raise ValueError(f"box for dicom_id {row['dicom_id']}: ({x}, {y}, {width}, {height}) lies "
                             f"outside the {row['columns']}x{row['rows']} image")
        self._boxes.add((row["dicom_id"], label, _fmt_number(x), _fmt_number(y),
                         _fmt_number(width), _fmt_number(height)))

    def add_mask(self, dicom_id, label, mask: np.ndarray) -> None:
        """A bool (H, W) mask of the image as a SIIM relative-RLE row (``-1`` when empty)."""
        row = self._known_image(dicom_id, "mask")
        if not isinstance(label, str) or not label:
            raise ValueError(f"mask for dicom_id {row['dicom_id']}: label must be a non-empty string")
        arr = np.asarray(mask)
        if arr.shape != (row["rows"], row["columns"]):
            raise ValueError(f"mask for dicom_id {row['dicom_id']}: shape {arr.shape}, expected the "
                             f"image's {(row['rows'], row['columns'])}")
        if arr.dtype != bool:
            raise ValueError(f"mask for dicom_id {row['dicom_id']}: expected a bool array, got {arr.dtype}")
        self._masks.add((row["dicom_id"], label, rle_encode(arr), str(row["columns"]), str(row["rows"])))

    # ---------------------------------------------------------------------------- extras
    def write_extra(self, relpath: str, data: bytes) -> Path:
        """Write ``data`` atomically at ``root/relpath`` (a relative path inside the root)."""
        rel = PurePosixPath(str(relpath).replace("\\", "/"))
        if rel.is_absolute() or not rel.parts or ".." in rel.parts or re.match(r"^[A-Za-z]:", str(relpath)):
            raise ValueError(f"extra file {relpath!r}: expected a relative path inside {self.root}")
        if str(rel) in MANAGED_FILES or (rel.parts[0] == "files"):
            raise ValueError(f"extra file {relpath!r}: that path belongs to the layout itself")
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"extra file {relpath!r}: expected bytes, got {type(data).__name__}")
        path = self.root.joinpath(*rel.parts)
        write_bytes_atomic(path, bytes(data), durable=False)
        return path

    # ---------------------------------------------------------------------------- tables
    def flush(self) -> None:
        """Rewrite every CSV and ``dataset.json`` atomically, rows sorted: same inputs, same bytes."""
        images = sorted(self._images.values(), key=lambda r: (r["subject_id"], r["study_id"], r["dicom_id"]))
        study_views: dict[str, set[str]] = {}
        for r in images:
            study_views.setdefault(r["study_id"], set()).add(r["view"])
        meta_rows, split_rows = [], []
        for r in images:
            procedure = _procedure_description(study_views[r["study_id"]])
            orientation = "Erect" if r["view"] != "AP" else ""  # AP films may be supine or erect
            meta_rows.append((r["dicom_id"], r["subject_id"], r["study_id"], procedure, r["view"],
                              str(r["rows"]), str(r["columns"]), r["study_date"], r["study_time"],
                              procedure, VIEW_CODE_MEANING[r["view"]], orientation))
            split_rows.append((r["dicom_id"], r["study_id"], r["subject_id"], r["split"]))
        label_rows = [(s, st, *(_fmt_label(v[k]) for k in CHEXPERT_LABELS))
                      for (s, st), v in sorted(self._labels.items())]
        patient_rows = [(s, g, a) for s, (g, a) in sorted(self._patients.items())]
        prov_rows = [(d, *(p.get(c, "") for c in self.provenance_columns))
                     for d, p in sorted(self._provenance.items())]

        write_text_atomic(self.root / METADATA_CSV, _csv_text(METADATA_COLUMNS, meta_rows))
        write_text_atomic(self.root / SPLIT_CSV, _csv_text(SPLIT_COLUMNS, split_rows))
        write_text_atomic(self.root / CHEXPERT_CSV, _csv_text(CHEXPERT_COLUMNS, label_rows))
        write_text_atomic(self.root / PATIENTS_CSV, _csv_text(PATIENTS_COLUMNS, patient_rows))
        write_text_atomic(self.root / BOXES_CSV, _csv_text(BOXES_COLUMNS, sorted(self._boxes)))
        write_text_atomic(self.root / MASKS_CSV, _csv_text(MASKS_COLUMNS, sorted(self._masks)))
        write_text_atomic(self.root / PROVENANCE_CSV,
                          _csv_text(("dicom_id", *self.provenance_columns), prov_rows))
        from support import __version__
        write_json_atomic(self.root / DATASET_JSON, {
            "name": self.dataset,
            "layout": LAYOUT,
            "created_by": f"synthcxr-support {__version__} (support.data.writer)",
            "counts": {"images": len(images), "studies": len(study_views),
                       "subjects": len({r["subject_id"] for r in images}),
                       "reports": len(self._reports), "labelled_studies": len(self._labels),
                       "boxes": len(self._boxes), "masks": len(self._masks)},
            "provenance_columns": list(self.provenance_columns),
            "info": self.info,
        })
        self._since_flush = 0
