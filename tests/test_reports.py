"""Reports composed from finding specs: MIMIC layout, variety, determinism, and agreement with the labeller."""

import collections
import math
import re

import numpy as np
import pytest

from support.data.labeler import extract_mentions, label_report
from support.data.reports import (
    ATELECTASIS_KINDS, ATELECTASIS_ZONES, DEVICES, LESION_KINDS, LESION_ZONES, LOBES, SEVERITIES, SIDES,
    SIDES_OR_BILATERAL, SIZES, ReportStyle, compose_report, labels_from_spec, validate_spec,
)
from support.data.schema import CHEXPERT_LABELS, PHANTOM_FINDINGS
from support.data.sections import parse_sections

LEFT_LOBES = ("left upper lobe", "lingula", "left lower lobe")


def random_spec(rng: np.random.Generator) -> dict:
    """A valid finding spec with each finding drawn independently (several at once is common)."""
    def pick(options):
        return options[int(rng.integers(len(options)))]

    spec = {}
    if rng.random() < 0.2:
        spec["Cardiomegaly"] = {"ctr": round(float(rng.uniform(0.51, 0.7)), 3), "severity": pick(SEVERITIES)}
    if rng.random() < 0.2:
        spec["Pleural Effusion"] = {"side": pick(SIDES_OR_BILATERAL), "size": pick(SIZES)}
    if rng.random() < 0.15:
        spec["Pneumothorax"] = {"side": pick(SIDES), "size": pick(SIZES)}
    if rng.random() < 0.15:
        kind = pick(LESION_KINDS)
        spec["Lung Lesion"] = {"kind": kind, "side": pick(SIDES), "zone": pick(LESION_ZONES),
                               "diameter_mm": float(rng.uniform(5, 29) if kind == "nodule" else rng.uniform(31, 80))}
    for name in ("Consolidation", "Pneumonia"):
        if rng.random() < 0.15:
            lobe = pick(LOBES)
            spec[name] = {"side": "left" if lobe in LEFT_LOBES else "right", "lobe": lobe}
    if rng.random() < 0.15:
        spec["Atelectasis"] = {"side": pick(SIDES_OR_BILATERAL), "zone": pick(ATELECTASIS_ZONES),
                               "kind": pick(ATELECTASIS_KINDS)}
    if rng.random() < 0.25:
        n = int(rng.integers(1, len(DEVICES) + 1))
        spec["Support Devices"] = {"devices": [str(d) for d in rng.choice(DEVICES, n, replace=False)]}
    if all(name == "Support Devices" for name in spec):
        spec["No Finding"] = {}
    return spec


def random_context(rng: np.random.Generator, spec: dict) -> dict:
    portable = bool(rng.random() < 0.3)
    ctr = spec["Cardiomegaly"]["ctr"] if "Cardiomegaly" in spec else round(float(rng.uniform(0.38, 0.5)), 3)
    return {"view": "AP" if portable or rng.random() < 0.15 else "PA", "portable": portable,
            "sex": "F" if rng.random() < 0.5 else "M", "age": int(rng.integers(18, 95)), "ctr": ctr,
            "has_lateral": bool(not portable and rng.random() < 0.7), "prior": bool(rng.random() < 0.4)}


EFFUSION = {"Pleural Effusion": {"side": "left", "size": "small"}}
NORMAL_PA = {"view": "PA", "portable": False, "sex": "F", "age": 54, "ctr": 0.44, "has_lateral": True, "prior": False}


