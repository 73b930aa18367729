"""Radiology reports in the style of MIMIC-CXR, written from a study's known findings.

A report is composed from the *finding spec* of a study (which findings are present, with side,
size, location, devices) and its *context* (view, portable, sex, prior study). Every positive
finding is stated positively at least once, without hedging; absent findings are negated or not
mentioned, so a report labeller run on the text should recover the spec. Variety comes from
several phrasings per finding, shuffled sentence order, optional technique / comparison lines,
numbered or plain impressions, and occasional hedges that leave the labels defined (a hedged
remark about a finding already stated, or a hedge that names no finding).

The report text follows MIMIC-CXR's file layout: ``FINAL REPORT``, ``EXAMINATION:``,
``INDICATION:`` (age and names de-identified as ``___``), ``TECHNIQUE:``, ``COMPARISON:``,
``FINDINGS:``, ``IMPRESSION:`` and, for urgent findings, sometimes ``NOTIFICATION:``.
"""

from __future__ import annotations

import math
import textwrap
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from support.data.schema import CHEXPERT_LABELS, PHANTOM_FINDINGS, POSITIVE

# Allowed attribute values of each finding (the shared finding-spec contract).
SIDES = ("left", "right")
SIDES_OR_BILATERAL = ("left", "right", "bilateral")
SIZES = ("small", "moderate", "large")
SEVERITIES = ("mild", "moderate", "severe")
LOBES = ("right upper lobe", "right middle lobe", "right lower lobe",
         "left upper lobe", "lingula", "left lower lobe")
LESION_KINDS = ("nodule", "mass")
LESION_ZONES = ("upper", "mid", "lower")
ATELECTASIS_ZONES = ("lower", "mid")
ATELECTASIS_KINDS = ("plate-like", "subsegmental", "lobar")
DEVICES = ("endotracheal tube", "central line", "ECG leads", "pacemaker")
VIEWS = ("PA", "AP")

# Findings other than these two make a study abnormal (CheXpert's "No Finding" rule).
_NOT_PATHOLOGY = ("No Finding", "Support Devices")
_LUNG_FINDINGS = ("Consolidation", "Pneumonia", "Atelectasis", "Lung Lesion",
                  "Pleural Effusion", "Pneumothorax")


@dataclass(frozen=True)
class ReportStyle:
    """How often the optional parts of a report appear (probabilities per report or finding)."""

    hedge_rate: float = 0.15          # per positive finding: add a label-neutral hedge
    prior_phrase_rate: float = 0.35   # per positive finding of a study with a prior: "unchanged", "new"
    technique_line_rate: float = 0.4  # "PA and lateral views of the chest provided."
    numbered_impression_rate: float = 0.35
    impression_only_rate: float = 0.05  # no FINDINGS section, as in part of MIMIC-CXR
    notification_rate: float = 0.5    # urgent findings (pneumothorax): NOTIFICATION section
    wrap_width: int = 78

    def __post_init__(self) -> None:
        for name in ("hedge_rate", "prior_phrase_rate", "technique_line_rate",
                     "numbered_impression_rate", "impression_only_rate", "notification_rate"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"ReportStyle.{name}: expected a probability in [0, 1], got {value!r}")
        if self.wrap_width < 20:
            raise ValueError(f"ReportStyle.wrap_width: expected >= 20, got {self.wrap_width!r}")


# --------------------------------------------------------------------------- validation

def _expect(where: str, value: Any, allowed: Sequence[Any]) -> None:
    if value not in allowed:
        raise ValueError(f"{where}: expected one of {list(allowed)}, got {value!r}")


def _expect_number(where: str, value: Any, low: float, high: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) \
            or not math.isfinite(float(value)) or not low <= float(value) <= high:
        raise ValueError(f"{where}: expected a number in [{low}, {high}], got {value!r}")


_SPEC_FIELDS: dict[str, dict[str, Sequence[Any] | None]] = {
    "Cardiomegaly": {"ctr": None, "severity": SEVERITIES},
    "Pleural Effusion": {"side": SIDES_OR_BILATERAL, "size": SIZES},
    "Pneumothorax": {"side": SIDES, "size": SIZES},
    "Lung Lesion": {"kind": LESION_KINDS, "side": SIDES, "zone": LESION_ZONES, "diameter_mm": None},
    "Consolidation": {"side": SIDES, "lobe": LOBES},
    "Pneumonia": {"side": SIDES, "lobe": LOBES},
    "Atelectasis": {"side": SIDES_OR_BILATERAL, "zone": ATELECTASIS_ZONES, "kind": ATELECTASIS_KINDS},
    "Support Devices": {"devices": None},
    "No Finding": {},
}


