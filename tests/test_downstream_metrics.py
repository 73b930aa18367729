"""Downstream metrics as a researcher relies on them: AUROC with its bootstrap interval, F1,
accuracy, Dice, mAP, and the rows that say "too few" instead of reporting a number.

The intervals are checked for what they claim to be: over many samples drawn from a population
whose value is known in closed form, a 95 % interval holds the true value about 95 % of the time.
"""

import warnings

import numpy as np
import pytest
import torch
from scipy.stats import norm
from sklearn.metrics import roc_auc_score

from support.downstream.auroc import _auroc_rows, bootstrap_auroc, known_mask, per_finding_auroc
from support.downstream.metrics import (MGCA_IOU_THRESHOLDS, MIN_PER_CLASS, accuracy_row, auroc_rows, bootstrap_ci,
                                        dice_row, f1_rows, map_row, mean_average_precision, row, too_few,
                                        too_few_of_a_class, too_wide, MAX_AUROC_CI_WIDTH)

torch.set_num_threads(1)
NAN = float("nan")


def _is_nan_row(r, reason, n_test, metric=None):
    return ((metric is None or r["metric"] == metric) and np.isnan(r["value"]) and np.isnan(r["ci_low"]) and np.isnan(r["ci_high"])
            and r["reason"] == reason and r["n_test"] == n_test)


# ------------------------------------------------------------------------------------ AUROC
def test_only_definite_zero_one_labels_are_known():
    labels = np.array([[1.0, 0.0, -1.0], [np.nan, 0.5, 2.0]])
    assert known_mask(labels).tolist() == [[True, True, False], [False, False, False]]
    assert known_mask([0, 1, -1]).tolist() == [True, True, False]      # lists and ints too


def test_per_finding_auroc_by_hand_with_ties_unknowns_and_one_class():
    nan = np.nan
    labels = np.array([[0, 0, 1], [0, 1, 1], [1, 0, 1], [1, 1, 1], [-1, nan, 1], [nan, -1, 1]], dtype=float)
    scores = np.array([[0.1, 0.5, 0.3], [0.4, 0.5, 0.2], [0.35, 0.2, 0.1], [0.8, 0.9, 0.7],
                       [0.0, 0.0, 0.5], [1.0, 1.0, 0.6]])
    got = per_finding_auroc(labels, scores, ["A", "B", "C"])
    # A: positives 0.35, 0.8 against negatives 0.1, 0.4: 3 of the 4 pairs ranked right; the
    # uncertain (-1) and unmentioned (NaN) rows would change it if they counted
    assert got["A"] == pytest.approx(0.75)
    # B: a positive tied with a negative (0.5, 0.5) counts one half: (0.5 + 1 + 1 + 1) / 4
    assert got["B"] == pytest.approx(0.875)
    assert np.isnan(got["C"])                         # every label positive: undefined, not 0 or 1
    assert list(got) == ["A", "B", "C"]
    with pytest.raises(ValueError, match=r"must both be \(N, 3\)"):
        per_finding_auroc(labels, scores[:, :2], ["A", "B", "C"])
    with pytest.raises(ValueError, match="must both be"):
        per_finding_auroc(labels, scores, ["A", "B"])
    with pytest.raises(ValueError, match="must both be"):
        per_finding_auroc(labels[:, 0], scores[:, 0], ["A"])


def test_vectorised_bootstrap_auroc_equals_the_reference_definition_row_by_row():
    rng = np.random.default_rng(0)
    y = (rng.random((100, 12)) < 0.4).astype(float)
    s = np.round(rng.normal(y, 1.0), 1)               # coarse scores: many ties
    y[0], y[1] = 0.0, 1.0                             # single-class rows
    got = _auroc_rows(y, s)
    assert np.isnan(got[0]) and np.isnan(got[1])
    ref = [roc_auc_score(y[i], s[i]) for i in range(2, len(y))]
    np.testing.assert_allclose(got[2:], ref, rtol=1e-12)


