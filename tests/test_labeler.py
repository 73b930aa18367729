"""The report labeller on hand-written MIMIC-like text: negation, uncertainty, lists, sections."""

import math

import pandas as pd
import pytest

from support.data.labeler import extract_mentions, label_report, label_reports, report_body
from support.data.schema import CHEXPERT_LABELS

NAN = math.nan

# (report text, expected non-NaN labels). Every other label must be NaN. Written by hand in
# phrasings the report composer does not use.
CASES = [
    # negation and lists after a negation
    ("No pleural effusion, pneumothorax, or focal consolidation.",
     {"Pleural Effusion": 0, "Pneumothorax": 0, "Consolidation": 0, "No Finding": 1}),
    ("There is no focal consolidation, pleural effusion or pneumothorax.",
     {"Pleural Effusion": 0, "Pneumothorax": 0, "Consolidation": 0, "No Finding": 1}),
    ("The lungs are clear without consolidation or effusion.",
     {"Consolidation": 0, "Pleural Effusion": 0, "No Finding": 1}),
    ("There is no evidence of pneumothorax.", {"Pneumothorax": 0, "No Finding": 1}),
    ("A pneumothorax is not seen.", {"Pneumothorax": 0, "No Finding": 1}),
    ("Pleural effusion and pneumothorax are not seen.",
     {"Pleural Effusion": 0, "Pneumothorax": 0, "No Finding": 1}),
    ("Negative for pneumothorax.", {"Pneumothorax": 0, "No Finding": 1}),
    ("Lungs are free of focal consolidation.", {"Consolidation": 0, "No Finding": 1}),
    ("No focal consolidation to suggest pneumonia.",
     {"Consolidation": 0, "Pneumonia": 0, "No Finding": 1}),
    ("The previously noted right pneumothorax has resolved.", {"Pneumothorax": 0, "No Finding": 1}),
    ("Interval resolution of the left pleural effusion.", {"Pleural Effusion": 0, "No Finding": 1}),
    ("Hyperinflated lungs without focal opacity.", {"Lung Opacity": 0, "No Finding": 1}),
    ("No pulmonary edema.", {"Edema": 0, "No Finding": 1}),
    ("No acute fracture is identified.", {"Fracture": 0, "No Finding": 1}),
    ("No suspicious pulmonary nodules or masses.", {"Lung Lesion": 0, "No Finding": 1}),
    ("No evidence of acute cardiopulmonary disease.", {"No Finding": 1}),
    # heart and mediastinum: normal statements negate, predicates inside the phrase count
    ("Heart size is normal.", {"Cardiomegaly": 0, "No Finding": 1}),
    ("The cardiomediastinal silhouette is within normal limits.",
     {"Cardiomegaly": 0, "Enlarged Cardiomediastinum": 0, "No Finding": 1}),
    ("Heart size and mediastinal contours are normal.",
     {"Cardiomegaly": 0, "Enlarged Cardiomediastinum": 0, "No Finding": 1}),
    ("The heart is not enlarged.", {"Cardiomegaly": 0, "No Finding": 1}),
    ("Heart size is mildly enlarged but the mediastinal contours are normal.",
     {"Cardiomegaly": 1, "Enlarged Cardiomediastinum": 0}),
    ("Moderate cardiomegaly is unchanged.", {"Cardiomegaly": 1}),
    ("Mild cardiomegaly is re-demonstrated.", {"Cardiomegaly": 1}),
    ("Compared to the prior study, the moderate cardiomegaly is not significantly changed.",
     {"Cardiomegaly": 1}),
    ("Heart size is borderline enlarged.", {"Cardiomegaly": -1}),
    ("Cardiac silhouette is normal; no pericardial effusion.", {"Cardiomegaly": 0, "No Finding": 1}),
    ("Widened mediastinum.", {"Enlarged Cardiomediastinum": 1}),
    ("The mediastinum is not widened.", {"Enlarged Cardiomediastinum": 0, "No Finding": 1}),
    # positives, laterality and size do not matter to the label
    ("Small right pleural effusion without pneumothorax.", {"Pleural Effusion": 1, "Pneumothorax": 0}),
    ("No pneumothorax, but there is a small left effusion.", {"Pneumothorax": 0, "Pleural Effusion": 1}),
    ("Small bilateral pleural effusions with bibasilar atelectasis.",
     {"Pleural Effusion": 1, "Atelectasis": 1}),
    ("Unchanged moderate right pleural effusion; no new consolidation.",
     {"Pleural Effusion": 1, "Consolidation": 0}),
    ("No change in the small left pleural effusion.", {"Pleural Effusion": 1}),
    ("Stable right lower lobe collapse.", {"Atelectasis": 1}),
    ("Mild bibasilar atelectasis. Otherwise, the lungs are clear.", {"Atelectasis": 1}),
    ("A 1.2 cm nodule projects over the right upper lobe.", {"Lung Lesion": 1}),
    ("A left upper lobe mass is concerning for malignancy.", {"Lung Lesion": 1}),
    ("Right apical pleural thickening.", {"Pleural Other": 1}),
    ("Old healed left rib fractures.", {"Fracture": 1}),
    ("Mild pulmonary vascular congestion without frank edema.", {"Edema": 1}),
    ("Diffuse bilateral airspace opacities compatible with pulmonary edema.",
     {"Lung Opacity": 1, "Edema": 1}),
    ("Kerley B lines are present.", {"Edema": 1}),
    ("Hydropneumothorax at the right base.", {"Pleural Effusion": 1, "Pneumothorax": 1}),
    ("A visible pleural line at the right apex indicates a small pneumothorax.", {"Pneumothorax": 1}),
    # uncertainty
    ("Possible small left pleural effusion.", {"Pleural Effusion": -1}),
    ("Pneumonia cannot be excluded.", {"Pneumonia": -1}),
    ("Right lower lobe opacity, which may reflect atelectasis or pneumonia.",
     {"Lung Opacity": 1, "Atelectasis": -1, "Pneumonia": -1}),
    ("Left basilar opacity likely atelectasis.", {"Lung Opacity": 1, "Atelectasis": -1}),
    ("Retrocardiac opacity concerning for pneumonia.", {"Lung Opacity": 1, "Pneumonia": -1}),
    ("Atelectasis versus consolidation at the right base.", {"Atelectasis": -1, "Consolidation": -1}),
    ("Findings suggestive of mild interstitial edema.", {"Edema": -1}),
    ("Patchy opacities in the left lower lobe may represent aspiration or infection.",
     {"Lung Opacity": 1, "Pneumonia": -1}),
    ("Increased opacity at the left base could reflect atelectasis, though pneumonia cannot be excluded.",
     {"Lung Opacity": 1, "Atelectasis": -1, "Pneumonia": -1}),
    ("No definite pneumothorax, although a tiny apical pneumothorax cannot be entirely excluded.",
     {"Pneumothorax": -1}),
    ("Tiny left apical pneumothorax?", {"Pneumothorax": -1}),
    # support devices: present, removed, absent; "No Finding" ignores them
    ("Endotracheal tube terminates 5 cm above the carina.", {"Support Devices": 1, "No Finding": 1}),
    ("Right IJ catheter tip projects over the cavoatrial junction.", {"Support Devices": 1, "No Finding": 1}),
    ("The nasogastric tube has been removed.", {"Support Devices": 0, "No Finding": 1}),
    ("There are no lines or tubes.", {"Support Devices": 0, "No Finding": 1}),
    ("Left chest wall pacemaker with leads in the right atrium and right ventricle.",
     {"Support Devices": 1, "No Finding": 1}),
    ("Sternotomy wires are intact.", {"Support Devices": 1, "No Finding": 1}),
    ("Lines and tubes are unchanged in position.", {"Support Devices": 1, "No Finding": 1}),
    ("The ET tube could be advanced by 2 cm.", {"Support Devices": 1, "No Finding": 1}),
    # sections: the indication and history ask questions and must be ignored
    ("INDICATION:  ___M with fever, evaluate for pneumonia.\n\nFINDINGS:  The lungs are clear.  No pleural\n"
     " effusion.\n\nIMPRESSION:  No acute cardiopulmonary process.\n",
     {"Pleural Effusion": 0, "No Finding": 1}),
    ("HISTORY:  Right pneumothorax after chest tube placement.\nFINDINGS:  Lungs are clear.\n"
     "IMPRESSION:  No pneumothorax.", {"Pneumothorax": 0, "No Finding": 1}),
    ("CLINICAL HISTORY: r/o CHF, ?effusion\n\nIMPRESSION: Mild pulmonary edema.", {"Edema": 1}),
    ("REASON FOR EXAMINATION:  Cough, fever.\nCONCLUSION:  Small right pleural effusion.",
     {"Pleural Effusion": 1}),
    ("EXAMINATION: CHEST (PA AND LAT)\nINDICATION: ___F with cardiomegaly, eval for CHF\n"
     "IMPRESSION:\n 1. Small left pneumothorax.\n 2. No pleural effusion.",
     {"Pneumothorax": 1, "Pleural Effusion": 0}),
    ("PA AND LATERAL CHEST:  Lungs are clear.  No effusion.", {"Pleural Effusion": 0, "No Finding": 1}),
    ("INDICATION:  Evaluate for pneumonia.\nCOMPARISON:  Prior pneumothorax.\n"
     "PORTABLE CHEST:  Interval placement of a right PICC.", {"Support Devices": 1, "No Finding": 1}),
    ("Lungs are clear.  There is no pneumothorax or effusion and the heart is mildly enlarged.",
     {"Pneumothorax": 0, "Pleural Effusion": 0, "Cardiomegaly": 1}),
]


