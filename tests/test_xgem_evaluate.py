"""XGeM's measures by hand: truth from CheXpert labels, finding agreement and F1, report scores, the
Fréchet guard, and F/L consistency; each refuses to score too few studies."""

import math

import numpy as np
import pandas as pd
import pytest

from support.xgem.evaluate import (FINDINGS, MIN_STUDIES, auroc_over, finding_agreement, finding_auroc, frechet,
                                   frechet_of, image_findings, image_scores, pair_consistency, paired_difference,
                                   pooled_agreement, report_findings, report_scores, study_matches, truth_matrix)


def test_truth_is_present_absent_or_unknown():
    labels = pd.DataFrame({"Edema": [1.0, 0.0, np.nan, -1.0], "Pneumothorax": [0.0, 1.0, 1.0, np.nan]})
    t = truth_matrix(labels, ["Edema", "Pneumothorax", "Atelectasis"])
    expected = np.array([[1, 0, 0], [0, 1, 0], [0, 1, 0], [np.nan, 0, 0]])
    np.testing.assert_array_equal(np.isnan(t), np.isnan(expected))
    np.testing.assert_array_equal(np.nan_to_num(t, nan=-9), np.nan_to_num(expected, nan=-9))


def test_finding_agreement_and_f1_by_hand():
    truth = np.array([[1, 0], [1, 0], [0, 0], [0, np.nan], [1, 1]], dtype=float)
    stated = np.array([[1, 0], [0, 0], [1, 0], [0, 1], [1, 1]], dtype=bool)
    out = finding_agreement(stated, truth, ["A", "B"])
    # known pairs: 9 (one unknown); matches: (1,1) (0,0) | (0,0)x (miss) | (1 vs 0)x (0,0) | (0,0) | (1,1)(1,1)
    assert out["agreement"] == pytest.approx(7 / 9)
    # F1 of A: tp 2, stated 3, present 3 -> 4/6; of B: tp 1, stated 1 (the unknown row left out), present 1 -> 1
    assert out["f1"] == pytest.approx((4 / 6 + 1.0) / 2)
    assert out["reason"] == "" and out["n"] == 5
    few = finding_agreement(stated[:MIN_STUDIES - 1], truth[:MIN_STUDIES - 1], ["A", "B"])
    assert math.isnan(few["agreement"]) and few["reason"].startswith("too few samples")
    with pytest.raises(ValueError, match="differ in shape"):
        finding_agreement(stated[:, :1], truth, ["A", "B"])


def test_outputs_state_findings_by_the_labeler_and_the_classifier():
    texts = ["large left pleural effusion. no pneumothorax.", "no acute process.", "small right pneumothorax."]
    stated = report_findings(texts)
    col = {f: i for i, f in enumerate(FINDINGS)}
    assert stated[0, col["Pleural Effusion"]] and not stated[0, col["Pneumothorax"]]
    assert not stated[1].any() and stated[2, col["Pneumothorax"]]
    probs = np.array([[0.9, 0.2], [0.5, 0.51]])
    out = image_findings(probs, ["Edema", "Pneumothorax"])
    assert out[:, col["Edema"]].tolist() == [True, False] and out[:, col["Pneumothorax"]].tolist() == [False, True]
    assert out.sum() == 2                                  # findings the classifier lacks are never stated


def test_report_scores_are_perfect_on_copies_and_lower_otherwise():
    refs = ["no pleural effusion . heart size is normal .", "small left pneumothorax .", "mild edema .",
            "no acute process .", "stable cardiomegaly ."]
    perfect = report_scores(refs, refs)
    assert all(perfect[k] == pytest.approx(1.0) for k in ("bleu1", "bleu4", "rougeL"))
    shuffled = report_scores(refs[1:] + refs[:1], refs)
    assert shuffled["bleu1"] < 0.6 and shuffled["rougeL"] < 0.6
    assert shuffled["bleu4"] <= shuffled["bleu1"]
    few = report_scores(refs[:2], refs[:2])
    assert math.isnan(few["bleu1"]) and "too few" in few["reason"]
    with pytest.raises(ValueError, match="2 generated reports for 3"):
        report_scores(refs[:2], refs[:3])


def test_frechet_guard_and_value():
    rng = np.random.default_rng(0)
    real = rng.normal(size=(200, 3))
    near, far = frechet(real, rng.normal(size=(200, 3))), frechet(real, rng.normal(2.0, size=(200, 3)))
    assert near["fd"] < 0.2 and far["fd"] == pytest.approx(12.0, rel=0.2)    # |mu diff|^2 = 3 * 2^2
    few = frechet(real, real[:3])
    assert math.isnan(few["fd"]) and few["n"] == 3 and "too few" in few["reason"]