def test_bootstrap_auroc_reports_the_estimate_and_counts_and_refuses_one_class():
    y = np.array([0, 0, 1, 1, -1, np.nan, 1, 0, 1, 0])
    s = np.array([0.1, 0.4, 0.35, 0.8, 0.0, 1.0, 0.9, 0.2, 0.7, 0.6])
    out = bootstrap_auroc(y, s, n_boot=300, seed=1)
    known = known_mask(y)
    assert out["auroc"] == pytest.approx(roc_auc_score(y[known], s[known]))
    assert (out["n"], out["n_pos"]) == (8, 4)
    assert out["ci_low"] < out["auroc"] < out["ci_high"] <= 1.0
    assert out == bootstrap_auroc(y, s, n_boot=300, seed=1)                   # seeded
    assert out["ci_low"] != bootstrap_auroc(y, s, n_boot=300, seed=2)["ci_low"]
    one_class = bootstrap_auroc([1, 1, 1, -1, 0.5], [0.2, 0.3, 0.4, 0.1, 0.9], n_boot=50)
    assert np.isnan(one_class["auroc"]) and np.isnan(one_class["ci_low"]) and np.isnan(one_class["ci_high"])
    assert (one_class["n"], one_class["n_pos"], one_class["n_boot_valid"]) == (3, 3, 0)
    empty = bootstrap_auroc([np.nan, -1], [0.1, 0.2])
    assert np.isnan(empty["auroc"]) and (empty["n"], empty["n_pos"], empty["n_boot_valid"]) == (0, 0, 0)
    with pytest.raises(ValueError, match="differ in length"):
        bootstrap_auroc([0, 1, 1], [0.1, 0.2])


def test_bootstrap_auroc_skips_single_class_resamples_and_counts_the_rest():
    # 2 positives and 2 negatives: a resample of 4 holds one class with probability 2 / 2^4 = 1/8
    out = bootstrap_auroc([0, 1, 0, 1], [0.1, 0.9, 0.6, 0.4], n_boot=2000, seed=0)
    assert 1650 < out["n_boot_valid"] < 1850
    assert 0.0 <= out["ci_low"] < out["auroc"] == 0.75 and out["ci_high"] == 1.0
    # a large set is resampled in several batches: every requested resample is scored exactly once
    rng = np.random.default_rng(1)
    y = (rng.random(100_000) < 0.5).astype(float)
    big = bootstrap_auroc(y, rng.normal(y, 1.0), n_boot=45, seed=0)        # batches of 20, 20 and 5
    assert big["n_boot_valid"] == 45 and big["ci_low"] < big["auroc"] < big["ci_high"]
    assert big["auroc"] == pytest.approx(norm.cdf(1 / np.sqrt(2)), abs=0.01)
    assert big["ci_high"] - big["ci_low"] < 0.015


def _two_normals(rng, n_pos, n_neg, d):
    y = np.r_[np.ones(n_pos), np.zeros(n_neg)]
    return y, np.r_[rng.normal(d, 1.0, n_pos), rng.normal(0.0, 1.0, n_neg)]


@pytest.mark.parametrize("confidence, reps, low, high", [(0.95, 400, 0.92, 0.98), (0.5, 200, 0.40, 0.62)])
def test_bootstrap_auroc_interval_covers_the_true_auroc_at_its_confidence(confidence, reps, low, high):
    # positives ~ N(d, 1), negatives ~ N(0, 1): the population AUROC is Phi(d / sqrt 2); a 90 % interval
    # passed off as 95 % covers about 0.88 here, a 67 % one passed off as 50 % about 0.71
    d = 1.0
    truth = norm.cdf(d / np.sqrt(2.0))
    rng = np.random.default_rng(42)
    hits = []
    for rep in range(reps):
        y, s = _two_normals(rng, 60, 60, d)
        ci = bootstrap_auroc(y, s, n_boot=200, seed=rep, confidence=confidence)
        hits.append(ci["ci_low"] <= truth <= ci["ci_high"])
    assert low <= np.mean(hits) <= high, np.mean(hits)


