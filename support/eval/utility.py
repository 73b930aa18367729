"""Utility of synthetic data: train on synthetic, test on real.

One classifier recipe (the reference-encoder network trained from scratch as the downstream
harness's multi-label task, masked BCE) is trained in four regimes and scored on the same real
test split:

- ``real``: real images only;
- ``synthetic``: synthetic images only (no real labels; trained once, repeated on every fraction row);
- ``real+synthetic``: the real subset and all synthetic images mixed;
- ``synthetic->real``: the ``synthetic`` model fine-tuned on the real subset;

each at fractions (1 %, 10 %, 100 %) of the real training labels, drawn by patient as stratified,
seeded subsets. Per-finding AUROC on the real test split comes with a seeded bootstrap 95 %
interval; a finding with too few test labels, or one class only, gets NaN and the reason.
"""

from __future__ import annotations

import dataclasses
from typing import Iterable

import numpy as np
import torch

from support.downstream.auroc import bootstrap_auroc, known_mask
from support.downstream.data import patient_ids
from support.downstream.metrics import too_few, too_few_of_a_class, too_wide
from support.downstream.subsets import patient_subset, stratified_subset
from support.params import Check, Checked
from support.downstream.tasks import MultiLabelClassification, train_head

from support.downstream.backbones import ReferenceNet
from support.downstream.data import LabelledImages

from .reference_encoder import ReferenceEncoderConfig, dataset_labels

__all__ = ["REGIMES", "UtilityConfig", "bootstrap_auroc", "choose_utility_sets", "stratified_subset", "utility_studies",
           "utility_study"]

REGIMES: tuple[str, ...] = ("real", "synthetic", "real+synthetic", "synthetic->real")


@dataclasses.dataclass
class UtilityConfig(Checked):
    """The utility study: which regimes, which label fractions, and the classifier recipe."""

    title = "utility study parameters"

    classifier: ReferenceEncoderConfig = dataclasses.field(default_factory=ReferenceEncoderConfig)
    fractions: tuple[float, ...] = (0.01, 0.1, 1.0)
    regimes: tuple[str, ...] = REGIMES
    min_steps: int = 200            # small subsets get more epochs so every model sees this many batches
    finetune_lr_scale: float = 0.1  # fine-tuning lr = classifier lr x this
    n_boot: int = 1000
    min_test: int = 10              # fewer test images with a definite label: no AUROC ("too few samples")
    seed: int = 0

    def checks(self) -> Iterable[Check]:
        yield bool(self.fractions) and all(0 < f <= 1 for f in self.fractions), "fractions", \
            "one or more label fractions in (0, 1]"
        yield set(self.regimes) <= set(REGIMES), "regimes", f"some of {list(REGIMES)}"
        yield self.min_steps >= 0, "min_steps", "0 or more"
        yield self.finetune_lr_scale > 0, "finetune_lr_scale", "positive"
        yield self.n_boot > 0, "n_boot", "a positive number of resamples"
        yield self.min_test >= 2, "min_test", "at least 2"


def _train(data, labels: np.ndarray, base: ReferenceEncoderConfig, config: UtilityConfig, name: str,
           init: dict | None = None, lr: float | None = None) -> ReferenceNet:
    """The classifier recipe on ``data`` (pairs whose labels are ``labels``) through the harness's
    multi-label task, from scratch or from the weights ``init``."""
    recipe = dataclasses.replace(base, lr=base.lr if lr is None else lr)
    task = MultiLabelClassification(base.label_names, item_labels=base.label_names)
    task.check_train(labels, f"{name} ({len(labels)} images)")

    def build() -> ReferenceNet:
        model = ReferenceNet(len(base.label_names), base.width, base.blocks)
        if init is not None:
            model.load_state_dict(init)
        return model

    return train_head(task, data, build, recipe.loop(len(data), config.min_steps), progress=True, name=name)


