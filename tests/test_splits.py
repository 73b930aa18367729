"""No patient in two splits: every dataset adapter, the phantom, and the reference encoder's split.

Each tree here has several images per patient, so a split drawn per image (by image id instead of
patient id) puts some patient on both sides and fails the check. The official split files of
MIMIC-CXR, CheXpert, NIH and COVIDx are read as written; where the adapter draws the split itself
(by a hash of the patient, or carving validation out of train) it must keep each patient whole.
"""

from __future__ import annotations

import collections
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from test_adapters import IDENTIFIERS, gradient, write_dicom, write_jpeg

from support.data.adapters import load_dataset, siim_acr
from support.data.records import patient_split
from support.data.schema import CHEXPERT_LABELS, SPLITS
from support.data.writer import make_dicom_id, make_study_id, make_subject_id


def one_split_per_patient(table: pd.DataFrame, images_each: int = 2) -> dict[str, str]:
    """subject_id -> its one split; fails naming the patients seen in more than one split.
    ``images_each``: every patient has at least this many images (so the check has teeth)."""
    assert len(table), "no records"
    assert set(table["split"]) <= set(SPLITS)
    per = table.groupby("subject_id")["split"].agg(lambda s: sorted(set(s)))
    mixed = {subject: splits for subject, splits in per.items() if len(splits) > 1}
    assert not mixed, f"patients in more than one split: {mixed}"
    assert table.groupby("subject_id").size().min() >= images_each
    return {subject: splits[0] for subject, splits in per.items()}


def small_image() -> np.ndarray:
    return gradient(16, 16)


# ------------------------------------------------------------------------------------ MIMIC-CXR-JPG
MIMIC_PATIENTS = 9


def _mimic_rows():
    """(dicom_id, subject, study, view, split): 3 studies of 2 views per patient, split by patient."""
    rows = []
    for p in range(MIMIC_PATIENTS):
        subject = make_subject_id(p)
        for s in range(3):
            study = make_study_id(10 * p + s)
            for view in ("PA", "LATERAL"):
                rows.append((make_dicom_id("split-test", p, s, view), subject, study, view, SPLITS[p % 3]))
    return rows


def make_mimic_tree(root: Path, split_lines: list[str] | None = None) -> Path:
    rows = _mimic_rows()
    root.mkdir(parents=True)
    meta = pd.DataFrame([r[:4] for r in rows], columns=["dicom_id", "subject_id", "study_id", "ViewPosition"])
    meta["Rows"], meta["Columns"] = 16, 16
    meta.to_csv(root / "mimic-cxr-2.0.0-metadata.csv", index=False)
    if split_lines is None:
        split_lines = [f"{d},{st},{su},{sp}" for d, su, st, _, sp in rows]
    (root / "mimic-cxr-2.0.0-split.csv").write_text("dicom_id,study_id,subject_id,split\n"
                                                    + "\n".join(split_lines) + "\n")
    for d, su, st, _, _ in rows:
        write_jpeg(root / "files" / f"p{su[:2]}" / f"p{su}" / f"s{st}" / f"{d}.jpg", small_image())
    return root


def test_mimic_official_split_keeps_every_patient_whole(tmp_path):
    table, summary = load_dataset("mimic-cxr-jpg", make_mimic_tree(tmp_path / "m"), labels="none", reports=False)
    assert summary.n_skipped == 0 and len(table) == 6 * MIMIC_PATIENTS
    splits = one_split_per_patient(table, images_each=6)
    assert splits == {make_subject_id(p): SPLITS[p % 3] for p in range(MIMIC_PATIENTS)}
    assert not any("more than one split" in n for n in summary.notes)


def test_mimic_split_file_is_read_by_dicom_id_with_cells_stripped(tmp_path):
    rows = _mimic_rows()
    lines = [f" {d} ,{st},{su}, {sp} " for d, su, st, _, sp in rows]   # padded cells
    lines.append(f"{rows[0][0]},{rows[0][2]},{rows[0][1]},{rows[0][4]}")  # the same row again: harmless
    table, summary = load_dataset("mimic-cxr-jpg", make_mimic_tree(tmp_path / "m", lines), labels="none",
                                  reports=False)
    assert summary.n_skipped == 0 and len(table) == len(rows)
    assert dict(zip(table["image_id"], table["split"])) == {r[0]: r[4] for r in rows}


