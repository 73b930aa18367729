"""DICOM radiographs -> float [0, 1] pixels the way a viewer shows them, and no identifiers.

The display pipeline of DICOM PS3.3 C.11: stored values -> modality LUT (or rescale) -> VOI LUT
(or window) -> normalised by the output range that step defines -> inverted when the file says low
values are white (MONOCHROME1, Presentation LUT Shape INVERSE), so that bone is bright in every
output. Only a whitelist of non-identifying header fields leaves this module (:data:`SAFE_FIELDS`);
names, ids, dates, accession and institution never do.

Compressed transfer syntaxes (JPEG Lossless, JPEG-LS, JPEG 2000, RLE) decode through pydicom's
pixel handlers, with the pylibjpeg plugins pinned in ``environments/requirements-cpu.txt``. Every
number taken from the header is checked first: a fraction, infinity, NaN or text where an integer
or a finite number belongs is a :class:`DicomError` naming the file and the tag.
"""

from __future__ import annotations

import dataclasses
import math
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


def _tag(keyword: str) -> str:
    """``Columns (0028,0011)``: a header field as errors name it."""
    from pydicom.datadict import tag_for_keyword
    from pydicom.tag import Tag

    return f"{keyword} {Tag(tag_for_keyword(keyword))}"


def _as_float(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):  # several values, text
        return math.nan


def _integer(ds, keyword: str, path, lo: int, hi: int, default: int | None = None) -> int:
    """A header integer in ``lo..hi``; ``int()`` would truncate 64.9 and overflow on inf."""
    value = ds.get(keyword, None)
    if value is None or value == "":
        if default is None:
            raise DicomError(f"{path}: no {_tag(keyword)}; expected an integer in {lo}..{hi}")
        return default
    number = _as_float(value)
    if not (number.is_integer() and lo <= number <= hi):
        raise DicomError(f"{path}: {_tag(keyword)} is {value!r}; expected an integer in {lo}..{hi}")
    return int(number)


def _reals(ds, keyword: str, path) -> list[float]:
    """The values of a decimal header field (VM 1-n), each finite; [] when absent."""
    from pydicom.multival import MultiValue

    value = ds.get(keyword, None)
    if value is None or value == "":
        return []
    values = [_as_float(v) for v in (value if isinstance(value, MultiValue) else [value])]
    if not all(math.isfinite(v) for v in values):
        raise DicomError(f"{path}: {_tag(keyword)} is {value!r}; expected finite numbers")
    return values