def validate_spec(spec: Mapping[str, Any]) -> None:
    """Raise ``ValueError`` naming the finding and field when ``spec`` breaks the finding contract."""
    if not isinstance(spec, Mapping):
        raise TypeError(f"finding spec: expected a mapping, got {type(spec).__name__}")
    unknown = sorted(set(spec) - set(PHANTOM_FINDINGS))
    if unknown:
        raise ValueError(f"finding spec: unknown finding(s) {unknown}; expected names from {list(PHANTOM_FINDINGS)}")
    for name, attrs in spec.items():
        if not isinstance(attrs, Mapping):
            raise ValueError(f"finding spec: {name!r} expected a mapping of attributes, got {attrs!r}")
        fields = _SPEC_FIELDS[name]
        missing = sorted(set(fields) - set(attrs))
        if missing:
            raise ValueError(f"finding spec: {name!r} lacks field(s) {missing}")
        for key, allowed in fields.items():
            if allowed is not None:
                _expect(f"finding spec: {name!r}.{key}", attrs[key], allowed)
    if "Cardiomegaly" in spec:
        _expect_number("finding spec: 'Cardiomegaly'.ctr", spec["Cardiomegaly"]["ctr"], 0.5, 1.0)
    if "Lung Lesion" in spec:
        _expect_number("finding spec: 'Lung Lesion'.diameter_mm", spec["Lung Lesion"]["diameter_mm"], 1.0, 200.0)
    for name in ("Consolidation", "Pneumonia"):
        if name in spec:
            side, lobe = spec[name]["side"], spec[name]["lobe"]
            if _lobe_side(lobe) != side:
                raise ValueError(f"finding spec: {name!r}.lobe {lobe!r} is not in the {side} lung")
    if "Support Devices" in spec:
        devices = spec["Support Devices"]["devices"]
        if isinstance(devices, str) or not isinstance(devices, Sequence) or not devices:
            raise ValueError(f"finding spec: 'Support Devices'.devices expected a non-empty list, got {devices!r}")
        for i, device in enumerate(devices):
            _expect(f"finding spec: 'Support Devices'.devices[{i}]", device, DEVICES)
        if len(set(devices)) != len(devices):
            raise ValueError(f"finding spec: 'Support Devices'.devices has duplicates: {list(devices)}")
    abnormal = any(name not in _NOT_PATHOLOGY for name in spec)
    if abnormal == ("No Finding" in spec):
        raise ValueError("finding spec: 'No Finding' must be present exactly when no finding other than "
                         f"'Support Devices' is present; got {sorted(spec)}")


def validate_context(context: Mapping[str, Any]) -> None:
    """Raise ``ValueError`` naming the field when ``context`` breaks the study-context contract."""
    if not isinstance(context, Mapping):
        raise TypeError(f"report context: expected a mapping, got {type(context).__name__}")
    missing = sorted({"view", "portable", "sex", "age", "ctr", "has_lateral", "prior"} - set(context))
    if missing:
        raise ValueError(f"report context: missing field(s) {missing}")
    _expect("report context: view", context["view"], VIEWS)
    _expect("report context: sex", context["sex"], ("F", "M"))
    for key in ("portable", "has_lateral", "prior"):
        if not isinstance(context[key], (bool, np.bool_)):
            raise ValueError(f"report context: {key}: expected true/false, got {context[key]!r}")
    _expect_number("report context: age", context["age"], 0, 130)
    _expect_number("report context: ctr", context["ctr"], 0.0, 1.0)


def labels_from_spec(spec: Mapping[str, Any]) -> dict[str, float]:
    """The CheXpert label row a spec stands for: 1 for each present finding, NaN for the rest."""
    validate_spec(spec)
    return {name: (POSITIVE if name in spec else math.nan) for name in CHEXPERT_LABELS}


# --------------------------------------------------------------------------- phrasing helpers

def _pick(rng: np.random.Generator, options: Sequence[Any]) -> Any:
    return options[int(rng.integers(len(options)))]


def _chance(rng: np.random.Generator, p: float) -> bool:
    return p > 0 and float(rng.random()) < p


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


def _sentence(text: str) -> str:
    text = _cap(text.strip())
    return text if text.endswith((".", "?")) else text + "."


def _join_list(items: Sequence[str], rng: np.random.Generator) -> str:
    """'a', 'a or b', 'a, b, or c' / 'a, b or c' (both commas occur in MIMIC)."""
    items = list(items)
    if len(items) == 1:
        return items[0]
    if len(items) == 2:
        return f"{items[0]} or {items[1]}"
    comma = "," if _chance(rng, 0.5) else ""
    return ", ".join(items[:-1]) + f"{comma} or {items[-1]}"


