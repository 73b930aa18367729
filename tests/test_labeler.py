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


@pytest.mark.parametrize("text,expected", CASES, ids=[c[0][:50] for c in CASES])
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
