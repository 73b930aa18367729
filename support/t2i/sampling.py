"""Sample the text-to-image model (base + LoRA) into a synthetic dataset in the MIMIC-CXR-JPG layout.

Prompts come from a *plan*: one row per image with the prompt, the report it was made from, the
finding labels requested and the view (:func:`plan_from_reports`, :func:`plan_for_findings`).
Row ``i`` is sampled with seed ``base_seed + i`` (its own CPU generator, so GPU and CPU start
from the same noise and any subset can be regenerated alone). Each image is stored with its
prompt and sampler settings as provenance columns, its report (``add_report``) and its requested
labels (``add_labels``), so evaluation can measure whether the requested findings appear.
Sharding across processes, atomic writes, registration and resuming are the shared sample
writer's (:mod:`support.core.sample_writer`).

Shell: ``accelerate launch -m support.t2i.sampling --config sample.yaml``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import sys
import warnings
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
import torch

from support.core.schedules import make_sampler
from support.data.schema import CHEXPERT_LABELS, FRONTAL_VIEWS, PHANTOM_FINDINGS
from support.t2i.config import PromptConfig, T2ISamplingConfig

PLAN_COLUMNS = ("prompt", "report", "view", "source", "source_study_id", "requested", "sex", "age")
PROVENANCE_COLUMNS = ("generator", "base_model_sha256", "checkpoint_sha256", "sampler", "steps", "guidance_scale",
                      "negative_prompt", "seed", "prompt", "prompt_truncated", "source", "source_study_id",
                      "requested")


# ------------------------------------------------------------------------------------ images
def to_gray(images: np.ndarray) -> np.ndarray:
    """Pipeline output (N, H, W, C) in [0, 1] -> (N, H, W); RGB by luminance (ITU-R 601)."""
    images = np.asarray(images, dtype=np.float32)
    if images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise ValueError(f"expected images (N, H, W, 1 or 3), got {images.shape}")
    if images.shape[-1] == 1:
        return images[..., 0]
    return images @ np.array([0.299, 0.587, 0.114], dtype=np.float32)


@torch.no_grad()
def generate_images(pipe, prompts: Sequence[str], seeds: Sequence[int], *, steps: int = 75,
                    guidance_scale: float = 4.0, negative_prompt: str | None = None, sampler: str = "pndm",
                    batch_size: int = 8, resolution: int | None = None, progress: bool = False) -> np.ndarray:
    """One grayscale image per (prompt, seed): float32 (N, H, W) in [0, 1].

    ``pipe`` is a ``StableDiffusionPipeline`` (with or without LoRA). Prompts longer than the text
    encoder's limit are cut at a token boundary first. Image ``i`` starts from the noise of a CPU
    generator seeded ``seeds[i]``; the same batches give the same images.
    """
    from tqdm.auto import tqdm

    from support.t2i.base_model import pipeline_resolution
    from support.t2i.captions import fit_caption

    if len(prompts) != len(seeds):
        raise ValueError(f"generate_images: {len(prompts)} prompts but {len(seeds)} seeds")
    if not prompts:
        raise ValueError("generate_images: no prompts given")
    if batch_size < 1:
        raise ValueError(f"generate_images: batch_size {batch_size} must be positive")
    fitted = [fit_caption(str(p), pipe.tokenizer)[0] for p in prompts]
    size = int(resolution or pipeline_resolution(pipe))
    original = pipe.scheduler
    modes = {m: m.training for m in (pipe.unet, pipe.text_encoder, pipe.vae)}
    pipe.scheduler = make_sampler(sampler, original.config)  # pndm, ddim or dpmsolver++
    pipe.set_progress_bar_config(disable=True)
    out = []
    try:
        for m in modes:
            m.eval()
        starts = range(0, len(fitted), batch_size)
        for start in tqdm(starts, desc=f"sample {sampler}", unit="batch", disable=not progress, leave=False):
            chunk = fitted[start:start + batch_size]
            generators = [torch.Generator(device="cpu").manual_seed(int(s)) for s in seeds[start:start + batch_size]]
            result = pipe(prompt=chunk, negative_prompt=[negative_prompt] * len(chunk) if negative_prompt else None,
                          num_inference_steps=int(steps), guidance_scale=float(guidance_scale),
                          generator=generators, height=size, width=size, output_type="np")
            out.append(to_gray(result.images))
    finally:
        pipe.scheduler = original
        for m, training in modes.items():
            m.train(training)
    return np.concatenate(out)


# ------------------------------------------------------------------------------------ plans
def section_report(findings: str, impression: str) -> str:
    """A report file body from its two sections (what a plan row stores as ``report``)."""
    from support.t2i.captions import clean_text

    parts = []
    if clean_text(findings):
        parts += ["FINDINGS:", clean_text(findings), ""]
    if clean_text(impression):
        parts += ["IMPRESSION:", str(impression).strip()]
    return "\n".join(parts).strip()


def _studies(records: pd.DataFrame, splits: Sequence[str], views: Sequence[str]) -> pd.DataFrame:
    """One row per study (its first frontal image of the chosen views) of the held-out splits."""
    missing = [c for c in ("study_id", "subject_id", "view", "split", "findings", "impression")
               if c not in records.columns]
    if missing:
        raise ValueError(f"record table lacks column(s) {missing}; build it with support.data.adapters")
    table = records[records["split"].isin(list(splits)) & records["view"].isin(list(views))].copy()
    if table.empty:
        raise ValueError(f"no study of split(s) {list(splits)} with view(s) {list(views)} in the record table")
    table["_view_rank"] = table["view"].map({v: i for i, v in enumerate(views)})
    table = table.sort_values(["subject_id", "study_id", "_view_rank", "image_id"], kind="stable")
    return table.drop_duplicates("study_id").drop(columns="_view_rank").reset_index(drop=True)


def _plan_row(prompt: str, report: str, view: str, source: str, source_study_id: str, requested: str,
              labels: Mapping[str, float], sex: str = "", age: float = math.nan) -> dict[str, Any]:
    row = {"prompt": prompt, "report": report, "view": view, "source": source, "source_study_id": source_study_id,
           "requested": requested, "sex": sex, "age": age}
    row.update({name: float(labels.get(name, math.nan)) for name in CHEXPERT_LABELS})
    return row


def _record_row(rec: Mapping[str, Any], cfg: PromptConfig, requested: str = "") -> dict[str, Any]:
    from support.t2i.captions import report_caption

    labels = {name: rec.get(name, math.nan) for name in CHEXPERT_LABELS}
    labels = {k: math.nan if v is None or pd.isna(v) else float(v) for k, v in labels.items()}
    age = rec.get("age", math.nan)
    return _plan_row(report_caption(rec["findings"], rec["impression"], rec["view"], cfg.caption_template,
                                    cfg.text_source),
                     section_report(rec["findings"], rec["impression"]), rec["view"], "report", str(rec["study_id"]),
                     requested, labels, str(rec.get("sex", "") or ""), float(age) if age is not None else math.nan)


def plan_from_reports(records: pd.DataFrame, cfg: PromptConfig) -> pd.DataFrame:
    """Prompts from held-out reports: one per study of ``cfg.splits``, at most ``cfg.num_prompts``
    (a seeded random choice when there are more), labels as the dataset gives them."""
    cfg = cfg.validate()
    studies = _studies(records, cfg.splits, cfg.views)
    if len(studies) > cfg.num_prompts:
        keep = np.sort(np.random.default_rng(cfg.seed).permutation(len(studies))[:cfg.num_prompts])
        studies = studies.iloc[keep]
    return pd.DataFrame([_record_row(r, cfg) for r in studies.to_dict("records")])


def composed_study(finding: str, view: str, rng: np.random.Generator) -> dict[str, Any]:
    """A report written (``compose_report``) for a study with ``finding`` alone, and its labels.

    Labels: 1 for the findings of the spec, 0 for the other phantom findings (they were not
    requested), NaN for CheXpert labels outside the phantom's set.
    """
    from support.data.reports import compose_report
    from support.phantom.findings import NORMAL_CTR_MAX, sample_spec

    portable = view == "AP"
    context = {"view": view, "portable": portable, "sex": "F" if rng.random() < 0.5 else "M",
               "age": int(np.clip(round(rng.normal(62, 16)), 18, 95)), "has_lateral": not portable,
               "prior": False}
    prevalence = {} if finding == "No Finding" else {finding: 1.0}
    spec = sample_spec(prevalence, context, rng)
    ctr = spec["Cardiomegaly"]["ctr"] if "Cardiomegaly" in spec else round(float(rng.uniform(0.38, NORMAL_CTR_MAX)), 3)
    report = compose_report(spec, {**context, "ctr": ctr}, rng)
    labels = {name: math.nan for name in CHEXPERT_LABELS}
    labels.update({name: 1.0 if name in spec else 0.0 for name in PHANTOM_FINDINGS})
    return {"spec": spec, "context": {**context, "ctr": ctr}, "report": report, "labels": labels}


def plan_for_findings(cfg: PromptConfig, records: pd.DataFrame | None = None) -> pd.DataFrame:
    """Prompts for a requested finding mix, e.g. ``{"Pleural Effusion": 100, "No Finding": 100}``.

    ``cfg.compose``: reports written from a spec with that finding (each row its own seeded
    stream, so changing one count leaves the other rows as they were). Otherwise held-out
    reports whose label for the finding is positive, drawn without replacement (with
    replacement, and a warning, when there are fewer than asked).
    """
    from support.t2i.captions import report_caption

    cfg = cfg.validate()
    if cfg.source != "findings":
        raise ValueError(f"plan_for_findings: prompt source is {cfg.source!r}; set source='findings'")
    rows = []
    studies = None if cfg.compose else _studies(_need_records(records), cfg.splits, cfg.views)
    for finding, count in cfg.finding_mix.items():
        k = PHANTOM_FINDINGS.index(finding)  # one stream per finding, whatever the mix order
        if cfg.compose:
            for i in range(count):
                rng = np.random.default_rng(np.random.SeedSequence([cfg.seed, k, i]))
                view = cfg.views[int(rng.integers(len(cfg.views)))]
                study = composed_study(finding, view, rng)
                rep = study["report"]
                rows.append(_plan_row(report_caption(rep["findings"], rep["impression"], view, cfg.caption_template,
                                                     cfg.text_source),
                                      rep["text"], view, "composed", "", finding, study["labels"],
                                      study["context"]["sex"], float(study["context"]["age"])))
            continue
        if finding not in studies.columns:
            raise ValueError(f"record table has no label column {finding!r}")
        pool = studies[studies[finding] == 1.0]
        if pool.empty:
            raise ValueError(f"no held-out study (splits {list(cfg.splits)}) is labelled positive for {finding!r}; "
                             f"use compose=True to write reports for it")
        rng = np.random.default_rng(np.random.SeedSequence([cfg.seed, k]))
        replace = len(pool) < count
        if replace:
            warnings.warn(f"{finding}: {count} prompts asked but only {len(pool)} held-out studies are positive; "
                          f"reports are reused", stacklevel=2)
        chosen = rng.choice(len(pool), size=count, replace=replace)
        rows += [_record_row(pool.iloc[int(j)].to_dict(), cfg, finding) for j in chosen]
    return pd.DataFrame(rows, columns=[*PLAN_COLUMNS, *CHEXPERT_LABELS])


def _need_records(records):
    if records is None:
        raise ValueError("held-out reports were asked for but no record table was given")
    return records


def build_prompt_plan(cfg: PromptConfig, records: pd.DataFrame | None = None) -> pd.DataFrame:
    """The plan ``cfg`` describes (held-out reports or a finding mix)."""
    if cfg.source == "reports":
        return plan_from_reports(_need_records(records), cfg)
    return plan_for_findings(cfg, records)


def check_plan(plan: pd.DataFrame, where: str = "prompt plan") -> pd.DataFrame:
    """Columns present, prompts strings, views frontal, labels in {1, 0, -1, NaN}; NaN-filled extras."""
    if not isinstance(plan, pd.DataFrame) or plan.empty:
        raise ValueError(f"{where}: expected a non-empty DataFrame with a 'prompt' column")
    if "prompt" not in plan.columns:
        raise ValueError(f"{where}: no 'prompt' column (columns: {list(plan.columns)})")
    plan = plan.reset_index(drop=True).copy()
    for col, default in (("report", ""), ("view", "PA"), ("source", "prompt"), ("source_study_id", ""),
                         ("requested", ""), ("sex", ""), ("age", math.nan)):
        if col not in plan.columns:
            plan[col] = default
    for name in CHEXPERT_LABELS:
        if name not in plan.columns:
            plan[name] = math.nan
    for i, row in enumerate(plan.to_dict("records")):
        if not isinstance(row["prompt"], str):
            raise ValueError(f"{where}: row {i}: prompt {row['prompt']!r} is not text")
        if row["view"] not in FRONTAL_VIEWS:
            raise ValueError(f"{where}: row {i}: view {row['view']!r}, expected one of {list(FRONTAL_VIEWS)}")
        for name in CHEXPERT_LABELS:
            v = row[name]
            if not (pd.isna(v) or float(v) in (1.0, 0.0, -1.0)):
                raise ValueError(f"{where}: row {i}: label {name}={v!r}, expected 1, 0, -1 or NaN")
    return plan


def plan_sha256(plan: pd.DataFrame, base_seed: int) -> str:
    """Fingerprint of what a plan asks for (prompts, reports, views, labels) and its seeds."""
    cols = ["prompt", "report", "view", *CHEXPERT_LABELS]
    payload = json.dumps({"base_seed": int(base_seed),
                          "rows": [[None if (isinstance(v, float) and math.isnan(v)) else v for v in r]
                                   for r in plan[cols].itertuples(index=False)]}, default=str)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


# ------------------------------------------------------------------------------------ dataset
def load_t2i_pipeline(base_model: str | os.PathLike, lora: str | os.PathLike | None = None,
                      device: str = "auto", dtype: str = "auto"):
    """The base pipeline with the LoRA weights loaded (when given)."""
    from support.t2i.base_model import load_pipeline
    from support.t2i.lora import load_lora

    pipe = load_pipeline(base_model, device=device, dtype=dtype)
    if lora:
        load_lora(pipe, lora)
    return pipe


def sample_to_dataset(base_model: str | os.PathLike, lora: str | os.PathLike | None, plan: pd.DataFrame,
                      root: str | os.PathLike, cfg: T2ISamplingConfig, accelerator=None,
                      progress: bool = True) -> dict[str, Any]:
    """Sample one image per plan row under ``root`` (MIMIC-CXR-JPG layout); return a summary.

    Provenance columns: generator, base_model_sha256, checkpoint_sha256 (the LoRA weights file;
    the base UNet when ``lora`` is None), sampler, steps, guidance_scale, negative_prompt, seed,
    prompt (as the text encoder read it), prompt_truncated, source, source_study_id, requested.
    Each study also gets its report and requested labels. Runs on every process (the shared sample
    writer shards the rows); the summary is returned on every rank: requested, already present,
    generated, images/s, prompts truncated.
    """
    from accelerate import PartialState

    from support.core.sample_writer import Generated, PlannedImage, PlannedStudy, study_ids, write_samples
    from support.data.images import to_uint8
    from support.data.writer import make_dicom_id
    from support.io import sha256_file
    from support.t2i.base_model import model_sha256, pipeline_resolution
    from support.t2i.captions import fit_caption
    from support.t2i.lora import lora_weights_file

    cfg = cfg.validate()
    plan = check_plan(plan)
    if cfg.base_seed + len(plan) > 10**7:
        raise ValueError(f"seeds {cfg.base_seed}..{cfg.base_seed + len(plan) - 1} must lie in 0..9,999,999 "
                         f"(they name the synthetic subjects and studies)")
    state = accelerator.state if accelerator is not None else PartialState(cpu=cfg.device == "cpu" or not
                                                                           torch.cuda.is_available())
    device = state.device if cfg.device == "auto" else torch.device(cfg.device)
    pipe = load_t2i_pipeline(base_model, lora, device=str(device), dtype=cfg.dtype)
    size = pipeline_resolution(pipe)
    base_sha = model_sha256(base_model, "unet")
    sha = sha256_file(lora_weights_file(lora)) if lora else base_sha

    studies, truncated = [], 0
    for i, row in enumerate(plan.to_dict("records")):
        prompt, cut = fit_caption(row["prompt"], pipe.tokenizer)
        truncated += bool(cut)
        seed = cfg.base_seed + i
        subject, study = study_ids(seed)
        provenance = {"generator": cfg.generator_name, "base_model_sha256": base_sha, "checkpoint_sha256": sha,
                      "sampler": cfg.sampler, "steps": cfg.steps, "guidance_scale": cfg.guidance_scale,
                      "negative_prompt": cfg.negative_prompt or "", "seed": seed, "prompt": prompt,
                      "prompt_truncated": bool(cut), "source": row["source"],
                      "source_study_id": row["source_study_id"], "requested": row["requested"]}
        dicom = make_dicom_id(cfg.generator_name, sha, cfg.sampler, cfg.steps, cfg.guidance_scale,
                              cfg.negative_prompt or "", seed, prompt)
        report = str(row["report"] or "").strip() or prompt
        patient = (row["sex"], float(row["age"])) if row["sex"] in ("F", "M") and not pd.isna(row["age"]) else None
        studies.append(PlannedStudy(seed, subject, study, [PlannedImage(dicom, row["view"], provenance)],
                                    report=report, labels={name: row[name] for name in CHEXPERT_LABELS},
                                    patient=patient, payload={"prompt": prompt}))

    def generate(batch: list[PlannedStudy]) -> list[Generated]:
        images = generate_images(pipe, [s.payload["prompt"] for s in batch], [s.seed for s in batch],
                                 steps=cfg.steps, guidance_scale=cfg.guidance_scale,
                                 negative_prompt=cfg.negative_prompt, sampler=cfg.sampler,
                                 batch_size=cfg.batch_size, resolution=size)
        return [Generated([image]) for image in to_uint8(images)]

    identity = {"generator": cfg.generator_name, "base_model_sha256": base_sha, "checkpoint_sha256": sha,
                "sampler": cfg.sampler, "steps": cfg.steps, "guidance_scale": cfg.guidance_scale,
                "negative_prompt": cfg.negative_prompt, "plan_sha256": plan_sha256(plan, cfg.base_seed)}
    summary = write_samples(root, studies, generate, dataset_name=cfg.dataset_name,
                            provenance_columns=PROVENANCE_COLUMNS, identity=identity,
                            identity_name="prompt plan or generator setting",
                            info={"base_model": str(base_model), "lora": str(lora) if lora else None},
                            split=cfg.split, batch_size=cfg.batch_size, jpeg_quality=cfg.jpeg_quality,
                            accelerator=accelerator, progress=progress, desc=f"sample {cfg.sampler}")
    return {**summary, **identity, "prompts_truncated": truncated, "share_truncated": truncated / len(plan)}


# ------------------------------------------------------------------------------------ CLI
def main(argv: list[str] | None = None) -> int:
    from support.core.sample_writer import print_summary
    from support.data.adapters import load_dataset
    from support.params import ParameterError, read_yaml_mapping
    from support.t2i.config import prompt_config, t2i_sampling_config

    parser = argparse.ArgumentParser(prog="accelerate launch -m support.t2i.sampling",
                                     description="Sample base model + LoRA into a MIMIC-CXR-JPG-layout dataset.")
    parser.add_argument("--config", required=True,
                        help="YAML: base_model, lora, output_root, records_root (held-out reports), profile, "
                             "sampling (T2ISamplingConfig fields), prompts (PromptConfig fields)")
    args = parser.parse_args(argv)
    path = Path(args.config)
    raw = read_yaml_mapping(path, required=("base_model", "output_root"))
    unknown = sorted(set(raw) - {"base_model", "lora", "output_root", "records_root", "profile", "sampling", "prompts"})
    if unknown:
        raise ParameterError(f"{path}: unknown key(s) {unknown}")
    profile = raw.get("profile", "quick")
    cfg = t2i_sampling_config(profile, raw.get("sampling") or {}, source=f"{path}: sampling")
    prompts = prompt_config(profile, raw.get("prompts") or {}, source=f"{path}: prompts")
    records = load_dataset("mimic-cxr-jpg", raw["records_root"])[0] if raw.get("records_root") else None
    plan = build_prompt_plan(prompts, records)
    summary = sample_to_dataset(raw["base_model"], raw.get("lora"), plan, raw["output_root"], cfg)
    print_summary(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