def _lobe_side(lobe: str) -> str:
    return "left" if lobe in ("left upper lobe", "lingula", "left lower lobe") else "right"


def _lobe_adj(lobe: str) -> str:
    return "lingular" if lobe == "lingula" else lobe


def _lobe_loc(lobe: str) -> str:
    return f"in the {lobe}"


# --------------------------------------------------------------------------- positive findings

@dataclass
class _Statement:
    """A positive finding as report text: FINDINGS sentences, an IMPRESSION line, an optional hedge."""

    sentences: list[str]
    impression: str
    rank: int                                  # impression order: urgent first
    hedges: list[str] = field(default_factory=list)


_SEVERITY_ADJ = {"mild": ("mild",), "moderate": ("moderate",), "severe": ("severe", "marked")}
_SEVERITY_ADV = {"mild": ("mildly",), "moderate": ("moderately",), "severe": ("severely", "markedly")}


def _cardiomegaly(a: Mapping[str, Any], ctx: Mapping[str, Any], rng, prior: bool) -> _Statement:
    adj = _pick(rng, _SEVERITY_ADJ[a["severity"]])
    adv = _pick(rng, _SEVERITY_ADV[a["severity"]])
    options = [
        f"{adj} cardiomegaly.",
        f"The heart is {adv} enlarged.",
        f"Heart size is {adv} enlarged.",
        f"There is {adj} enlargement of the cardiac silhouette.",
        f"The cardiac silhouette is {adv} enlarged.",
        f"{adj} cardiomegaly is present.",
        f"The heart is {adv} enlarged, with a cardiothoracic ratio of approximately {a['ctr']:.2f}.",
    ]
    if prior:
        options_prior = [f"{adj} cardiomegaly is unchanged.", f"Stable {adj} cardiomegaly.",
                         f"The heart remains {adv} enlarged."]
        if _chance(rng, 0.5):
            options = options_prior
    hedges = []
    if ctx["view"] == "AP":
        # A hedge about technique, not about the finding: the label stays positive.
        hedges.append(f"Heart size may be exaggerated by the AP technique, but there is at least "
                      f"{adj} cardiomegaly.")
    return _Statement([_sentence(_pick(rng, options))],
                      _sentence(_pick(rng, [f"{adj} cardiomegaly", f"{adj} enlargement of the cardiac silhouette",
                                            "cardiomegaly"])), rank=5, hedges=hedges)


_EFFUSION_SIZE = {"small": ("small",), "moderate": ("moderate", "moderate-sized"), "large": ("large",)}


def _pleural_effusion(a, ctx, rng, prior: bool) -> _Statement:
    size = _pick(rng, _EFFUSION_SIZE[a["size"]])
    side = a["side"]
    if side == "bilateral":
        options = [
            f"{size} bilateral pleural effusions.",
            f"There are {size} bilateral pleural effusions.",
            f"{size} pleural effusions are present bilaterally.",
            f"Bilateral {size} pleural effusions are seen.",
            f"There are {size} right and left pleural effusions.",
            f"{size} effusions are noted at both lung bases.",
        ]
        if prior and _chance(rng, 0.4):
            options = [f"{size} bilateral pleural effusions are unchanged.",
                       f"Persistent {size} bilateral pleural effusions."]
        impression = _pick(rng, [f"{size} bilateral pleural effusions", f"bilateral {size} pleural effusions"])
    else:
        options = [
            f"{size} {side} pleural effusion.",
            f"There is a {size} {side} pleural effusion.",
            f"A {size} {side}-sided pleural effusion is present.",
            f"{size} {side} effusion.",
            f"There is a {size} pleural effusion on the {side}.",
            f"A {size} {side} pleural effusion is seen.",
        ]
        if a["size"] == "small":
            options.append(f"Blunting of the {side} costophrenic angle is consistent with a small pleural effusion.")
        if prior and _chance(rng, 0.4):
            options = [f"New {size} {side} pleural effusion.",
                       f"{size} {side} pleural effusion is unchanged.",
                       f"There is a persistent {size} {side} pleural effusion."]
        impression = _pick(rng, [f"{size} {side} pleural effusion", f"{side} pleural effusion, {size}"])
    noun = "effusions" if side == "bilateral" else "effusion"
    hedges = [f"Part of the {noun} may be loculated.", f"The {noun} may be partly subpulmonic."]
    return _Statement([_sentence(_pick(rng, options))], _sentence(impression), rank=3, hedges=hedges)