def test_labeller_recovers_spec_over_2000_reports():
    rng = np.random.default_rng(2024)
    counts = {name: collections.Counter() for name in PHANTOM_FINDINGS}
    coverage = collections.Counter()
    for _ in range(2000):
        spec = random_spec(rng)
        report = compose_report(spec, random_context(rng, spec), rng)
        labels = label_report(report["text"])
        negated = {m.label for m in extract_mentions(report["text"]) if m.value == 0.0}
        assert not negated & set(spec), (negated & set(spec), report["text"])   # present: never negated
        for name in PHANTOM_FINDINGS:
            truth, predicted = name in spec, labels[name] == 1.0
            counts[name]["tp" if truth and predicted else "fp" if predicted else "fn" if truth else "tn"] += 1
            if not truth and name != "No Finding":
                # Absent findings are negated or not mentioned, never hedged.
                assert labels[name] == 0.0 or math.isnan(labels[name]), (name, report["text"])
        for name, attrs in spec.items():
            for key, value in attrs.items():
                if isinstance(value, str):
                    coverage[(name, key, value)] += 1
    lines = [f"{'label':<18} {'n':>5} {'tp':>5} {'fp':>4} {'fn':>4} {'F1':>7}"]
    f1 = {}
    for name, c in counts.items():
        f1[name] = 2 * c["tp"] / max(1, 2 * c["tp"] + c["fp"] + c["fn"])
        lines.append(f"{name:<18} {c['tp'] + c['fn']:>5} {c['tp']:>5} {c['fp']:>4} {c['fn']:>4} {f1[name]:>7.4f}")
    table = "\n".join(lines)
    print("\nPer-label F1 of the labeller against the spec over 2,000 composed reports\n" + table)
    assert all(c["tp"] + c["fn"] >= 100 for c in counts.values()), table
    assert min(f1.values()) >= 0.98, table
    # Every attribute value of the contract was exercised.
    for lobe in LOBES:
        assert coverage[("Consolidation", "lobe", lobe)] and coverage[("Pneumonia", "lobe", lobe)]
    for kind in ATELECTASIS_KINDS:
        for zone in ATELECTASIS_ZONES:
            assert coverage[("Atelectasis", "kind", kind)] and coverage[("Atelectasis", "zone", zone)]


def test_same_seed_same_report_and_seeds_differ():
    spec = {"Cardiomegaly": {"ctr": 0.6, "severity": "moderate"}, **EFFUSION,
            "Support Devices": {"devices": ["endotracheal tube", "central line"]}}
    ctx = dict(NORMAL_PA, view="AP", portable=True, has_lateral=False, prior=True)
    a = compose_report(spec, ctx, np.random.default_rng(7))
    b = compose_report(spec, ctx, np.random.default_rng(7))
    assert a == b
    others = {compose_report(spec, ctx, np.random.default_rng(s))["text"] for s in range(20)}
    assert len(others) == 20


def _sentences(section: str) -> list[str]:
    return [s for s in re.split(r"(?<=\.)\s+", section.replace("\n", " ")) if s]


def test_variety_of_phrasing():
    spec = {"Pleural Effusion": {"side": "right", "size": "moderate"},
            "Atelectasis": {"side": "bilateral", "zone": "lower", "kind": "subsegmental"}}
    rng = np.random.default_rng(0)
    reports = [compose_report(spec, NORMAL_PA, rng) for _ in range(500)]
    sentences = [s for r in reports for s in _sentences(r["findings"])]
    effusion = {s for s in sentences if "effusion" in s.lower() and "no " not in s.lower()}
    atelectasis = {s for s in sentences if "atelectasis" in s.lower()}
    negations = {s for s in sentences if re.match(r"(no|there is no)\b", s.lower())}
    cardiac = {s for s in sentences if re.search(r"heart|cardi", s.lower())}
    assert len(effusion) >= 8, effusion
    assert len(atelectasis) >= 8, atelectasis
    assert len(negations) >= 6, negations
    assert len(cardiac) >= 6, cardiac
    assert len({r["findings"] for r in reports}) >= 400
    assert len({r["impression"] for r in reports}) >= 15
    # Order is shuffled: the effusion sentence is not always in the same place.
    positions = {next(i for i, s in enumerate(_sentences(r["findings"])) if s in effusion)
                 for r in reports if r["findings"]}
    assert len(positions) >= 3


def test_positive_findings_are_stated_and_negations_used_for_absent_ones():
    spec = {"Pneumothorax": {"side": "left", "size": "small"},
            "Lung Lesion": {"kind": "mass", "side": "right", "zone": "upper", "diameter_mm": 42.0}}
    rng = np.random.default_rng(1)
    texts = [compose_report(spec, NORMAL_PA, rng) for _ in range(100)]
    for r in texts:
        body = (r["findings"] + " " + r["impression"]).lower()
        assert "left" in body and "pneumothorax" in body and "mass" in body and "4.2 cm" in body
        assert "right upper" in body
        assert not re.search(r"\bno (?:\w+ )*pneumothorax", body)   # never negates a present finding
    assert any(re.search(r"\bno (?:evidence of )?(?:focal )?(?:\w+ )?(?:consolidation|pleural effusion|effusion)",
                         r["findings"].lower()) for r in texts)


