"""Utility of synthetic data: train on synthetic, test on real.

One classifier recipe (the reference-encoder network and its masked-BCE training) is trained in
four regimes and scored on the same real test split:

- ``real``: real images only;
- ``synthetic``: synthetic images only (no real labels; trained once, repeated on every fraction row);
- ``real+synthetic``: the real subset and all synthetic images mixed;
- ``synthetic->real``: the ``synthetic`` model fine-tuned on the real subset;

each at fractions (1 %, 10 %, 100 %) of the real training labels, drawn as stratified, seeded
subsets. Per-finding AUROC on the real test split comes with a seeded bootstrap 95 % interval.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import torch

from .auroc import bootstrap_auroc, known_mask
from .reference_encoder import (LabelledImages, ReferenceEncoderConfig, ReferenceNet, dataset_labels,
                                fit_classifier, predict_labelled)

__all__ = ["REGIMES", "UtilityConfig", "bootstrap_auroc", "stratified_subset", "utility_study"]

REGIMES: tuple[str, ...] = ("real", "synthetic", "real+synthetic", "synthetic->real")


@dataclasses.dataclass
class UtilityConfig:
    """The utility study: which regimes, which label fractions, and the classifier recipe."""

    classifier: ReferenceEncoderConfig = dataclasses.field(default_factory=ReferenceEncoderConfig)
    fractions: tuple[float, ...] = (0.01, 0.1, 1.0)
    regimes: tuple[str, ...] = REGIMES
    min_steps: int = 200            # small subsets get more epochs so every model sees this many batches
    finetune_lr_scale: float = 0.1  # fine-tuning lr = classifier lr x this
    n_boot: int = 1000
    seed: int = 0


def stratified_subset(labels: np.ndarray, fraction: float, seed: int = 0, min_per_stratum: int = 1) -> np.ndarray:
    """Seeded subset of about ``fraction`` of the rows, stratified by each row's rarest positive finding.

    Rows with no positive finding form one more stratum. Every stratum keeps at least
    ``min_per_stratum`` rows, so rare findings are not lost at 1 %. Returns sorted row indices.
    """
    labels = np.asarray(labels, dtype=np.float64)
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    if fraction == 1.0:
        return np.arange(len(labels))
    positive = labels == 1.0
    prevalence = positive.sum(axis=0)
    rarity = np.where(positive, prevalence[None, :], np.inf)
    strata = np.where(positive.any(axis=1), rarity.argmin(axis=1), -1)
    rng = np.random.default_rng(seed)
    keep = []
    for stratum in np.unique(strata):
        members = np.flatnonzero(strata == stratum)
        n = min(len(members), max(min_per_stratum, int(round(fraction * len(members)))))
        keep.append(rng.choice(members, n, replace=False))
    return np.sort(np.concatenate(keep))


def _config_for(base: ReferenceEncoderConfig, n_items: int, min_steps: int, lr: float | None = None,
                seed_offset: int = 0) -> ReferenceEncoderConfig:
    batches = max(1, math.ceil(n_items / base.batch_size))
    epochs = max(base.epochs, math.ceil(min_steps / batches))
    return dataclasses.replace(base, epochs=epochs, lr=base.lr if lr is None else lr, seed=base.seed + seed_offset)


def _train(data, base: ReferenceEncoderConfig, config: UtilityConfig, desc: str,
           init: dict | None = None, lr: float | None = None, seed_offset: int = 0) -> ReferenceNet:
    from support.seeding import seed_everything

    recipe = _config_for(base, len(data), config.min_steps, lr, seed_offset)
    seed_everything(recipe.seed)
    model = ReferenceNet(len(base.label_names), base.width, base.blocks)
    if init is not None:
        model.load_state_dict(init)
    return fit_classifier(model, data, recipe, desc=desc)


def utility_study(real_train, synthetic, real_test, config: UtilityConfig | None = None,
                  real_train_labels: np.ndarray | None = None):
    """Run every regime x fraction and score per finding on ``real_test``.

    Datasets yield ``{"image", "labels"}`` in ``config.classifier.label_names`` order.
    ``real_train_labels`` (N, L) skips reading the real training set once to stratify it.
    Returns a pandas DataFrame, one row per (regime, fraction, finding): ``n_real``,
    ``n_synthetic``, ``auroc``, ``ci_low``, ``ci_high``, ``n_test``, ``n_pos``.
    """
    import pandas as pd

    config = config or UtilityConfig()
    base = config.classifier
    names = tuple(base.label_names)
    unknown = sorted(set(config.regimes) - set(REGIMES))
    if unknown:
        raise ValueError(f"unknown regimes {unknown}; expected some of {list(REGIMES)}")
    size, n_labels = base.image_size, len(names)
    real = LabelledImages(real_train, size, n_labels, "real train")
    synth = LabelledImages(synthetic, size, n_labels, "synthetic") if synthetic is not None else None
    test = LabelledImages(real_test, size, n_labels, "real test")
    if synth is None and set(config.regimes) - {"real"}:
        raise ValueError("the synthetic regimes need a synthetic dataset")
    labels = dataset_labels(real_train, n_labels, "real train") if real_train_labels is None else np.asarray(real_train_labels)
    if labels.shape != (len(real), n_labels):
        raise ValueError(f"real_train_labels: expected shape ({len(real)}, {n_labels}), got {labels.shape}")

    synthetic_model = None
    if {"synthetic", "synthetic->real"} & set(config.regimes):
        synthetic_model = _train(synth, base, config, "utility: synthetic")
        synthetic_state = {k: v.detach().clone() for k, v in synthetic_model.state_dict().items()}

    rows = []

    def score(model: ReferenceNet, regime: str, fraction: float, n_real: int, n_synth: int) -> None:
        y, p = predict_labelled(model, test, base)
        for j, name in enumerate(names):
            if not known_mask(y[:, j]).any():
                continue  # the test split says nothing about this finding
            ci = bootstrap_auroc(y[:, j], p[:, j], n_boot=config.n_boot, seed=config.seed + j)
            rows.append({"regime": regime, "fraction": fraction, "n_real": n_real, "n_synthetic": n_synth,
                         "finding": name, "auroc": ci["auroc"], "ci_low": ci["ci_low"],
                         "ci_high": ci["ci_high"], "n_test": ci["n"], "n_pos": ci["n_pos"]})

    for k, fraction in enumerate(config.fractions):
        idx = stratified_subset(labels, fraction, seed=config.seed + k)
        real_subset = torch.utils.data.Subset(real, idx.tolist())
        n_real, n_synth = len(real_subset), (len(synth) if synth is not None else 0)
        for regime in config.regimes:
            if regime == "real":
                model = _train(real_subset, base, config, f"utility: real {fraction:g}")
                score(model, regime, fraction, n_real, 0)
            elif regime == "synthetic":  # one model; its scores repeated on every fraction row
                score(synthetic_model, regime, fraction, 0, n_synth)
            elif regime == "real+synthetic":
                mixed = torch.utils.data.ConcatDataset([real_subset, synth])
                model = _train(mixed, base, config, f"utility: real+synthetic {fraction:g}")
                score(model, regime, fraction, n_real, n_synth)
            elif regime == "synthetic->real":
                model = _train(real_subset, base, config, f"utility: synthetic->real {fraction:g}",
                               init=synthetic_state, lr=base.lr * config.finetune_lr_scale)
                score(model, regime, fraction, n_real, n_synth)
    return pd.DataFrame(rows)
