"""XGeM's synthetic sets: studies generated in one direction from the run's studies, written by the
core sample writer (:mod:`support.core.sample_writer`: MIMIC-CXR-JPG layout, resumable,
provenance per image).

A set is one direction (``T->F+L`` by default). Its source studies come from the training split
by default (the sets train downstream models: conditioning on test studies would carry what the
test holds into training): those holding every input of the direction, in a seeded random order,
the first ``num_studies`` of them (so a larger count keeps the studies a smaller one chose). With
``findings``, only studies labelled with one of them are drawn, in turn per finding and with
repetition when there are few: the set oversamples rare findings (the class-imbalance use). Study *i* is conditioned on source study *i* and sampled with
seed ``base_seed + i`` from its own CPU generator, so it does not depend on the batch it was drawn
in: a rerun completes missing studies exactly as one run would have, and any study can be
regenerated alone (``generate`` with one seed per study).

What a study holds:

- the generated images: a frontal (view PA) and/or a lateral (view LATERAL);
- a report only when T is in the direction: the source study's report when T is an input, the
  generated report (as its FINDINGS) when T is an output;
- the source study's CheXpert labels (what the conditions describe: the requested findings, as
  the T2I-LoRA writer records them) and its patient's sex and age, as that writer copies them.

Directions whose only output is the report (``F->T``, ``L->T``, ``F+L->T``) make no image, and
the layout keeps reports beside images only: they are refused here (``generate`` gives their
reports). Each image's provenance: generator, direction, which output it is, seed, steps,
guidance scale, eta, joint sampling, the source study's id, and the SHA-256 of every weight file
used (the three frozen spaces, the three denoisers, and the joint stage when sampled jointly).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
import torch

from support.core.sample_writer import Generated, PlannedImage, PlannedStudy
from support.data.schema import CHEXPERT_LABELS
from support.xgem.data import Studies
from support.xgem.generate import LETTERS, XGeMModels, direction_name, generate, parse_direction
from support.xgem.train import weight_hashes

GENERATOR = "xgem"
DEFAULT_DIRECTION = "T->F+L"
DEFAULT_SPLITS = ("train",)
VIEWS = {"frontal": "PA", "lateral": "LATERAL"}
WEIGHTS = ("image_vae", "report_vae", "contrastive", "frontal", "lateral", "report", "joint")
PROVENANCE_COLUMNS = ("generator", "direction", "output", "seed", "steps", "guidance_scale", "eta", "joint",
                      "source_study_id", *(f"{name}_sha256" for name in WEIGHTS))
MAX_SEED = 10**7                             # seeds name the synthetic subjects and studies


# ------------------------------------------------------------------------------ names and weights
def set_name(direction: str) -> str:
    """The set's folder name under ``samples/``: ``T->F+L`` -> ``xgem-t2fl``."""
    inputs, outputs = parse_direction(direction)
    letters = {v: k for k, v in LETTERS.items()}
    return f"{GENERATOR}-" + "".join(letters[m] for m in inputs).lower() + "2" + \
        "".join(letters[m] for m in outputs).lower()


def image_outputs(direction: str) -> tuple[str, ...]:
    """The images ``direction`` makes (frontal before lateral); a report-only direction is refused."""
    _, outputs = parse_direction(direction)
    images = tuple(m for m in ("frontal", "lateral") if m in outputs)
    if not images:
        raise ValueError(f"direction {direction}: it generates a report only, and a study in the MIMIC-CXR-JPG "
                         f"layout needs an image; write its reports with support.xgem.generate.generate instead")
    return images


# ------------------------------------------------------------------------------ sources and plan
def source_studies(records: pd.DataFrame, size: int, splits: Sequence[str] = DEFAULT_SPLITS) -> Studies:
    """The studies of ``splits`` as XGeM reads them (triplets at ``size`` px)."""
    chosen = records[records["split"].isin(list(splits))]
    if chosen.empty:
        raise ValueError(f"XGeM set: no record of split(s) {list(splits)} to condition on")
    return Studies(chosen, size)


def eligible(studies: Studies, direction: str) -> list[int]:
    """Indices of the studies holding every input of ``direction`` (every study has a frontal)."""
    inputs, _ = parse_direction(direction)
    ok = np.ones(len(studies), dtype=bool)
    if "lateral" in inputs:
        ok &= studies.has_lateral.to_numpy()
    if "report" in inputs:
        ok &= studies.has_report.to_numpy()
    return np.flatnonzero(ok).tolist()


def choose_sources(studies: Studies, direction: str, n: int, seed: int = 0) -> list[int]:
    """Up to ``n`` eligible studies in a seeded random order; a larger ``n`` extends the same list."""
    pool = eligible(studies, direction)
    if not pool:
        raise ValueError(f"XGeM set {direction}: none of the {len(studies)} source studies holds every input "
                         f"({', '.join(parse_direction(direction)[0])})")
    order = np.random.default_rng(seed).permutation(len(pool))
    return [pool[int(j)] for j in order[:n]]