# ------------------------------------------------------------------------------------ bootstrap_ci
def test_bootstrap_ci_is_the_percentile_interval_of_seeded_resamples_with_replacement():
    n = 30
    data = np.random.default_rng(0).normal(size=n)
    seen = []

    def mean(idx):
        seen.append(idx.copy())
        return float(data[idx].mean())

    low, high = bootstrap_ci(mean, n, n_boot=4000, seed=3)
    assert len(seen) == 4000 and all(len(i) == n for i in seen)
    drawn = np.concatenate(seen)
    assert drawn.min() == 0 and drawn.max() == n - 1                  # every case can be drawn
    assert np.mean([len(np.unique(i)) < n for i in seen]) > 0.99       # with replacement
    stats = np.array([data[i].mean() for i in seen])
    assert np.mean(stats < low) == pytest.approx(0.025, abs=0.003)
    assert np.mean(stats > high) == pytest.approx(0.025, abs=0.003)
    assert low < data.mean() < high
    assert bootstrap_ci(mean, n, n_boot=4000, seed=3) == (low, high)   # seeded
    assert bootstrap_ci(mean, n, n_boot=4000, seed=4) != (low, high)
    half = bootstrap_ci(mean, n, n_boot=4000, seed=3, confidence=0.5)
    assert np.mean(stats < half[0]) == pytest.approx(0.25, abs=0.005)
    assert np.mean(stats > half[1]) == pytest.approx(0.25, abs=0.005)


def test_bootstrap_ci_skips_undefined_resamples_and_needs_two_cases():
    data = np.arange(20, dtype=float)
    # undefined whenever the resample misses case 0: the interval comes from the rest only
    low, high = bootstrap_ci(lambda idx: data[idx].mean() if (idx == 0).any() else np.nan, 20, n_boot=500)
    assert np.isfinite(low) and np.isfinite(high) and low < 9.5 < high
    assert all(np.isnan(bootstrap_ci(lambda idx: np.nan, 10, n_boot=20)))
    assert np.isfinite(bootstrap_ci(lambda idx: float(idx.mean()), 2, n_boot=20)[0])
    for n in (1, 0):
        with pytest.raises(ValueError, match=f"bootstrap: {n} sample"):
            bootstrap_ci(lambda idx: 1.0, n)


def test_bootstrap_ci_covers_a_known_mean_95_percent_of_the_time():
    # the mean of 100 draws from N(2, 1); a 90 % interval passed off as 95 % covers about 0.88 here
    rng = np.random.default_rng(7)
    hits = []
    for rep in range(400):
        x = rng.normal(2.0, 1.0, 100)
        low, high = bootstrap_ci(lambda idx: x[idx].mean(), len(x), n_boot=200, seed=rep)
        hits.append(low <= 2.0 <= high)
    assert 0.92 <= np.mean(hits) <= 0.98, np.mean(hits)


# ------------------------------------------------------------------------------------ too few
def test_rows_and_too_few_reasons_by_value():
    r = row("auroc:A")
    assert r["metric"] == "auroc:A" and r["n_test"] == 0 and r["reason"] == ""
    assert np.isnan(r["value"]) and np.isnan(r["ci_low"]) and np.isnan(r["ci_high"])
    r = row("f1:B", np.float32(0.5), (np.int64(0), 1), np.int64(7), "x")
    assert r == {"metric": "f1:B", "value": 0.5, "ci_low": 0.0, "ci_high": 1.0, "n_test": 7, "reason": "x"}
    assert type(r["value"]) is float and type(r["ci_low"]) is float and type(r["n_test"]) is int
    assert too_few(4, 5) == "too few samples: 4 test images, at least 5 needed"
    assert too_few(5, 5) == "" and too_few(6, 5) == ""
    assert too_few(0, 1, "boxes") == "too few samples: 0 boxes, at least 1 needed"
    assert MIN_PER_CLASS == 10
    y = np.r_[np.ones(9), np.zeros(20)]
    assert too_few_of_a_class(y) == ("too few samples: 9 positives among 29 test labels, "
                                     "at least 10 of each class needed")
    assert too_few_of_a_class(1 - y) == ("too few samples: 9 negatives among 29 test labels, "
                                         "at least 10 of each class needed")
    assert too_few_of_a_class(np.r_[np.ones(3), np.zeros(2)]) == (
        "too few samples: 3 positives and 2 negatives among 5 test labels, at least 10 of each class needed")
    assert too_few_of_a_class(np.r_[np.ones(10), np.zeros(10)]) == ""
    # F1 counts positives only: few negatives are no reason
    assert too_few_of_a_class(np.r_[np.ones(10), np.zeros(1)], negatives=False) == ""
    assert too_few_of_a_class(np.r_[np.ones(9), np.zeros(9)], negatives=False) == (
        "too few samples: 9 positives among 18 test labels, at least 10 of each class needed")
    # an interval wider than 0.4 is no result, whatever the counts; one at the limit is
    assert MAX_AUROC_CI_WIDTH == 0.4
    assert too_wide(0.30, 0.71) == "too few samples: the 95% interval [0.30, 0.71] spans more than 0.4"
    assert too_wide(0.30, 0.70) == "" and too_wide(np.nan, np.nan) == ""