def _header(ds, path) -> DicomHeader:
    rows = _integer(ds, "Rows", path, 1, 65535)
    columns = _integer(ds, "Columns", path, 1, 65535)
    sex = str(ds.get("PatientSex", "") or "").strip().upper()
    return DicomHeader(rows=rows, columns=columns, bits_stored=_integer(ds, "BitsStored", path, 1, 32, 8),
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


def _stored_range(ds, path) -> tuple[float, float]:
    bits = _integer(ds, "BitsStored", path, 1, 32, _integer(ds, "BitsAllocated", path, 1, 64, 8))
    if _integer(ds, "PixelRepresentation", path, 0, 1, 0) == 1:
        return -(2.0 ** (bits - 1)), 2.0 ** (bits - 1) - 1
    return 0.0, 2.0 ** bits - 1


def _modality_range(ds, path) -> tuple[float, float]:
    """The value range after the modality step, as pydicom's windowing assumes it."""
    if ds.get("ModalityLUTSequence"):
        depth = int(ds.ModalityLUTSequence[0].LUTDescriptor[2])
        return 0.0, 2.0 ** depth - 1
    lo, hi = _stored_range(ds, path)
    slope, intercept = _reals(ds, "RescaleSlope", path), _reals(ds, "RescaleIntercept", path)
    if slope and intercept:
        lo, hi = sorted((lo * slope[0] + intercept[0], hi * slope[0] + intercept[0]))
    return lo, hi


def _inverted(ds, photometric: str, path) -> bool:
    """Whether low values are white. PS3.3's DX Image Module pairs Presentation LUT Shape INVERSE
    with MONOCHROME1 and IDENTITY with MONOCHROME2: the shape restates the photometric inversion,
    it does not add a second one. So either inverts and both together invert once; INVERSE on a
    MONOCHROME2 image (off-standard, but exported) still asks for the inversion."""
    shape = str(ds.get("PresentationLUTShape", "") or "").strip().upper()
    if shape not in ("", "IDENTITY", "INVERSE"):
        raise DicomError(f"{path}: {_tag('PresentationLUTShape')} is {shape!r}; expected IDENTITY or INVERSE")
    return photometric == "MONOCHROME1" or shape == "INVERSE"


def _require_decoder(ds, path) -> None:
    """A compressed transfer syntax whose decoder is missing fails here, naming the syntax."""
    from pydicom.pixels import get_decoder

    syntax = getattr(ds, "file_meta", {}).get("TransferSyntaxUID")
    if syntax is None:
        return  # pydicom guesses the syntax of a file without meta information
    try:
        decoder = get_decoder(syntax)
    except NotImplementedError:
        raise DicomError(f"{path}: transfer syntax {syntax.name} ({syntax}) has no pixel decoder") from None
    if not decoder.is_available:
        raise DicomError(f"{path}: transfer syntax {syntax.name} ({syntax}) has no decoder installed "
                         f"(missing: {'; '.join(decoder.missing_dependencies)})")


def dicom_to_float(ds, path: Any = "<dataset>", apply_voi: bool = True) -> np.ndarray:
    """Pixels of a read dataset -> float32 (H, W) in [0, 1], bright = dense (bone, heart)."""
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    if _integer(ds, "NumberOfFrames", path, 1, 2**31 - 1, 1) != 1:
        raise DicomError(f"{path}: {ds.NumberOfFrames} frames; expected a single radiograph")
    _require_decoder(ds, path)
    try:
        raw = ds.pixel_array
    except Exception as exc:  # pydicom raises many types for missing/truncated/undecodable data
        raise DicomError(f"{path}: pixel data cannot be decoded ({type(exc).__name__}: {exc})") from None
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2"))
    if raw.ndim == 3 and raw.shape[-1] == 3:
        # A colour capture of a radiograph (rare): luminance, already display-ready 8-bit.
        # pydicom (3.x, pinned) decodes YBR_FULL/YBR_FULL_422/... to RGB already: converting again
        # would shift every pixel by its chroma.
        gray = raw.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
        return np.clip(gray / (2.0 ** _integer(ds, "BitsStored", path, 1, 32, 8) - 1), 0, 1).astype(np.float32)
    if raw.ndim != 2:
        raise DicomError(f"{path}: pixel array of shape {raw.shape}; expected (rows, columns)")
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise DicomError(f"{path}: PhotometricInterpretation {photometric!r}; expected MONOCHROME1/2")

    inverted = _inverted(ds, photometric, path)
    lo, hi = _modality_range(ds, path)
    values = apply_modality_lut(raw, ds)
    if apply_voi:
        has_lut = bool(ds.get("VOILUTSequence"))
        has_window = bool(_reals(ds, "WindowCenter", path)) and bool(_reals(ds, "WindowWidth", path))
        if has_lut or has_window:
            if has_lut:
                lut = np.asarray(ds.VOILUTSequence[0].LUTData, dtype=np.float64)
                lo, hi = float(lut.min()), float(lut.max())
            try:  # windowing keeps the modality range as its output range
                values = apply_voi_lut(values, ds)
            except ValueError as exc:  # e.g. a window width below 1
                raise DicomError(f"{path}: the VOI LUT/window cannot be applied ({exc})") from None
            slope = _reals(ds, "RescaleSlope", path)
            if not has_lut and slope and slope[0] < 0 and _reals(ds, "RescaleIntercept", path):
                # pydicom rescales the window's output range (y_min, y_max) by the slope, which a
                # negative slope reverses: that would invert the image. PS3.3 C.11.2.1.2 maps
                # values below the window to the minimum of the range, so reflect back.
                values = lo + hi - np.asarray(values, dtype=np.float64)
    values = np.asarray(values, dtype=np.float64)
    if hi <= lo:
        raise DicomError(f"{path}: empty value range [{lo}, {hi}] after the LUT steps")
    out = np.clip((values - lo) / (hi - lo), 0.0, 1.0)
    return (1.0 - out if inverted else out).astype(np.float32)


def read_dicom(path: str | os.PathLike, apply_voi: bool = True) -> tuple[np.ndarray, DicomHeader]:
    """Read a radiograph: float32 (H, W) in [0, 1] (low-is-white images inverted) and its safe header."""
    from support.data.images import size_refusal

    ds = _dcmread(path)
    if "PixelData" not in ds:
        raise DicomError(f"{path}: no PixelData element")
    header = _header(ds, path)  # its numbers are checked before any pixel is decoded
    if refusal := size_refusal(header.columns, header.rows):
        raise DicomError(f"{path}: {refusal}")
    return dicom_to_float(ds, path, apply_voi), header


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
