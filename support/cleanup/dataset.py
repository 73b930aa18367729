"""Clean a whole dataset in the MIMIC-CXR-JPG layout into a new root of the same layout.

Reports, labels, patients, finding boxes/masks and provenance are carried over; images are
cleaned in batches with every model loaded once. Beside the layout::

    cleanup/records.csv   one row per image: status, backend, boxes (JSON), mask area, mask file
    cleanup/masks/DICOM_ID.png   the removal mask of each cleaned image (255 = inpainted)
    cleanup/summary.json  counts, skipped files with reasons, throughput, the configuration

An image with nothing to remove keeps its original JPEG bytes (no re-encoding); a cleaned one is
stored as JPEG at quality 95 as the layout requires (scores are measured on arrays before).
The job resumes: images already cleaned and recorded are skipped. An unreadable image is
skipped and reported (an error with ``strict=True``).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from support.cleanup.cleaner import Cleaner, CleanResult
from support.cleanup.config import CleanupConfig
from support.cleanup.pixels import gray8, read_pixels
from support.data.images import ImageReadError, png_bytes
from support.data.schema import CHEXPERT_LABELS

RECORDS_CSV = "cleanup/records.csv"
SUMMARY_JSON = "cleanup/summary.json"
CONFIG_JSON = "cleanup/config.json"
MASK_DIR = "cleanup/masks"
RECORD_COLUMNS = ("dicom_id", "subject_id", "study_id", "status", "backend", "n_boxes", "n_dbnet", "n_marker",
                  "mask_pixels", "mask_fraction", "text_mask_pixels", "sam_fallbacks", "mask_path", "boxes")
CLEANUP_PROVENANCE = ("cleanup_backend", "cleanup_status", "cleanup_mask_fraction")


def _read_records(path: Path) -> dict[str, dict[str, str]]:
    if not path.is_file():
        return {}
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        missing = [c for c in RECORD_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{path}: missing column(s) {missing}; expected {list(RECORD_COLUMNS)}")
        return {r["dicom_id"]: r for r in reader}


def _records_csv(rows: dict[str, dict[str, Any]]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=RECORD_COLUMNS, lineterminator="\n", extrasaction="ignore")
    w.writeheader()
    for key in sorted(rows):
        w.writerow(rows[key])
    return buf.getvalue()


def _is_plain_gray_jpeg(path: Path) -> bool:
    """True when the file's bytes can go into the output as they are (8-bit grayscale JPEG)."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            return im.format == "JPEG" and im.mode == "L"
    except OSError:
        return False


@dataclasses.dataclass
class _Pending:
    rec: dict
    path: Path
    pixels: np.ndarray


def _copy_study(writer, rec: dict, src_root: Path, done: set) -> None:
    """Report, labels and patient of the record's study, once per study."""
    subject, study = rec["subject_id"], rec["study_id"]
    if (subject, study) in done:
        return
    done.add((subject, study))
    report = src_root / "files" / f"p{subject[:2]}" / f"p{subject}" / f"s{study}.txt"
    if report.is_file():
        text = report.read_text(encoding="utf-8", errors="replace")
        if text.strip():
            writer.add_report(subject, study, text)
    labels = {k: float(rec[k]) for k in CHEXPERT_LABELS if k in rec and not pd.isna(rec[k])}
    if labels:
        writer.add_labels(subject, study, labels)
    age = rec.get("age")
    if rec.get("sex") in ("F", "M") and age is not None and not pd.isna(age):
        writer.add_patient(subject, rec["sex"], float(age))


def _copy_annotations(writer, rec: dict, height: int, width: int) -> None:
    """Finding boxes and masks of the source image: still true after text removal."""
    from support.data.rle import rle_decode

    for box in rec.get("boxes") or []:
        x0, y0 = box["x0"] * width, box["y0"] * height
        writer.add_box(rec["image_id"], box["label"], x0, y0, box["x1"] * width - x0, box["y1"] * height - y0)
    for m in rec.get("masks") or []:
        if "rle" in m and (int(m["width"]), int(m["height"])) == (width, height):
            writer.add_mask(rec["image_id"], m["label"], rle_decode(m["rle"], width, height))