def _pneumothorax(a, ctx, rng, prior: bool) -> _Statement:
    size = _pick(rng, _EFFUSION_SIZE[a["size"]])
    side = a["side"]
    options = [
        f"There is a {size} {side} pneumothorax.",
        f"{size} {side} pneumothorax.",
        f"A {size} {side}-sided pneumothorax is present.",
        f"A {side} pneumothorax is present, {size} in size.",
        f"A {size} pneumothorax is noted on the {side}.",
        f"{size} {side} pneumothorax is seen.",
    ]
    if a["size"] == "small":
        options += [f"Small {side} apical pneumothorax.", f"There is a small {side} apical pneumothorax."]
    if prior and _chance(rng, 0.4):
        options = [f"Interval development of a {size} {side} pneumothorax.",
                   f"{size} {side} pneumothorax is unchanged.", f"New {size} {side} pneumothorax."]
    impression = _pick(rng, [f"{size} {side} pneumothorax", f"{side} pneumothorax, {size}",
                             f"{size} {side}-sided pneumothorax"])
    hedges = ["A small basilar component of the pneumothorax may also be present."]
    return _Statement([_sentence(_pick(rng, options))], _sentence(impression), rank=0, hedges=hedges)


_LESION_LOC = {
    "upper": ("{side} upper lung", "{side} upper lung zone", "{side} upper zone"),
    "mid": ("{side} mid lung", "{side} mid lung zone", "{side} midlung"),
    "lower": ("{side} lower lung", "{side} lower lung zone", "{side} lung base"),
}


def _lung_lesion(a, ctx, rng, prior: bool) -> _Statement:
    kind, d = a["kind"], float(a["diameter_mm"])
    if kind == "nodule" and d < 30 and _chance(rng, 0.7):
        size = f"{d:.0f} mm"
    else:
        size = f"{d / 10:.1f} cm"
    loc = _pick(rng, _LESION_LOC[a["zone"]]).format(side=a["side"])
    options = [
        f"There is a {size} {kind} in the {loc}.",
        f"A {size} {kind} projects over the {loc}.",
        f"{loc} {kind} measuring {size}.",
        f"A {size} {loc} {kind} is identified.",
        f"There is a well-circumscribed {size} {kind} in the {loc}.",
        f"A rounded {size} {kind} is seen in the {loc}.",
    ]
    if kind == "nodule":
        options.append(f"A {size} nodular opacity is seen in the {loc}.")
    if prior and _chance(rng, 0.4):
        options = [f"The {size} {loc} {kind} is unchanged.", f"Stable {size} {kind} in the {loc}."]
    hedges = [
        f"Further evaluation with chest CT is recommended, as the {kind} may represent a neoplasm.",
        "Malignancy cannot be excluded.",
        "Recommend chest CT for further characterization.",
    ]
    impression = _pick(rng, [f"{size} {loc} {kind}", f"{loc} {kind}, {size}",
                             f"{size} {kind} in the {loc}"])
    return _Statement([_sentence(_pick(rng, options))], _sentence(impression), rank=2, hedges=hedges)


def _consolidation(a, ctx, rng, prior: bool) -> _Statement:
    adj, loc = _lobe_adj(a["lobe"]), _lobe_loc(a["lobe"])
    options = [
        f"{adj} consolidation.",
        f"There is consolidation {loc}.",
        f"Focal consolidation is present {loc}.",
        f"There is airspace consolidation {loc}.",
        f"Dense consolidation is seen {loc}.",
        f"Patchy consolidation {loc}.",
    ]
    if prior and _chance(rng, 0.4):
        options = [f"New {adj} consolidation.", f"Persistent consolidation {loc}."]
    return _Statement([_sentence(_pick(rng, options))], _sentence(f"{adj} consolidation"), rank=1)


def _pneumonia(a, ctx, rng, prior: bool) -> _Statement:
    adj, loc = _lobe_adj(a["lobe"]), _lobe_loc(a["lobe"])
    options = [
        f"{adj} pneumonia.",
        f"Airspace opacity {loc} is consistent with pneumonia.",
        f"There is a focal opacity {loc}, consistent with pneumonia.",
        f"Patchy opacity {loc} compatible with pneumonia.",
        f"{adj} opacity consistent with pneumonia.",
        f"Findings {loc} are consistent with pneumonia.",
    ]
    if prior and _chance(rng, 0.4):
        options = [f"New {adj} opacity consistent with pneumonia.", f"Persistent {adj} pneumonia."]
    impression = _pick(rng, [f"{adj} pneumonia", f"findings consistent with {adj} pneumonia"])
    hedges = ["Follow-up radiographs after treatment are recommended to document resolution."]
    return _Statement([_sentence(_pick(rng, options))], _sentence(impression), rank=1, hedges=hedges)


