"""Train on synthetic, test on real: stratified label fractions, four regimes, bootstrap CIs."""

import dataclasses

import numpy as np
import pytest
import torch

from support.eval.reference_encoder import ReferenceEncoderConfig
from support.eval.utility import REGIMES, UtilityConfig, bootstrap_auroc, stratified_subset, utility_study
from test_eval_helpers import RENDERED, FindingsDataset

torch.set_num_threads(1)


def test_bootstrap_ci_contains_the_estimate_and_narrows_with_n():
    def scores(n, seed):
        rng = np.random.default_rng(seed)
        y = (rng.random(n) < 0.3).astype(float)
        return y, y * 0.8 + rng.normal(0, 0.6, n)

    small = bootstrap_auroc(*scores(60, 0), n_boot=300, seed=1)
    large = bootstrap_auroc(*scores(1200, 0), n_boot=300, seed=1)
    for r in (small, large):
        assert r["ci_low"] <= r["auroc"] <= r["ci_high"] and r["n_boot_valid"] > 250
    assert (large["ci_high"] - large["ci_low"]) < 0.5 * (small["ci_high"] - small["ci_low"])
    assert bootstrap_auroc(*scores(60, 0), n_boot=300, seed=1) == small  # seeded
    # unknown labels are dropped; one class only is undefined, not a number
    y, s = scores(60, 2)
    with_nan = bootstrap_auroc(np.r_[y, np.nan, -1.0], np.r_[s, 0.5, 0.5], n_boot=300, seed=1)
    assert with_nan == bootstrap_auroc(y, s, n_boot=300, seed=1)
    assert np.isnan(bootstrap_auroc(np.ones(10), np.arange(10.0))["auroc"])


def test_stratified_subset_keeps_rare_findings_and_is_seeded():
    rng = np.random.default_rng(0)
    labels = np.full((1000, 3), np.nan)
    labels[:, 0] = rng.random(1000) < 0.3
    labels[:, 1] = rng.random(1000) < 0.01          # rare
    labels[:, 2] = np.where(rng.random(1000) < 0.5, np.nan, 0.0)
    sub = stratified_subset(labels, 0.01, seed=3)
    assert 8 <= len(sub) <= 14
    assert labels[sub, 1].sum() >= 1 and labels[sub, 0].sum() >= 1
    assert np.array_equal(sub, stratified_subset(labels, 0.01, seed=3))
    assert not np.array_equal(sub, stratified_subset(labels, 0.01, seed=4))
    assert len(stratified_subset(labels, 0.1, seed=0)) == pytest.approx(100, abs=4)
    assert np.array_equal(stratified_subset(labels, 1.0), np.arange(1000))
    with pytest.raises(ValueError, match="fraction"):
        stratified_subset(labels, 0.0)


@pytest.fixture(scope="module")
def study():
    real_train = FindingsDataset(240, seed=21)
    synthetic = FindingsDataset(240, seed=22, blur=0.8)        # a shifted domain
    real_test = FindingsDataset(160, seed=23, hide=0.0)
    classifier = ReferenceEncoderConfig(width=8, blocks=(1, 1, 1), image_size=32, epochs=2, batch_size=32,
                                        lr=3e-3, device="cpu")
    config = UtilityConfig(classifier=classifier, min_steps=40, n_boot=200, seed=0)
    labels = np.stack(real_train.labels)
    return utility_study(real_train, synthetic, real_test, config, real_train_labels=labels)


def test_every_regime_and_fraction_is_scored(study):
    findings = set(RENDERED) | {"No Finding"}
    assert set(study["regime"]) == set(REGIMES)
    assert sorted(set(study["fraction"])) == [0.01, 0.1, 1.0]
    assert set(study["finding"]) == findings               # unlabelled findings are not scored
    assert len(study) == len(REGIMES) * 3 * len(findings)
    assert (study["ci_low"] <= study["auroc"]).all() and (study["auroc"] <= study["ci_high"]).all()
    real = study[study["regime"] == "real"].groupby("fraction")["n_real"].first()
    assert real[0.01] < real[0.1] < real[1.0] == 240
    synth = study[study["regime"] == "synthetic"]
    assert (synth["n_real"] == 0).all() and (synth["n_synthetic"] == 240).all()
    # the synthetic-only model does not depend on the real fraction
    assert synth.groupby("finding")["auroc"].nunique().eq(1).all()


def test_models_learn_the_findings(study):
    full_real = study[(study["regime"] == "real") & (study["fraction"] == 1.0)].set_index("finding")
    for finding in RENDERED:
        assert full_real.loc[finding, "auroc"] > 0.85, finding
    # more real labels help the real-only recipe on average
    mean = study[study["regime"] == "real"].groupby("fraction")["auroc"].mean()
    assert mean[1.0] > mean[0.01]