def _check(text, expected):
    got = label_report(text)
    assert set(got) == set(CHEXPERT_LABELS)
    want = {name: float(expected.get(name, NAN)) for name in CHEXPERT_LABELS}
    wrong = {n: (got[n], want[n]) for n in CHEXPERT_LABELS
             if not (got[n] == want[n] or (math.isnan(got[n]) and math.isnan(want[n])))}
    assert not wrong, f"{text!r}: (got, expected) {wrong}; mentions {extract_mentions(text)}"


def test_hand_written_cases_count():
    assert len(CASES) >= 40


# ids on one line: a newline in a test id is not found again when mutmut names the test
@pytest.mark.parametrize("text,expected", CASES, ids=[" ".join(c[0][:50].split()) for c in CASES])
def test_hand_written_report_labels(text, expected):
    _check(text, expected)


def test_positive_beats_uncertain_beats_negative():
    assert label_report("Possible effusion. Small left effusion. No effusion.")["Pleural Effusion"] == 1
    assert label_report("No effusion. A small effusion cannot be excluded.")["Pleural Effusion"] == -1
    assert label_report("No pneumonia. No infection.")["Pneumonia"] == 0


def test_no_finding_follows_chexpert_rule():
    assert label_report("Possible pneumonia.")["No Finding"] != 1        # uncertain counts as abnormal
    assert label_report("Feeding tube in the stomach.")["No Finding"] == 1  # devices do not
    assert math.isnan(label_report("Small right pneumothorax.")["No Finding"])