def _consolidation_with_pneumonia(a, ctx, rng, prior: bool) -> _Statement:
    adj, loc = _lobe_adj(a["lobe"]), _lobe_loc(a["lobe"])
    options = [
        [f"{adj} consolidation consistent with pneumonia."],
        [f"There is consolidation {loc}, consistent with pneumonia."],
        [f"Focal consolidation {loc} is compatible with pneumonia."],
        [f"Dense {adj} consolidation, in keeping with pneumonia."],
        [f"There is {adj} consolidation.", "Findings are consistent with pneumonia."],
        [f"Airspace consolidation {loc} consistent with pneumonia."],
    ]
    impression = _pick(rng, [f"{adj} pneumonia", f"{adj} consolidation consistent with pneumonia"])
    # Pneumonia is stated positively above; hedging it again leaves its label positive.
    hedges = [f"{adj} consolidation, likely pneumonia.",
              "Follow-up radiographs after treatment are recommended to document resolution."]
    return _Statement([_sentence(s) for s in _pick(rng, options)], _sentence(impression), rank=1, hedges=hedges)


_ATEL_REGION = {   # (locative phrases, adjectives)
    ("lower", "left"): (("at the left lung base", "at the left base", "in the left lower lung"),
                        ("left basilar", "left base")),
    ("lower", "right"): (("at the right lung base", "at the right base", "in the right lower lung"),
                         ("right basilar", "right base")),
    ("lower", "bilateral"): (("at both lung bases", "at the lung bases", "in both lower lungs"),
                             ("bibasilar", "bilateral basilar")),
    ("mid", "left"): (("in the left mid lung", "in the left mid lung zone"), ("left mid lung",)),
    ("mid", "right"): (("in the right mid lung", "in the right mid lung zone"), ("right mid lung",)),
    ("mid", "bilateral"): (("in both mid lung zones", "in the mid lungs bilaterally"), ("bilateral mid lung",)),
}
_ATEL_LOBE = {   # (lobe phrase after "of the", adjective)
    ("lower", "left"): ("left lower lobe", "left lower lobe"),
    ("lower", "right"): ("right lower lobe", "right lower lobe"),
    ("lower", "bilateral"): ("both lower lobes", "bilateral lower lobe"),
    ("mid", "left"): ("lingula", "lingular"),
    ("mid", "right"): ("right middle lobe", "right middle lobe"),
    ("mid", "bilateral"): ("right middle lobe and lingula", "right middle lobe and lingular"),
}


def _atelectasis(a, ctx, rng, prior: bool) -> _Statement:
    key = (a["zone"], a["side"])
    if a["kind"] == "lobar":
        lobe, adj = _ATEL_LOBE[key]
        the = "" if lobe.startswith("both") else "the "
        options = [
            f"{adj} collapse.",
            f"{adj} atelectasis.",
            f"There is atelectasis of {the}{lobe}.",
            f"Complete collapse of {the}{lobe}.",
            f"Volume loss in {the}{lobe} consistent with atelectasis.",
            f"{adj} atelectasis is present.",
        ]
        impression = _pick(rng, [f"{adj} atelectasis", f"{adj} collapse"])
    else:
        locs, adjs = _ATEL_REGION[key]
        loc, adj = _pick(rng, locs), _pick(rng, adjs)
        if a["kind"] == "plate-like":
            options = [
                f"Plate-like atelectasis {loc}.",
                f"{adj} plate-like atelectasis.",
                f"There is linear atelectasis {loc}.",
                f"Plate-like atelectasis is noted {loc}.",
                f"Mild plate-like atelectasis {loc}.",
            ]
            impression = _pick(rng, [f"{adj} atelectasis", f"plate-like atelectasis {loc}"])
        else:
            options = [
                f"Subsegmental atelectasis {loc}.",
                f"Mild {adj} subsegmental atelectasis.",
                f"Minor subsegmental atelectasis is seen {loc}.",
                f"Streaky {adj} opacity consistent with subsegmental atelectasis.",
                f"There is subsegmental atelectasis {loc}.",
            ]
            impression = _pick(rng, [f"{adj} atelectasis", f"subsegmental atelectasis {loc}"])
    hedges = ["The atelectasis may be accentuated by low lung volumes."]
    return _Statement([_sentence(_pick(rng, options))], _sentence(impression), rank=4, hedges=hedges)


