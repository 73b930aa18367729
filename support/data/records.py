"""The record table every adapter yields, the summary of what was skipped, and their shared checks.

A record table is a pandas DataFrame with one row per image: ``RECORD_COLUMNS`` of
:mod:`support.data.schema`, then ``EXTRA_COLUMNS``, then one float column per CheXpert label
(1 positive, 0 negative, -1 uncertain, NaN unmentioned).

Bad records in a large dataset are skipped, counted and listed in a :class:`DatasetSummary`;
with ``strict=True`` the first one raises :class:`RecordError` instead. A broken layout (missing
root, file or column) always raises :class:`DatasetLayoutError` naming what was expected.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import math
import os
import re
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any, Hashable, Iterable, Iterator, Mapping, Sequence

import numpy as np
import pandas as pd

from support.data.schema import (CHEXPERT_LABELS, FRONTAL_VIEWS, LATERAL_VIEWS, RECORD_COLUMNS, SPLITS, ViewError,
                                 chest_view)

# Beyond the contract's columns: the dataset's own label names (NIH's 14, a COVIDx class, RSNA's
# class) and, for synthetic sets, the generation provenance of each image.
EXTRA_COLUMNS: tuple[str, ...] = ("source_labels", "provenance")
TABLE_COLUMNS: tuple[str, ...] = RECORD_COLUMNS + EXTRA_COLUMNS + CHEXPERT_LABELS

UNCERTAIN_POLICIES = ("keep", "ones", "zeros", "ignore")


class DatasetLayoutError(ValueError):
    """The dataset's files are not in the expected layout (missing file or column)."""


class RecordError(ValueError):
    """A bad record met in strict mode."""


class UnsafePathError(ValueError):
    """A path in a dataset's table that points outside the dataset root."""


@dataclasses.dataclass
class DatasetSummary:
    """What an adapter kept, skipped (bad input) and excluded (by choice), with examples.

    ``skip`` records a bad record (raises in strict mode); ``exclude`` a record left out on
    purpose (a view not asked for); ``note`` a remark about the dataset as a whole.
    """

    dataset: str
    root: str
    strict: bool = False
    max_examples: int = 5
    kept: int = 0
    skipped: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    excluded: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    examples: dict[str, list[str]] = dataclasses.field(default_factory=dict)
    notes: list[str] = dataclasses.field(default_factory=list)

    @property
    def n_skipped(self) -> int:
        return sum(self.skipped.values())

    def skip(self, reason: str, where: Any, detail: str = "") -> None:
        """Count one bad record; in strict mode raise ``RecordError`` naming it."""
        text = f"{where}: {detail}" if detail else str(where)
        if self.strict:
            raise RecordError(f"{self.dataset} ({self.root}): {reason}: {text}")
        self.skipped[reason] += 1
        examples = self.examples.setdefault(reason, [])
        if len(examples) < self.max_examples:
            examples.append(text)

    def exclude(self, reason: str, n: int = 1) -> None:
        self.excluded[reason] += n

    def note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)

    def to_dict(self) -> dict:
        return {"dataset": self.dataset, "root": self.root, "kept": self.kept,
                "skipped": dict(self.skipped), "excluded": dict(self.excluded),
                "examples": self.examples, "notes": self.notes}

    def __str__(self) -> str:
        lines = [f"{self.dataset} at {self.root}: {self.kept} records kept, "
                 f"{self.n_skipped} skipped, {sum(self.excluded.values())} excluded"]
        if self.skipped:
            width = max(len(r) for r in self.skipped)
            lines.append(f"  {'skipped because':<{width}}  {'count':>7}  first examples")
            for reason, count in self.skipped.most_common():
                ex = "; ".join(self.examples.get(reason, []))
                lines.append(f"  {reason:<{width}}  {count:>7}  {ex}")
        if self.excluded:
            width = max(len(r) for r in self.excluded)
            lines.append(f"  {'excluded':<{width}}  {'count':>7}")
            for reason, count in self.excluded.most_common():
                lines.append(f"  {reason:<{width}}  {count:>7}")
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


# ------------------------------------------------------------------------------ layout checks
def require_root(root: str | os.PathLike, kind: str) -> Path:
    """The dataset root as an absolute path; a clear error when it is missing."""
    path = Path(root).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(f"{kind} dataset root {path}: directory not found")
    return path.resolve()


def find_file(root: Path, names: Sequence[str], kind: str, what: str) -> Path:
    """The first of ``names`` (relative to ``root``) that exists, else a layout error listing them."""
    for name in names:
        if (root / name).is_file():
            return root / name
    raise DatasetLayoutError(f"{kind} dataset at {root}: {what} not found; expected "
                             + " or ".join(repr(n) for n in names))


