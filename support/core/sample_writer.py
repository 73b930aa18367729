"""One sample writer for every generator: plan -> shard -> generate -> write -> register.

A generator's samples become a dataset in the MIMIC-CXR-JPG layout, read back by the same
adapter as real data. The caller plans one :class:`PlannedStudy` per synthetic study (its seed,
ids, the images to make with their provenance, and what is known in advance: report, labels,
patient) and supplies ``generate(studies) -> [Generated]``. Then:

- pending studies are dealt out round-robin over the processes (:func:`shard`); each rank
  generates its share in batches and writes its JPEG files atomically;
- rank 0 gathers what was written and registers it (metadata, split, provenance, reports,
  labels); only rank 0 writes the tables, so no sample is registered twice;
- a rerun skips every study already on disk (a file an interrupted run wrote but did not
  register is registered, with its size read from the file);
- a root that holds samples of another generator setting (``identity``) is refused.

A study may hold several images (XGeM: frontal and lateral) and a generated report.
"""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Literal, Mapping, Sequence

import numpy as np

from support.params import Check, Checked


@dataclasses.dataclass
class SampleConfig(Checked):
    """What every generator's sampling into a dataset takes; a system adds its sampler's fields."""

    title = "sampling parameters"

    steps: int = 50                         # denoising steps
    batch_size: int = 8
    base_seed: int = 0                      # study i uses seed base_seed + i
    device: str = "auto"
    dtype: str = "auto"                     # fp32 on CPU; bf16 (or fp16) on CUDA
    split: Literal["train", "validate", "test"] = "train"
    dataset_name: str = "synthetic"
    generator_name: str = "generator"
    jpeg_quality: int = 95

    def checks(self) -> Iterable[Check]:
        yield self.steps > 0, "steps", "a positive number of steps"
        yield self.batch_size > 0, "batch_size", "a positive batch size"
        yield self.base_seed >= 0, "base_seed", "non-negative"
        yield 1 <= self.jpeg_quality <= 100, "jpeg_quality", "in 1..100"


@dataclasses.dataclass
class PlannedImage:
    dicom_id: str
    view: str
    provenance: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class PlannedStudy:
    """One synthetic study: seed and ids, its images, and what is known before generating."""

    seed: int
    subject_id: str
    study_id: str
    images: list[PlannedImage]
    report: str | None = None               # known in advance (e.g. the report a prompt came from)
    labels: dict[str, float] | None = None  # CheXpert labels to record (e.g. the requested findings)
    patient: tuple[str, float] | None = None
    payload: dict[str, Any] = dataclasses.field(default_factory=dict)   # what the generator reads


@dataclasses.dataclass
class Generated:
    """What the generator made for one study: one uint8 (H, W) image per planned image, in order,
    and the report when the generator writes one."""

    images: list[np.ndarray]
    report: str | None = None


def study_ids(seed: int) -> tuple[str, str]:
    """(subject_id, study_id) of the synthetic study drawn with ``seed``."""
    from support.data.writer import make_study_id, make_subject_id

    return make_subject_id(seed), make_study_id(seed)


def shard(items: Sequence, rank: int, world: int) -> list:
    """Rank ``rank``'s share of ``items`` (round-robin): shares are disjoint and cover ``items``."""
    if not 0 <= rank < world:
        raise ValueError(f"rank {rank} outside 0..{world - 1}")
    return list(items[rank::world])


def check_identity(root: str | Path, identity: Mapping[str, Any], what: str = "generator setting") -> None:
    """Refuse a root whose ``dataset.json`` records another value for an ``identity`` key."""
    from support.data.writer import DATASET_JSON
    from support.io import read_json

    meta = Path(root) / DATASET_JSON
    if not meta.is_file():
        return
    info = read_json(meta).get("info", {})
    differ = {k: (info[k], v) for k, v in identity.items() if k in info and info[k] != v}
    if differ:
        detail = "; ".join(f"{k}: {old!r} there, {new!r} here" for k, (old, new) in differ.items())
        raise ValueError(f"{meta}: this root holds samples of another {what} ({detail}); choose another root")


def _complete(writer, study: PlannedStudy, generated_reports: bool) -> bool | None:
    """True: registered and on disk; None: on disk but not registered; False: to generate."""
    if all(writer.has_image(im.dicom_id) for im in study.images):
        return True
    files = [writer.image_path(study.subject_id, study.study_id, im.dicom_id) for im in study.images]
    report_there = not generated_reports or writer.report_path(study.subject_id, study.study_id).is_file()
    if all(f.is_file() for f in files) and report_there:
        return None
    return False


def _register(writer, study: PlannedStudy, shapes: Sequence[tuple[int, int]], report: str | None,
              split: str) -> None:
    for im, (rows, columns) in zip(study.images, shapes):
        writer.add_existing_image(subject_id=study.subject_id, study_id=study.study_id, dicom_id=im.dicom_id,
                                  view=im.view, split=split, rows=rows, columns=columns,
                                  provenance=im.provenance or None)
    text = report if report is not None else study.report
    if text and text.strip():
        writer.add_report(study.subject_id, study.study_id, text)
    if study.labels is not None:
        writer.add_labels(study.subject_id, study.study_id, study.labels)
    if study.patient is not None:
        writer.add_patient(study.subject_id, *study.patient)