def test_devices_are_described_in_mimic_style():
    spec = {"No Finding": {}, "Support Devices": {"devices": list(DEVICES)}}
    rng = np.random.default_rng(3)
    for _ in range(50):
        r = compose_report(spec, dict(NORMAL_PA, view="AP", portable=True, has_lateral=False), rng)
        f = r["findings"].lower() if r["findings"] else r["impression"].lower()
        assert re.search(r"(endotracheal|et) tube.*\d(\.\d)? cm (above|from) the carina", f)
        assert re.search(r"(central venous catheter|central line|ij line|picc line).*(svc|cavoatrial)", f)
        assert "pacemaker" in f and re.search(r"(ecg|ekg|monitoring) (leads|wires)|leads project", f)
        labels = label_report(r["text"])
        assert labels["Support Devices"] == 1 and labels["No Finding"] == 1


def test_hedges_occur_and_keep_labels_defined():
    spec = {"Lung Lesion": {"kind": "nodule", "side": "left", "zone": "mid", "diameter_mm": 12.0},
            "Consolidation": {"side": "right", "lobe": "right lower lobe"},
            "Pneumonia": {"side": "right", "lobe": "right lower lobe"},
            "Pleural Effusion": {"side": "bilateral", "size": "small"}}
    rng = np.random.default_rng(5)
    style = ReportStyle(hedge_rate=1.0)
    hedged = 0
    for _ in range(100):
        r = compose_report(spec, NORMAL_PA, rng, style=style)
        text = (r["findings"] + " " + r["impression"]).lower()
        hedged += bool(re.search(r"\b(may|likely|cannot be excluded|possibly)\b", text))
        labels = label_report(r["text"])
        assert all(labels[name] == 1.0 for name in spec), (labels, r["text"])
    assert hedged == 100


def test_report_layout_matches_mimic_and_section_parser():
    spec = {"Atelectasis": {"side": "left", "zone": "mid", "kind": "lobar"}}
    r = compose_report(spec, dict(NORMAL_PA, prior=True), np.random.default_rng(11),
                       style=ReportStyle(impression_only_rate=0.0))
    text = r["text"]
    order = [text.index(h) for h in ("FINAL REPORT", "EXAMINATION:", "INDICATION:", "TECHNIQUE:",
                                     "COMPARISON:", "FINDINGS:", "IMPRESSION:")]
    assert order == sorted(order)
    assert "CHEST (PA AND LAT)" in text
    assert re.search(r"INDICATION:  ___(F with|-year-old woman with)", text)
    assert re.search(r"COMPARISON:  (___|Chest radiograph from ___)", text)
    assert all(len(line) <= 79 for line in text.splitlines())
    sections = parse_sections(text)
    assert sections["findings"] == " ".join(r["findings"].split())
    assert sections["impression"] == " ".join(r["impression"].split())
    assert "lingula" in r["findings"].lower() or "lingular" in r["findings"].lower()


def test_context_changes_exam_comparison_and_indication():
    rng = np.random.default_rng(4)
    portable = compose_report(EFFUSION, dict(NORMAL_PA, view="AP", portable=True, has_lateral=False, sex="M"), rng)
    assert "CHEST (PORTABLE AP)" in portable["text"] and "COMPARISON:  None." in portable["text"]
    assert re.search(r"___(M with|-year-old man with)", portable["text"])
    prior_words = collections.Counter()
    for _ in range(200):
        r = compose_report(EFFUSION, dict(NORMAL_PA, prior=True), rng)
        assert "COMPARISON:  None." not in r["text"]
        prior_words.update(w for w in ("unchanged", "new", "persistent", "prior", "previous")
                           if re.search(rf"\b{w}\b", (r["findings"] + r["impression"]).lower()))
    assert sum(prior_words.values()) >= 40 and len(prior_words) >= 3, prior_words
    no_prior = [compose_report(EFFUSION, NORMAL_PA, rng) for _ in range(100)]
    assert not any(re.search(r"\b(unchanged|persistent|prior|previous|interval)\b", r["findings"] + r["impression"],
                             re.I) for r in no_prior)


