"""Export a dataset folder (a synthetic set, the phantom, a cleaned set) as a Hugging Face
``imagefolder``: ``<split>/<image>.jpg`` plus one ``metadata.jsonl`` per split, so that
``datasets.load_dataset("imagefolder", data_dir=OUT)`` reads images, reports, labels and the
provenance columns (generator, checkpoint, sampler, steps, seed, prompt, ...) together.

Ids are the dataset's own (synthetic and phantom ids lie outside MIMIC-CXR's ranges); nothing
else about the source folder, no path, is written.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path
from typing import Any

from support.data.schema import CHEXPERT_LABELS
from support.io import atomic_directory

COLUMNS = ("subject_id", "study_id", "image_id", "view", "findings", "impression", "sex", "age")


def _value(v: Any) -> Any:
    """JSON-ready: NaN -> None, numpy scalars -> Python."""
    if hasattr(v, "item"):
        v = v.item()
    if isinstance(v, float) and math.isnan(v):
        return None
    return v


def metadata_row(record: dict, file_name: str) -> dict:
    """One ``metadata.jsonl`` line: the file, the record's columns, its labels and provenance."""
    row = {"file_name": file_name, "dataset": record.get("dataset", "")}
    row.update({c: _value(record.get(c)) for c in COLUMNS})
    row.update({label: _value(record.get(label, math.nan)) for label in CHEXPERT_LABELS})
    provenance = record.get("provenance") or {}
    row.update({f"provenance_{k}": v for k, v in provenance.items()})
    return row


def export_imagefolder(dataset_root: str | os.PathLike, out_dir: str | os.PathLike,
                       kind: str = "mimic-cxr-jpg") -> dict[str, int]:
    """Write ``dataset_root`` (read by :func:`support.data.adapters.load_dataset`) as an imagefolder
    at ``out_dir`` (which must not exist: an export never overwrites). Returns images per split.

    Every record of a split carries the same columns (provenance keys are the union over the
    set, missing ones empty), as ``datasets`` needs one schema per split.
    """
    from support.data.adapters import load_dataset

    out_dir = Path(out_dir)
    if out_dir.exists():
        raise FileExistsError(f"{out_dir}: already exists; an export never overwrites")
    table, _ = load_dataset(kind, dataset_root)
    if table.empty:
        raise ValueError(f"{dataset_root}: no images to export")
    records = table.to_dict("records")
    keys = sorted({k for r in records for k in (r.get("provenance") or {})})
    counts: dict[str, int] = {}
    with atomic_directory(out_dir) as tmp:
        lines: dict[str, list[str]] = {}
        for record in records:
            split = str(record.get("split") or "train")
            name = f"{record['image_id']}{Path(record['path']).suffix.lower() or '.jpg'}"
            (tmp / split).mkdir(exist_ok=True)
            shutil.copyfile(record["path"], tmp / split / name)
            record = {**record, "provenance": {k: (record.get("provenance") or {}).get(k, "") for k in keys}}
            lines.setdefault(split, []).append(json.dumps(metadata_row(record, name), ensure_ascii=False))
            counts[split] = counts.get(split, 0) + 1
        for split, rows in lines.items():
            (tmp / split / "metadata.jsonl").write_text("\n".join(rows) + "\n", encoding="utf-8")
    return counts
