"""parse_sections on the report shapes MIMIC-CXR actually contains."""

import pytest

from support.data.sections import parse_sections

MIMIC = """                                 FINAL REPORT
 EXAMINATION:  CHEST (PA AND LAT)

 INDICATION:  ___F with new onset ascites  // eval for infection

 TECHNIQUE:  Chest PA and lateral

 COMPARISON:  None.

 FINDINGS:

 There is no focal consolidation, pleural effusion or pneumothorax.  Bilateral
 nodular opacities that most likely represent nipple shadows. Note: the heart size is normal.

 IMPRESSION:

 No acute cardiopulmonary process.
"""


def test_full_mimic_report():
    s = parse_sections(MIMIC)
    assert s["findings"] == ("There is no focal consolidation, pleural effusion or pneumothorax. Bilateral "
                             "nodular opacities that most likely represent nipple shadows. "
                             "Note: the heart size is normal.")   # "Note:" mid-text is not a heading
    assert s["impression"] == "No acute cardiopulmonary process."
    assert s["indication"] == "___F with new onset ascites // eval for infection"
    assert s["examination"] == "CHEST (PA AND LAT)" and s["technique"] == "Chest PA and lateral"
    assert s["comparison"] == "None."
    assert "preamble" not in s   # "FINAL REPORT" alone is not kept


@pytest.mark.parametrize("text, findings, impression", [
    ("FINAL REPORT\n CONCLUSION:  Clear lungs.", "", "Clear lungs."),
    ("IMPRESSIONS: 1. Small effusion.\n2. No pneumothorax.", "", "1. Small effusion. 2. No pneumothorax."),
    ("FINDINGS AND IMPRESSION: Normal chest.", "Normal chest.", "Normal chest."),
    ("Findings: Mild edema.\nImpression: CHF.", "Mild edema.", "CHF."),
    ("FINDINGS:\n\nMild edema.\n", "Mild edema.", ""),
    ("", "", ""),
    ("Portable AP chest radiograph demonstrates clear lungs.", "", ""),
])
def test_variants(text, findings, impression):
    s = parse_sections(text)
    assert (s["findings"], s["impression"]) == (findings, impression)


def test_unstructured_text_is_kept_as_preamble_and_other_sections_lower_case():
    s = parse_sections("Portable AP chest.\r\nWET READ: ___ 10:30 PM  no ptx\r\n"
                       "PA AND LATERAL VIEWS OF THE CHEST:\r\nRECOMMENDATION(S):  Follow-up CT.")
    assert s["preamble"] == "Portable AP chest."
    assert s["wet read"] == "___ 10:30 PM no ptx"
    assert s["recommendation"] == "Follow-up CT."


def test_repeated_section_is_joined_and_type_checked():
    s = parse_sections("IMPRESSION: Effusion.\nADDENDUM: see below.\nIMPRESSION: Also atelectasis.")
    assert s["impression"] == "Effusion. Also atelectasis." and s["addendum"] == "see below."
    with pytest.raises(TypeError):
        parse_sections(None)