def test_an_auroc_with_a_wide_interval_is_nan_with_its_interval_kept():
    rng = np.random.default_rng(3)
    y = np.r_[np.ones(12), np.zeros(12)]
    noisy = np.c_[y, y], np.c_[rng.normal(0, 1, 24), y + rng.normal(0, 0.3, 24)]     # noise; a clear signal
    rows = {r["metric"]: r for r in auroc_rows(*noisy, ["noise", "signal"], n_boot=300, seed=0, confidence=0.95,
                                               min_test=10)}
    noise, signal = rows["auroc:noise"], rows["auroc:signal"]
    assert np.isnan(noise["value"]) and noise["reason"].startswith("too few samples: the 95% interval")
    assert noise["ci_high"] - noise["ci_low"] > 0.4           # kept: the reader sees why
    assert signal["reason"] == "" and signal["value"] > 0.9 and signal["ci_high"] - signal["ci_low"] <= 0.4
    assert np.isnan(rows["auroc"]["value"]) and rows["auroc"]["reason"]   # the mean inherits the verdict


# ------------------------------------------------------------------------------------ AUROC rows
def _findings(rng, n=40):
    y = (np.arange(n) % 2).astype(float)
    return np.c_[y, rng.permutation(y)], np.c_[rng.normal(y, 1.0), rng.normal(y, 2.0)]


def test_auroc_rows_are_the_bootstrap_of_each_finding_and_their_mean():
    rng = np.random.default_rng(0)
    labels, scores = _findings(rng)
    labels[:3, 1] = [np.nan, -1, np.nan]                         # uncertain / unmentioned: not counted
    common = {"n_boot": 60, "seed": 5, "confidence": 0.8, "min_test": 10}
    rows = auroc_rows(labels, scores, ["A", "B"], **common)
    assert [r["metric"] for r in rows] == ["auroc:A", "auroc:B", "auroc"]
    assert all(r["reason"] == "" for r in rows)
    for j, r in enumerate(rows[:2]):
        # each finding: the reproducible bootstrap_auroc of its own column, seeded by seed + column
        ref = bootstrap_auroc(labels[:, j], scores[:, j], n_boot=60, seed=5 + j, confidence=0.8)
        assert (r["value"], r["ci_low"], r["ci_high"], r["n_test"]) == (ref["auroc"], ref["ci_low"],
                                                                         ref["ci_high"], ref["n"])
    assert rows[1]["n_test"] == 37
    mean = rows[2]
    assert mean["value"] == pytest.approx((rows[0]["value"] + rows[1]["value"]) / 2)
    assert mean["n_test"] == 40 and mean["ci_low"] < mean["value"] < mean["ci_high"]

    def resampled_mean(idx):
        return float(np.mean(list(per_finding_auroc(labels[idx], scores[idx], ["A", "B"]).values())))

    assert (mean["ci_low"], mean["ci_high"]) == bootstrap_ci(resampled_mean, 40, 60, 5, 0.8)
    wider = auroc_rows(labels, scores, ["A", "B"], **{**common, "confidence": 0.95})
    for narrow, wide in zip(rows, wider):
        assert wide["ci_low"] < narrow["ci_low"] and narrow["ci_high"] < wide["ci_high"]


