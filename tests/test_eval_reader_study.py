"""Reader-study kit: blinded set, sheets, scoring (the published study's numbers), errors."""

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from support.eval.reader_study import (build_reader_study, reader_metrics, score_reader_study,
                                       wilson_interval)


def test_published_reader_study_counts():
    # 43 of 50 synthetic and 38 of 50 real identified ("synthetic" = positive)
    m = reader_metrics(43, 50, 38, 50)
    assert m["accuracy"] == pytest.approx(0.81)
    assert m["sensitivity"] == pytest.approx(0.86)
    assert m["specificity"] == pytest.approx(0.76)
    assert (m["tp"], m["fn"], m["tn"], m["fp"]) == (43, 7, 38, 12)
    assert m["accuracy_ci_low"] < 0.81 < m["accuracy_ci_high"]


def test_wilson_interval_known_values():
    lo, hi = wilson_interval(43, 50)
    assert (lo, hi) == (pytest.approx(0.7385, abs=1e-3), pytest.approx(0.9305, abs=1e-3))
    assert wilson_interval(0, 10)[0] == pytest.approx(0.0) and wilson_interval(10, 10)[1] == pytest.approx(1.0)
    assert all(np.isnan(wilson_interval(0, 0)))


def _sets(n=6, size=16, seed=0):
    rng = np.random.default_rng(seed)
    real = rng.integers(0, 256, (n + 2, size, size), dtype=np.uint8)
    synth = (rng.random((n, size, size)) * 0.5).astype(np.float32)
    return real, synth


def test_blinded_set_layout(tmp_path):
    real, synth = _sets()
    paths = build_reader_study(real, synth, tmp_path / "study", n=5, seed=1)
    readers = paths["readers"]
    pngs = sorted(p.name for p in readers.glob("*.png"))
    assert pngs == [f"case_{i:03d}.png" for i in range(1, 11)]
    sheet = pd.read_csv(paths["answer_sheet"], keep_default_na=False)
    assert list(sheet.columns) == ["case", "answer", "confidence", "comment"]
    assert (sheet["answer"] == "").all() and len(sheet) == 10
    key = pd.read_csv(paths["key"])
    assert not (readers / "key.csv").exists()  # the key is not in the readers' folder
    assert sorted(key["truth"].value_counts().tolist()) == [5, 5]
    # shuffled: truths do not come as a block of reals then synthetics
    assert key["truth"].tolist() != sorted(key["truth"].tolist())
    # each image is the named source, unchanged (lossless, grayscale)
    for _, row in key.iterrows():
        img = np.asarray(Image.open(readers / f"{row['case']}.png"))
        src = real[row["source_index"]] if row["truth"] == "real" else np.round(synth[row["source_index"]] * 255)
        assert img.dtype == np.uint8 and np.array_equal(img, src)
    # seeded: the same call gives the same key
    again = build_reader_study(real, synth, tmp_path / "again", n=5, seed=1)
    assert pd.read_csv(again["key"]).equals(key)


def test_sizes_must_match_unless_resized(tmp_path):
    real = np.zeros((3, 16, 16), np.uint8)
    synth = np.zeros((3, 32, 32), np.uint8)
    with pytest.raises(ValueError, match="unblind"):
        build_reader_study(real, synth, tmp_path / "s")
    assert not (tmp_path / "s").exists()
    paths = build_reader_study(real, synth, tmp_path / "ok", size=24)
    assert Image.open(next(paths["readers"].glob("*.png"))).size == (24, 24)


def _fill(key: pd.DataFrame, synthetic_right: int, real_right: int) -> pd.DataFrame:
    answers = []
    seen = {"synthetic": 0, "real": 0}
    for truth in key["truth"]:
        right = seen[truth] < (synthetic_right if truth == "synthetic" else real_right)
        seen[truth] += 1
        answers.append(truth if right else ("real" if truth == "synthetic" else "synthetic"))
    return pd.DataFrame({"case": key["case"], "answer": answers, "confidence": "3", "comment": ""})