def test_indication_alone_is_not_labelled_when_findings_exist():
    text = "INDICATION: Pneumothorax?\nFINDINGS: Normal heart size.\n"
    labels = label_report(text)
    assert math.isnan(labels["Pneumothorax"]) and labels["Cardiomegaly"] == 0
    assert "pneumothorax" not in report_body(text).lower()


@pytest.mark.parametrize("text", ["", "   \n\t ", "FINDINGS:\n\nIMPRESSION:\n"])
def test_empty_reports_are_all_nan(text):
    labels = label_report(text)
    assert all(math.isnan(v) for v in labels.values())


def test_non_ascii_and_sectionless_text():
    labels = label_report("Kleiner Erguss \u2014 small left pleural effusion\u00a0\u2713. No pneumothorax\u2026 "
                          "\u5fc3\u810f\u6b63\u5e38. Heart size is enlarged.")
    assert labels["Pleural Effusion"] == 1 and labels["Pneumothorax"] == 0 and labels["Cardiomegaly"] == 1
    # Full-width letters and typographic quotes are normalised, not dropped.
    assert label_report("\uff2e\uff4f pneumothorax \u2019s.")["Pneumothorax"] == 0


def test_non_string_report_is_an_error():
    with pytest.raises(TypeError, match="expected str"):
        label_report(None)


def test_label_reports_frame_keeps_index_and_columns():
    texts = pd.Series(["No effusion.", "Large right pneumothorax.", ""], index=["s1", "s2", "s3"])
    frame = label_reports(texts, progress=False)
    assert list(frame.columns) == list(CHEXPERT_LABELS)
    assert list(frame.index) == ["s1", "s2", "s3"]
    assert frame.loc["s1", "Pleural Effusion"] == 0 and frame.loc["s2", "Pneumothorax"] == 1
    assert frame.loc["s3"].isna().all()
    assert frame.dtypes.unique().tolist() == [float]