def test_mimic_conflicting_split_rows_leave_the_image_out_and_are_counted(tmp_path):
    rows = _mimic_rows()
    lines = [f"{d},{st},{su},{sp}" for d, su, st, _, sp in rows]
    victim = rows[4]   # an image of patient 0 (train) listed again as test
    lines.append(f"{victim[0]},{victim[2]},{victim[1]},test")
    table, summary = load_dataset("mimic-cxr-jpg", make_mimic_tree(tmp_path / "m", lines), labels="none",
                                  reports=False)
    assert victim[0] not in set(table["image_id"]) and len(table) == len(rows) - 1
    assert summary.skipped == {"conflicting rows in mimic-cxr-2.0.0-split.csv": 1}
    (example,) = summary.examples["conflicting rows in mimic-cxr-2.0.0-split.csv"]
    assert example == (f"dicom_id {victim[0]}: mimic-cxr-2.0.0-split.csv row 6 and mimic-cxr-2.0.0-split.csv "
                       f"row {len(rows) + 2} disagree ('train' vs 'test'); expected one value per dicom_id")
    one_split_per_patient(table, images_each=5)


def test_mimic_image_missing_from_the_split_file_is_skipped(tmp_path):
    rows = _mimic_rows()
    lines = [f"{d},{st},{su},{sp}" for d, su, st, _, sp in rows[1:]]
    table, summary = load_dataset("mimic-cxr-jpg", make_mimic_tree(tmp_path / "m", lines), labels="none",
                                  reports=False)
    assert summary.skipped == {"unknown split": 1} and rows[0][0] not in set(table["image_id"])


def test_mimic_split_file_without_its_split_column_is_a_layout_error(tmp_path):
    from support.data.records import DatasetLayoutError

    rows = _mimic_rows()
    root = make_mimic_tree(tmp_path / "m", [f"{d},{st},{su},{sp}" for d, su, st, _, sp in rows])
    (root / "mimic-cxr-2.0.0-split.csv").write_text("dicom_id,study_id,subject_id\n")
    with pytest.raises(DatasetLayoutError, match=r"^mimic-cxr-jpg: .*mimic-cxr-2\.0\.0-split\.csv lacks column\(s\) "
                                                 r"\['split'\]"):
        load_dataset("mimic-cxr-jpg", root, labels="none", reports=False)


def test_mimic_official_split_that_leaks_a_patient_is_reported_not_hidden(tmp_path):
    rows = _mimic_rows()
    lines = [f"{d},{st},{su},{'test' if i == 0 else sp}" for i, (d, su, st, _, sp) in enumerate(rows)]
    table, summary = load_dataset("mimic-cxr-jpg", make_mimic_tree(tmp_path / "m", lines), labels="none",
                                  reports=False)
    assert any(n.startswith("1 patient(s) appear in more than one split") for n in summary.notes)
    with pytest.raises(AssertionError, match="more than one split"):
        one_split_per_patient(table)


# ------------------------------------------------------------------------------------ CheXpert
def make_chexpert_tree(root: Path) -> Path:
    top = root / "CheXpert-v1.0-small"
    header = ["Path", "Sex", "Age", "Frontal/Lateral", "AP/PA", *CHEXPERT_LABELS]
    tables = {"train": [], "valid": []}
    for p in range(1, 9):
        folder = "train" if p <= 6 else "valid"
        for study in (1, 2):
            for view, fl, appa in (("view1_frontal", "Frontal", "PA"), ("view2_lateral", "Lateral", "")):
                rel = f"{folder}/patient{p:05d}/study{study}/{view}.jpg"
                write_jpeg(top / rel, small_image())
                tables[folder].append([f"CheXpert-v1.0-small/{rel}", "Female", 50, fl, appa]
                                      + [""] * len(CHEXPERT_LABELS))
    for folder, name in (("train", "train.csv"), ("valid", "valid.csv")):
        pd.DataFrame(tables[folder], columns=header).to_csv(top / name, index=False)
    return top


def test_chexpert_keeps_every_patient_whole(tmp_path):
    table, summary = load_dataset("chexpert", make_chexpert_tree(tmp_path))
    assert summary.n_skipped == 0 and len(table) == 32
    splits = one_split_per_patient(table, images_each=4)
    assert splits == {f"patient{p:05d}": "train" if p <= 6 else "validate" for p in range(1, 9)}


# ------------------------------------------------------------------------------------ NIH ChestX-ray14
NIH_PATIENTS, NIH_FOLLOWUPS = 16, 3


def _nih_name(patient: int, followup: int) -> str:
    return f"{patient:08d}_{followup:03d}.png"