def clean_dataset(src_root: str | os.PathLike, out_root: str | os.PathLike, config: CleanupConfig | None = None, *,
                  cleaner: Cleaner | None = None, dataset_name: str | None = None, strict: bool = False,
                  limit: int | None = None, flush_every: int = 500, progress: bool = True) -> dict[str, Any]:
    """Clean every image of the MIMIC-CXR-JPG-layout dataset at ``src_root`` into ``out_root``.

    ``cleaner`` reuses loaded models (its configuration wins over ``config``). Returns the
    summary also written to ``cleanup/summary.json``: counts (cleaned, unchanged, already done,
    skipped), skipped files with reasons, images/s and seconds per stage.
    """
    from tqdm.auto import tqdm

    from support.data.adapters import load_dataset
    from support.data.records import DatasetSummary
    from support.data.writer import MimicLayoutWriter
    from support.io import read_json, write_bytes_atomic
    from support.params import to_dict

    src_root = Path(src_root).expanduser().resolve()
    out_root = Path(out_root).expanduser().resolve()
    if src_root == out_root:
        raise ValueError(f"{out_root}: the cleaned dataset needs its own root, not the source's")
    cleaner = cleaner or Cleaner(config)
    config = cleaner.config
    config_dict = to_dict(config)
    if (out_root / CONFIG_JSON).is_file() and read_json(out_root / CONFIG_JSON) != json.loads(json.dumps(config_dict)):
        raise ValueError(f"{out_root / CONFIG_JSON}: this root was cleaned with another configuration; "
                         f"use a new root or the same configuration to resume")

    records, src_summary = load_dataset("mimic-cxr-jpg", src_root)
    if limit is not None:
        records = records.iloc[:int(limit)]
    src_columns = sorted({k for p in records["provenance"] for k in (p or {})} - set(CLEANUP_PROVENANCE))
    name = dataset_name or f"{src_summary.dataset}-cleaned"
    summary = DatasetSummary(name, str(src_root), strict=strict)
    writer = MimicLayoutWriter(out_root, name, provenance_columns=[*src_columns, *CLEANUP_PROVENANCE],
                               info={"source": str(src_root), "cleanup_backend": cleaner.backend},
                               flush_every=0)
    writer.write_extra(CONFIG_JSON, (json.dumps(config_dict, indent=2) + "\n").encode("utf-8"))
    rows = _read_records(out_root / RECORDS_CSV)
    todo = [r for r in records.to_dict("records")
            if not (writer.has_image(r["image_id"]) and r["image_id"] in rows)]
    counts = {"images": len(records), "already_done": len(records) - len(todo), "cleaned": 0, "unchanged": 0,
              "skipped": 0}
    studies: set = set()
    cleaner.times.reset()
    io_seconds = {"read": 0.0, "write": 0.0}
    since_flush = 0
    start = time.perf_counter()

    def flush() -> None:
        writer.flush()
        writer.write_extra(RECORDS_CSV, _records_csv(rows).encode("utf-8"))

    def store(item: _Pending, result: CleanResult) -> None:
        rec, image = item.rec, item.pixels
        h, w = image.shape
        dicom = rec["image_id"]
        prov = {**{k: v for k, v in (rec["provenance"] or {}).items() if k in src_columns},
                "cleanup_backend": result.backend, "cleanup_status": "cleaned" if result.changed else "unchanged",
                "cleanup_mask_fraction": round(float(result.mask.mean()), 6)}
        common = dict(subject_id=rec["subject_id"], study_id=rec["study_id"], dicom_id=dicom, view=rec["view"],
                      split=rec["split"], provenance=prov)
        if not result.changed and _is_plain_gray_jpeg(item.path):
            write_bytes_atomic(writer.image_path(rec["subject_id"], rec["study_id"], dicom),
                               item.path.read_bytes(), durable=False)
            writer.add_existing_image(rows=h, columns=w, **common)
        else:
            writer.add_image(image=result.image, quality=95, **common)
        mask_path = ""
        if result.changed:
            mask_path = f"{MASK_DIR}/{dicom}.png"
            writer.write_extra(mask_path, png_bytes(np.where(result.mask, 255, 0).astype(np.uint8)))
        _copy_study(writer, rec, src_root, studies)
        _copy_annotations(writer, rec, h, w)
        r = result.record()
        rows[dicom] = {"dicom_id": dicom, "subject_id": rec["subject_id"], "study_id": rec["study_id"],
                       **{k: r[k] for k in RECORD_COLUMNS if k in r and k != "boxes"},
                       "status": "cleaned" if result.changed else "unchanged",
                       "mask_path": mask_path, "boxes": json.dumps(r["boxes"], separators=(",", ":"))}
        counts["cleaned" if result.changed else "unchanged"] += 1

    bs = config.batch_size
    with tqdm(total=len(todo), desc=f"cleanup ({cleaner.backend})", unit="image", disable=not progress) as bar:
        for first in range(0, len(todo), bs):
            batch: list[_Pending] = []
            t0 = time.perf_counter()
            for rec in todo[first:first + bs]:
                path = Path(rec["path"])
                try:
                    batch.append(_Pending(rec, path, gray8(read_pixels(path))))
                except ImageReadError as exc:
                    summary.skip("unreadable image", path, exc.reason)   # raises in strict mode
                    counts["skipped"] += 1
            io_seconds["read"] += time.perf_counter() - t0
            if batch:
                results = cleaner.clean_batch([b.pixels for b in batch], keys=[b.rec["image_id"] for b in batch])
                t0 = time.perf_counter()
                for item, result in zip(batch, results):
                    store(item, result)
                io_seconds["write"] += time.perf_counter() - t0
            bar.update(len(todo[first:first + bs]))
            since_flush += len(batch)
            if since_flush >= flush_every:
                flush()
                since_flush = 0
    t0 = time.perf_counter()
    flush()
    io_seconds["write"] += time.perf_counter() - t0
    elapsed = time.perf_counter() - start
    processed = counts["cleaned"] + counts["unchanged"]
    stage_s = {**dict(cleaner.times.seconds), **io_seconds}
    result = {
        "source": str(src_root), "root": str(out_root), "dataset": name, "backend": cleaner.backend,
        "sam": cleaner.sam is not None, **counts,
        "skipped_files": summary.to_dict()["examples"].get("unreadable image", []),
        "source_summary": src_summary.to_dict(),
        "seconds": elapsed, "load_seconds": cleaner.load_seconds,
        "images_per_s": processed / elapsed if processed and elapsed > 0 else None,
        "seconds_per_image": {k: v / processed for k, v in stage_s.items()} if processed else {},
    }
    writer.write_extra(SUMMARY_JSON, (json.dumps(result, indent=2, default=str) + "\n").encode("utf-8"))
    return result