def read_table(path: Path, required: Sequence[str], kind: str, **read_kwargs) -> pd.DataFrame:
    """Read a CSV (plain or .gz) as strings; a missing column is an error naming file and column."""
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False, **read_kwargs)
    except FileNotFoundError:
        raise DatasetLayoutError(f"{kind}: {path} not found") from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError) as exc:
        raise DatasetLayoutError(f"{kind}: {path} is not a readable CSV ({exc})") from None
    df.columns = [str(c).strip() for c in df.columns]  # SIIM's header has " EncodedPixels"
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise DatasetLayoutError(f"{kind}: {path} lacks column(s) {missing}; expected at least "
                                 f"{list(required)}, found {list(df.columns)}")
    return df


def relative_parts(relpath: str, root: Path | str = "the dataset root") -> tuple[str, ...]:
    """The parts of a table's relative path; absolute, drive-letter and ``..`` paths are refused."""
    text = str(relpath).strip()
    if not text:
        raise UnsafePathError("empty path")
    if (PurePosixPath(text).is_absolute() or PureWindowsPath(text).is_absolute()
            or PureWindowsPath(text).drive):
        raise UnsafePathError(f"{text!r} is absolute; expected a path relative to {root}")
    parts = PurePosixPath(text.replace("\\", "/")).parts
    if ".." in parts:
        raise UnsafePathError(f"{text!r} climbs out of {root}")
    return parts


def resolve_inside(root: Path, relpath: str) -> Path:
    """``root / relpath``, refusing absolute paths and paths that climb out of ``root``.

    This polices the text; where a symlink on the way leads is checked with the file itself
    (:class:`RootFence`, in :func:`check_images`), for every adapter alike.
    """
    return root.joinpath(*relative_parts(relpath, root))


class RootFence:
    """Refuses a path whose real location, symlinks followed, lies outside ``root``.

    Each directory's real path is kept, so a table of a million images costs about one
    ``lstat`` per file and per directory instead of one per component of every path.
    """

    def __init__(self, root: Path | str):
        self.root = os.path.realpath(root)
        self._real_dirs: dict[str, str] = {}

    def real_path(self, path: str) -> str:
        parent, name = os.path.split(path)
        if not name:   # the file-system root
            return path
        if parent not in self._real_dirs:
            self._real_dirs[parent] = self.real_path(parent)
        real = os.path.join(self._real_dirs[parent], name)
        return os.path.realpath(real) if os.path.islink(real) else real

    def check(self, path: Path | str) -> None:
        real = self.real_path(os.path.abspath(path))
        if os.path.commonpath([real, self.root]) != self.root:
            raise UnsafePathError(f"{path} leads to {real}, outside the dataset root {self.root}; "
                                  f"expected a file inside it")


_SAFE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def safe_id(value: Any, what: str) -> str:
    """An id that becomes part of a file name: letters, digits, ``._-`` only, so never a path."""
    text = str(value).strip()
    if not _SAFE_ID.fullmatch(text) or ".." in text:
        raise UnsafePathError(f"{what} {text!r}: expected letters, digits, '.', '_' or '-' only")
    return text


# ------------------------------------------------------------------------------ values
def parse_float(text: Any) -> float:
    """A CSV cell -> float; blank -> NaN; anything else unparsable raises ValueError."""
    if text is None:
        return math.nan
    if isinstance(text, (int, float, np.number)):
        return float(text)
    s = str(text).strip()
    return math.nan if s == "" else float(s)


def parse_count(text: Any, field: str, minimum: int = 0) -> int:
    """A cell that must hold a whole number >= ``minimum`` ("64" or "64.0"); anything else
    (64.9, inf, blank, text) raises ValueError naming the field."""
    try:
        value = parse_float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value == int(value) and value >= minimum):
        raise ValueError(f"{field}={text!r}: expected a whole number >= {minimum}")
    return int(value)


def parse_label(text: Any, name: str) -> float:
    try:
        value = parse_float(text)
    except ValueError:
        value = None
    if value is None or not (math.isnan(value) or value in (1.0, 0.0, -1.0)):
        raise ValueError(f"label {name}={text!r}, expected 1, 0, -1 or blank")
    return value


def parse_age(text: Any) -> float:
    """Age in years; blank or implausible (< 0 or > 120, e.g. NIH's 400-year typos) -> NaN."""
    try:
        value = parse_float(text)
    except ValueError:
        s = str(text).strip().upper()   # DICOM AgeString "045Y"
        if len(s) == 4 and s[:3].isdigit() and s[3] in "YMWD":
            value = int(s[:3]) / {"Y": 1, "M": 12, "W": 52.1775, "D": 365.25}[s[3]]
        else:
            return math.nan
    return value if 0 <= value <= 120 else math.nan


