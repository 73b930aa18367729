"""Measured, not assumed: what LoRA changes for the same prompts and seeds, and how often the
requested finding is found in the images.

:func:`before_after` samples the same prompts with the same seeds from the base model and from
the base model with the LoRA weights loaded. :func:`finding_rates` scores image sets with the
reference classifier (:mod:`support.eval.reference_encoder`, trained on the real training
split by :func:`reference_classifier`) and reports, per finding, how often it is found where it
was requested and where it was not, and the AUROC of the classifier's score against the
request (:func:`support.eval.conditional.conditional_fidelity`).
"""

from __future__ import annotations

import math
import os
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from support.data.schema import PHANTOM_FINDINGS
from support.t2i.config import T2ISamplingConfig


def sample_models(base_model: str | os.PathLike, models: Mapping[str, Mapping[str, Any]], prompts: Sequence[str],
                  seeds: Sequence[int] | None = None, cfg: T2ISamplingConfig | None = None,
                  progress: bool = True) -> dict[str, Any]:
    """Images of the same prompts and seeds from each model: ``{name: {}}`` is the base itself,
    ``{name: {"lora": folder}}`` the base with LoRA weights, ``{name: {"unet": folder}}`` the base
    with a fine-tuned UNet (:class:`support.t2i.train.FullFinetuneTask`).

    Returns ``{name: (N, H, W) floats in [0, 1], "prompts": ..., "seeds": ...}`` (seed
    ``cfg.base_seed + i`` when ``seeds`` is None).
    """
    from support.t2i.base_model import load_pipeline
    from support.t2i.lora import load_lora
    from support.t2i.sampling import generate_images

    cfg = (cfg or T2ISamplingConfig()).validate()
    prompts = [str(p) for p in prompts]
    seeds = list(seeds) if seeds is not None else [cfg.base_seed + i for i in range(len(prompts))]
    kwargs = dict(steps=cfg.steps, guidance_scale=cfg.guidance_scale, negative_prompt=cfg.negative_prompt,
                  sampler=cfg.sampler, batch_size=cfg.batch_size, progress=progress)
    out: dict[str, Any] = {"prompts": prompts, "seeds": seeds}
    for name, spec in models.items():
        unknown = set(spec) - {"lora", "unet"}
        if unknown or len(spec) > 1:
            raise ValueError(f"model {name!r}: expected {{}}, {{'lora': folder}} or {{'unet': folder}}, got {dict(spec)}")
        pipe = load_pipeline(base_model, device=cfg.device, dtype=cfg.dtype, unet=spec.get("unet"))
        if "lora" in spec:
            load_lora(pipe, spec["lora"])
        out[name] = generate_images(pipe, prompts, seeds, **kwargs)
        del pipe
    return out


def before_after(base_model: str | os.PathLike, lora: str | os.PathLike, prompts: Sequence[str],
                 seeds: Sequence[int] | None = None, cfg: T2ISamplingConfig | None = None,
                 progress: bool = True) -> dict[str, Any]:
    """Images of the same prompts and seeds without and with LoRA.

    Returns ``{"before": (N, H, W), "after": (N, H, W)}`` floats in [0, 1] with the prompts and
    seeds used (seed ``cfg.base_seed + i`` when ``seeds`` is None) and the mean absolute pixel
    change between the two sets.
    """
    pair = sample_models(base_model, {"before": {}, "after": {"lora": lora}}, prompts, seeds, cfg, progress)
    pair["mean_abs_change"] = float(np.abs(pair["after"] - pair["before"]).mean())
    return pair


# A Fréchet distance between Gaussians fitted to fewer images than this is mostly estimation noise.
MIN_FD_IMAGES = 20


def domain_gap(encoder, real_images: Any, image_sets: Mapping[str, Any], batch_size: int = 64,
               min_images: int = MIN_FD_IMAGES) -> dict[str, float]:
    """Fréchet distance of each image set to the real target images in ``encoder``'s feature space
    (the reference encoder trained on the target): how far each model's look is from the target's.
    NaN ("too few samples") for a set, or every set when the real images, below ``min_images``."""
    from support.eval.distribution import frechet_distance
    from support.eval.features import embed_set

    real = embed_set(encoder, real_images, batch_size, name="real")
    gaps = {}
    for name, images in image_sets.items():
        feats = embed_set(encoder, images, batch_size, name=name)
        gaps[name] = math.nan if min(len(real), len(feats)) < min_images else frechet_distance(real, feats)
    return gaps