def test_normal_study_impression_and_indication_is_ignored_by_labeller():
    rng = np.random.default_rng(8)
    impressions, asked = collections.Counter(), 0
    for _ in range(200):
        r = compose_report({"No Finding": {}}, NORMAL_PA, rng)
        impressions[r["impression"].split("\n")[-1]] += 1
        indication = re.search(r"INDICATION:(.*?)\n \n", r["text"], re.S).group(1).lower()
        asked += bool(re.search(r"pneumonia|pneumothorax|effusion|cardiomegaly|edema|infiltrate", indication))
        labels = label_report(r["text"])
        assert labels["No Finding"] == 1
        assert not any(labels[n] in (1.0, -1.0) for n in CHEXPERT_LABELS if n != "No Finding")
    assert asked >= 40          # indications do name findings the study does not have
    assert any("No acute cardiopulmonary process" in k for k in impressions)
    assert len(impressions) >= 4


def test_impression_only_reports():
    r = compose_report(EFFUSION, NORMAL_PA, np.random.default_rng(0), style=ReportStyle(impression_only_rate=1.0))
    assert r["findings"] == "" and "FINDINGS:" not in r["text"]
    assert "effusion" in r["impression"].lower()
    assert label_report(r["text"])["Pleural Effusion"] == 1


def test_labels_from_spec():
    labels = labels_from_spec({"Support Devices": {"devices": ["pacemaker"]}, "No Finding": {}})
    assert set(labels) == set(CHEXPERT_LABELS)
    assert labels["Support Devices"] == 1 and labels["No Finding"] == 1 and math.isnan(labels["Cardiomegaly"])


@pytest.mark.parametrize("spec,match", [
    ({"Edema": {}}, r"unknown finding\(s\) \['Edema'\]"),
    ({"Pleural Effusion": {"side": "up", "size": "small"}}, r"'Pleural Effusion'.side: expected one of"),
    ({"Pneumothorax": {"side": "bilateral", "size": "small"}}, r"'Pneumothorax'.side"),
    ({"Pneumothorax": {"side": "left"}}, r"'Pneumothorax' lacks field\(s\) \['size'\]"),
    ({"Consolidation": {"side": "left", "lobe": "right lower lobe"}}, r"not in the left lung"),
    ({"Cardiomegaly": {"ctr": 0.42, "severity": "mild"}}, r"'Cardiomegaly'.ctr: expected a number"),
    ({"Lung Lesion": {"kind": "nodule", "side": "left", "zone": "upper", "diameter_mm": "big"}}, r"diameter_mm"),
    ({"Support Devices": {"devices": []}, "No Finding": {}}, r"devices expected a non-empty list"),
    ({"Support Devices": {"devices": ["chest tube"]}, "No Finding": {}}, r"devices\[0\]: expected one of"),
    ({"Support Devices": {"devices": ["pacemaker"]}}, r"'No Finding' must be present"),
    ({"No Finding": {}, **EFFUSION}, r"'No Finding' must be present"),
    ({}, r"'No Finding' must be present"),
])
def test_bad_spec_is_a_clear_error(spec, match):
    with pytest.raises(ValueError, match=match):
        validate_spec(spec)
    with pytest.raises(ValueError, match=match):
        compose_report(spec, NORMAL_PA, np.random.default_rng(0))


@pytest.mark.parametrize("change,match", [
    ({"view": "LL"}, r"view: expected one of"),
    ({"sex": "X"}, r"sex: expected one of"),
    ({"prior": "yes"}, r"prior: expected true/false"),
    ({"age": -3}, r"age: expected a number"),
])
def test_bad_context_is_a_clear_error(change, match):
    with pytest.raises(ValueError, match=match):
        compose_report({"No Finding": {}}, dict(NORMAL_PA, **change), np.random.default_rng(0))


def test_missing_context_field_and_bad_rng():
    ctx = dict(NORMAL_PA)
    del ctx["has_lateral"]
    with pytest.raises(ValueError, match=r"missing field\(s\) \['has_lateral'\]"):
        compose_report({"No Finding": {}}, ctx, np.random.default_rng(0))
    with pytest.raises(TypeError, match="numpy.random.Generator"):
        compose_report({"No Finding": {}}, NORMAL_PA, 42)