def test_label_reports_missing_and_bad_entries():
    frame = label_reports([None, math.nan, "Small left effusion."], progress=False)
    assert frame.iloc[:2].isna().all().all() and frame.iloc[2]["Pleural Effusion"] == 1
    with pytest.raises(TypeError, match=r"reports\['b'\]: expected str"):
        label_reports(pd.Series(["No effusion.", 3], index=["a", "b"]), progress=False)


# ------------------------------------------------------------------ scopes, word by word
# Neutral words put between a cue and a finding: no finding, cue, verb-led clause or scope stop.
FILLER = ["today", "again", "at", "the", "right", "lung", "base", "on", "this", "portable", "film", "here"]
POS, NEG, UNC = 1.0, 0.0, -1.0


def _gap(template: str, d: int) -> str:
    return " ".join(template.format(gap=" ".join(FILLER[:d])).split())


# (template with {gap} between cue and finding, label, reach in words, value in scope, value out of scope)
SCOPES = [
    # negation looking forward
    ("There is not {gap} pneumothorax.", "Pneumothorax", 3, NEG, POS),
    ("Unlikely {gap} pneumonia.", "Pneumonia", 3, NEG, POS),
    ("Normal {gap} heart size.", "Cardiomegaly", 3, NEG, NAN),          # "heart size" counts only negated
    ("Unremarkable {gap} heart size.", "Cardiomegaly", 2, NEG, NAN),
    # negation looking back
    ("Chest tube {gap} removal.", "Support Devices", 2, NEG, POS),
    ("Pneumothorax {gap} resolved.", "Pneumothorax", 6, NEG, POS),
    ("Catheter {gap} removed.", "Support Devices", 6, NEG, POS),
    ("Effusion {gap} cleared.", "Pleural Effusion", 3, NEG, POS),
    ("Pneumonia {gap} unlikely.", "Pneumonia", 3, NEG, POS),
    ("Pneumothorax {gap} excluded.", "Pneumothorax", 2, NEG, POS),
    ("Effusion {gap} absent.", "Pleural Effusion", 3, NEG, POS),
    ("Pneumothorax {gap} not seen.", "Pneumothorax", 6, NEG, POS),
    ("Heart size {gap} normal.", "Cardiomegaly", 4, NEG, NAN),
    ("Heart size {gap} unremarkable.", "Cardiomegaly", 4, NEG, NAN),
    # uncertainty written with a negation word, looking back
    ("Pneumonia {gap} cannot be excluded.", "Pneumonia", 6, UNC, POS),
    ("Pneumonia {gap} not excluded.", "Pneumonia", 6, UNC, POS),
    ("Pneumothorax {gap} difficult to exclude.", "Pneumothorax", 6, UNC, POS),
    ("Effusion {gap} not well seen.", "Pleural Effusion", 6, UNC, POS),
    # hedges after their finding
    ("Pneumonia {gap} is likely.", "Pneumonia", 3, UNC, POS),
    ("Effusion {gap} may be present.", "Pleural Effusion", 6, UNC, POS),
    ("Effusion {gap} if any.", "Pleural Effusion", 4, UNC, POS),
    ("Atelectasis {gap} versus consolidation.", "Atelectasis", 0, UNC, POS),
    ("Effusion {gap}?", "Pleural Effusion", 0, UNC, POS),
    # a hedge before a finding of its own judges that finding, not its subject
    ("The opacity is likely {gap} atelectasis.", "Lung Opacity", 3, POS, UNC),
]


def _value(text: str, label: str) -> float:
    return label_report(text)[label]


def _same_value(a: float, b: float) -> bool:
    return a == b or (math.isnan(a) and math.isnan(b))


@pytest.mark.parametrize("template,label,reach,inside,outside", SCOPES, ids=[s[0] for s in SCOPES])
def test_scope_ends_after_exactly_reach_words(template, label, reach, inside, outside):
    """The finding is in scope at every distance up to ``reach`` words and out at reach + 1."""
    for d in range(reach + 1):
        text = _gap(template, d)
        assert _same_value(_value(text, label), inside), f"{text!r}: {d} words from the cue, expected {inside}"
    text = _gap(template, reach + 1)
    assert _same_value(_value(text, label), outside), f"{text!r}: {reach + 1} words, expected {outside}"


def test_question_mark_reaches_one_word_forward():
    assert _value("?effusion.", "Pleural Effusion") == UNC
    assert _value("?left effusion.", "Pleural Effusion") == UNC
    assert _value("?left basal effusion.", "Pleural Effusion") == POS