def make_nih_tree(root: Path, lists: dict[str, list[str]] | None = None) -> Path:
    """Several follow-ups per patient; ``lists``: file name -> lines of the official split lists."""
    rows = [(_nih_name(p, f), "No Finding", f, p, 40, "F", "PA")
            for p in range(1, NIH_PATIENTS + 1) for f in range(NIH_FOLLOWUPS)]
    root.mkdir(parents=True)
    pd.DataFrame(rows, columns=["Image Index", "Finding Labels", "Follow-up #", "Patient ID", "Patient Age",
                                "Patient Gender", "View Position"]).to_csv(root / "Data_Entry_2017.csv", index=False)
    for name, *_ in rows:
        write_jpeg(root / "images_001" / "images" / name, small_image())
    for name, lines in (lists or {}).items():
        (root / name).write_text("\n".join(lines) + "\n")
    return root


def _nih_official_lists(test_patients=range(13, NIH_PATIENTS + 1)) -> dict[str, list[str]]:
    names = {p: [_nih_name(p, f) for f in range(NIH_FOLLOWUPS)] for p in range(1, NIH_PATIENTS + 1)}
    return {"train_val_list.txt": [n for p in names if p not in test_patients for n in names[p]],
            "test_list.txt": [n for p in test_patients for n in names[p]]}


def test_nih_without_split_lists_splits_by_patient_hash(tmp_path):
    table, summary = load_dataset("nih-cxr14", make_nih_tree(tmp_path / "nih"))
    assert summary.n_skipped == 0 and len(table) == NIH_PATIENTS * NIH_FOLLOWUPS
    splits = one_split_per_patient(table, images_each=NIH_FOLLOWUPS)
    assert splits == {str(p): patient_split(str(p)) for p in range(1, NIH_PATIENTS + 1)}
    assert "train_val_list.txt/test_list.txt not found: split by a hash of Patient ID" in summary.notes


@pytest.mark.parametrize("validate_fraction", [0.0, 0.3, 0.5, 0.9])
def test_nih_official_lists_with_validation_carved_by_patient(tmp_path, validate_fraction):
    root = make_nih_tree(tmp_path / "nih", _nih_official_lists())
    table, summary = load_dataset("nih-cxr14", root, validate_fraction=validate_fraction)
    assert summary.n_skipped == 0 and len(table) == NIH_PATIENTS * NIH_FOLLOWUPS
    splits = one_split_per_patient(table, images_each=NIH_FOLLOWUPS)
    fractions = (1 - validate_fraction, validate_fraction, 0.0)
    expected = {str(p): "test" if p >= 13 else
                ("validate" if patient_split(str(p), fractions) == "validate" else "train")
                for p in range(1, NIH_PATIENTS + 1)}
    assert splits == expected
    if validate_fraction >= 0.5:
        assert set(splits.values()) == set(SPLITS)   # the check is not trivially passed


def test_nih_split_lists_are_read_line_by_line(tmp_path):
    lists = _nih_official_lists()
    lists["train_val_list.txt"] = ["", *(f"  {n}  " for n in lists["train_val_list.txt"]), "",
                                   lists["train_val_list.txt"][0]]   # padded, blank and repeated lines
    table, summary = load_dataset("nih-cxr14", make_nih_tree(tmp_path / "nih", lists), validate_fraction=0.0)
    assert summary.n_skipped == 0 and len(table) == NIH_PATIENTS * NIH_FOLLOWUPS
    assert summary.notes == []
    assert {r["subject_id"]: r["split"] for r in table.to_dict("records")} == {
        str(p): "test" if p >= 13 else "train" for p in range(1, NIH_PATIENTS + 1)}


def test_nih_split_list_line_that_is_not_utf8_is_skipped_and_counted(tmp_path):
    root = make_nih_tree(tmp_path / "nih", _nih_official_lists())
    with open(root / "test_list.txt", "ab") as fh:
        fh.write(b"\xff\xfe_000.png\n")
    table, summary = load_dataset("nih-cxr14", root, validate_fraction=0.0)
    assert summary.skipped == {"not UTF-8": 1} and len(table) == NIH_PATIENTS * NIH_FOLLOWUPS
    assert summary.examples["not UTF-8"][0].startswith("test_list.txt line 13: byte 0xff at offset 0")
    one_split_per_patient(table, images_each=NIH_FOLLOWUPS)