def test_auroc_rows_say_why_a_finding_is_not_scored_and_then_no_mean():
    rng = np.random.default_rng(1)
    labels, scores = _findings(rng, n=80)
    rare = np.zeros(80)
    rare[:MIN_PER_CLASS - 1] = 1.0                               # one positive short of enough
    labels = np.c_[labels, np.zeros(80), np.ones(80), labels[:, 0].copy(), rare]
    labels[5:, 4] = np.nan                                       # 5 definite labels left
    scores = np.c_[scores, rng.random((80, 4))]
    names = ["A", "B", "none", "all", "few", "rare"]
    rows = auroc_rows(labels, scores, names, n_boot=50, seed=0, confidence=0.95, min_test=10,
                      reasons={"B": "no training label", "few": "k=5 exceeds the neighbours"})
    by = {r["metric"]: r for r in rows}
    assert np.isfinite(by["auroc:A"]["value"]) and by["auroc:A"]["reason"] == ""
    assert _is_nan_row(by["auroc:B"], "no training label", 80)               # upstream reason first
    assert _is_nan_row(by["auroc:none"], "one class only in the test set (AUROC undefined)", 80)
    assert _is_nan_row(by["auroc:all"], "one class only in the test set (AUROC undefined)", 80)
    assert _is_nan_row(by["auroc:few"], "k=5 exceeds the neighbours", 5)
    assert _is_nan_row(by["auroc:rare"], "too few samples: 9 positives among 80 test labels, "
                                         "at least 10 of each class needed", 80)
    assert _is_nan_row(by["auroc"], "mean undefined: ['B', 'none', 'all', 'few', 'rare'] not scored", 80)
    # without the upstream reason, 5 definite labels are too few for min_test=10
    few = auroc_rows(labels[:, 4:5], scores[:, 4:5], ["few"], n_boot=50, seed=0, confidence=0.95, min_test=10)
    assert _is_nan_row(few[0], "too few samples: 5 test images with a definite label, at least 10 needed", 5)
    assert _is_nan_row(few[1], "mean undefined: ['few'] not scored", 80)
    # exactly min_test definite labels, 10 of each class, cleanly ranked (a narrow interval): scored
    ok = auroc_rows(labels[:20, :1], labels[:20, :1], ["A"], n_boot=50, seed=0, confidence=0.95, min_test=20)
    assert ok[0]["reason"] == "" and ok[0]["value"] == 1.0 and ok[1]["n_test"] == 20


# ------------------------------------------------------------------------------------ F1
def test_f1_by_hand_threshold_is_strict_and_interval_reproducible():
    y = np.array([1, 1, 1, 1, 1, 1, 0, 0, 0, 0] * 2 + [np.nan, -1])
    s = np.array([0.9, 0.8, 0.7, 0.5, 0.1, 0.2, 0.6, 0.1, 0.0, 0.3] * 2 + [0.9, 0.9])
    labels, scores = np.c_[y, y], np.c_[s, s]
    rows = f1_rows(labels, scores, ["A", "B"], threshold=0.5, n_boot=300, seed=2, confidence=0.9, min_test=10)
    # predicted positive: 0.9, 0.8, 0.7 (positives) and 0.6 (a negative), twice; 0.5 is not above 0.5
    # tp 6, predicted 8, true 12: F1 = 2 * 6 / (8 + 12)
    assert [r["metric"] for r in rows] == ["f1:A", "f1:B"]
    for j, r in enumerate(rows):
        assert r["value"] == pytest.approx(0.6) and r["n_test"] == 20 and r["reason"] == ""
        known = known_mask(y)
        yk, pk = y[known], s[known] > 0.5

        def f1(idx):
            tp, both = (pk[idx] & (yk[idx] == 1)).sum(), pk[idx].sum() + (yk[idx] == 1).sum()
            return 2 * tp / both if both else np.nan

        assert (r["ci_low"], r["ci_high"]) == bootstrap_ci(f1, 20, 300, 2 + j, 0.9)
        assert r["ci_low"] < 0.6 < r["ci_high"]