def test_unknown_regime_is_an_error():
    data = FindingsDataset(8, seed=1)
    with pytest.raises(ValueError, match="unknown regimes"):
        utility_study(data, data, data, UtilityConfig(regimes=("real", "synthetic-only")))
    with pytest.raises(ValueError, match="need a synthetic dataset"):
        utility_study(data, None, data, UtilityConfig(regimes=("real", "synthetic")))


def test_fractions_are_drawn_by_patient_and_too_few_test_labels_give_no_auroc():
    real_train = FindingsDataset(60, seed=31)
    real_test = FindingsDataset(8, seed=33, hide=0.0)                  # 8 test images: too few
    classifier = ReferenceEncoderConfig(width=8, blocks=(1,), image_size=16, epochs=1, batch_size=16, device="cpu")
    groups = np.repeat(np.arange(20), 3)                               # 20 patients, 3 images each
    table = utility_study(real_train, None, real_test, UtilityConfig(classifier=classifier, regimes=("real",),
                                                                     fractions=(0.25,), n_boot=50),
                          real_train_labels=np.stack(real_train.labels), groups=groups)
    assert (table["n_real"] % 3 == 0).all()                            # whole patients only
    assert table["auroc"].isna().all() and table["reason"].str.startswith("too few samples").all()


def test_a_synthetic_set_without_a_positive_label_is_refused_by_name():
    """An unconditional set read with default (all-absent) labels trains to loss 0 and a chance AUROC."""
    real = FindingsDataset(24, seed=41)
    unconditional = FindingsDataset(24, seed=42)
    for lab in unconditional.labels:
        lab[:] = 0.0                                               # every finding "absent": the defaults
    classifier = ReferenceEncoderConfig(width=8, blocks=(1,), image_size=16, epochs=1, batch_size=8, device="cpu")
    config = UtilityConfig(classifier=classifier, regimes=("synthetic",), fractions=(1.0,), n_boot=20)
    with pytest.raises(ValueError, match=r"utility: ddpm .*no positive label.*notebook 07"):
        utility_study(real, unconditional, real, config, real_train_labels=np.stack(real.labels),
                      synthetic_name="ddpm")


def test_several_sets_share_one_real_regime_and_each_is_named():
    from support.eval.utility import choose_utility_sets, utility_studies

    assert choose_utility_sets(["t2i", "xgem", "rare"]) == ["t2i"]             # the default: the first one
    assert choose_utility_sets(["t2i", "xgem", "rare"], ["rare", "xgem"]) == ["rare", "xgem"]
    assert choose_utility_sets(["t2i", "xgem"], ["all"]) == ["t2i", "xgem"]
    with pytest.raises(ValueError, match=r"utility_sets: \['ddpm'\] are not sets with requested finding labels"):
        choose_utility_sets(["t2i", "xgem"], ["xgem", "ddpm"])

    real, test = FindingsDataset(48, seed=51), FindingsDataset(40, seed=53, hide=0.0)
    sets = {"sharp": FindingsDataset(32, seed=54), "blurred": FindingsDataset(32, seed=55, blur=0.8)}
    classifier = ReferenceEncoderConfig(width=8, blocks=(1,), image_size=16, epochs=1, batch_size=16, device="cpu")
    config = UtilityConfig(classifier=classifier, regimes=("real", "synthetic"), fractions=(1.0,), min_steps=4,
                           n_boot=20, min_test=5)
    labels = np.stack(real.labels)
    table = utility_studies(real, sets, test, config, real_train_labels=labels)
    assert table.groupby("regime")["set"].agg(lambda s: sorted(set(s))).to_dict() == {
        "real": [""], "synthetic": ["blurred", "sharp"]}
    n_findings = table["finding"].nunique()
    assert len(table) == 3 * n_findings                                     # real once, not once per set
    alone = utility_study(real, None, test, dataclasses.replace(config, regimes=("real",)), real_train_labels=labels)
    assert np.allclose(table[table["regime"] == "real"]["auroc"], alone["auroc"], equal_nan=True)
    sharp = utility_study(real, sets["sharp"], test, dataclasses.replace(config, regimes=("synthetic",)),
                          real_train_labels=labels)
    assert np.allclose(table[table["set"] == "sharp"]["auroc"], sharp["auroc"], equal_nan=True)
    from support.eval.plots import plot_utility_curves

    figure = plot_utility_curves(table)
    drawn = {label for ax in figure.axes for label in ax.get_legend_handles_labels()[1]}
    assert {"real", "synthetic · sharp", "synthetic · blurred"} <= drawn
