"""COVIDx CXR: split text files ``train.txt``/``val.txt``/``test.txt`` + folders ``train/ val/ test/``.

Each line is ``patient_id filename class source`` separated by spaces. Classes are
``positive``/``negative`` (COVIDx CXR-2 to CXR-4) or ``normal``/``pneumonia``/``COVID-19``
(earlier releases, e.g. ``train_COVIDx9A.txt``; the 3-class task of the MGCA protocol). The
class is kept in ``source_labels``; only ``normal`` and ``pneumonia`` imply CheXpert values.
Patient ids repeat across the merged sources, so the subject id is ``source/patient_id``.
"""

from __future__ import annotations

import os
from pathlib import Path

from support.data.records import (
    DatasetLayoutError, DatasetSummary, UnsafePathError, empty_record, finish, patient_split,
    require_root, resolve_inside, text_lines,
)

KIND = "covidx"
CLASSES = ("positive", "negative", "normal", "pneumonia", "COVID-19")
SPLITS = (("train", "train"), ("val", "validate"), ("test", "test"))


def _split_file(root: Path, name: str) -> Path | None:
    if (root / f"{name}.txt").is_file():
        return root / f"{name}.txt"
    matches = sorted(root.glob(f"{name}_*.txt"))
    if len(matches) > 1:
        raise DatasetLayoutError(f"{KIND} dataset at {root}: several {name} split files "
                                 f"{[m.name for m in matches]}; keep one release per root")
    return matches[0] if matches else None


def load(root: str | os.PathLike, *, strict: bool = False, verify_images: bool = False,
         validate_fraction: float = 0.1, max_examples: int = 5):
    """Read COVIDx -> (record table, summary). Without ``val.txt`` validation is carved by patient."""
    root = require_root(root, KIND)
    summary = DatasetSummary(KIND, str(root), strict=strict, max_examples=max_examples)
    files = {name: _split_file(root, name) for name, _ in SPLITS}
    for name in ("train", "test"):
        if files[name] is None:
            raise DatasetLayoutError(f"{KIND} dataset at {root}: {name}.txt not found; expected the "
                                     f"split files train.txt, val.txt, test.txt")
    if files["val"] is None:
        summary.note(f"no val.txt: {validate_fraction:.0%} of train patients become the validation split")

    records, seen = [], set()
    for name, split in SPLITS:
        path = files[name]
        if path is None:
            continue
        for number, line in text_lines(path, summary):
            if not line.strip():
                continue
            where = f"{path.name} line {number}"
            parts = line.split()
            if len(parts) < 4:
                summary.skip("bad line", where, f"{line!r}: expected 'patient_id filename class source'")
                continue
            patient, cls, source = parts[0], parts[-2], parts[-1]
            filename = " ".join(parts[1:-2])
            if cls not in CLASSES:
                summary.skip("bad label value", where, f"class {cls!r}, expected one of {list(CLASSES)}")
                continue
            try:
                image_path = resolve_inside(root / name, filename)
            except UnsafePathError as exc:
                summary.skip("unsafe path", where, str(exc))
                continue
            if (split, filename) in seen:
                summary.skip("duplicate row", where, f"{filename} listed again; expected one line per image")
                continue
            seen.add((split, filename))
            subject = f"{source}/{patient}"
            this_split = split
            if split == "train" and files["val"] is None:
                this_split = "validate" if patient_split(subject, (1 - validate_fraction, validate_fraction, 0.0)) \
                    == "validate" else "train"
            rec = empty_record(KIND)
            rec.update(subject_id=subject, study_id=f"{subject}/{Path(filename).stem}",
                       image_id=Path(filename).stem, path=str(image_path), split=this_split,
                       source_labels=[cls])
            if cls == "normal":
                rec.update({"No Finding": 1.0, "Pneumonia": 0.0})
            elif cls == "pneumonia":
                rec.update({"No Finding": 0.0, "Pneumonia": 1.0})
            records.append(rec)
    return finish(records, summary, verify_images)
