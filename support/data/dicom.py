"""DICOM radiographs -> float [0, 1] pixels the way a viewer shows them, and no identifiers.

The display pipeline of DICOM PS3.3 C.11: stored values -> modality LUT (or rescale) -> VOI LUT
(or window) -> normalised by the output range that step defines -> MONOCHROME1 inverted so that
bone is bright in every output. Only a whitelist of non-identifying header fields leaves this
module (:data:`SAFE_FIELDS`); names, ids, dates, accession and institution never do.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import numpy as np

# Header fields that may be carried into a record table. Everything else stays in the file.
SAFE_FIELDS = ("Rows", "Columns", "BitsStored", "PhotometricInterpretation", "ViewPosition",
               "Modality", "BodyPartExamined", "PatientSex", "PatientAge")
# Ages over 89 are themselves identifying (HIPAA safe harbour): they are reported as 90.
MAX_REPORTED_AGE = 90.0


class DicomError(ValueError):
    """A file that is not a readable single-frame grayscale DICOM image."""


@dataclasses.dataclass(frozen=True)
class DicomHeader:
    """The non-identifying part of a radiograph's header."""

    rows: int
    columns: int
    bits_stored: int
    photometric: str
    view: str          # ViewPosition as written ("PA", "AP", "LL", ...) or ""
    modality: str
    body_part: str
    sex: str           # "F", "M" or ""
    age: float         # years, NaN when absent, capped at MAX_REPORTED_AGE


def _age_years(value: Any) -> float:
    from support.data.records import parse_age

    age = parse_age(value)
    return min(age, MAX_REPORTED_AGE) if np.isfinite(age) else float("nan")


def _header(ds, path) -> DicomHeader:
    try:
        rows, columns = int(ds.Rows), int(ds.Columns)
    except AttributeError:
        raise DicomError(f"{path}: no Rows/Columns; not an image DICOM") from None
    sex = str(ds.get("PatientSex", "") or "").strip().upper()
    return DicomHeader(rows=rows, columns=columns, bits_stored=int(ds.get("BitsStored", 8) or 8),
                       photometric=str(ds.get("PhotometricInterpretation", "") or ""),
                       view=str(ds.get("ViewPosition", "") or "").strip().upper(),
                       modality=str(ds.get("Modality", "") or ""),
                       body_part=str(ds.get("BodyPartExamined", "") or ""),
                       sex=sex if sex in ("F", "M") else "", age=_age_years(ds.get("PatientAge", "")))


def _dcmread(path, **kwargs):
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        return pydicom.dcmread(os.fspath(path), **kwargs)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: DICOM file not found") from None
    except (InvalidDicomError, EOFError, OSError, ValueError, KeyError, TypeError) as exc:
        raise DicomError(f"{path}: not a readable DICOM file ({type(exc).__name__}: {exc})") from None


def read_dicom_header(path: str | os.PathLike) -> DicomHeader:
    """The non-identifying header fields, without decoding pixels (fast)."""
    return _header(_dcmread(path, stop_before_pixels=True), path)


def _stored_range(ds) -> tuple[float, float]:
    bits = int(ds.get("BitsStored", ds.get("BitsAllocated", 8)))
    if int(ds.get("PixelRepresentation", 0)) == 1:
        return -(2.0 ** (bits - 1)), 2.0 ** (bits - 1) - 1
    return 0.0, 2.0 ** bits - 1


def _modality_range(ds) -> tuple[float, float]:
    """The value range after the modality step, as pydicom's windowing assumes it."""
    if ds.get("ModalityLUTSequence"):
        depth = int(ds.ModalityLUTSequence[0].LUTDescriptor[2])
        return 0.0, 2.0 ** depth - 1
    lo, hi = _stored_range(ds)
    slope, intercept = ds.get("RescaleSlope", None), ds.get("RescaleIntercept", None)
    if slope is not None and intercept is not None:
        lo, hi = sorted((lo * float(slope) + float(intercept), hi * float(slope) + float(intercept)))
    return lo, hi


def dicom_to_float(ds, path: Any = "<dataset>", apply_voi: bool = True) -> np.ndarray:
    """Pixels of a read dataset -> float32 (H, W) in [0, 1], bright = dense (bone, heart)."""
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    if int(ds.get("NumberOfFrames", 1) or 1) != 1:
        raise DicomError(f"{path}: {ds.NumberOfFrames} frames; expected a single radiograph")
    try:
        raw = ds.pixel_array
    except Exception as exc:  # pydicom raises many types for missing/truncated/undecodable data
        raise DicomError(f"{path}: pixel data cannot be decoded ({type(exc).__name__}: {exc})") from None
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2"))
    if raw.ndim == 3 and raw.shape[-1] == 3:
        # A colour capture of a radiograph (rare): luminance, already display-ready 8-bit.
        if photometric.startswith("YBR"):
            from pydicom.pixels import convert_color_space
            raw = convert_color_space(raw, photometric, "RGB")
        gray = raw.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
        return np.clip(gray / (2.0 ** int(ds.get("BitsStored", 8)) - 1), 0, 1).astype(np.float32)
    if raw.ndim != 2:
        raise DicomError(f"{path}: pixel array of shape {raw.shape}; expected (rows, columns)")
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise DicomError(f"{path}: PhotometricInterpretation {photometric!r}; expected MONOCHROME1/2")

    values = apply_modality_lut(raw, ds)
    lo, hi = _modality_range(ds)
    if apply_voi:
        has_lut = bool(ds.get("VOILUTSequence"))
        has_window = ds.get("WindowCenter") is not None and ds.get("WindowWidth") is not None
        if has_lut or has_window:
            if has_lut:
                lut = np.asarray(ds.VOILUTSequence[0].LUTData, dtype=np.float64)
                lo, hi = float(lut.min()), float(lut.max())
            # windowing keeps the modality range as its output range
            values = apply_voi_lut(values, ds)
    values = np.asarray(values, dtype=np.float64)
    if hi <= lo:
        raise DicomError(f"{path}: empty value range [{lo}, {hi}] after the LUT steps")
    out = np.clip((values - lo) / (hi - lo), 0.0, 1.0)
    if photometric == "MONOCHROME1":  # low values are white on MONOCHROME1
        out = 1.0 - out
    return out.astype(np.float32)


def read_dicom(path: str | os.PathLike, apply_voi: bool = True) -> tuple[np.ndarray, DicomHeader]:
    """Read a radiograph: float32 (H, W) in [0, 1] (MONOCHROME1 inverted) and its safe header."""
    ds = _dcmread(path)
    if "PixelData" not in ds:
        raise DicomError(f"{path}: no PixelData element")
    return dicom_to_float(ds, path, apply_voi), _header(ds, path)


def is_dicom_file(path: str | os.PathLike) -> bool:
    """True for a ``.dcm``/``.dicom`` suffix or a ``DICM`` preamble marker."""
    p = Path(path)
    if p.suffix.lower() in (".dcm", ".dicom"):
        return True
    try:
        with open(p, "rb") as fh:
            fh.seek(128)
            return fh.read(4) == b"DICM"
    except OSError:
        return False