def parse_sex(text: Any) -> str:
    s = str(text or "").strip().upper()
    return {"F": "F", "FEMALE": "F", "M": "M", "MALE": "M"}.get(s, "")


def patient_split(subject_id: str, fractions: Sequence[float] = (0.8, 0.1, 0.1),
                  salt: str = "synthcxr") -> str:
    """Deterministic split of a patient from a hash of its id: same id, same split, any machine."""
    if len(fractions) != 3 or any(f < 0 for f in fractions) or not math.isclose(sum(fractions), 1.0):
        raise ValueError(f"split fractions {fractions}: expected three non-negative numbers summing to 1")
    h = int.from_bytes(hashlib.sha256(f"{salt}:{subject_id}".encode()).digest()[:8], "big") / 2**64
    if h < fractions[0]:
        return SPLITS[0]
    return SPLITS[1] if h < fractions[0] + fractions[1] else SPLITS[2]


def apply_uncertain_policy(labels: pd.DataFrame, policy: str) -> pd.DataFrame:
    """CheXpert's uncertainty policies: keep -1, U-Ones (-1 -> 1), U-Zeros (-1 -> 0), U-Ignore (-> NaN)."""
    if policy not in UNCERTAIN_POLICIES:
        raise ValueError(f"uncertain policy {policy!r}: expected one of {list(UNCERTAIN_POLICIES)}")
    cols = [c for c in CHEXPERT_LABELS if c in labels.columns]
    out = labels.copy()
    if policy != "keep":
        value = {"ones": 1.0, "zeros": 0.0, "ignore": math.nan}[policy]
        out[cols] = out[cols].mask(out[cols] == -1.0, value)
    return out


def chest_view_or_skip(text: Any, summary: DatasetSummary, where: Any, what: str = "") -> str | None:
    """The chest view ``text`` names (:func:`support.data.schema.chest_view`); None when it names
    none, skipped and counted with the reason (``what`` prefixes the detail)."""
    try:
        return chest_view(text)
    except ViewError as exc:
        summary.skip(exc.reason, where, f"{what}{exc}")
        return None


def dicom_header_and_view(path: Path, summary: DatasetSummary):
    """(header, chest view) of a DICOM file; None when the header is unreadable or names no chest
    view, skipped and counted with the reason."""
    from support.data.dicom import DicomError, read_dicom_header

    try:
        header = read_dicom_header(path)
    except DicomError as exc:
        summary.skip("corrupt image", path, str(exc).split(": ", 1)[-1])
        return None
    view = chest_view_or_skip(header.view, summary, path)
    return None if view is None else (header, view)