def test_scoring_filled_sheets_reproduces_the_published_study(tmp_path):
    real = np.random.default_rng(0).integers(0, 256, (50, 8, 8), dtype=np.uint8)
    synth = np.random.default_rng(1).integers(0, 256, (50, 8, 8), dtype=np.uint8)
    paths = build_reader_study(real, synth, tmp_path / "study", seed=3)
    key = pd.read_csv(paths["key"])
    sheet = _fill(key, 43, 38)
    sheet_path = tmp_path / "radiologist.csv"
    sheet.to_csv(sheet_path, index=False)
    second = _fill(key, 50, 50)  # a perfect second reader
    result = score_reader_study(paths["key"], {"radiologist": sheet_path, "perfect": second})
    r = result.readers.set_index("reader")
    assert r.loc["radiologist", "accuracy"] == pytest.approx(0.81)
    assert r.loc["radiologist", "sensitivity"] == pytest.approx(0.86)
    assert r.loc["radiologist", "specificity"] == pytest.approx(0.76)
    assert r.loc["perfect", "accuracy"] == 1.0 and r.loc["radiologist", "mean_confidence"] == 3.0
    conf = result.confusion["radiologist"]
    assert conf.loc["synthetic", "synthetic"] == 43 and conf.loc["synthetic", "real"] == 7
    assert conf.loc["real", "real"] == 38 and conf.loc["real", "synthetic"] == 12
    # kappa between the radiologist and the truth-perfect reader, computed by hand
    po = 0.81
    pe = (55 / 100) * (50 / 100) + (45 / 100) * (50 / 100)
    assert result.agreement.loc[0, "kappa"] == pytest.approx((po - pe) / (1 - pe))
    assert result.summary()["reader_count"] == 2


def test_bad_sheets_are_clear_errors(tmp_path):
    key = pd.DataFrame({"case": ["case_001", "case_002"], "truth": ["real", "synthetic"]})
    good = pd.DataFrame({"case": ["case_001", "case_002"], "answer": ["Real", " synthetic "]})
    assert score_reader_study(key, {"a": good}).readers.loc[0, "accuracy"] == 1.0

    def fails(sheet, match, **kw):
        path = tmp_path / "sheet.csv"
        sheet.to_csv(path, index=False)
        with pytest.raises(ValueError, match=match):
            score_reader_study(key, [path], **kw)

    fails(good.assign(case=["case_001", "case_099"]), r"sheet.csv.*'case'.*case_099")
    fails(good.assign(answer=["real", "fake"]), r"sheet.csv.*'answer'.*case_002='fake'")
    fails(good.assign(case=["case_001", "case_001"]), r"repeats cases \['case_001'\]")
    fails(good.assign(answer=["real", ""]), r"1 case\(s\) without an answer: \['case_002'\]")
    fails(good.assign(confidence=["9", ""]), r"'confidence'.*case_001")
    fails(good.drop(columns="answer"), r"missing column\(s\) \['answer'\]")
    partial = good.assign(answer=["real", ""])
    partial.to_csv(tmp_path / "partial.csv", index=False)
    r = score_reader_study(key, [tmp_path / "partial.csv"], allow_unanswered=True).readers
    assert r.loc[0, "n_unanswered"] == 1 and r.loc[0, "specificity"] == 1.0 and np.isnan(r.loc[0, "sensitivity"])


# ------------------------------------------------------------------------------------ Wilson interval
def test_wilson_interval_by_hand():
    # z = 1.959964, p = 0.86: centre (p + z^2 / 2n) / (1 + z^2 / n), half-width z sqrt(p q / n + z^2 / 4n^2) / (1 + z^2 / n)
    assert wilson_interval(43, 50) == (pytest.approx(0.7381380628941446, abs=1e-12),
                                       pytest.approx(0.9304916657298371, abs=1e-12))
    assert wilson_interval(43, 50, confidence=0.9) == (pytest.approx(0.7607610040545154, abs=1e-12),
                                                       pytest.approx(0.9222791021793701, abs=1e-12))
    assert wilson_interval(1, 1) == (pytest.approx(0.2065493143772375, abs=1e-12), 1.0)   # one case is a proportion
    # the interval never leaves [0, 1], even where it touches an end
    for n in range(1, 200):
        assert 0.0 <= wilson_interval(0, n)[0] < 1e-15 and 1.0 - 1e-15 < wilson_interval(n, n)[1] <= 1.0, n
    for bad in (-1, 11):
        with pytest.raises(ValueError, match=rf"successes must be within \[0, 10\], got {bad}"):
            wilson_interval(bad, 10)