def test_nih_image_in_both_split_lists_is_left_out_and_counted(tmp_path):
    lists = _nih_official_lists()
    both = _nih_name(2, 1)
    lists["test_list.txt"].append(both)
    table, summary = load_dataset("nih-cxr14", make_nih_tree(tmp_path / "nih", lists), validate_fraction=0.0)
    assert both[:-4] not in set(table["image_id"]) and len(table) == NIH_PATIENTS * NIH_FOLLOWUPS - 1
    reason = "conflicting rows in train_val_list.txt and test_list.txt"
    assert summary.skipped == {reason: 1}
    assert summary.examples[reason] == [
        f"Image Index {both}: train_val_list.txt line 5 and test_list.txt line {3 * 4 + 1} disagree "
        f"('train_val' vs 'test'); expected one value per Image Index"]
    one_split_per_patient(table, images_each=NIH_FOLLOWUPS - 1)


def test_nih_image_in_neither_list_is_excluded(tmp_path):
    lists = _nih_official_lists()
    lists["train_val_list.txt"].remove(_nih_name(1, 0))
    table, summary = load_dataset("nih-cxr14", make_nih_tree(tmp_path / "nih", lists))
    assert summary.excluded == {"image in neither split list": 1} and len(table) == NIH_PATIENTS * NIH_FOLLOWUPS - 1


@pytest.mark.parametrize("present", ["train_val_list.txt", "test_list.txt"])
def test_nih_with_one_split_list_falls_back_to_the_patient_hash(tmp_path, present):
    lists = {present: _nih_official_lists()[present]}
    table, summary = load_dataset("nih-cxr14", make_nih_tree(tmp_path / "nih", lists))
    assert "train_val_list.txt/test_list.txt not found: split by a hash of Patient ID" in summary.notes
    assert one_split_per_patient(table, NIH_FOLLOWUPS) == {str(p): patient_split(str(p))
                                                           for p in range(1, NIH_PATIENTS + 1)}


# ------------------------------------------------------------------------------------ RSNA Pneumonia
def test_rsna_one_record_and_one_split_per_patient(tmp_path):
    """RSNA has one image per patientId; a patient's several box rows make one record."""
    root = tmp_path / "rsna"
    ids = [f"{i:08x}-0000-4000-8000-000000000000" for i in range(12)]
    lines = ["patientId,x,y,width,height,Target"]
    for i, pid in enumerate(ids):
        lines += [f"{pid},1,1,4,4,1", f"{pid},8,8,4,4,1"] if i % 2 else [f"{pid},,,,,0"]
        write_dicom(root / "stage_2_train_images" / f"{pid}.dcm", gradient(16, 16, hi=4095, dtype=np.uint16))
    (root / "stage_2_train_labels.csv").write_text("\n".join(lines) + "\n")
    table, summary = load_dataset("rsna-pneumonia", root)
    assert summary.n_skipped == 0 and len(table) == len(ids)
    splits = one_split_per_patient(table, images_each=1)
    assert splits == {pid: patient_split(pid) for pid in ids}
    assert list(table["subject_id"]) == list(table["image_id"])
    assert all(len(b) == 2 for b in table[table["Pneumonia"] == 1.0]["boxes"])


# ------------------------------------------------------------------------------------ SIIM-ACR
SIIM_PATIENTS, SIIM_IMAGES = 6, 4


def make_siim_patients_tree(root: Path, without_patient: int = 0) -> tuple[Path, dict[str, str]]:
    """SIIM-ACR with several images per PatientID (and ``without_patient`` images lacking one).
    Returns the root and image id -> PatientID ("" when absent)."""
    patient_of = {}
    for p in range(SIIM_PATIENTS):
        for k in range(SIIM_IMAGES):
            patient_of[f"1.2.276.0.7230010.3.1.4.8323329.{p}.{k}"] = f"{IDENTIFIERS[1]}-{p}"
    for k in range(without_patient):
        patient_of[f"1.2.276.0.7230010.3.1.4.8323329.99.{k}"] = ""
    root.mkdir(parents=True)
    (root / "train-rle.csv").write_text("ImageId, EncodedPixels\n" + "".join(f"{i}, -1\n" for i in patient_of))
    for n, (image_id, patient) in enumerate(patient_of.items()):
        folder = root / "dicom-images-train" / f"1.2.276.0.7230010.3.1.2.{n}" / f"1.2.276.0.7230010.3.1.3.{n}"
        write_dicom(folder / f"{image_id}.dcm", gradient(16, 16, hi=4095, dtype=np.uint16),
                    patient_id=patient or None)
    return root, patient_of