@pytest.mark.parametrize("template,label,value", [
    ("No {gap} pneumothorax.", "Pneumothorax", NEG),
    ("Without {gap} effusion.", "Pleural Effusion", NEG),
    ("Cannot exclude {gap} pneumonia.", "Pneumonia", UNC),
    ("Possible {gap} pneumonia.", "Pneumonia", UNC),
    ("Findings may represent {gap} pneumonia.", "Pneumonia", UNC),
])
def test_clause_scopes_reach_any_distance_within_the_clause(template, label, value):
    for d in range(len(FILLER) + 1):
        assert _value(_gap(template, d), label) == value, _gap(template, d)


@pytest.mark.parametrize("text", [
    "No pneumothorax. Small effusion.",                         # sentence end
    "No pneumothorax; small effusion.",
    "No pneumothorax: small effusion.",
    "No pneumothorax - small effusion.",
    "No pneumothorax but small effusion.",
    "No pneumothorax, however small effusion.",
    "No pneumothorax, although small effusion.",
    "No pneumothorax, though small effusion.",
    "No pneumothorax whereas small effusion.",
    "No pneumothorax except a small effusion.",
    "No pneumothorax other than a small effusion.",
    "No pneumothorax, and there is a small effusion.",
    "No pneumothorax and the effusion is small.",
    "No pneumothorax, effusion has increased.",                # a comma before words with their own verb
    "No pneumothorax with effusion.",                           # scope stops at "with", "after", "following"
    "No pneumothorax after effusion.",
    "No pneumothorax following effusion.",
    "FINDINGS: No pneumothorax\nIMPRESSION: effusion",          # each section ends a sentence
])
def test_negation_stops_at_clause_and_sentence_boundaries(text):
    labels = label_report(text)
    assert labels["Pneumothorax"] == NEG and labels["Pleural Effusion"] == POS, (text, extract_mentions(text))


@pytest.mark.parametrize("text", [
    "Possible pneumonia. Small effusion.",
    "Possible pneumonia; small effusion.",
    "Possible pneumonia but small effusion.",
    "Possible pneumonia, and there is a small effusion.",
    "Possible pneumonia with effusion.",
])
def test_uncertainty_stops_at_clause_and_sentence_boundaries(text):
    labels = label_report(text)
    assert labels["Pneumonia"] == UNC and labels["Pleural Effusion"] == POS, text


@pytest.mark.parametrize("text", [
    "No pneumothorax, effusion or consolidation.",
    "No pneumothorax, effusion, or consolidation is seen.",
    "No pneumothorax and effusion and consolidation.",
    "No findings consistent with pneumothorax, effusion or consolidation.",   # "consistent with" does not stop
])
def test_a_list_after_the_cue_keeps_its_negation(text):
    labels = label_report(text)
    assert (labels["Pneumothorax"], labels["Pleural Effusion"], labels["Consolidation"]) == (NEG, NEG, NEG), text


# ------------------------------------------------------------------ predicates and their complement
def test_hedge_after_its_finding_qualifies_it():
    assert _value("Pneumonia is likely.", "Pneumonia") == UNC
    assert _value("Pneumonia is favored.", "Pneumonia") == UNC
    assert _value("Pneumonia is unlikely.", "Pneumonia") == NEG


def test_hedge_with_a_finding_of_its_own_judges_only_that_one():
    labels = label_report("The opacity is likely atelectasis.")
    assert (labels["Lung Opacity"], labels["Atelectasis"]) == (POS, UNC)
    labels = label_report("The opacity is unlikely pneumonia.")
    assert (labels["Lung Opacity"], labels["Pneumonia"]) == (POS, NEG)


def test_a_finding_after_than_is_no_complement():
    labels = label_report("Effusion is more likely than pneumothorax.")
    assert (labels["Pleural Effusion"], labels["Pneumothorax"]) == (UNC, UNC)


# ------------------------------------------------------------------ mentions and frames
def test_extract_mentions_in_reading_order_with_clause_and_value():
    mentions = extract_mentions("FINDINGS: No pneumothorax. Possible left effusion.\nIMPRESSION: Cardiomegaly.")
    assert [(m.label, m.phrase, m.clause, m.value) for m in mentions] == [
        ("Pneumothorax", "pneumothorax", "no pneumothorax.", NEG),
        ("Pleural Effusion", "effusion", "possible left effusion.", UNC),
        ("Cardiomegaly", "cardiomegaly", "cardiomegaly.", POS),
    ]
    assert extract_mentions("INDICATION: pneumonia?\nFINDINGS: Normal.") == []


