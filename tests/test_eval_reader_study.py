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