def test_siim_groups_images_by_patient_id_for_the_split(tmp_path):
    root, patient_of = make_siim_patients_tree(tmp_path / "siim")
    table, summary = load_dataset("siim-acr", root, fractions=(0.4, 0.3, 0.3))
    assert summary.n_skipped == 0 and len(table) == SIIM_PATIENTS * SIIM_IMAGES
    splits = one_split_per_patient(table, images_each=SIIM_IMAGES)
    assert len(splits) == SIIM_PATIENTS and len(set(splits.values())) >= 2
    # the images of one PatientID share one subject, and the subject decides the split
    by_patient = collections.defaultdict(set)
    for r in table.to_dict("records"):
        by_patient[patient_of[r["image_id"]]].add(r["subject_id"])
        assert r["split"] == patient_split(r["subject_id"], (0.4, 0.3, 0.3))
    assert all(len(s) == 1 for s in by_patient.values()) and len(by_patient) == SIIM_PATIENTS
    assert {next(iter(s)) for s in by_patient.values()} == {siim_acr.pseudonym(p) for p in by_patient}
    # no PatientID, nor any part of one, in the outputs
    text = table.astype(str).to_csv() + str(summary.to_dict())
    assert IDENTIFIERS[1] not in text and "778812" not in text
    assert not any("PatientID" in n for n in summary.notes)


def test_siim_image_without_patient_id_is_its_own_subject_and_noted(tmp_path):
    root, patient_of = make_siim_patients_tree(tmp_path / "siim", without_patient=2)
    table, summary = load_dataset("siim-acr", root)
    one_split_per_patient(table, images_each=1)
    alone = table[table["image_id"].map(patient_of) == ""]
    assert len(alone) == 2 and list(alone["subject_id"]) == list(alone["image_id"])
    assert "2 image(s) without a PatientID: each is its own subject (its ImageId)" in summary.notes


# ------------------------------------------------------------------------------------ COVIDx
def make_covidx_tree(root: Path, with_val: bool) -> Path:
    lines = {"train": [], "val": [], "test": []}
    for p in range(10):
        source = ("cohen", "rsna")[p % 2]
        split = "test" if p >= 8 else ("val" if with_val and p >= 6 else "train")
        for k in range(3):
            lines[split].append(f"{p} img-{p}-{k}.png {('positive', 'negative')[k % 2]} {source}")
    for split, rows in lines.items():
        if split == "val" and not with_val:
            continue
        for line in rows:
            write_jpeg(root / split / line.split()[1], small_image())
        (root / f"{split}.txt").write_text("\n".join(rows) + "\n")
    return root


@pytest.mark.parametrize("validate_fraction", [0.2, 0.5, 0.8])
def test_covidx_validation_carved_from_train_by_patient(tmp_path, validate_fraction):
    table, summary = load_dataset("covidx", make_covidx_tree(tmp_path / "c", with_val=False),
                                  validate_fraction=validate_fraction)
    assert summary.n_skipped == 0 and len(table) == 30
    splits = one_split_per_patient(table, images_each=3)
    fractions = (1 - validate_fraction, validate_fraction, 0.0)
    expected = {}
    for p in range(10):
        subject = f"{('cohen', 'rsna')[p % 2]}/{p}"
        expected[subject] = "test" if p >= 8 else (
            "validate" if patient_split(subject, fractions) == "validate" else "train")
    assert splits == expected


def test_covidx_official_val_file_keeps_every_patient_whole(tmp_path):
    table, summary = load_dataset("covidx", make_covidx_tree(tmp_path / "c", with_val=True))
    splits = one_split_per_patient(table, images_each=3)
    assert collections.Counter(splits.values()) == {"train": 6, "validate": 2, "test": 2}


# ------------------------------------------------------------------------------------ Object-CXR
def test_object_cxr_each_image_is_its_own_subject_in_one_split(tmp_path):
    root = tmp_path / "ocxr"
    for folder, names in (("train", ["00001.jpg", "00002.jpg", "00003.jpg"]), ("dev", ["08001.jpg", "08002.jpg"])):
        for name in names:
            write_jpeg(root / folder / name, small_image())
        (root / f"{folder}.csv").write_text("image_name,annotation\n" + "".join(f"{n},\n" for n in names))
    table, _ = load_dataset("object-cxr", root)
    splits = one_split_per_patient(table, images_each=1)
    assert splits == {"00001": "train", "00002": "train", "00003": "train", "08001": "validate", "08002": "validate"}