CLEANED_SUFFIX = "-cleaned"


def clean_synthetic_sets(run_dir: str | os.PathLike, prefixes: Sequence[str], cleaner: Cleaner,
                         progress: bool = True) -> dict[str, dict[str, Any]]:
    """Clean the run's synthetic sets (``samples/<name>``) whose names start with one of
    ``prefixes``, each into ``samples/<name>-cleaned``: the published flow applies text removal to
    generated images, which learn burned-in text from their training data. A cleaned set keeps its
    source's records (prompts, requested labels) and adds what was removed per image; 06 judges it
    beside the uncleaned set. Returns each cleaning's summary by source name."""
    from support.eval.sets import discover_sets

    samples = Path(run_dir) / "samples"
    chosen = {name: root for name, root in discover_sets(run_dir).items()
              if name.startswith(tuple(prefixes)) and not name.endswith(CLEANED_SUFFIX)}
    return {name: clean_dataset(root, samples / f"{name}{CLEANED_SUFFIX}", cleaner=cleaner,
                                dataset_name=f"{name}{CLEANED_SUFFIX}", progress=progress)
            for name, root in chosen.items()}


def read_cleanup_records(root: str | os.PathLike) -> pd.DataFrame:
    """``cleanup/records.csv`` of a cleaned root, boxes parsed from JSON."""
    path = Path(root) / RECORDS_CSV
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no cleanup records (was this root written by clean_dataset?)")
    table = pd.read_csv(path, dtype={"dicom_id": str, "subject_id": str, "study_id": str}, keep_default_na=False)
    table["boxes"] = [json.loads(b) if b else [] for b in table["boxes"]]
    return table


