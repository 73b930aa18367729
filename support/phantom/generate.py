"""Write a phantom dataset in the MIMIC-CXR-JPG layout.

Patients (sex, age, body) and their studies (views, findings, dates) are planned from the
dataset seed; every study then has its own seeds derived with ``numpy.random.SeedSequence``
from (seed, patient, study), so a process pool writes exactly the bytes one process writes.
Workers render, encode and write the JPEGs; the main process records rows through
:class:`~support.data.writer.MimicLayoutWriter` and writes the phantom's own files:
``phantom/truth.jsonl``, ``phantom/text_items.csv``, ``phantom/clean/<dicom_id>.png`` and
``phantom/text_masks/<dicom_id>.png``. Besides its findings' masks, every image gets the anatomy
masks of ``ANATOMY_MASKS`` (lung fields, heart), with no boxes.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import multiprocessing as mp
import os
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Iterator

import numpy as np

from support.data.images import png_bytes
from support.data.schema import ANATOMY_MASKS, CHEXPERT_LABELS, PHANTOM_FINDINGS
from support.data.writer import MimicLayoutWriter, encode_jpeg, make_dicom_id, make_study_id, make_subject_id
from support.io import write_bytes_atomic
from support.params import to_dict
from support.phantom.anatomy import Anatomy, sample_anatomy
from support.phantom.config import PhantomConfig
from support.phantom.findings import NORMAL_CTR_MAX, sample_spec

TRUTH_JSONL = "phantom/truth.jsonl"
TEXT_ITEMS_CSV = "phantom/text_items.csv"
PROVENANCE_COLUMNS = ("generator", "seed")

# The rendered footprint behind each anatomy mask label: the very masks the CTR is measured on
ANATOMY_STRUCTURES = dict(zip(ANATOMY_MASKS, ("lungs", "heart")))

# spawn_key prefixes: one independent stream per purpose
_PATIENT, _STUDY, _IDS, _SPLIT, _RENDER, _REPORT = range(6)


def _rng(seed: int, *key: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(int(seed), spawn_key=tuple(int(k) for k in key)))


# ------------------------------------------------------------------------------ planning
def plan_studies(config: PhantomConfig) -> list[dict]:
    """Every study of the dataset with its ids, split, date, context and finding spec.

    Cheap and deterministic: the same config gives the same plan in any process.
    """
    n = config.n_patients
    lo, hi = config.studies_per_patient
    patients = []
    for p in range(n):
        rng = _rng(config.seed, _PATIENT, p)
        sex = "F" if rng.random() < 0.5 else "M"
        age = int(np.clip(round(rng.normal(62, 16)), 18, 95))
        n_studies = int(rng.integers(lo, hi + 1))
        anatomy = sample_anatomy(rng, sex, age)
        year, day = int(rng.integers(2110, 2186)), int(rng.integers(0, 360))
        gaps = np.cumsum(np.r_[0, rng.integers(20, 700, n_studies - 1)])
        patients.append((sex, age, n_studies, anatomy, year, day, gaps))
    ids = _rng(config.seed, _IDS)
    subject_numbers = ids.choice(10**7, size=n, replace=False)
    total = sum(p[2] for p in patients)
    study_numbers = ids.choice(10**7, size=total, replace=False)
    order = _rng(config.seed, _SPLIT).permutation(n)
    n_train = int(round(n * config.split_fractions[0]))
    n_val = min(n - n_train, int(round(n * config.split_fractions[1])))
    split_of = {}
    for rank, p in enumerate(order):
        split_of[int(p)] = "train" if rank < n_train else ("validate" if rank < n_train + n_val else "test")

    studies, k = [], 0
    for p, (sex, age, n_studies, anatomy, year, day, gaps) in enumerate(patients):
        subject_id = make_subject_id(int(subject_numbers[p]))
        for j in range(n_studies):
            rng = _rng(config.seed, _STUDY, p, j)
            study_id = make_study_id(int(study_numbers[k]))
            k += 1
            ap = rng.random() < config.ap_share
            portable = bool(ap and rng.random() < config.portable_share_of_ap)
            has_lateral = bool(not portable and rng.random() < config.lateral_share)
            years_on = int(gaps[j]) // 365
            context = {"view": "AP" if ap else "PA", "portable": portable, "sex": sex,
                       "age": min(age + years_on, 100), "ctr": 0.0, "has_lateral": has_lateral, "prior": j > 0}
            spec = sample_spec(config.prevalence, {"portable": portable, "ap_share": config.ap_share}, rng)
            context["ctr"] = spec["Cardiomegaly"]["ctr"] if "Cardiomegaly" in spec else min(anatomy.ctr, NORMAL_CTR_MAX)
            date = np.datetime64(f"{year}-01-01") + np.timedelta64(day + int(gaps[j]), "D")
            views = ["frontal"] + (["lateral"] if has_lateral else [])
            studies.append({
                "patient": p, "study": j, "subject_id": subject_id, "study_id": study_id,
                "split": split_of[p], "study_date": str(date).replace("-", ""),
                "dicom_ids": {v: make_dicom_id("phantom", config.seed, subject_id, study_id, v) for v in views},
                "context": context, "spec": spec, "anatomy": dataclasses.asdict(anatomy),
                "first_age": age,
            })
    return studies


# ------------------------------------------------------------------------------ one study (worker)
def _worker_init() -> None:
    import cv2
    from threadpoolctl import threadpool_limits

    # one process per core: OpenCV and BLAS threads inside it would only contend
    cv2.setNumThreads(1)
    threadpool_limits(1)


def render_task(task: dict) -> dict:
    """Render, report, encode and write the JPEGs of one planned study (runs in a worker)."""
    from support.data.labeler import label_report
    from support.data.reports import compose_report, labels_from_spec
    from support.phantom.render import render_study

    cpu0 = time.process_time()
    seed, p, j = task["seed"], task["patient"], task["study"]
    anatomy = Anatomy(**task["anatomy"])
    spec = json.loads(json.dumps(task["spec"]))
    context = dict(task["context"])
    r = render_study(spec, context, anatomy, task["size"], _rng(seed, _RENDER, p, j),
                     text_share=task["text_share"], study_date=task["study_date"])
    t1 = time.perf_counter()
    context["ctr"] = r.truth["ctr"]
    if "Cardiomegaly" in spec:
        spec["Cardiomegaly"]["ctr"] = r.truth["ctr"]
    report = compose_report(spec, context, _rng(seed, _REPORT, p, j))
    labels = labels_from_spec(spec)
    said = label_report(report["text"])
    for name in CHEXPERT_LABELS:               # keep the report's explicit negations
        if math.isnan(labels[name]) and said[name] == 0.0:
            labels[name] = 0.0
    t_report = time.perf_counter()
    images = []
    for view, dicom_id in task["dicom_ids"].items():
        image = r.image(view)
        write_bytes_atomic(task["paths"][view], encode_jpeg(image, task["quality"]))
        texted = bool(r.text_masks[view].any())
        masks = {**r.masks[view], **{label: r.structures[view][key] for label, key in ANATOMY_STRUCTURES.items()}}
        images.append({
            "view": view, "dicom_id": dicom_id, "rows": image.shape[0], "columns": image.shape[1],
            "boxes": r.boxes[view],
            "masks": {label: np.packbits(m) for label, m in masks.items()},
            "text_items": r.text_items[view],
            "clean_png": png_bytes(r.image(view, clean=True)) if texted else None,
            "text_mask_png": png_bytes(r.text_masks[view].astype(np.uint8) * 255) if texted else None,
        })
    t2 = time.perf_counter()
    return {"task": task, "spec": spec, "context": context, "report": report["text"], "labels": labels,
            "truth": r.truth, "images": images,
            "seconds": {"anatomy": r.seconds["anatomy"], "projection": r.seconds["projection"],
                        "report": t_report - t1, "writing": t2 - t_report},
            "cpu_seconds": time.process_time() - cpu0}


# ------------------------------------------------------------------------------ the dataset
def _tasks(config: PhantomConfig, writer: MimicLayoutWriter, studies: list[dict]) -> list[dict]:
    tasks = []
    for st in studies:
        frontal_view = st["context"]["view"]
        tasks.append({
            **st, "seed": config.seed, "size": config.image_size, "text_share": config.text_share,
            "quality": config.jpeg_quality,
            "paths": {v: str(writer.image_path(st["subject_id"], st["study_id"], d)) for v, d in st["dicom_ids"].items()},
            "meta_views": {"frontal": frontal_view, "lateral": "LATERAL"},
        })
    return tasks


def _run(tasks: list[dict], workers: int) -> Iterator[dict]:
    if workers <= 1:
        import cv2
        from threadpoolctl import threadpool_limits

        # in this process: same limits as a worker, restored afterwards for the caller
        cv2_threads = cv2.getNumThreads()
        cv2.setNumThreads(1)
        try:
            with threadpool_limits(1):
                for t in tasks:
                    yield render_task(t)
        finally:
            cv2.setNumThreads(cv2_threads)
        return
    # import the worker's modules once here: forked workers inherit them instead of each
    # paying the import (pandas via the labeler) on its first task
    import support.data.labeler  # noqa: F401
    import support.data.reports  # noqa: F401
    import support.phantom.render  # noqa: F401

    with ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context(), initializer=_worker_init) as ex:
        yield from ex.map(render_task, tasks, chunksize=2)


def _load_existing(root: Path) -> tuple[dict[str, dict], dict[str, list[dict]]]:
    truth, items = {}, {}
    path = root / TRUTH_JSONL
    if path.exists():
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if line.strip():
                try:
                    row = json.loads(line)
                    truth[row["study_id"]] = row
                except (json.JSONDecodeError, KeyError) as exc:
                    raise ValueError(f"{path}: line {n} is not a truth row ({exc})") from None
    path = root / TEXT_ITEMS_CSV
    if path.exists():
        with open(path, newline="", encoding="utf-8") as fh:
            for row in csv.DictReader(fh):
                items.setdefault(row["dicom_id"], []).append(row)
    return truth, items


def _write_phantom_files(writer: MimicLayoutWriter, truth: dict[str, dict], items: dict[str, list[dict]]) -> None:
    rows = sorted(truth.values(), key=lambda r: (r["subject_id"], r["study_id"]))
    writer.write_extra(TRUTH_JSONL, "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows).encode("utf-8"))
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(("dicom_id", "text", "x0", "y0", "x1", "y1"))
    for dicom_id in sorted(items):
        for it in sorted(items[dicom_id], key=lambda r: (int(r["y0"]), int(r["x0"]), r["text"])):
            w.writerow((dicom_id, it["text"], it["x0"], it["y0"], it["x1"], it["y1"]))
    writer.write_extra(TEXT_ITEMS_CSV, buf.getvalue().encode("utf-8"))


def generate_phantom(root: str | os.PathLike, config: PhantomConfig, workers: int = 2,
                     progress: bool = True) -> dict:
    """Write the phantom dataset under ``root``; returns a summary (counts, prevalence, timings).

    Resumable: studies whose images and truth are already under ``root`` are kept, not redrawn.
    """
    from tqdm.auto import tqdm

    if not isinstance(config, PhantomConfig):
        raise TypeError(f"generate_phantom: config must be a PhantomConfig, got {type(config).__name__}")
    if int(workers) < 1:
        raise ValueError(f"generate_phantom: workers must be >= 1, got {workers}")
    start = time.perf_counter()
    root = Path(root)
    studies = plan_studies(config)
    plan_s = time.perf_counter() - start
    info = {"generator": "support.phantom", "config": to_dict(config)}
    stage = {"anatomy": 0.0, "projection": 0.0, "report": 0.0, "writing": 0.0, "recording": 0.0}
    cpu = 0.0
    with MimicLayoutWriter(root, config.name, provenance_columns=PROVENANCE_COLUMNS, info=info) as writer:
        truth, items = _load_existing(writer.root)
        todo = [st for st in studies
                if not (st["study_id"] in truth and all(writer.has_image(d) for d in st["dicom_ids"].values()))]
        done_before = len(studies) - len(todo)
        bar = tqdm(total=len(todo), desc="phantom studies", unit="study", disable=not progress)
        seen_patients = set()
        for k, res in enumerate(_run(_tasks(config, writer, todo), int(workers))):
            t0 = time.perf_counter()
            _record(writer, res, truth, items, seen_patients)
            for key, value in res["seconds"].items():
                stage[key] += value
            cpu += res["cpu_seconds"]
            stage["recording"] += time.perf_counter() - t0
            bar.update(1)
            if (k + 1) % 500 == 0:
                writer.flush()
                _write_phantom_files(writer, truth, items)
        bar.close()
        for st in studies:                       # patients of studies kept from an earlier run
            if st["subject_id"] not in seen_patients:
                writer.add_patient(st["subject_id"], st["context"]["sex"], st["first_age"])
                seen_patients.add(st["subject_id"])
        t0 = time.perf_counter()
        _write_phantom_files(writer, truth, items)
    stage["recording"] += time.perf_counter() - t0
    seconds = time.perf_counter() - start
    rows = [truth[st["study_id"]] for st in studies]
    prevalence = {name: round(sum(name in r["spec"] for r in rows) / max(len(rows), 1), 4) for name in PHANTOM_FINDINGS}
    n_images = sum(len(st["dicom_ids"]) for st in studies)
    return {
        "root": str(writer.root),
        "patients": config.n_patients,
        "studies": len(studies),
        "images": n_images,
        "lateral_images": sum("lateral" in st["dicom_ids"] for st in studies),
        "texted_images": sum(1 for d in items if items[d]),
        "rendered_studies": len(todo),
        "kept_studies": done_before,
        "splits": {s: sum(st["split"] == s for st in studies) for s in ("train", "validate", "test")},
        "prevalence": prevalence,
        "seconds": round(seconds, 3),
        "plan_seconds": round(plan_s, 3),
        "stage_seconds": {k: round(v, 3) for k, v in stage.items()},
        "studies_per_second": round(len(todo) / seconds, 3) if seconds > 0 else math.inf,
        "cpu_seconds": round(cpu, 3),
        "image_size": config.image_size,
        "workers": int(workers),
    }


def _record(writer: MimicLayoutWriter, res: dict, truth: dict, items: dict, seen_patients: set) -> None:
    """Rows of one rendered study: images, report, labels, patient, boxes, masks, extras."""
    task = res["task"]
    subject, study = task["subject_id"], task["study_id"]
    for im in res["images"]:
        d = im["dicom_id"]
        writer.add_existing_image(subject_id=subject, study_id=study, dicom_id=d,
                                  view=task["meta_views"][im["view"]], split=task["split"],
                                  rows=im["rows"], columns=im["columns"], study_date=task["study_date"],
                                  provenance={"generator": "phantom",
                                              "seed": f"{task['seed']}:{task['patient']}:{task['study']}"})
        for b in im["boxes"]:
            writer.add_box(d, b["label"], b["x0"], b["y0"], b["x1"] - b["x0"], b["y1"] - b["y0"])
        shape = (im["rows"], im["columns"])
        for label, packed in im["masks"].items():
            writer.add_mask(d, label, np.unpackbits(packed, count=shape[0] * shape[1]).reshape(shape).astype(bool))
        items[d] = [dict(it, dicom_id=d) for it in im["text_items"]]
        if im["clean_png"] is not None:
            writer.write_extra(f"phantom/clean/{d}.png", im["clean_png"])
            writer.write_extra(f"phantom/text_masks/{d}.png", im["text_mask_png"])
    writer.add_report(subject, study, res["report"])
    writer.add_labels(subject, study, res["labels"])
    if subject not in seen_patients:
        writer.add_patient(subject, res["context"]["sex"], task["first_age"])
        seen_patients.add(subject)
    truth[study] = {"subject_id": subject, "study_id": study, "split": task["split"],
                    "study_date": task["study_date"], "dicom_ids": task["dicom_ids"],
                    "spec": res["spec"], "context": res["context"], "truth": res["truth"]}