def test_pair_consistency_by_hand():
    f = np.eye(6)
    same = pair_consistency(np.ones((6, 2), bool), np.ones((6, 2), bool), f, f)
    assert same["agreement"] == 1.0 and same["similarity"] == pytest.approx(1.0)     # 1 matched - 0 mismatched
    shuffled = pair_consistency(np.ones((6, 2), bool), np.zeros((6, 2), bool), f, np.roll(f, 1, axis=0))
    assert shuffled["agreement"] == 0.0 and shuffled["similarity"] == pytest.approx(0 - 6 / 30)   # each frontal matches one wrong lateral
    few = pair_consistency(np.ones((2, 2), bool), np.ones((2, 2), bool), f[:2], f[:2])
    assert math.isnan(few["similarity"]) and math.isnan(few["agreement"]) and few["n"] == 2
    assert few["reason"] == "too few samples (2 pairs, at least 5 needed)"
    # features of any length are compared by angle; stated findings given as 0/1 integers count as booleans
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(6, 4)), rng.normal(size=(6, 4))
    scale = rng.uniform(0.01, 100, (6, 1))
    unit_a, unit_b = a / np.linalg.norm(a, axis=1, keepdims=True), b / np.linalg.norm(b, axis=1, keepdims=True)
    cos = unit_a @ unit_b.T
    expected = np.trace(cos) / 6 - (cos.sum() - np.trace(cos)) / 30
    stated_f, stated_l = rng.integers(0, 3, (6, 3)), rng.integers(0, 3, (6, 3))   # any non-zero count states it
    out = pair_consistency(stated_f, stated_l, a * scale, b * scale[::-1])
    assert out == {"n": 6, "agreement": pytest.approx(float(((stated_f > 0) == (stated_l > 0)).mean())),
                   "similarity": pytest.approx(expected), "reason": ""}
    # a faint feature row is still a direction; an all-zero row (a blank output) is no direction, not NaN
    faint = np.eye(6) * np.array([1e-6, 1, 1, 1, 1, 1])[:, None]
    assert pair_consistency(np.ones((6, 2)), np.ones((6, 2)), faint, faint)["similarity"] == pytest.approx(1.0)
    blank = np.eye(6) * np.array([0, 1, 1, 1, 1, 1])[:, None]
    assert pair_consistency(np.ones((6, 2)), np.ones((6, 2)), blank, blank)["similarity"] == pytest.approx(5 / 6)


def test_per_study_counts_pool_to_the_agreement_and_resample_by_study():
    truth = np.array([[1, 0], [1, 0], [0, 0], [0, np.nan], [1, 1]], dtype=float)
    stated = np.array([[1, 0], [0, 0], [1, 0], [0, 1], [1, 1]], dtype=bool)
    counts = study_matches(stated, truth)
    np.testing.assert_array_equal(counts, [[2, 2], [1, 2], [1, 2], [1, 1], [2, 2]])    # unknown not counted
    assert pooled_agreement(counts) == finding_agreement(stated, truth, ["A", "B"])["agreement"] == 7 / 9
    assert pooled_agreement(counts, np.array([1, 1, 3])) == 3 / 5                      # a resample, pooled
    assert math.isnan(pooled_agreement(np.zeros((3, 2))))
    with pytest.raises(ValueError, match="differ in shape"):
        study_matches(stated[:, :1], truth)


def test_a_paired_difference_keeps_the_pairing_and_its_interval_covers_at_95_percent():
    rng = np.random.default_rng(0)
    # the same noisy studies on both sides, B shifted by 0.1: pairing cancels the study noise
    base = rng.normal(0, 1, 40)
    a, b = base + 0.1, base.copy()
    d = paired_difference(lambda i: a[i].mean(), lambda i: b[i].mean(), 40, n_boot=200)
    assert d["difference"] == pytest.approx(0.1) and d["ci_low"] == pytest.approx(0.1) == d["ci_high"]
    same = paired_difference(lambda i: a[i].mean(), lambda i: a[i].mean(), 40, n_boot=50)
    assert same["difference"] == same["ci_low"] == same["ci_high"] == 0.0
    # a true mean difference of 0.3 per study with noise: covered in about 95 % of draws
    covered = 0
    for k in range(200):
        r = np.random.default_rng(100 + k)
        a, b = r.normal(0.3, 1, 30), r.normal(0, 1, 30)
        d = paired_difference(lambda i: a[i].mean(), lambda i: b[i].mean(), 30, n_boot=300, seed=k)
        covered += d["ci_low"] <= 0.3 <= d["ci_high"]
    assert 0.88 <= covered / 200 <= 0.99
    few = paired_difference(lambda i: 0.0, lambda i: 0.0, MIN_STUDIES - 1)
    assert set(few) == {"n", "difference", "ci_low", "ci_high", "reason"} and few["n"] == MIN_STUDIES - 1
    assert math.isnan(few["difference"]) and math.isnan(few["ci_low"]) and math.isnan(few["ci_high"])
    assert few["reason"].startswith("too few samples")
    # seeded, at the confidence asked for, the point value over every study
    a, b = np.random.default_rng(7).normal(0.2, 1, (2, 25))
    d95 = paired_difference(lambda i: a[i].mean(), lambda i: b[i].mean(), 25, n_boot=300, seed=1)
    assert d95 == paired_difference(lambda i: a[i].mean(), lambda i: b[i].mean(), 25, n_boot=300, seed=1)
    assert d95 != paired_difference(lambda i: a[i].mean(), lambda i: b[i].mean(), 25, n_boot=300, seed=2)
    d80 = paired_difference(lambda i: a[i].mean(), lambda i: b[i].mean(), 25, n_boot=300, seed=1, confidence=0.8)
    assert d95["ci_low"] < d80["ci_low"] < d80["ci_high"] < d95["ci_high"]
    assert d95["n"] == 25 and d95["reason"] == "" and d95["difference"] == pytest.approx(a.mean() - b.mean())