@dataclasses.dataclass
class TextTruth:
    """The ground truth of burned-in text of a dataset, aligned by image."""

    ids: list[str]
    images: list[np.ndarray]        # uint8 (H, W) as stored (with text)
    text_masks: list[np.ndarray]    # bool (H, W)
    clean_images: list[np.ndarray]  # uint8 (H, W); the image itself where it has no text
    items: list[list[dict]]         # per image: {"text", "x0", "y0", "x1", "y1"} in pixels
    skipped: list[str] = dataclasses.field(default_factory=list)   # unreadable images, with the reason


def load_text_truth(root: str | os.PathLike, ids: Sequence[str] | None = None) -> TextTruth:
    """The phantom's text truth: ``phantom/text_masks/<id>.png``, ``phantom/clean/<id>.png``,
    ``phantom/text_items.csv`` beside the layout. An image without a text mask file has no
    text: an empty mask, and itself as its clean twin. ``ids`` selects images (default: all).
    An unreadable image is left out and listed in ``skipped``; unreadable truth files raise."""
    from support.data.adapters import load_dataset
    from support.data.records import read_table

    root = Path(root).expanduser().resolve()
    records, _ = load_dataset("mimic-cxr-jpg", root, reports=False)
    paths = dict(zip(records["image_id"], records["path"]))
    wanted = list(paths) if ids is None else [str(i) for i in ids]
    unknown = [i for i in wanted if i not in paths]
    if unknown:
        raise KeyError(f"{root}: image id(s) {unknown[:5]} not in the dataset")
    items: dict[str, list[dict]] = {}
    items_csv = root / "phantom" / "text_items.csv"
    if items_csv.is_file():
        table = read_table(items_csv, ("dicom_id", "text", "x0", "y0", "x1", "y1"), "phantom")
        for r in table.to_dict("records"):
            items.setdefault(r["dicom_id"], []).append(
                {"text": r["text"], **{k: float(r[k]) for k in ("x0", "y0", "x1", "y1")}})
    truth = TextTruth([], [], [], [], [])
    for dicom in wanted:
        try:
            image = gray8(read_pixels(paths[dicom]))
        except ImageReadError as exc:
            truth.skipped.append(str(exc))
            continue
        mask_file = root / "phantom" / "text_masks" / f"{dicom}.png"
        clean_file = root / "phantom" / "clean" / f"{dicom}.png"
        mask = read_pixels(mask_file) > 0 if mask_file.is_file() else np.zeros(image.shape, bool)
        clean = gray8(read_pixels(clean_file)) if clean_file.is_file() else image
        if mask.shape != image.shape or clean.shape != image.shape:
            raise ValueError(f"{root}: text mask {mask.shape} / clean twin {clean.shape} of {dicom} do not match "
                             f"its image {image.shape}")
        if mask.any() and not clean_file.is_file():
            raise FileNotFoundError(f"{clean_file}: clean twin missing for an image with a text mask")
        truth.ids.append(dicom)
        truth.images.append(image)
        truth.text_masks.append(mask)
        truth.clean_images.append(clean)
        truth.items.append(items.get(dicom, []))
    return truth