def test_f1_rows_refuse_what_cannot_be_scored():
    y = np.r_[np.ones(10), np.zeros(4)]                # 10 positives, 4 negatives: F1 can be scored
    y9 = np.r_[np.ones(9), np.zeros(5)]
    labels = np.c_[y, np.zeros(14), y9, y]
    scores = np.tile(np.linspace(0, 1, 14)[:, None], (1, 4))
    rows = f1_rows(labels, scores, ["A", "none", "rare", "skip"], threshold=0.5, n_boot=50, seed=0,
                   confidence=0.95, min_test=7, reasons={"skip": "not trained"})
    by = {r["metric"]: r for r in rows}
    assert by["f1:A"]["reason"] == "" and np.isfinite(by["f1:A"]["value"])
    assert _is_nan_row(by["f1:none"], "no positive in the test set (F1 undefined)", 14)
    assert _is_nan_row(by["f1:rare"], "too few samples: 9 positives among 14 test labels, "
                                      "at least 10 of each class needed", 14)
    assert _is_nan_row(by["f1:skip"], "not trained", 14)
    # resamples holding neither a positive nor a predicted positive leave F1 undefined: skipped, not an error
    rare = np.r_[np.ones(10), np.zeros(30)]
    sparse = f1_rows(rare[:, None], rare[:, None], ["A"], threshold=0.5, n_boot=2000, seed=0, confidence=0.95,
                     min_test=7)[0]
    assert sparse["value"] == 1.0 and (sparse["ci_low"], sparse["ci_high"]) == (1.0, 1.0)
    few = f1_rows(labels[:6, :1], scores[:6, :1], ["A"], threshold=0.5, n_boot=50, seed=0, confidence=0.95,
                  min_test=7)
    assert _is_nan_row(few[0], "too few samples: 6 test images with a definite label, at least 7 needed", 6)


# ------------------------------------------------------------------------------------ accuracy, Dice
def test_accuracy_row_by_value_and_its_guards():
    classes = np.array(["a", "b", "c", "a"] * 100)
    predicted = np.array(["a", "b", "a", "c"] * 100)
    predicted[:40] = classes[:40]                                    # 200 + 20 of 400 right
    r = accuracy_row(classes, predicted, n_boot=300, seed=1, confidence=0.9, min_test=20)
    assert r["metric"] == "accuracy" and r["value"] == 0.55 and r["n_test"] == 400 and r["reason"] == ""
    correct = classes == predicted
    assert (r["ci_low"], r["ci_high"]) == bootstrap_ci(lambda i: correct[i].mean(), 400, 300, 1, 0.9)
    assert r["ci_low"] < 0.55 < r["ci_high"]
    assert _is_nan_row(accuracy_row(classes[:20], predicted[:20], n_boot=10, seed=1, confidence=0.95, min_test=21),
                       "too few samples: 20 test images, at least 21 needed", 20, "accuracy")
    assert _is_nan_row(accuracy_row(classes, predicted, n_boot=10, seed=1, confidence=0.95, min_test=5,
                                    reason="one class only"), "one class only", 400, "accuracy")


def test_dice_is_pooled_over_images_not_averaged():
    # (intersection, predicted, true) pixels per image
    overlap = np.array([[10, 20, 10], [0, 0, 30], [5, 5, 5], [0, 0, 0], [0, 4, 0]], dtype=float)
    r = dice_row(overlap, n_boot=400, seed=3, confidence=0.9, min_test=5)
    assert r["metric"] == "dice" and r["n_test"] == 5 and r["reason"] == ""
    assert r["value"] == pytest.approx(2 * 15 / (29 + 45))             # not the mean of per-image Dice

    def pooled(idx):
        inter, pred, true = overlap[idx].sum(axis=0)
        return 2 * inter / (pred + true) if pred + true else np.nan

    assert (r["ci_low"], r["ci_high"]) == bootstrap_ci(pooled, 5, 400, 3, 0.9)
    assert 0.0 <= r["ci_low"] < r["value"] < r["ci_high"] <= 1.0
    assert dice_row(overlap.ravel(), n_boot=10, seed=3, confidence=0.95, min_test=5)["value"] == r["value"]
    assert _is_nan_row(dice_row(overlap, n_boot=10, seed=3, confidence=0.95, min_test=6),
                       "too few samples: 5 test images, at least 6 needed", 5, "dice")
    no_mask = overlap.copy()
    no_mask[:, [0, 2]] = 0
    assert _is_nan_row(dice_row(no_mask, n_boot=10, seed=3, confidence=0.95, min_test=5),
                       "no mask in the test set", 5, "dice")
    # a single true pixel, missed: Dice 0, not undefined
    one = np.array([[0, 0, 1], [0, 0, 0], [0, 0, 0]], dtype=float)
    with warnings.catch_warnings():
        warnings.simplefilter("error")   # resamples of empty images only: undefined, by the guard, not 0/0
        missed = dice_row(one, n_boot=50, seed=0, confidence=0.95, min_test=3)
    assert missed["value"] == 0.0 and missed["reason"] == "" and (missed["ci_low"], missed["ci_high"]) == (0.0, 0.0)