def test_the_frechet_statistic_of_all_studies_is_the_frechet_distance():
    rng = np.random.default_rng(1)
    real, generated = rng.normal(0, 1, (60, 3)), rng.normal(0.5, 1, (20, 3))
    statistic = frechet_of(real, generated)
    assert statistic(np.arange(20)) == pytest.approx(frechet(real, generated)["fd"])
    assert statistic(np.arange(10)) == pytest.approx(frechet(real, generated[:10])["fd"])


def test_finding_auroc_ranks_by_the_reading_on_findings_with_ten_studies_of_each_class():
    names = ["A", "B", "C", "D"]
    truth = np.zeros((24, 4))
    truth[:12, 0] = 1                  # A: 12 present, 12 absent
    truth[:9, 1] = 1                   # B: 9 present: too few to rank
    truth[12:, 2] = 1                  # C: 12 and 12, but the judge does not read it
    truth[:12, 3], truth[12, 3] = 1, np.nan   # D: 12 and 11 known, one uncertain
    scores = np.zeros((24, 4))
    scores[:, 0] = np.r_[[0.9] * 11 + [0.2], [0.1] * 11 + [0.3]]    # one positive ranked below one negative
    scores[:, 2] = np.nan
    scores[:, 3] = [1] * 6 + [0] * 18                               # a report: stated or not
    out = finding_auroc(scores, truth, names)
    assert out["findings"] == ["A", "D"] and out["reason"] == ""
    auroc_a = (144 - 1) / 144
    auroc_d = (6 / 12 + 11 / 11) / 2                                # binary: mean of sensitivity and specificity
    assert out["auroc"] == pytest.approx((auroc_a + auroc_d) / 2)
    # a resample: the same findings, scored on its studies; one holding a single class scores nothing
    assert math.isnan(auroc_over(scores, truth, [0])(np.arange(12)))
    assert auroc_over(scores, truth, [0, 3])(np.r_[0:12, 13:24]) == pytest.approx((131 / 132 + 0.75) / 2)
    assert out["n"] == 24 and set(out) == {"n", "auroc", "findings", "reason"}
    assert finding_auroc(scores.astype(np.float32), truth, names)["auroc"] == pytest.approx(out["auroc"])
    none = finding_auroc(scores[:16], truth[:16], names)                # 12 present, 4 (or 3) absent
    assert math.isnan(none["auroc"]) and none["reason"].startswith("too few samples") and none["n"] == 16
    assert none["findings"] == [] and set(none) == set(out)
    empty = finding_auroc(np.zeros((0, 4)), np.zeros((0, 4)), names)
    assert empty["n"] == 0 and math.isnan(empty["auroc"]) and "among 0" in empty["reason"]
    np.testing.assert_array_equal(image_scores(np.array([[0.2, 0.7]]), ["B", "A"], names),
                                  [[0.7, 0.2, np.nan, np.nan]])


def test_f1_goes_on_past_a_finding_without_positives_and_ties_count_one_half():
    from support.xgem.evaluate import _pairwise_auroc

    truth = np.zeros((6, 2))
    truth[:3, 1] = 1                                   # A never present; B in three studies
    stated = np.zeros((6, 2), bool)
    stated[:3, 1] = True
    out = finding_agreement(stated, truth, ["A", "B"])
    assert out["f1"] == 1.0 and out["agreement"] == 1.0 and out["n"] == 6 and out["reason"] == ""
    few = finding_agreement(stated[:3], truth[:3], ["A", "B"])
    assert set(few) == {"n", "agreement", "f1", "reason"} and few["n"] == 3 and math.isnan(few["f1"])
    assert few["reason"] == "too few samples (3 studies, at least 5 needed)"
    # a tie between a present and an absent study counts one half, whatever the scores' values
    assert _pairwise_auroc(np.array([1.0, 0.0]), np.array([0.7, 0.7])) == 0.5
    assert _pairwise_auroc(np.array([1.0, 0.0, 0.0]), np.array([2.0, 1.0, 2.0])) == 0.75
    assert frechet(np.zeros((8, 2)), np.zeros((3, 2)))["reason"] == "too few samples (3 images, at least 5 needed)"