def decode_utf8(data: bytes) -> str:
    """Bytes -> text; ValueError naming the first byte that is not UTF-8 and where it is."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"byte 0x{data[exc.start]:02x} at offset {exc.start} is not UTF-8; "
                         f"expected UTF-8 text") from None


def text_lines(path: Path, summary: DatasetSummary) -> Iterator[tuple[int, str]]:
    """(line number, text) of a text file; a line that is not UTF-8 is skipped and counted."""
    for number, raw in enumerate(path.read_bytes().splitlines(), 1):
        try:
            yield number, decode_utf8(raw)
        except ValueError as exc:
            summary.skip("not UTF-8", f"{path.name} line {number}", str(exc))


def _same(a: Any, b: Any) -> bool:
    """Equality that takes NaN (a blank cell) as equal to NaN."""
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, tuple) and isinstance(b, tuple):
        return len(a) == len(b) and all(map(_same, a, b))
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return a == b


def _difference(a: Any, b: Any) -> str:
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        return ", ".join(f"{k} {a.get(k)!r} vs {b.get(k)!r}" for k in dict.fromkeys([*a, *b])
                         if not _same(a.get(k), b.get(k)))
    return f"{a!r} vs {b!r}"


def index_rows(rows: Iterable[tuple[Hashable, Any, str]], summary: DatasetSummary, source: str,
               what: str) -> tuple[dict, set]:
    """(key -> value, conflicting keys) from an index table's rows, given as (key, value, where).

    A key listed again with the same value is harmless. With another value no row wins: the key
    is left out and counted once as "conflicting rows in SOURCE", naming both rows (an error in
    strict mode), so a split or a label is never decided by row order.
    """
    values: dict = {}
    first: dict = {}
    conflicts: set = set()
    for key, value, where in rows:
        if key in conflicts:
            continue
        if key not in values:
            values[key], first[key] = value, where
        elif not _same(values[key], value):
            shown = "/".join(key) if isinstance(key, tuple) else key
            summary.skip(f"conflicting rows in {source}", f"{what} {shown}",
                         f"{first[key]} and {where} disagree ({_difference(values[key], value)}); "
                         f"expected one value per {what}")
            conflicts.add(key)
            del values[key]
    return values, conflicts


# ------------------------------------------------------------------------------ boxes
def box_in_unit_square(box: Mapping[str, float]) -> bool:
    """A record box lies in the image and has an area: 0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1."""
    return 0.0 <= box["x0"] < box["x1"] <= 1.0 and 0.0 <= box["y0"] < box["y1"] <= 1.0


@dataclasses.dataclass(frozen=True)
class BoxSpace:
    """The pixel space (``width`` x ``height``) a dataset states its boxes in, and who states it."""

    width: float
    height: float
    source: str

    def normalise(self, label: str, x0: float, y0: float, x1: float, y1: float) -> dict[str, Any]:
        """Pixel corners -> a record box in [0, 1]; ValueError when the box leaves the space."""
        box = {"label": label, "x0": x0 / self.width, "y0": y0 / self.height,
               "x1": x1 / self.width, "y1": y1 / self.height}
        if not box_in_unit_square(box):
            raise ValueError(f"{label} box x {x0:g}..{x1:g}, y {y0:g}..{y1:g} leaves the "
                             f"{self.width:g}x{self.height:g} px of {self.source}; expected "
                             f"0 <= x0 < x1 <= {self.width:g} and 0 <= y0 < y1 <= {self.height:g}")
        return box

    def check_image(self, width: int, height: int) -> None:
        """ValueError unless an image of this size is the space itself or a copy rescaled alike on
        both axes (a pixel of rounding allowed): only then do the normalised boxes fit it."""
        if (abs(height - width * self.height / self.width) > 1
                and abs(width - height * self.width / self.height) > 1):
            raise ValueError(f"the file is {width}x{height} px but its boxes are in the "
                             f"{self.width:g}x{self.height:g} px of {self.source}; expected that "
                             f"size or a copy rescaled alike on both axes")


# ------------------------------------------------------------------------------ the table
def empty_record(dataset: str) -> dict[str, Any]:
    rec: dict[str, Any] = {c: "" for c in RECORD_COLUMNS}
    rec.update(dataset=dataset, age=math.nan, boxes=[], masks=[], source_labels=[], provenance={})
    rec.update({name: math.nan for name in CHEXPERT_LABELS})
    return rec


def make_table(records: Iterable[Mapping[str, Any]]) -> pd.DataFrame:
    """Records (dicts) -> the record table with every column, in order, with stable row order."""
    rows = []
    for r in records:
        unknown = set(r) - set(TABLE_COLUMNS)
        if unknown:
            raise ValueError(f"record {r.get('image_id')!r}: unknown column(s) {sorted(unknown)}")
        rows.append(r)
    df = pd.DataFrame(rows, columns=list(TABLE_COLUMNS))
    for c in ("dataset", "subject_id", "study_id", "image_id", "view", "path", "split",
              "findings", "impression", "sex"):
        df[c] = df[c].fillna("").astype(str)
    df["age"] = pd.to_numeric(df["age"], errors="coerce").astype(float)
    for c in CHEXPERT_LABELS:
        df[c] = pd.to_numeric(df[c], errors="coerce").astype(float)
    rank = df["split"].map({s: i for i, s in enumerate(SPLITS)}).fillna(len(SPLITS))
    order = (df.assign(_rank=rank)
             .sort_values(["_rank", "subject_id", "study_id", "image_id"], kind="stable").index)
    return df.loc[order].reset_index(drop=True)


def _image_problem(rec: Mapping[str, Any], verify_images: bool,
                   space: BoxSpace | None) -> tuple[str, str] | None:
    """(reason, detail) when an existing image file is unreadable or does not fit its boxes."""
    from support.data.images import ImageReadError, image_size, read_image

    path = rec["path"]
    try:
        size = read_image(path).shape[::-1] if verify_images else None
        if space is not None:
            space.check_image(*(size or image_size(path)))
    except ImageReadError as exc:
        return "corrupt image", str(exc.reason)
    except ValueError as exc:
        return "image size mismatch", f"image {rec['image_id']}: {exc}"
    return None


def check_images(records: list[dict[str, Any]], summary: DatasetSummary, verify_images: bool = False,
                 box_spaces: Mapping[str, BoxSpace] | None = None) -> list[dict[str, Any]]:
    """Drop records whose file is missing, leads outside the dataset root, is unreadable (with
    ``verify_images``) or does not fit the space its boxes were stated in, counting them.

    ``box_spaces``: image_id -> the :class:`BoxSpace` a table stated that image's boxes in. The
    file's size is checked against it for every record with boxes (from the header unless the
    image is decoded anyway), so a wrong size never moves a box unseen.
    """
    from tqdm.auto import tqdm

    fence = RootFence(summary.root)
    box_spaces = box_spaces or {}
    kept = []
    for rec in tqdm(records, desc=f"checking {summary.dataset} images", unit="img",
                    disable=not verify_images or len(records) < 200, leave=False):
        path = Path(rec["path"])
        try:
            fence.check(path)
        except UnsafePathError as exc:
            summary.skip("unsafe path", path, f"image {rec['image_id']}: {exc}")
            continue
        if not path.is_file():
            summary.skip("missing file", path, f"image {rec['image_id']}")
            continue
        space = box_spaces.get(rec["image_id"]) if rec["boxes"] else None
        problem = _image_problem(rec, verify_images, space)
        if problem:
            summary.skip(problem[0], path, problem[1])
            continue
        kept.append(rec)
    return kept


def finish(records: list[dict[str, Any]], summary: DatasetSummary, verify_images: bool = False,
           box_spaces: Mapping[str, BoxSpace] | None = None) -> tuple[pd.DataFrame, DatasetSummary]:
    """Check image files, note patients that straddle splits, and build the table."""
    kept = check_images(records, summary, verify_images, box_spaces)
    table = make_table(kept)
    summary.kept = len(table)
    if len(table):
        splits_per_subject = table.groupby("subject_id")["split"].nunique()
        leaky = splits_per_subject[splits_per_subject > 1]
        if len(leaky):
            summary.note(f"{len(leaky)} patient(s) appear in more than one split "
                         f"(e.g. {', '.join(map(str, leaky.index[:3]))}): the dataset's own split is not by patient")
    return table, summary


STUDY_COLUMNS: tuple[str, ...] = (
    "dataset", "subject_id", "study_id", "split", "frontal_id", "frontal_view", "frontal_path",
    "lateral_id", "lateral_view", "lateral_path", "findings", "impression", "sex", "age",
) + CHEXPERT_LABELS
_VIEW_RANK = {"PA": 0, "AP": 1, "LATERAL": 0, "LL": 1}


def pair_studies(records: pd.DataFrame, require_lateral: bool = False,
                 summary: DatasetSummary | None = None) -> pd.DataFrame:
    """One row per study: its frontal (PA, else AP) and lateral (LATERAL, else LL) image.

    A study without a frontal is left out; one without a lateral keeps blank lateral columns,
    or is left out with ``require_lateral``. Both are counted in ``summary`` when given.
    Report sections, demographics and labels come from the frontal record (labels are per study).
    """
    rows, no_lateral, no_frontal = [], 0, 0
    ranked = records.assign(_rank=records["view"].map(_VIEW_RANK).fillna(9))
    ranked = ranked.sort_values(["subject_id", "study_id", "_rank", "image_id"], kind="stable")
    for (subject, study), group in ranked.groupby(["subject_id", "study_id"], sort=True):
        frontal = group[group["view"].isin(FRONTAL_VIEWS)]
        lateral = group[group["view"].isin(LATERAL_VIEWS)]
        if frontal.empty:
            no_frontal += 1
            continue
        if lateral.empty:
            no_lateral += 1
            if require_lateral:
                continue
        f = frontal.iloc[0]
        lat = lateral.iloc[0] if not lateral.empty else None
        row = {"dataset": f["dataset"], "subject_id": subject, "study_id": study, "split": f["split"],
               "frontal_id": f["image_id"], "frontal_view": f["view"], "frontal_path": f["path"],
               "lateral_id": "" if lat is None else lat["image_id"],
               "lateral_view": "" if lat is None else lat["view"],
               "lateral_path": "" if lat is None else lat["path"],
               "findings": f["findings"], "impression": f["impression"], "sex": f["sex"], "age": f["age"]}
        row.update({k: f[k] for k in CHEXPERT_LABELS})
        rows.append(row)
    if summary is not None:
        if no_frontal:
            summary.exclude("study without a frontal view", no_frontal)
        if no_lateral:
            if require_lateral:
                summary.exclude("study without a lateral view", no_lateral)
            summary.note(f"{no_lateral} stud{'y' if no_lateral == 1 else 'ies'} without a lateral view"
                         + (" (left out)" if require_lateral else " (lateral left blank)"))
    return pd.DataFrame(rows, columns=list(STUDY_COLUMNS))