# ------------------------------------------------------------------------------------ mAP
def _box(*xyxy, score=None, label=0):
    out = {"boxes": torch.tensor([xyxy], dtype=torch.float32), "labels": torch.tensor([label])}
    if score is not None:
        out["scores"] = torch.tensor([score])
    return out


def test_mean_average_precision_averages_over_the_iou_thresholds():
    assert MGCA_IOU_THRESHOLDS == (0.4, 0.45, 0.5, 0.55, 0.6, 0.65, 0.7, 0.75)
    target = [_box(0, 0, 10, 10)]
    assert mean_average_precision([_box(0, 0, 10, 10, score=0.9)], target) == pytest.approx(1.0)
    # IoU 0.62: a hit at 0.40 ... 0.60 (5 of the 8 thresholds), a miss above
    partial = [_box(0, 0, 10, 6.2, score=0.9)]
    assert mean_average_precision(partial, target) == pytest.approx(5 / 8)
    assert mean_average_precision(partial, target, iou_thresholds=(0.5,)) == pytest.approx(1.0)
    assert mean_average_precision(partial, target, iou_thresholds=(0.7,)) == pytest.approx(0.0)
    empty = {"boxes": torch.zeros((0, 4)), "labels": torch.zeros(0, dtype=torch.long)}
    assert np.isnan(mean_average_precision([_box(0, 0, 10, 10, score=0.9)], [empty]))


def test_map_row_by_value_and_its_guards():
    empty = {"boxes": torch.zeros((0, 4)), "labels": torch.zeros(0, dtype=torch.long)}
    targets = [_box(0, 0, 10, 10)] * 3 + [_box(0, 0, 10, 10)] * 3
    predictions = [_box(0, 0, 10, 10, score=0.9)] * 3 + [_box(0, 0, 10, 6.2, score=0.8)] * 3
    r = map_row(predictions, targets, n_boot=20, seed=3, confidence=0.8, min_test=6)
    assert r["metric"] == "map@0.40:0.75" and r["n_test"] == 6 and r["reason"] == ""
    assert r["value"] == pytest.approx(mean_average_precision(predictions, targets))

    def resampled(idx):
        return mean_average_precision([predictions[i] for i in idx], [targets[i] for i in idx])

    assert (r["ci_low"], r["ci_high"]) == bootstrap_ci(resampled, 6, 20, 3, 0.8)
    assert 5 / 8 < r["value"] < 1.0
    assert 5 / 8 - 1e-9 <= r["ci_low"] <= r["value"] <= r["ci_high"] <= 1.0 + 1e-9 and r["ci_low"] < r["ci_high"]
    # IoU 1, 0.9, ... 0.5: every resample scores differently, so the interval is the seed's draw
    graded = [_box(0, 0, 10, h, score=0.9) for h in (10, 9, 8, 7, 6.2, 5)]

    def graded_map(idx):
        return mean_average_precision([graded[i] for i in idx], [targets[i] for i in idx])

    g = map_row(graded, targets, n_boot=20, seed=3, confidence=0.8, min_test=6)
    assert (g["ci_low"], g["ci_high"]) == bootstrap_ci(graded_map, 6, 20, 3, 0.8) != bootstrap_ci(graded_map, 6, 20,
                                                                                                  4, 0.8)
    r50 = map_row(predictions, targets, n_boot=5, seed=0, confidence=0.95, min_test=6, iou_thresholds=(0.5, 0.6))
    assert r50["metric"] == "map@0.50:0.60" and r50["value"] == pytest.approx(1.0)
    assert _is_nan_row(map_row(predictions, targets, n_boot=5, seed=0, confidence=0.95, min_test=7),
                       "too few samples: 6 test images, at least 7 needed", 6, "map@0.40:0.75")
    assert _is_nan_row(map_row(predictions, [empty] * 6, n_boot=5, seed=0, confidence=0.95, min_test=6),
                       "no box in the test set", 6, "map@0.40:0.75")