def _device_sentence(device: str, rng, prior: bool) -> tuple[str, str | None]:
    """(FINDINGS sentence, IMPRESSION phrase or None) for one support device."""
    if device == "endotracheal tube":
        d = float(rng.uniform(3.0, 6.0))
        dist = f"{d:.0f}" if _chance(rng, 0.5) else f"{d:.1f}"
        text = _pick(rng, [
            f"Endotracheal tube terminates {dist} cm above the carina.",
            f"The endotracheal tube tip is {dist} cm above the carina.",
            f"ET tube is in standard position, {dist} cm above the carina.",
            f"An endotracheal tube is in place with its tip {dist} cm from the carina.",
        ])
        return text, _pick(rng, ["Endotracheal tube in standard position.",
                                 "ET tube in appropriate position."])
    if device == "central line":
        text = _pick(rng, [
            "Right internal jugular central venous catheter tip in the mid SVC.",
            "A left subclavian central line terminates in the distal SVC.",
            "Right IJ line ends at the cavoatrial junction.",
            "Right PICC line tip projects over the lower SVC.",
            "A right internal jugular central line is in place with the tip in the low SVC.",
        ])
        return text, _pick(rng, ["Central venous catheter in appropriate position.",
                                 "Central line tip in the SVC."])
    if device == "ECG leads":
        text = _pick(rng, ["ECG leads overlie the chest.", "Monitoring leads project over the chest.",
                           "External cardiac monitoring wires are noted.", "EKG leads are present."])
        return text, None
    text = _pick(rng, [
        "Left-sided pacemaker with leads terminating in the right atrium and right ventricle.",
        "A right chest wall pacemaker device is present with a single lead in the right ventricle.",
        "Dual-chamber pacemaker leads are in expected position.",
        "Left chest wall pacemaker generator with leads in standard position.",
    ] + (["Transvenous pacemaker is unchanged in position."] if prior else []))
    return text, "Pacemaker leads in expected position."


def _support_devices(a, ctx, rng, prior: bool) -> _Statement:
    devices = list(a["devices"])
    rng.shuffle(devices)
    sentences, impressions = [], []
    for device in devices:
        text, impression = _device_sentence(device, rng, prior)
        sentences.append(text)
        if impression:
            impressions.append(impression)
    if len(devices) > 1 and _chance(rng, 0.4):
        impression = _pick(rng, ["Support devices in appropriate position.",
                                 "Lines and tubes in standard position."
                                 if {"endotracheal tube", "central line"} <= set(devices)
                                 else "Support devices as described."])
    elif impressions:
        impression = " ".join(impressions)
    else:
        impression = "Monitoring leads in place."
    return _Statement(sentences, impression, rank=6)


_WRITERS: dict[str, Callable[..., _Statement]] = {
    "Cardiomegaly": _cardiomegaly, "Pleural Effusion": _pleural_effusion,
    "Pneumothorax": _pneumothorax, "Lung Lesion": _lung_lesion, "Consolidation": _consolidation,
    "Pneumonia": _pneumonia, "Atelectasis": _atelectasis, "Support Devices": _support_devices,
}


def _positive_statements(spec, ctx, rng) -> list[_Statement]:
    out = []
    cons, pna = spec.get("Consolidation"), spec.get("Pneumonia")
    merged = cons is not None and pna is not None and cons["lobe"] == pna["lobe"]
    for name in PHANTOM_FINDINGS:      # fixed order: the same rng draws for the same spec
        if name not in spec or name == "No Finding":
            continue
        if merged and name == "Pneumonia":
            continue
        if merged and name == "Consolidation":
            out.append(_consolidation_with_pneumonia(cons, ctx, rng, ctx["prior"]))
            continue
        prior = bool(ctx["prior"])
        out.append(_WRITERS[name](spec[name], ctx, rng, prior))
    return out


# --------------------------------------------------------------------------- normal statements