def rarest_findings(records: pd.DataFrame, k: int, split: str = "train", min_studies: int = 1) -> list[str]:
    """The ``k`` findings labelled positive in the fewest studies of ``split`` (at least
    ``min_studies``), rarest first; "No Finding" and "Support Devices" are not findings to balance."""
    studies = records[records["split"] == split].drop_duplicates("study_id")
    counts = {f: int((studies[f] == 1).sum()) for f in CHEXPERT_LABELS
              if f not in ("No Finding", "Support Devices") and f in studies.columns}
    kept = sorted((n, f) for f, n in counts.items() if n >= min_studies)
    return [f for _, f in kept[:k]]


def choose_finding_sources(studies: Studies, direction: str, n: int, findings: Sequence[str],
                           seed: int = 0) -> list[int]:
    """``n`` eligible studies labelled with ``findings``: one per finding in turn, each finding's
    studies in a seeded order, repeated when there are fewer than its turns."""
    pool = eligible(studies, direction)
    rng = np.random.default_rng(seed)
    lists = {}
    for f in findings:
        if f not in studies.records.columns:
            raise ValueError(f"XGeM set: no label column {f!r}; expected one of {list(CHEXPERT_LABELS)}")
        with_f = [i for i in pool if studies.records[f].iat[i] == 1]
        if not with_f:
            raise ValueError(f"XGeM set {direction}: no source study labelled {f!r} holds every input")
        lists[f] = [with_f[int(j)] for j in rng.permutation(len(with_f))]
    return [lists[f][(i // len(findings)) % len(lists[f])] for i, f in
            ((i, findings[i % len(findings)]) for i in range(n))]


def sources_sha256(studies: Studies, direction: str, seed: int, findings: Sequence[str] = ()) -> str:
    """Fingerprint of what decides the sources: the eligible studies' ids, the findings asked for
    and the selection seed."""
    ids = studies.records["study_id"].astype(str).iloc[eligible(studies, direction)].tolist()
    payload = json.dumps({"direction": direction, "seed": int(seed), "studies": ids, "findings": list(findings)})
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def _study_report(rec: Mapping[str, Any]) -> str:
    from support.t2i.sampling import section_report

    return section_report(rec.get("findings"), rec.get("impression"))


def _labels(rec: Mapping[str, Any]) -> dict[str, float]:
    return {name: math.nan if pd.isna(rec.get(name)) else float(rec[name]) for name in CHEXPERT_LABELS}


def _patient(rec: Mapping[str, Any]) -> tuple[str, float] | None:
    sex, age = rec.get("sex"), rec.get("age")
    return (sex, float(age)) if sex in ("F", "M") and age is not None and not pd.isna(age) else None


def _view(rec: Mapping[str, Any], modality: str) -> str:
    """The source study's view of ``modality`` (AP stays AP, as T2I-LoRA's set keeps its prompt's view)."""
    return str(rec.get(f"{modality}_view") or "") or VIEWS[modality]


def plan_xgem_set(studies: Studies, sources: Sequence[int], direction: str, settings: Mapping[str, Any],
                  hashes: Mapping[str, str], base_seed: int = 0) -> list[PlannedStudy]:
    """One study per source index (into ``studies``): seed ``base_seed + i``, its images with their
    provenance, the report when T is an input, the source's labels and patient."""
    from support.core.sample_writer import study_ids
    from support.data.writer import make_dicom_id

    inputs, _ = parse_direction(direction)
    if base_seed < 0 or base_seed + len(sources) > MAX_SEED:
        raise ValueError(f"seeds {base_seed}..{base_seed + len(sources) - 1} must lie in 0..{MAX_SEED - 1:,} "
                         f"(they name the synthetic subjects and studies)")
    weights = {f"{name}_sha256": hashes.get(name, "") for name in WEIGHTS}
    planned = []
    for i, index in enumerate(sources):
        rec = studies.records.iloc[index].to_dict()
        seed = base_seed + i
        subject, study = study_ids(seed)
        common = {"generator": GENERATOR, "direction": direction, "seed": seed, **settings,
                  "source_study_id": str(rec["study_id"]), **weights}
        images = [PlannedImage(make_dicom_id(*sorted(common.items()), m), _view(rec, m), {**common, "output": m})
                  for m in image_outputs(direction)]
        planned.append(PlannedStudy(seed, subject, study, images,
                                    report=_study_report(rec) if "report" in inputs else None,
                                    labels=_labels(rec), patient=_patient(rec), payload={"index": int(index)}))
    return planned


# ------------------------------------------------------------------------------ generation
def generated_report(text: str) -> str:
    """A generated report as a report file: XGeM writes findings and impression as one text."""
    return f"FINDINGS:\n{text.strip()}"


def _given(studies: Studies, batch: Sequence[PlannedStudy], inputs: Sequence[str]) -> dict[str, Any]:
    items = [studies[s.payload["index"]] for s in batch]
    return {m: [it["report"] for it in items] if m == "report" else torch.stack([it[m] for it in items])
            for m in inputs}


def generate_studies(models: XGeMModels, studies: Studies, direction: str, batch: Sequence[PlannedStudy],
                     settings: Mapping[str, Any]) -> list[Generated]:
    """What the sample writer asks for: each planned study's images (uint8, in plan order) and, when
    T is an output, its generated report."""
    from support.data.images import to_uint8

    inputs, outputs = parse_direction(direction)
    out = generate(models, direction, _given(studies, batch, inputs), seed=[s.seed for s in batch],
                   steps=settings["steps"], guidance=settings["guidance_scale"], eta=settings["eta"],
                          joint=settings["joint"])
    pixels = {m: to_uint8((out[m] + 1) / 2)[:, 0].numpy() for m in image_outputs(direction)}
    return [Generated([pixels[m][j] for m in image_outputs(direction)],
                      report=generated_report(out["report"][j]) if "report" in outputs else None)
            for j in range(len(batch))]


# ------------------------------------------------------------------------------ the set
def write_xgem_set(models: XGeMModels, model_root: str | os.PathLike, records: pd.DataFrame,
                   root: str | os.PathLike, direction: str = DEFAULT_DIRECTION, *, num_studies: int = 16,
                   splits: Sequence[str] = DEFAULT_SPLITS, findings: Sequence[str] = (), base_seed: int = 0,
                   batch_size: int = 8,
                   steps: int | None = None, guidance: float | None = None, eta: float | None = None,
                   joint: bool = True, split: str = "train", jpeg_quality: int = 95, accelerator=None,
                   progress: bool = True) -> dict[str, Any]:
    """Generate ``direction``'s set under ``root`` from up to ``num_studies`` studies of ``records``
    (``splits``; with ``findings``, exactly ``num_studies`` drawn from the studies labelled with them,
    see the module docs); return the sample writer's summary with the settings, the weights' hashes
    and the number of sources.

    ``models`` is the system loaded from ``model_root`` (:func:`~support.xgem.train.load_xgem`),
    whose weight files are hashed into the provenance. ``steps``/``guidance``/``eta`` default to
    ``config.generate``; ``joint`` False samples two outputs independently. ``base_seed`` seeds
    both the choice of sources and the studies (study *i*: ``base_seed + i``). Studies already under
    ``root`` are kept; a root holding another setting (direction, sampling, weights, sources) is
    refused. ``split`` is the split the synthetic images are registered in.
    """
    from support.core.sample_writer import write_samples

    if num_studies < 1 or batch_size < 1:
        raise ValueError(f"XGeM set: num_studies ({num_studies}) and batch_size ({batch_size}) must be positive")
    direction = direction_name(*parse_direction(direction))      # one spelling in names and provenance
    _, outputs = parse_direction(direction)
    image_outputs(direction)                         # refuses a report-only direction before any work
    g = models.config.generate
    together = joint and len(outputs) == 2
    if together and models.joint is None:
        raise ValueError(f"direction {direction}: joint generation needs the joint stage's weights; "
                         "train stage 5 or pass joint=False")
    settings = {"steps": int(steps or g.steps),
                "guidance_scale": float(g.guidance_scale if guidance is None else guidance),
                "eta": float(g.eta if eta is None else eta), "joint": together}
    hashes = weight_hashes(model_root, models.config, together)
    studies = source_studies(records, models.config.image_vae.size, splits)
    sources = choose_finding_sources(studies, direction, num_studies, list(findings), base_seed) if findings \
        else choose_sources(studies, direction, num_studies, base_seed)
    planned = plan_xgem_set(studies, sources, direction, settings, hashes, base_seed)
    identity = {"generator": GENERATOR, "direction": direction, **settings, "base_seed": int(base_seed),
                "sources_sha256": sources_sha256(studies, direction, base_seed, list(findings)),
                **{f"{name}_sha256": value for name, value in hashes.items()}}
    summary = write_samples(root, planned, lambda batch: generate_studies(models, studies, direction, batch, settings),
                            dataset_name=set_name(direction), provenance_columns=PROVENANCE_COLUMNS,
                            info={"model_root": str(Path(model_root).resolve()), "splits": list(splits),
                                  "findings": list(findings)},
                            identity=identity, identity_name="XGeM setting or source studies", split=split,
                            batch_size=batch_size, jpeg_quality=jpeg_quality, generated_reports="report" in outputs,
                            accelerator=accelerator, progress=progress, desc=f"xgem {direction}")
    return {**summary, **identity, "sources": len(sources)}