@pytest.mark.parametrize("confidence", [0.95, 0.8])
def test_wilson_interval_has_its_nominal_coverage(confidence):
    # exact coverage: P(interval holds p) = sum over k of Binomial(n, p) pmf at k, where interval(k) holds p;
    # averaged over p in [0.05, 0.95] it is the nominal level (Brown, Cai & DasGupta 2001)
    from scipy.stats import binom

    n = 60
    intervals = np.array([wilson_interval(k, n, confidence) for k in range(n + 1)])
    coverage = []
    for p in np.linspace(0.05, 0.95, 91):
        holds = (intervals[:, 0] <= p) & (p <= intervals[:, 1])
        coverage.append(binom.pmf(np.arange(n + 1), n, p)[holds].sum())
    assert abs(np.mean(coverage) - confidence) < 0.015, np.mean(coverage)
    assert min(coverage) > confidence - 0.1


def test_reader_metrics_pass_their_confidence_and_are_nan_without_cases():
    m = reader_metrics(43, 50, 38, 50, confidence=0.9)
    assert (m["sensitivity_ci_low"], m["sensitivity_ci_high"]) == wilson_interval(43, 50, 0.9)
    assert (m["accuracy_ci_low"], m["accuracy_ci_high"]) == wilson_interval(81, 100, 0.9)
    d = reader_metrics(43, 50, 38, 50)
    assert (d["specificity_ci_low"], d["specificity_ci_high"]) == wilson_interval(38, 50, 0.95)
    assert d["sensitivity_ci_low"] == pytest.approx(0.7381380628941446, abs=1e-12)
    none = reader_metrics(0, 0, 3, 4)
    assert np.isnan(none["sensitivity"]) and np.isnan(none["sensitivity_ci_low"]) and np.isnan(none["sensitivity_ci_high"])
    assert none["specificity"] == 0.75 and none["accuracy"] == 0.75 and (none["n_synthetic"], none["fn"]) == (0, 0)


# ------------------------------------------------------------------------------------ several readers
KEY = pd.DataFrame({"case": [f"c{i}" for i in range(1, 11)], "truth": ["real"] * 5 + ["synthetic"] * 5})
R, S = "real", "synthetic"


def _sheet(answers):
    return pd.DataFrame({"case": list(answers), "answer": list(answers.values())})


def _readers():
    a = _sheet(dict(zip(KEY["case"], [R, R, S, R, R, S, S, R, S, S])))   # 4 of 5 right each way
    b = _sheet({c: S for c in KEY["case"]})                             # calls everything synthetic
    c = _sheet({"c1": R, "c2": R, "c3": R, "c4": S})                    # only some real cases answered
    return a, b, c