def _normal_statements(spec, ctx, rng) -> list[list[str]]:
    """Blocks of sentences about what is normal; never contradicts a present finding."""
    blocks: list[list[str]] = []
    has = set(spec)
    lungs_clear = not (has & set(_LUNG_FINDINGS))
    no_consolidation = not ({"Consolidation", "Pneumonia"} & has)

    negatable = []
    if "Pleural Effusion" not in has:
        negatable.append(_pick(rng, ["pleural effusion", "pleural effusion", "effusion"]))
    if "Pneumothorax" not in has:
        negatable.append("pneumothorax")
    # Consolidation is negated in the list or, now and then, in a sentence of its own.
    consolidation_alone = no_consolidation and _chance(rng, 0.15)
    if no_consolidation and not consolidation_alone:
        negatable.append(_pick(rng, ["focal consolidation", "focal consolidation", "consolidation",
                                     "focal airspace consolidation"]))
    if negatable:
        order = list(rng.permutation(len(negatable)))
        items = [negatable[i] for i in order]
        listed = _join_list(items, rng)
        forms = [f"No {listed}.", f"There is no {listed}.", f"No evidence of {listed}.",
                 f"No {listed} is seen."]
        if lungs_clear:
            forms += [f"The lungs are clear without {listed}.", f"Lungs are clear, without {listed}."]
        if len(items) > 1 and _chance(rng, 0.25):
            # One negation per sentence, as many reports do.
            blocks.append([_sentence(f"no {item}") for item in items])
        else:
            blocks.append([_pick(rng, forms)])
    if lungs_clear and not any("lungs are clear" in s.lower() for b in blocks for s in b):
        blocks.append([_pick(rng, ["The lungs are clear.", "Lungs are well expanded and clear.",
                                   "The lungs are well aerated and clear.", "The lungs are clear bilaterally."])])
    if consolidation_alone:
        blocks.append([_pick(rng, ["There is no focal airspace consolidation to suggest pneumonia.",
                                   "No focal consolidation is seen."])])
    if "Lung Lesion" not in has and _chance(rng, 0.15):
        blocks.append([_pick(rng, ["No suspicious pulmonary nodules.",
                                   "No pulmonary nodules or masses are identified."])])
    if _chance(rng, 0.25):
        blocks.append([_pick(rng, ["There is no pulmonary edema.", "No pulmonary vascular congestion.",
                                   "No pulmonary edema."])])
    if "Cardiomegaly" not in has:
        blocks.append([_pick(rng, [
            "Heart size is normal.", "The heart is normal in size.", "Normal heart size.",
            "The cardiac silhouette is within normal limits.", "The cardiomediastinal silhouette is normal.",
            "Normal cardiomediastinal silhouette.", "Heart size and mediastinal contours are normal.",
            "The cardiomediastinal and hilar contours are within normal limits.",
            "The heart is not enlarged."])])
    elif _chance(rng, 0.6):
        blocks.append([_pick(rng, ["The mediastinal and hilar contours are unremarkable.",
                                   "Mediastinal contours are normal.",
                                   "The hilar and mediastinal contours are within normal limits."])])
    if _chance(rng, 0.6):
        blocks.append([_pick(rng, ["No acute osseous abnormalities.", "The osseous structures are unremarkable.",
                                   "No displaced rib fractures are identified.", "Bony structures are intact.",
                                   "The visualized osseous structures are within normal limits."])])
    return blocks


# --------------------------------------------------------------------------- header sections

_REASONS = ("cough", "shortness of breath", "fever", "chest pain", "dyspnea", "hypoxia",
            "fever and cough", "pleuritic chest pain", "weakness", "tachypnea", "sepsis",
            "altered mental status", "hemoptysis", "fall", "preoperative evaluation")
# Questions name findings on purpose: a labeller must ignore the indication.
_QUESTIONS = ("evaluate for pneumonia", "eval for infiltrate", "r/o pneumothorax", "assess for effusion",
              "please evaluate for acute process", "?pna", "eval for edema", "question pneumonia",
              "evaluate for cardiomegaly")
_DEVICE_QUESTIONS = {
    "endotracheal tube": "s/p intubation, assess ET tube position",
    "central line": "new right IJ line placement, evaluate position",
    "pacemaker": "s/p pacemaker placement, eval for pneumothorax",
    "ECG leads": "on telemetry, evaluate for acute process",
}


def _indication(spec, ctx, rng) -> str:
    sex = ctx["sex"]
    if _chance(rng, 0.7):
        who = f"___{sex} with"
    else:
        who = "___-year-old " + ("woman" if sex == "F" else "man") + " with"
    reason = _pick(rng, _REASONS)
    devices = spec.get("Support Devices", {}).get("devices", [])
    questions = _QUESTIONS + (("evaluate for interval change",) if ctx["prior"] else ())
    question = (_DEVICE_QUESTIONS[_pick(rng, devices)] if devices and _chance(rng, 0.5)
                else _pick(rng, questions))
    if _chance(rng, 0.5):
        return f"{who} {reason}  // {question}"
    return f"{who} {reason}. {_cap(question)}."


def _examination(ctx) -> tuple[str, list[str]]:
    """(EXAMINATION text, TECHNIQUE options) for the view."""
    if ctx["portable"]:
        return "CHEST (PORTABLE AP)", ["Portable AP chest radiograph", "Single portable AP view of the chest"]
    view = ctx["view"]
    if ctx["has_lateral"]:
        return f"CHEST ({view} AND LAT)", [f"Chest {view} and lateral", f"{view} and lateral views of the chest"]
    return "CHEST (SINGLE VIEW)", [f"Single {view} view of the chest", f"Chest {view}"]


def _technique_line(ctx, rng) -> str:
    if ctx["portable"]:
        return _pick(rng, ["Portable AP upright view of the chest provided.",
                           "Single portable AP chest radiograph was obtained.",
                           "Portable semi-upright AP radiograph of the chest."])
    view = ctx["view"]
    if ctx["has_lateral"]:
        return _pick(rng, [f"{view} and lateral views of the chest provided.",
                           f"{view} and lateral chest radiographs were obtained."])
    return _pick(rng, [f"Single {view} view of the chest provided.", f"{view} view of the chest."])