def test_label_reports_of_nothing_is_an_empty_frame_with_every_column():
    frame = label_reports([], progress=False)
    assert list(frame.columns) == list(CHEXPERT_LABELS) and len(frame) == 0
    assert all(dtype == float for dtype in frame.dtypes)


def test_label_reports_names_the_position_of_a_bad_entry_in_a_list():
    with pytest.raises(TypeError, match=r"reports\[1\]: expected str \(or None for a missing report\), got int"):
        label_reports(["No effusion.", 3], progress=False)


def test_declaring_cues_and_phrases():
    """The tables above are declared with ``_t``/``_p`` at import time, so their defaults are
    checked here: a cue with no scope given reaches forward to the end of its clause and never
    back, judges every phrase and is no predicate; a phrase counts negated or not and is judged
    by the words after it."""
    from support.data.labeler import _CLAUSE, _OFF, _p, _t

    cue = _t(r"\bzz\b")
    assert (cue.regex.pattern, cue.forward, cue.backward) == (r"\bzz\b", _CLAUSE, _OFF)
    assert (cue.negative_only_targets, cue.predicate) == (False, False)
    cue = _t(r"\byy\b", 2, 5, negative_only_targets=True, predicate=True)
    assert (cue.regex.pattern, cue.forward, cue.backward, cue.negative_only_targets, cue.predicate) == (
        r"\byy\b", 2, 5, True, True)
    assert cue.regex.search("a yy b") and not cue.regex.search("ayy")
    phrase = _p(r"\bzz\b")
    assert (phrase.regex.pattern, phrase.negative_only, phrase.closed) == (r"\bzz\b", False, False)
    phrase = _p(r"\byy\b", negative_only=True, closed=True)
    assert (phrase.regex.pattern, phrase.negative_only, phrase.closed) == (r"\byy\b", True, True)
    assert phrase.regex.search("yy")


# Sentence structures each rule of the clause splitter and the judge exists for; mutation testing
# showed each rule could break without a failing test.
STRUCTURES = [
    # an all-caps report: the section's closing full stop is added, no trailing letter is stripped
    ("FINDINGS: RIGHT PNEUMOTHORAX", {"Pneumothorax": 1}),
    # a parenthetical aside is lifted out; the main verb speaks of the finding before it
    ("The effusion, which was small, has resolved.", {"Pleural Effusion": 0, "No Finding": 1}),
    ("The pneumothorax, however, has resolved.", {"Pneumothorax": 0, "No Finding": 1}),
    # a "which" clause that names a finding of its own is split from the negation before it
    ("No pneumothorax, which may be atelectasis.", {"Pneumothorax": 0, "Atelectasis": -1}),
    ("No effusion, which could be consolidation.", {"Pleural Effusion": 0, "Consolidation": -1}),
    # "and" joining two clauses with a predicate each ends the negation's scope
    ("No effusion is seen and a chest tube remains in place.", {"Pleural Effusion": 0, "Support Devices": 1,
                                                                "No Finding": 1}),
    ("No pneumothorax is seen and a small effusion is present.", {"Pneumothorax": 0, "Pleural Effusion": 1}),
    # a neutral "no change" is masked in place, so the triggers after it keep their positions
    ("No interval change in the left lower lobe opacity, no pneumothorax.", {"Lung Opacity": 1, "Pneumothorax": 0}),
    ("Left effusion with no change since prior and no pneumothorax.", {"Pleural Effusion": 1, "Pneumothorax": 0}),
    # a trigger word inside a closed phrase is judged by the phrase ("normal to ... enlarged": uncertain)
    ("Heart size is top normal to mildly enlarged.", {"Cardiomegaly": -1}),
    # "normal" judges heart size, not a finding after it
    ("Heart size is normal and pneumothorax.", {"Cardiomegaly": 0, "Pneumothorax": 1}),
    ("Normal heart size with pneumonia.", {"Cardiomegaly": 0, "Pneumonia": 1}),
    # an unjudged mention of the heart or mediastinum (kept only when negated) does not end the clause
    ("The heart and pneumothorax.", {"Pneumothorax": 1}),
    ("The mediastinum, pneumonia present.", {"Pneumonia": 1}),
]


@pytest.mark.parametrize("text,expected", STRUCTURES, ids=[s[0] for s in STRUCTURES])
def test_each_rule_of_the_clause_splitter_and_the_judge(text, expected):
    _check(text, expected)