def test_confusion_tables_and_agreement_of_several_readers():
    a, b, c = _readers()
    result = score_reader_study(KEY, {"A": a, "B": b, "C": c}, allow_unanswered=True)
    r = result.readers.set_index("reader")
    assert list(r.index) == ["A", "B", "C"]
    assert (r.loc["A", "tp"], r.loc["A", "tn"], r.loc["C", "tn"], r.loc["C", "n_real"]) == (4, 4, 3, 4)
    assert r.loc["C", "n_unanswered"] == 6 and np.isnan(r.loc["C", "sensitivity"])
    assert (r.loc["A", "sensitivity_ci_low"], r.loc["A", "sensitivity_ci_high"]) == wilson_interval(4, 5)
    # every confusion table is 2 x 2 (truth rows, answer columns), unused answers as zeros
    for name, table in [("A", [[4, 1], [1, 4]]), ("B", [[0, 5], [0, 5]]), ("C", [[3, 1], [0, 0]])]:
        conf = result.confusion[name]
        assert list(conf.index) == [R, S] and list(conf.columns) == [R, S], name
        assert conf.index.name == "truth" and conf.columns.name == "answer"
        assert conf.to_numpy().tolist() == table, name
    # every pair once, on the cases both answered; kappa by hand:
    # A-B: B is constant, so agreement is chance: 0. A-C on c1..c4: po 1/2, pe 3/4*3/4 + 1/4*1/4 -> -1/3.
    # B-C on c1..c4: po 1/4, pe 1 * 1/4 -> 0
    ag = result.agreement
    assert list(ag.columns) == ["reader_a", "reader_b", "n_common", "kappa"]
    assert ag[["reader_a", "reader_b", "n_common"]].values.tolist() == [["A", "B", 10], ["A", "C", 4], ["B", "C", 4]]
    assert ag["kappa"].tolist() == pytest.approx([0.0, -1 / 3, 0.0])
    s = result.summary()
    assert s["reader_count"] == 3 and s["reader_kappa_mean"] == pytest.approx(-1 / 9)
    # pooled over readers: tp 4 + 5 + 0 of 10 synthetic readings, tn 4 + 0 + 3 of 14 real ones
    assert s["reader_sensitivity"] == pytest.approx(0.9) and s["reader_specificity"] == pytest.approx(0.5)
    assert (s["reader_tp"], s["reader_n_real"]) == (9, 14)
    assert (s["reader_sensitivity_ci_low"], s["reader_sensitivity_ci_high"]) == wilson_interval(9, 10)
    narrow = score_reader_study(KEY, {"A": a}, confidence=0.8).readers
    assert (narrow.loc[0, "accuracy_ci_low"], narrow.loc[0, "accuracy_ci_high"]) == wilson_interval(8, 10, 0.8)


def test_one_reader_or_readers_without_common_cases_have_no_kappa():
    a, _, _ = _readers()
    one = score_reader_study(KEY, {"A": a})
    assert list(one.agreement.columns) == ["reader_a", "reader_b", "n_common", "kappa"] and len(one.agreement) == 0
    s = one.summary()
    assert s["reader_count"] == 1 and isinstance(s["reader_kappa_mean"], float) and np.isnan(s["reader_kappa_mean"])
    apart = score_reader_study(KEY, {"D": _sheet({"c1": R}), "E": _sheet({"c2": S})}, allow_unanswered=True)
    assert apart.agreement.loc[0, "n_common"] == 0 and np.isnan(apart.agreement.loc[0, "kappa"])
    assert np.isnan(apart.summary()["reader_kappa_mean"])


def test_readers_are_named_by_file_or_position_and_errors_name_them(tmp_path):
    a, b, _ = _readers()
    assert score_reader_study(KEY, [a, b]).readers["reader"].tolist() == ["reader_1", "reader_2"]
    a.to_csv(tmp_path / "dr_who.csv", index=False)
    assert score_reader_study(KEY, [tmp_path / "dr_who.csv", b]).readers["reader"].tolist() == ["dr_who", "reader_2"]
    bad = b.assign(answer=[S] * 9 + ["maybe"])
    with pytest.raises(ValueError, match=r"^reader reader_2: column 'answer'.*c10='maybe'"):
        score_reader_study(KEY, [a, bad])
    with pytest.raises(ValueError, match=r"^reader X: column 'answer'"):
        score_reader_study(KEY, {"X": bad})
    bad.to_csv(tmp_path / "night.csv", index=False)
    with pytest.raises(ValueError, match=r"night\.csv \(reader night\): column 'answer'"):
        score_reader_study(KEY, [tmp_path / "night.csv"])
    with pytest.raises(ValueError, match="no answer sheets to score"):
        score_reader_study(KEY, {})