def write_samples(root: str | Path, studies: Sequence[PlannedStudy],
                  generate: Callable[[list[PlannedStudy]], list[Generated]], *, dataset_name: str,
                  provenance_columns: Sequence[str], info: Mapping[str, Any] | None = None,
                  identity: Mapping[str, Any] | None = None, identity_name: str = "generator setting",
                  split: str = "train", batch_size: int = 8,
                  jpeg_quality: int = 95, generated_reports: bool = False, accelerator=None, progress: bool = True,
                  desc: str = "sample") -> dict[str, Any]:
    """Generate every study of ``studies`` not yet under ``root`` and register it; return a summary
    (on every rank): studies requested, already present, generated; images written; processes; images/s.

    Runs on every process of ``accelerator`` (one CPU/GPU process when None); ``generate`` is
    called on each rank with at most ``batch_size`` of its share. ``identity`` (recorded in
    ``dataset.json`` with ``info``) names the generator settings a root may hold only one of;
    ``identity_name`` says what they are in the error.
    """
    from accelerate import PartialState
    from accelerate.utils import broadcast_object_list, gather_object
    from tqdm.auto import tqdm

    from support.data.images import image_size
    from support.data.writer import MimicLayoutWriter, encode_jpeg
    from support.io import write_bytes_atomic

    if batch_size < 1:
        raise ValueError(f"write_samples: batch_size {batch_size} must be positive")
    state = accelerator.state if accelerator is not None else PartialState()
    rank, world, is_main = state.process_index, state.num_processes, state.is_main_process
    identity = dict(identity or {})
    studies = list(studies)

    writer = None
    message: list[Any] = [None]
    if is_main:
        check_identity(root, identity, identity_name)
        writer = MimicLayoutWriter(root, dataset_name, provenance_columns=provenance_columns,
                                   info={**dict(info or {}), **identity})
        pending, present = [], 0
        for study in studies:
            done = _complete(writer, study, generated_reports)
            if done is None:  # written by an interrupted run, not yet registered
                shapes = [image_size(writer.image_path(study.subject_id, study.study_id, im.dicom_id))[::-1]
                          for im in study.images]
                report = (writer.report_path(study.subject_id, study.study_id).read_text(encoding="utf-8")
                          if generated_reports else None)
                _register(writer, study, shapes, report, split)
            if done is not False:
                present += 1
            else:
                pending.append(study)
        message = [{"pending": pending, "present": present}]
    message = broadcast_object_list(message, from_process=0) if world > 1 else message
    pending, present = message[0]["pending"], message[0]["present"]

    mine = shard(pending, rank, world)
    rounds = math.ceil(math.ceil(len(pending) / world) / batch_size) if pending else 0
    start, generated, images_written = time.perf_counter(), 0, 0
    try:
        for r in tqdm(range(rounds), disable=not (is_main and progress), desc=desc, unit="batch"):
            batch = mine[r * batch_size:(r + 1) * batch_size]
            written = []
            if batch:
                outputs = generate(list(batch))
                if len(outputs) != len(batch):
                    raise ValueError(f"{desc}: the generator returned {len(outputs)} studies for {len(batch)}")
                for study, out in zip(batch, outputs):
                    if len(out.images) != len(study.images):
                        raise ValueError(f"{desc}: study {study.study_id} plans {len(study.images)} image(s), "
                                         f"the generator made {len(out.images)}")
                    for im, pixels in zip(study.images, out.images):
                        path = writer_path(root, study, im)
                        write_bytes_atomic(path, encode_jpeg(pixels, jpeg_quality), durable=False)
                    written.append((study, [tuple(np.shape(p)) for p in out.images], out.report))
            done = gather_object(written) if world > 1 else written
            generated += len(done)
            images_written += sum(len(s.images) for s, _, _ in done)
            if is_main:
                for study, shapes, report in done:
                    _register(writer, study, shapes, report, split)
    finally:
        if is_main:  # keep the rows registered so far, even when a batch failed
            writer.close()
    state.wait_for_everyone()
    elapsed = time.perf_counter() - start
    return {"root": str(Path(root).resolve()), "requested": len(studies), "present": present,
            "generated": generated, "images_written": images_written, "processes": world,
            "images_per_s": images_written / elapsed if images_written and elapsed > 0 else None}


def print_summary(summary: Mapping[str, Any]) -> None:
    """One line about a :func:`write_samples` run, from the main process only."""
    from accelerate import PartialState

    if PartialState().is_main_process:
        print(f"{summary['generated']} generated by {summary['processes']} process(es), {summary['present']} "
              f"already present, in {summary['root']}")


def writer_path(root: str | Path, study: PlannedStudy, image: PlannedImage) -> Path:
    """Where the layout keeps ``image`` of ``study`` under ``root`` (the same on every rank)."""
    from support.data.writer import image_relpath

    return Path(root).expanduser().resolve() / image_relpath(study.subject_id, study.study_id, image.dicom_id)
