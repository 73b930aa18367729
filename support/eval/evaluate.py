"""Every metric for one synthetic set against the real test split, as one flat row.

Notebook 06 builds the real reference once (:func:`prepare_real`), then calls
:func:`evaluate_set` per synthetic set and tabulates the rows. Which metrics run depends on what
is given: the feature-space metrics always; conditional fidelity when the set's requested labels
are given and the encoder classifies; the memorisation audit with a ``PrivacyIndex`` of the
training set; Inception FID with an ``InceptionFID`` built from local weights.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import torch

from support.params import Check, Checked

from .conditional import conditional_fidelity
from .distribution import frechet_distance, kernel_inception_distance, precision_recall_density_coverage
from .diversity import ms_ssim_diversity
from .features import FeatureEncoder, embed_set
from .images import ImageSet, as_image_set, saved_files
from .turing import automated_turing_test


@dataclasses.dataclass
class EvalConfig(Checked):
    """Settings shared by every set of one evaluation (the same for all sets, so rows compare)."""

    k: int = 5                          # neighbours for precision/recall/density/coverage
    kid_subsets: int = 100
    kid_subset_size: int = 1000
    ms_ssim_pairs: int = 500
    ms_ssim_size: int | None = None     # common square size for MS-SSIM; None: the real images' size
    turing_folds: int = 5
    max_images: int | None = None       # cap per set (a seeded sample); None: all
    batch_size: int = 64
    seed: int = 0

    title = "evaluation parameters"

    def checks(self) -> Iterable[Check]:
        yield self.k >= 1, "k", "at least 1 neighbour"
        yield self.kid_subsets >= 1, "kid_subsets", "at least 1"
        yield self.kid_subset_size >= 2, "kid_subset_size", "at least 2 images"
        yield self.ms_ssim_pairs >= 1, "ms_ssim_pairs", "at least 1"
        yield self.ms_ssim_size is None or self.ms_ssim_size >= 16, "ms_ssim_size", "at least 16 pixels, or null"
        yield self.turing_folds >= 2, "turing_folds", "at least 2"
        yield self.max_images is None or self.max_images >= 2, "max_images", "at least 2, or null for all"
        yield self.batch_size >= 1, "batch_size", "a positive batch size"


@dataclasses.dataclass
class RealReference:
    """The real test split, embedded and measured once per evaluation."""

    images: ImageSet
    features: np.ndarray
    encoder_name: str
    ms_ssim: dict
    ms_ssim_size: int


def _capped(images: Any, name: str, max_images: int | None, seed: int) -> ImageSet:
    image_set = as_image_set(images, name=name)
    if max_images is not None and len(image_set) > max_images:
        idx = np.sort(np.random.default_rng(seed).choice(len(image_set), max_images, replace=False))
        return ImageSet(torch.utils.data.Subset(image_set, idx.tolist()), name=name)
    return image_set


def prepare_real(real_test: Any, encoder: FeatureEncoder, config: EvalConfig | None = None) -> RealReference:
    """Embed the real test split and measure its own MS-SSIM diversity (the value shown beside each set's)."""
    config = (config or EvalConfig()).validate()
    images = _capped(real_test, "real test", config.max_images, config.seed)
    if len(images) == 0:
        raise ValueError("real test split: no images")
    size = config.ms_ssim_size or int(images[0].shape[-1])
    features = embed_set(encoder, images, config.batch_size, name="real test")
    ms = ms_ssim_diversity(images, config.ms_ssim_pairs, config.seed, size=size,
                           batch_size=config.batch_size, name="real test")
    return RealReference(images, features, encoder.name, ms, size)


def evaluate_set(synthetic: Any, real: RealReference | Any, encoder: FeatureEncoder, *, name: str = "synthetic",
                 config: EvalConfig | None = None, requested_labels=None, label_names: Sequence[str] | None = None,
                 privacy_index=None, inception=None, return_details: bool = False):
    """All metrics of one synthetic set against the real test split -> one flat dict.

    Keys: ``set``, ``n_synthetic``, ``n_real``, ``feature_space``, ``fd``, ``kid_mean``,
    ``kid_std``, ``precision``, ``recall``, ``density``, ``coverage``, ``ms_ssim``,
    ``ms_ssim_real``, ``turing_auroc``, ``turing_auroc_std``; with requested labels
    ``cond_auroc_mean`` and ``cond_auroc/<finding>``; with a privacy index ``privacy_share_flagged``,
    ``privacy_n_flagged``; with an Inception FID ``fid_inception``. ``return_details`` adds a
    second value holding the feature matrices and the memorisation audit (for galleries).
    """
    from .privacy import audit_memorisation

    config = (config or EvalConfig()).validate()
    ref = real if isinstance(real, RealReference) else prepare_real(real, encoder, config)
    if ref.encoder_name != encoder.name:
        raise ValueError(f"the real reference was embedded with {ref.encoder_name}, not {encoder.name}")
    synth = _capped(synthetic, name, config.max_images, config.seed)
    if len(synth) <= config.k:
        raise ValueError(f"synthetic set {name!r}: {len(synth)} image(s); the evaluation needs more than "
                         f"k = {config.k} (nearest neighbours of precision/recall/density/coverage)")
    feats = embed_set(encoder, synth, config.batch_size, name=name)
    row: dict[str, Any] = {"set": name, "n_synthetic": len(synth), "n_real": len(ref.images),
                           "feature_space": encoder.name}
    row["fd"] = frechet_distance(ref.features, feats)
    kid = kernel_inception_distance(ref.features, feats, subsets=config.kid_subsets,
                                    subset_size=config.kid_subset_size, seed=config.seed)
    row["kid_mean"], row["kid_std"] = kid["kid_mean"], kid["kid_std"]
    row.update(precision_recall_density_coverage(ref.features, feats, k=config.k))
    ms = ms_ssim_diversity(synth, config.ms_ssim_pairs, config.seed, size=ref.ms_ssim_size,
                           batch_size=config.batch_size, name=name)
    row["ms_ssim"], row["ms_ssim_real"] = ms["ms_ssim_mean"], ref.ms_ssim["ms_ssim_mean"]
    turing = automated_turing_test(ref.features, feats, folds=config.turing_folds, seed=config.seed)
    row["turing_auroc"], row["turing_auroc_std"] = turing["turing_auroc"], turing["turing_auroc_std"]

    details: dict[str, Any] = {"real_features": ref.features, "synthetic_features": feats}
    if requested_labels is not None:
        if not hasattr(encoder, "predict_proba"):
            raise TypeError(f"conditional fidelity needs an encoder that classifies findings; {encoder.name} does not")
        requested = _capped_labels(requested_labels, len(as_image_set(synthetic)), config)
        cond = conditional_fidelity(encoder, synth, requested, label_names, config.batch_size)
        details["conditional"] = cond
        finite = [v for v in cond.values() if np.isfinite(v)]
        row["cond_auroc_mean"] = float(np.mean(finite)) if finite else float("nan")
        row.update({f"cond_auroc/{k}": v for k, v in cond.items()})
    if privacy_index is not None:
        audit = audit_memorisation(privacy_index, feats, synth)
        details["audit"] = audit
        row["privacy_share_flagged"] = audit.summary["share_flagged"]
        row["privacy_n_flagged"] = audit.summary["n_flagged"]
    if inception is not None:       # as published: each file at its saved resolution, resized to 299 inside
        if not inception.has_real:
            inception.update(saved_files(ref.images), real=True, name="real test")
        inception.reset_fake()
        inception.update(saved_files(synth), real=False, name=name)
        row["fid_inception"] = inception.compute()
    return (row, details) if return_details else row


def _capped_labels(labels, n_total: int, config: EvalConfig):
    """The requested labels of the same seeded sample ``_capped`` draws."""
    if config.max_images is None or n_total <= config.max_images:
        return labels
    idx = np.sort(np.random.default_rng(config.seed).choice(n_total, config.max_images, replace=False))
    return labels.iloc[idx].reset_index(drop=True) if hasattr(labels, "iloc") else np.asarray(labels)[idx]


def feature_space_table(synthetic: Mapping[str, Any], control: Any, real_test: Any, encoder: FeatureEncoder,
                        config: EvalConfig | None = None, control_name: str = "real (validate split)"):
    """The distribution metrics of every synthetic set (and a real control split) in one more
    feature space (e.g. a DINO backbone of 07): one row per set, ``feature_space`` naming it."""
    import pandas as pd

    ref = prepare_real(real_test, encoder, config)
    rows = [evaluate_set(data, ref, encoder, name=name, config=config) for name, data in synthetic.items()]
    rows.append(evaluate_set(control, ref, encoder, name=control_name, config=config))
    return pd.DataFrame(rows)