def reference_classifier(records: pd.DataFrame, cache_root: str | os.PathLike, config=None,
                         fingerprint: str | None = None):
    """The reference classifier trained on the real frontal training split: the same cached model
    06_evaluation uses when asked with the same config and fingerprint
    (:func:`support.eval.sets.real_reference_encoder`)."""
    from support.data.fingerprint import dataset_fingerprint
    from support.eval.sets import real_reference_encoder

    return real_reference_encoder(records, cache_root, config,
                                  fingerprint=fingerprint or dataset_fingerprint(records))


def own_domain_sets(domain, base_images: Any, real_images: Any) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Does the base draw the requested finding in its own (source) domain, before any LoRA?

    The target-trained classifier cannot read source-domain tones, so the base's samples are
    shown with the source look undone (:meth:`SourceDomain.undo`). The real test images sent
    through the source look and back are that readout's ceiling: what survives the round trip.
    Returns ``({"base, own domain": ...}, {"real, source look and back": ...})``, arrays
    (N, H, W) in [0, 1] for :func:`finding_rates`."""
    from support.eval.images import as_image_set

    real = as_image_set(real_images, name="real").load().numpy()[:, 0]
    base = np.asarray(base_images, dtype=np.float32)
    return ({"base, own domain": domain.undo(base)},
            {"real, source look and back": domain.undo(np.stack([domain(r) for r in real]))})


def requested_matrix(plan: pd.DataFrame, findings: Sequence[str]) -> np.ndarray:
    """(N, F) requests: 1 asked for, 0 not asked for (an unmentioned finding counts as not asked),
    NaN uncertain (-1), which is left out."""
    missing = [f for f in findings if f not in plan.columns]
    if missing:
        raise KeyError(f"requested labels: columns {missing} not in the plan")
    m = plan[list(findings)].to_numpy(dtype=np.float64)
    m = np.where(np.isnan(m), 0.0, m)
    return np.where(m == -1.0, np.nan, m)


def finding_rates(classifier, image_sets: Mapping[str, Any], plan: pd.DataFrame,
                  findings: Sequence[str] | None = None, threshold: float = 0.5,
                  batch_size: int = 64) -> pd.DataFrame:
    """Per finding and image set: how often the classifier finds it where it was requested.

    ``image_sets``: e.g. ``{"before": images, "after": images}``, each with one image per plan
    row. Columns: ``set``, ``finding``, ``n_requested``, ``n_not_requested``,
    ``positive_rate_requested`` (share of requested images scored above ``threshold``),
    ``positive_rate_not_requested``, ``mean_score_requested``, ``mean_score_not_requested``,
    ``auroc`` (score against the request) and ``note``: "too few samples" (AUROC NaN) when
    either kind has fewer than :data:`support.downstream.metrics.MIN_PER_CLASS` images.
    """
    from support.downstream.metrics import too_few_of_a_class
    from support.eval.conditional import conditional_fidelity, predict_set

    names = list(findings) if findings is not None else [f for f in PHANTOM_FINDINGS
                                                          if f in classifier.label_names and f in plan.columns]
    unknown = [f for f in names if f not in classifier.label_names]
    if unknown:
        raise KeyError(f"the classifier does not predict {unknown}; it knows {list(classifier.label_names)}")
    requested = requested_matrix(plan, names)
    rows = []
    for set_name, images in image_sets.items():
        scores = predict_set(classifier, images, batch_size, set_name)
        if len(scores) != len(plan):
            raise ValueError(f"image set {set_name!r}: {len(scores)} images for {len(plan)} plan rows")
        aurocs = conditional_fidelity(classifier, images, requested, label_names=names, scores=scores)
        for j, name in enumerate(names):
            s = scores[:, classifier.label_names.index(name)]
            asked, not_asked = requested[:, j] == 1.0, requested[:, j] == 0.0
            note = too_few_of_a_class(requested[asked | not_asked, j])
            rows.append({
                "set": set_name, "finding": name, "n_requested": int(asked.sum()),
                "n_not_requested": int(not_asked.sum()),
                "positive_rate_requested": float((s[asked] > threshold).mean()) if asked.any() else math.nan,
                "positive_rate_not_requested": float((s[not_asked] > threshold).mean()) if not_asked.any() else math.nan,
                "mean_score_requested": float(s[asked].mean()) if asked.any() else math.nan,
                "mean_score_not_requested": float(s[not_asked].mean()) if not_asked.any() else math.nan,
                "auroc": math.nan if note else aurocs[name], "note": note})
    return pd.DataFrame(rows)