# ------------------------------------------------------------------------------------ the phantom
def test_phantom_plan_puts_each_patient_in_one_split_at_the_configured_shares():
    from support.phantom import PhantomConfig
    from support.phantom.generate import plan_studies

    for fractions in ((0.8, 0.1, 0.1), (0.5, 0.25, 0.25), (0.0, 0.5, 0.5)):
        config = PhantomConfig(n_patients=40, studies_per_patient=(2, 4), split_fractions=fractions, seed=3)
        studies = plan_studies(config)
        per = collections.defaultdict(set)
        for st in studies:
            per[st["subject_id"]].add(st["split"])
        assert len(per) == 40 and all(len(s) == 1 for s in per.values())
        counts = collections.Counter(next(iter(s)) for s in per.values())
        assert [counts[s] for s in SPLITS] == [round(40 * f) for f in fractions]
        assert min(collections.Counter(st["subject_id"] for st in studies).values()) >= 2


@pytest.fixture(scope="module")
def phantom_root(tmp_path_factory) -> Path:
    from support.phantom import PhantomConfig, generate_phantom

    root = tmp_path_factory.mktemp("phantom") / "phantom"
    generate_phantom(root, PhantomConfig(n_patients=6, studies_per_patient=(2, 2), image_size=32, seed=4,
                                         text_share=0.0, lateral_share=1.0, ap_share=0.0,
                                         split_fractions=(0.5, 0.25, 0.25), prevalence={}),
                     workers=1, progress=False)
    return root


def test_phantom_read_back_keeps_every_patient_whole(phantom_root):
    table, summary = load_dataset("mimic-cxr-jpg", phantom_root)
    assert summary.n_skipped == 0
    splits = one_split_per_patient(table, images_each=4)   # two studies of a frontal and a lateral each
    assert collections.Counter(splits.values()) == {"train": 3, "validate": 2, "test": 1}


# ------------------------------------------------------------------------------------ reference encoder
def _split_indices():
    from support.eval.reference_encoder import split_indices

    return split_indices


@pytest.mark.parametrize("val_fraction", [0.1, 0.25, 0.5, 0.9])
def test_grouped_split_keeps_every_subject_on_one_side(val_fraction):
    split_indices = _split_indices()
    groups = [f"s{i // 3}" for i in range(90)] + [f"t{i}" for i in range(10)]   # 30 subjects x 3, 10 x 1
    train, val = split_indices(len(groups), val_fraction, seed=1, groups=groups)
    assert sorted(np.concatenate([train, val]).tolist()) == list(range(100))
    g = np.asarray(groups)
    assert not set(g[train]) & set(g[val])
    assert len(set(g[val])) == max(1, round(40 * val_fraction))   # a share of subjects, not of images
    assert list(train) == sorted(train) and list(val) == sorted(val)


def test_grouped_split_is_seeded():
    split_indices = _split_indices()
    groups = [i // 2 for i in range(60)]
    a = split_indices(60, 0.3, seed=5, groups=groups)
    b = split_indices(60, 0.3, seed=5, groups=groups)
    c = split_indices(60, 0.3, seed=6, groups=groups)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not np.array_equal(a[1], c[1])


def test_grouped_split_of_few_subjects_keeps_at_least_one_for_validation():
    split_indices = _split_indices()
    train, val = split_indices(6, 0.1, seed=0, groups=["a", "a", "a", "b", "b", "b"])
    assert len(val) == 3 and len(train) == 3


@pytest.mark.parametrize("n,val_fraction,n_val", [(100, 0.2, 20), (10, 0.25, 2), (7, 0.01, 1), (3, 0.5, 2)])
def test_ungrouped_split_sizes(n, val_fraction, n_val):
    split_indices = _split_indices()
    train, val = split_indices(n, val_fraction, seed=2)
    assert len(val) == n_val and sorted(np.concatenate([train, val]).tolist()) == list(range(n))
    assert list(train) == sorted(train) and list(val) == sorted(val)
    again = split_indices(n, val_fraction, seed=2)
    assert np.array_equal(again[1], val)


@pytest.mark.parametrize("val_fraction", [0.0, 1.0, -0.1, 1.5])
def test_split_fraction_must_be_strictly_between_zero_and_one(val_fraction):
    with pytest.raises(ValueError, match=r"val_fraction must be in \(0, 1\)"):
        _split_indices()(10, val_fraction, seed=0)


def test_groups_must_name_every_image():
    with pytest.raises(ValueError, match="groups has 3 entries for 4 images"):
        _split_indices()(4, 0.5, seed=0, groups=["a", "b", "c"])