_NORMAL_IMPRESSIONS = ("No acute cardiopulmonary process.", "No acute intrathoracic process.",
                       "No acute cardiopulmonary abnormality.", "Normal chest radiograph.",
                       "No evidence of acute cardiopulmonary disease.")


def _wrap(text: str, width: int) -> str:
    return "\n".join(textwrap.wrap(text, width=width, initial_indent=" ", subsequent_indent=" ",
                                   break_on_hyphens=False))


# --------------------------------------------------------------------------- the report

def compose_report(spec: Mapping[str, Any], context: Mapping[str, Any], rng: np.random.Generator,
                   *, style: ReportStyle | None = None) -> dict[str, str]:
    """Write a MIMIC-CXR-style report for one study.

    Returns ``{"findings", "impression", "text"}``: the two section texts (sentences separated by
    single spaces; a numbered impression keeps one item per line; ``findings`` is "" when the
    report has no FINDINGS section) and the whole report file. The same ``spec``, ``context`` and
    ``rng`` state give the same report.
    """
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"compose_report: rng must be a numpy.random.Generator, got {type(rng).__name__}")
    validate_spec(spec)
    validate_context(context)
    style = style or ReportStyle()
    prior = bool(context["prior"])

    statements = _positive_statements(spec, context, rng)
    blocks: list[list[str]] = []
    impression_hedges: list[str] = []
    for st in statements:
        block = list(st.sentences)
        if st.hedges and _chance(rng, style.hedge_rate):
            hedge = _sentence(_pick(rng, st.hedges))
            if _chance(rng, 0.5):
                block.append(hedge)
            else:
                impression_hedges.append(hedge)
        blocks.append(block)
    blocks += _normal_statements(spec, context, rng)
    order = rng.permutation(len(blocks))
    sentences = [s for i in order for s in blocks[i]]
    if _chance(rng, style.technique_line_rate):
        sentences.insert(0, _technique_line(context, rng))
    if prior and _chance(rng, 0.3):
        sentences.insert(0, _pick(rng, ["Comparison is made to the prior study.",
                                        "The previous radiograph is available for comparison."]))
    findings = " ".join(sentences)

    abnormal = [st for st in statements if st.rank < 6]
    if abnormal:
        items = [st.impression for st in sorted(statements, key=lambda s: s.rank)]
        if len(items) > 2 and _chance(rng, 0.3):
            i = int(rng.integers(len(items) - 1))    # swap two neighbours: ranking varies too
            items[i], items[i + 1] = items[i + 1], items[i]
        items += impression_hedges
        if "Pneumothorax" not in spec and _chance(rng, 0.3):
            items.append("No pneumothorax.")
    else:
        items = [st.impression for st in statements if _chance(rng, 0.6)]
        items.append(_pick(rng, _NORMAL_IMPRESSIONS))
        if prior and _chance(rng, 0.3):
            items.append("No significant interval change.")
    if len(items) > 1 and _chance(rng, style.numbered_impression_rate):
        impression = "\n".join(f"{i}. {item}" for i, item in enumerate(items, 1))
    else:
        impression = " ".join(items)

    if _chance(rng, style.impression_only_rate):
        # Part of MIMIC-CXR has no FINDINGS: the impression carries the description.
        impression = findings + " " + impression.replace("\n", " ")
        findings = ""

    exam, techniques = _examination(context)
    parts = [" " * 33 + "FINAL REPORT",
             f" EXAMINATION:  {exam}", " ",
             _wrap(f"INDICATION:  {_indication(spec, context, rng)}", style.wrap_width), " ",
             f" TECHNIQUE:  {_pick(rng, techniques)}", " ",
             " COMPARISON:  " + (_pick(rng, ["___", "Chest radiograph from ___.", "___."]) if prior else "None."),
             " "]
    if findings:
        parts += [" FINDINGS: ", " ", _wrap(findings, style.wrap_width), " "]
    parts += [" IMPRESSION: ", " "]
    parts += [_wrap(line, style.wrap_width) for line in impression.split("\n")]
    if "Pneumothorax" in spec and _chance(rng, style.notification_rate):
        minutes = int(rng.integers(2, 30))
        parts += [" ", _wrap(f"NOTIFICATION:  The findings were discussed with Dr. ___ by Dr. ___ on the "
                             f"telephone on ___ at ___, {minutes} minutes after discovery of the findings.",
                             style.wrap_width)]
    return {"findings": findings, "impression": impression, "text": "\n".join(parts) + "\n"}