def utility_study(real_train, synthetic, real_test, config: UtilityConfig | None = None,
                  real_train_labels: np.ndarray | None = None, groups=None, synthetic_name: str = "synthetic"):
    """Run every regime x fraction and score per finding on ``real_test``.

    Datasets yield ``{"image", "labels"}`` in ``config.classifier.label_names`` order.
    ``real_train_labels`` (N, L) skips reading the real training set once to stratify it.
    Fractions are drawn by patient (``groups``: one patient id per real training image; by
    default the dataset's ``subject_id`` column; a dataset without one draws by image).
    Returns a pandas DataFrame, one row per (regime, fraction, finding): ``n_real``,
    ``n_synthetic``, ``auroc``, ``ci_low``, ``ci_high``, ``n_test``, ``n_pos`` and ``reason``
    (why ``auroc`` is NaN: too few test samples, or one class only).
    A synthetic set without a positive label (an unconditional set) is refused, named by
    ``synthetic_name``: train-on-synthetic needs the labels the set was generated for.
    """
    import pandas as pd

    config = config or UtilityConfig()
    unknown = sorted(set(config.regimes) - set(REGIMES))
    if unknown:
        raise ValueError(f"unknown regimes {unknown}; expected some of {list(REGIMES)}")
    config.validate()
    base = config.classifier
    names = tuple(base.label_names)
    size, n_labels = base.image_size, len(names)
    real = LabelledImages(real_train, size, n_labels, "real train")
    synth = LabelledImages(synthetic, size, n_labels, "synthetic") if synthetic is not None else None
    test = LabelledImages(real_test, size, n_labels, "real test")
    if synth is None and set(config.regimes) - {"real"}:
        raise ValueError("the synthetic regimes need a synthetic dataset")
    labels = dataset_labels(real_train, n_labels, "real train") if real_train_labels is None else np.asarray(real_train_labels)
    if labels.shape != (len(real), n_labels):
        raise ValueError(f"real_train_labels: expected shape ({len(real)}, {n_labels}), got {labels.shape}")
    if groups is None:
        records = getattr(real_train, "records", None)
        has_patients = records is not None and "subject_id" in records.columns
        groups = patient_ids(real_train, "real train") if has_patients else np.arange(len(real))
    if len(groups) != len(real):
        raise ValueError(f"groups: {len(groups)} patient ids for {len(real)} real training images")

    synthetic_model = None
    if {"synthetic", "synthetic->real"} & set(config.regimes):
        synthetic_labels = synth.label_matrix(names)
        synthetic_model = _train(synth, synthetic_labels, base, config, f"utility: {synthetic_name}")
        synthetic_state = {k: v.detach().clone() for k, v in synthetic_model.state_dict().items()}

    rows = []
    scorer = MultiLabelClassification(names, item_labels=names)

    def score(model: ReferenceNet, regime: str, fraction: float, n_real: int, n_synth: int) -> None:
        outputs = scorer.collect(model, test, base.batch_size)
        y, p = outputs["labels"], outputs["scores"]
        for j, name in enumerate(names):
            known = known_mask(y[:, j])
            if not known.any():
                continue  # the test split says nothing about this finding
            definite = y[known, j]
            reason = (too_few(int(known.sum()), config.min_test, "test images with a definite label")
                      or ("one class only in the test set (AUROC undefined)" if definite.min() == definite.max() else "")
                      or too_few_of_a_class(definite))
            ci = ({"auroc": np.nan, "ci_low": np.nan, "ci_high": np.nan} if reason else
                  bootstrap_auroc(y[:, j], p[:, j], n_boot=config.n_boot, seed=config.seed + j))
            if not reason:
                reason = too_wide(ci["ci_low"], ci["ci_high"])
                ci["auroc"] = np.nan if reason else ci["auroc"]
            rows.append({"regime": regime, "fraction": fraction, "n_real": n_real, "n_synthetic": n_synth,
                         "finding": name, "auroc": ci["auroc"], "ci_low": ci["ci_low"],
                         "ci_high": ci["ci_high"], "n_test": int(known.sum()), "n_pos": int((y[known, j] == 1).sum()),
                         "reason": reason})

    for k, fraction in enumerate(config.fractions):
        idx = patient_subset(labels, groups, fraction, seed=config.seed + k)
        real_subset = torch.utils.data.Subset(real, idx.tolist())
        n_real, n_synth = len(real_subset), (len(synth) if synth is not None else 0)
        for regime in config.regimes:
            if regime == "real":
                model = _train(real_subset, labels[idx], base, config, f"utility: real {fraction:g}")
                score(model, regime, fraction, n_real, 0)
            elif regime == "synthetic":  # one model; its scores repeated on every fraction row
                score(synthetic_model, regime, fraction, 0, n_synth)
            elif regime == "real+synthetic":
                mixed = torch.utils.data.ConcatDataset([real_subset, synth])
                model = _train(mixed, np.concatenate([labels[idx], synthetic_labels]), base, config,
                               f"utility: real+synthetic {fraction:g}")
                score(model, regime, fraction, n_real, n_synth)
            elif regime == "synthetic->real":
                model = _train(real_subset, labels[idx], base, config, f"utility: synthetic->real {fraction:g}",
                               init=synthetic_state, lr=base.lr * config.finetune_lr_scale)
                score(model, regime, fraction, n_real, n_synth)
    return pd.DataFrame(rows)


def choose_utility_sets(labelled: Iterable[str], wanted: Iterable[str] = ()) -> list[str]:
    """The sets the utility study trains on: ``wanted`` (each must be a labelled set, else an error
    naming it; ``["all"]``: every labelled set), or the first labelled set when ``wanted`` is empty
    (each set adds three regimes of training, the slowest part of 06)."""
    labelled, wanted = list(labelled), list(wanted)
    if wanted == ["all"]:
        return labelled
    unknown = [w for w in wanted if w not in labelled]
    if unknown:
        raise ValueError(f"utility_sets: {unknown} are not sets with requested finding labels; "
                         f"expected some of {labelled}")
    return wanted or labelled[:1]


def utility_studies(real_train, synthetic: dict, real_test, config: UtilityConfig | None = None,
                    real_train_labels: np.ndarray | None = None, groups=None):
    """:func:`utility_study` of several synthetic sets (name -> dataset) on the same real splits: the
    ``real`` regime trained once (it does not depend on the set), each set's regimes after it. The
    table gains a ``set`` column, empty on the ``real`` rows."""
    import pandas as pd

    config = config or UtilityConfig()
    if not synthetic:
        raise ValueError("utility_studies: no synthetic set")
    tables, real_done = [], False
    for name, data in synthetic.items():
        regimes = tuple(r for r in config.regimes if r != "real" or not real_done)
        if not regimes:
            break
        table = utility_study(real_train, data, real_test, dataclasses.replace(config, regimes=regimes),
                              real_train_labels=real_train_labels, groups=groups, synthetic_name=name)
        table.insert(0, "set", np.where(table["regime"] == "real", "", name) if len(table) else [])
        tables.append(table)
        real_done = True
    return pd.concat(tables, ignore_index=True)
