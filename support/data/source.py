"""Which dataset a run uses: built by 00_data (the phantom) or pointed at (a real layout).

00_data writes ``<run_dir>/data/dataset.json`` naming the kind and root; every later notebook
finds its data there unless its own ``dataset_kind``/``dataset_root`` parameters say otherwise,
so any notebook can run alone on an earlier run's outputs or on a real dataset.
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from support.data.adapters import KINDS, load_dataset
from support.data.records import DatasetSummary
from support.io import read_json, sha256_file, write_json_atomic

PHANTOM = "phantom"
POINTER = Path("data") / "dataset.json"
# The files whose bytes define a dataset's content for the fingerprint (those present are hashed).
INDEX_FILES = ("mimic-cxr-2.0.0-metadata.csv", "mimic-cxr-2.0.0-chexpert.csv", "mimic-cxr-2.0.0-split.csv",
               "patients.csv", "annotations/boxes.csv", "annotations/masks.csv", "provenance.csv",
               "train.csv", "valid.csv", "Data_Entry_2017.csv", "BBox_List_2017.csv", "train_val_list.txt",
               "test_list.txt", "stage_2_train_labels.csv", "stage_2_detailed_class_info.csv", "train-rle.csv",
               "stage_2_train.csv", "train.txt", "val.txt", "test.txt", "dev.csv")


def layout_of(kind: str) -> str:
    """The adapter that reads ``kind``: the phantom is written in the MIMIC-CXR-JPG layout."""
    if kind == PHANTOM:
        return "mimic-cxr-jpg"
    if kind not in KINDS:
        raise ValueError(f"dataset kind {kind!r}: expected '{PHANTOM}' or one of {sorted(KINDS)}")
    return kind


def fingerprint(root: str | os.PathLike) -> dict:
    """SHA-256 of a dataset's index files: two runs on the same data have the same fingerprint."""
    root = Path(root)
    files = {name: sha256_file(root / name) for name in INDEX_FILES if (root / name).is_file()}
    if not files:
        raise FileNotFoundError(f"{root}: none of the index files {INDEX_FILES[:3]}... found to fingerprint")
    import hashlib
    combined = hashlib.sha256("".join(f"{k}:{v};" for k, v in sorted(files.items())).encode()).hexdigest()
    return {"root": str(root), "sha256": combined, "files": files}


def write_pointer(run_dir: str | os.PathLike, kind: str, root: str | os.PathLike) -> Path:
    """Record the run's dataset (and its fingerprint, which the pipeline copies to the manifest)."""
    layout_of(kind)
    run_dir = Path(run_dir)
    root = Path(root).resolve()
    write_json_atomic(run_dir / POINTER, {"kind": kind, "root": str(root)})
    write_json_atomic(run_dir / "data" / "fingerprint.json", {"kind": kind, **fingerprint(root)})
    return run_dir / POINTER


def resolve(run_dir: str | os.PathLike, kind: str = "", root: str | os.PathLike = "") -> tuple[str, Path]:
    """(kind, root) from explicit parameters, else from the run's pointer written by 00_data."""
    if kind and root:
        layout_of(kind)
        return kind, Path(root).expanduser().resolve()
    pointer = Path(run_dir) / POINTER
    if not pointer.is_file():
        raise FileNotFoundError(f"{pointer}: no dataset recorded for this run; run 00_data first "
                                f"or set dataset_kind and dataset_root")
    info = read_json(pointer)
    return kind or info["kind"], Path(root or info["root"])


def load_run_dataset(run_dir: str | os.PathLike, kind: str = "", root: str | os.PathLike = "",
                     **options) -> tuple[pd.DataFrame, DatasetSummary]:
    """The run's record table and summary, read through the same adapter as real data."""
    kind, root = resolve(run_dir, kind, root)
    return load_dataset(layout_of(kind), root, **options)
