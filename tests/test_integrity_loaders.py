"""Integrity of the dataset loaders, one test per way a loader could quietly get a record wrong:
boxes scaled by the wrong size, row order deciding a conflict, a bad label cell leaving its image
unlabelled, a symlink out of the root, bytes that are not UTF-8, malformed image sizes, and
MIMIC-CXR's views beyond PA/AP/LATERAL/LL. Each test builds its own small tree in tmp_path."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from test_adapters import (
    D, S1, S2, ST2, ST3, gradient, make_chexpert_tree, make_covidx_tree, make_nih_tree, make_object_cxr_tree,
    make_phantom_tree, make_rsna_tree, write_jpeg,
)

from support.data.adapters import load_dataset
from support.data.datasets import BoxDataset, ItemError
from support.data.records import RecordError, empty_record, make_table

RSNA_POSITIVE = "00436515-870c-4b36-a041-de91049b9ab4"   # the RSNA tree's patient with two boxes


def _by_id(table: pd.DataFrame) -> dict[str, dict]:
    return {r["image_id"]: r for r in table.to_dict("records")}


def _append(path: Path, text: str) -> None:
    with open(path, "a") as fh:
        fh.write(text)


def _edit_csv(path: Path, row: int, **cells: str) -> None:
    """Set ``cells`` (column=value) of data row ``row`` (0-based) of a CSV, everything read as text."""
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    for column, value in cells.items():
        df.loc[row, column] = value
    df.to_csv(path, index=False)


# ------------------------------------------------------------------ 1. boxes and the size they are in
def _nih_boxes_keep_the_1024_space_on_resized_copies(tmp_path):
    root = make_nih_tree(tmp_path / "nih")   # 32x32 copies; BBox_List_2017.csv in the released 1024 px
    _append(root / "BBox_List_2017.csv", "00000004_000.png,Effusion,900,100,200,50,,,\n")   # ends at x 1100
    table, summary = load_dataset("nih-cxr14", root, validate_fraction=0.0)
    recs = _by_id(table)
    assert recs["00000003_000"]["boxes"] == [{"label": "Nodule", "x0": 0.25, "y0": 0.125, "x1": 0.5, "y1": 0.5}]
    assert recs["00000004_000"]["boxes"] == []
    assert summary.skipped == {"box outside the image": 1}
    (example,) = summary.examples["box outside the image"]
    assert example.startswith("BBox_List_2017.csv row 4: 00000004_000.png: Effusion box x 900..1100")
    assert "expected 0 <= x0 < x1 <= 1024" in example

    # a copy that is not the 1024 px square rescaled (here cropped to 32x40): its boxes cannot be placed
    write_jpeg(Path(recs["00000003_000"]["path"]), gradient(40, 32))
    table, summary = load_dataset("nih-cxr14", root, validate_fraction=0.0)
    assert "00000003_000" not in set(table["image_id"]) and summary.skipped["image size mismatch"] == 1
    assert "the file is 32x40 px" in summary.examples["image size mismatch"][0]


def _mimic_file_must_be_the_stated_size_or_a_uniform_copy(tmp_path):
    root = make_phantom_tree(tmp_path / "p")   # metadata: Rows 40, Columns 32; f2 has a box 8, 4, 16, 20
    boxed = Path(_by_id(load_dataset("mimic-cxr-jpg", root)[0])[D["f2"]]["path"])
    write_jpeg(boxed, gradient(80, 64))   # twice the size: the normalised box still fits
    table, summary = load_dataset("mimic-cxr-jpg", root)
    assert summary.n_skipped == 0 and _by_id(table)[D["f2"]]["boxes"][0]["x1"] == 0.75

    write_jpeg(boxed, gradient(32, 32))   # not the stated proportions: checked even without verify_images
    table, summary = load_dataset("mimic-cxr-jpg", root)
    assert D["f2"] not in set(table["image_id"]) and summary.skipped == {"image size mismatch": 1}
    (example,) = summary.examples["image size mismatch"]
    assert str(boxed) in example and "the file is 32x32 px" in example
    assert "32x40 px of mimic-cxr-2.0.0-metadata.csv row 4 (Rows, Columns)" in example
    with pytest.raises(RecordError, match="image size mismatch"):
        load_dataset("mimic-cxr-jpg", root, strict=True)

    write_jpeg(boxed)   # the stated 40x32 again; one more box row, reaching x 36 of 32
    _append(root / "annotations" / "boxes.csv", f"{D['f2']},Lung Lesion,20,4,16,20\n")
    table, summary = load_dataset("mimic-cxr-jpg", root)
    assert summary.skipped == {"box outside the image": 1} and len(_by_id(table)[D["f2"]]["boxes"]) == 1
    assert "boxes.csv row 3" in summary.examples["box outside the image"][0]


def _rsna_box_outside_the_dicom(tmp_path):
    root = make_rsna_tree(tmp_path / "rsna")   # DICOMs of 32 columns x 40 rows
    _append(root / "stage_2_train_labels.csv", f"{RSNA_POSITIVE},20,8,16,12,1\n")
    table, summary = load_dataset("rsna-pneumonia", root)
    assert len(_by_id(table)[RSNA_POSITIVE]["boxes"]) == 2
    assert summary.skipped == {"box outside the image": 1}
    assert summary.examples["box outside the image"][0].startswith("stage_2_train_labels.csv row 6: ")


def _object_cxr_object_outside_the_image(tmp_path):
    root = make_object_cxr_tree(tmp_path / "ocxr")   # 40x50 px images
    (root / "dev.csv").write_text("image_name,annotation\n08001.jpg,0 4 5 14 15;0 30 40 45 60\n")
    table, summary = load_dataset("object-cxr", root, masks=True)
    assert len(_by_id(table)["08001"]["boxes"]) == 1
    assert summary.skipped == {"box outside the image": 1}
    assert summary.examples["box outside the image"][0].startswith("dev.csv row 2: 08001: rectangle")


def _box_dataset_refuses_a_box_outside_the_unit_square(tmp_path):
    path = write_jpeg(tmp_path / "a.png")
    rec = empty_record("demo")
    rec.update(subject_id="s", study_id="s", image_id="a", path=str(path), split="train",
               boxes=[{"label": "Nodule", "x0": 4.0, "y0": 0.1, "x1": 1.0, "y1": 0.5}])   # inverted
    with pytest.raises(ItemError, match=r"a.png: Nodule box \(4, 0.1, 1, 0.5\)"):
        BoxDataset(make_table([rec]), size=16, strict=True)[0]


@pytest.mark.parametrize("check", [
    _nih_boxes_keep_the_1024_space_on_resized_copies, _mimic_file_must_be_the_stated_size_or_a_uniform_copy,
    _rsna_box_outside_the_dicom, _object_cxr_object_outside_the_image,
    _box_dataset_refuses_a_box_outside_the_unit_square,
], ids=lambda f: f.__name__.strip("_"))
def test_boxes_use_the_documented_space_and_never_leave_the_image_unseen(tmp_path, check):
    check(tmp_path)


# ------------------------------------------------------------------ 2. conflicting rows
def test_conflicting_rows_decide_nothing_and_are_counted_per_file(tmp_path):
    root = make_phantom_tree(tmp_path / "p")
    _append(root / "mimic-cxr-2.0.0-split.csv", f"{D['f1']},50000001,{S1},train\n"    # the same again: harmless
                                                f"{D['f3']},{ST3},{S2},train\n")     # a test image made train
    labels = pd.read_csv(root / "mimic-cxr-2.0.0-chexpert.csv", dtype=str, keep_default_na=False)
    flipped = labels[labels["study_id"] == ST2].assign(**{"Lung Lesion": "0.0"})
    pd.concat([labels, flipped]).to_csv(root / "mimic-cxr-2.0.0-chexpert.csv", index=False)

    table, summary = load_dataset("mimic-cxr-jpg", root)
    assert set(table["image_id"]) == {D["f1"], D["l1"]}   # f3 (split) and f2 (labels) left out
    assert summary.skipped == {"conflicting rows in mimic-cxr-2.0.0-split.csv": 1,
                               "conflicting rows in mimic-cxr-2.0.0-chexpert.csv": 1}
    assert summary.examples["conflicting rows in mimic-cxr-2.0.0-split.csv"] == [
        f"dicom_id {D['f3']}: mimic-cxr-2.0.0-split.csv row 5 and mimic-cxr-2.0.0-split.csv row 7 disagree "
        f"('test' vs 'train'); expected one value per dicom_id"]
    assert "chexpert.csv row 3 and mimic-cxr-2.0.0-chexpert.csv row 5 disagree (Lung Lesion 1.0 vs 0.0)" in \
        summary.examples["conflicting rows in mimic-cxr-2.0.0-chexpert.csv"][0]
    with pytest.raises(RecordError, match="conflicting rows in mimic-cxr-2.0.0-split.csv"):
        load_dataset("mimic-cxr-jpg", root, strict=True)

    nih = make_nih_tree(tmp_path / "nih")
    _append(nih / "test_list.txt", "00000001_001.png\n")   # also in train_val_list.txt
    table, summary = load_dataset("nih-cxr14", nih)
    assert "00000001_001" not in set(table["image_id"])
    assert summary.skipped == {"conflicting rows in train_val_list.txt and test_list.txt": 1}

    rsna = make_rsna_tree(tmp_path / "rsna")
    _append(rsna / "stage_2_detailed_class_info.csv", f"{RSNA_POSITIVE},Normal\n")
    table, summary = load_dataset("rsna-pneumonia", rsna)
    assert RSNA_POSITIVE not in set(table["image_id"])
    assert summary.skipped == {"conflicting rows in stage_2_detailed_class_info.csv": 1}


# ------------------------------------------------------------------ 3. a bad label cell
def test_a_bad_label_cell_leaves_its_study_out_and_names_the_cell(tmp_path):
    root = make_phantom_tree(tmp_path / "p")
    _edit_csv(root / "mimic-cxr-2.0.0-chexpert.csv", 1, Edema="yes")         # study ST2
    _edit_csv(root / "mimic-cxr-2.0.0-chexpert.csv", 2, Cardiomegaly="2")    # study ST3
    table, summary = load_dataset("mimic-cxr-jpg", root)
    assert set(table["study_id"]) == {"90000001"}   # never kept with every label NaN
    assert summary.skipped == {"bad label value": 2}
    assert summary.examples["bad label value"] == [
        f"mimic-cxr-2.0.0-chexpert.csv row 3: study {ST2}: label Edema='yes', expected 1, 0, -1 or blank; "
        f"its images are left out",
        f"mimic-cxr-2.0.0-chexpert.csv row 4: study {ST3}: label Cardiomegaly='2', expected 1, 0, -1 or blank; "
        f"its images are left out"]
    with pytest.raises(RecordError, match="bad label value"):
        load_dataset("mimic-cxr-jpg", root, strict=True)


# ------------------------------------------------------------------ 4. symlinks out of the root
def test_a_symlink_that_leads_out_of_the_root_is_refused(tmp_path):
    root = make_chexpert_tree(tmp_path / "cx")
    outside = write_jpeg(tmp_path / "elsewhere" / "secret.jpg")
    leak = root / "valid" / "patient64541" / "study1" / "view1_frontal.jpg"
    leak.unlink()
    leak.symlink_to(outside)
    kept_inside = root / "train" / "patient00002" / "study2" / "view1_frontal.jpg"
    kept_inside.rename(root / "store.jpg")
    kept_inside.symlink_to(root / "store.jpg")   # a link that stays inside is the owner's choice
    table, summary = load_dataset("chexpert", root)
    assert len(table) == 3 and str(kept_inside) in set(table["path"])
    assert summary.skipped == {"unsafe path": 1}
    assert f"leads to {outside}, outside the dataset root {root}" in summary.examples["unsafe path"][0]
    with pytest.raises(RecordError, match="unsafe path"):
        load_dataset("chexpert", root, strict=True)

    nih = make_nih_tree(tmp_path / "nih")   # images_002/ holds 00000003_000 and 00000004_000
    (nih / "images_002").rename(tmp_path / "other-disk")
    (nih / "images_002").symlink_to(tmp_path / "other-disk", target_is_directory=True)
    table, summary = load_dataset("nih-cxr14", nih)
    assert summary.skipped == {"unsafe path": 2} and len(table) == 3


# ------------------------------------------------------------------ 5. bytes that are not UTF-8
def test_bytes_that_are_not_utf8_are_named_and_counted(tmp_path):
    root = make_covidx_tree(tmp_path / "covidx")
    with open(root / "test.txt", "ab") as fh:
        fh.write(b"8 caf\xe9.png negative rsna\n")
    table, summary = load_dataset("covidx", root)
    assert len(table) == 6
    assert summary.skipped == {"not UTF-8": 1}
    assert summary.examples["not UTF-8"] == ["test.txt line 2: byte 0xe9 at offset 5 is not UTF-8; expected UTF-8 text"]

    root = make_phantom_tree(tmp_path / "p")
    report = root / "files" / f"p{S2[:2]}" / f"p{S2}" / f"s{ST3}.txt"
    report.write_bytes(b"FINAL REPORT\n FINDINGS: Normal.\n IMPRESSION: No acute process \xff.\n")
    table, summary = load_dataset("mimic-cxr-jpg", root)
    assert ST3 not in set(table["study_id"]) and summary.skipped == {"report not UTF-8": 1}
    assert summary.examples["report not UTF-8"][0].startswith(f"{report}: study {ST3}: byte 0xff at offset 62")
    with pytest.raises(RecordError, match="report not UTF-8"):
        load_dataset("mimic-cxr-jpg", root, strict=True)


# ------------------------------------------------------------------ 6. malformed numbers
def test_malformed_image_sizes_and_ids_are_skipped_with_the_reason(tmp_path):
    root = make_phantom_tree(tmp_path / "p")
    _edit_csv(root / "mimic-cxr-2.0.0-metadata.csv", 0, Columns="inf")
    _edit_csv(root / "mimic-cxr-2.0.0-metadata.csv", 3, Rows="64.9")
    table, summary = load_dataset("mimic-cxr-jpg", root)
    assert set(table["image_id"]) == {D["l1"], D["f2"]}
    assert summary.skipped == {"bad image size": 2}
    assert summary.examples["bad image size"] == [
        f"mimic-cxr-2.0.0-metadata.csv row 2: dicom_id {D['f1']}: Columns='inf': expected a whole number >= 1",
        f"mimic-cxr-2.0.0-metadata.csv row 5: dicom_id {D['f3']}: Rows='64.9': expected a whole number >= 1"]

    nih = make_nih_tree(tmp_path / "nih")
    _edit_csv(nih / "Data_Entry_2017.csv", 4, **{"Patient ID": "1e400"})
    table, summary = load_dataset("nih-cxr14", nih)
    assert summary.skipped == {"bad id": 1} and "Patient ID='1e400'" in summary.examples["bad id"][0]


# ------------------------------------------------------------------ 7. MIMIC-CXR's other views
@pytest.mark.parametrize("written, view", [
    ("AP AXIAL", "AP"), ("XTABLE LATERAL", "LATERAL"), ("PA LLD", None), ("AP LLD", None), ("LAO", None),
    ("RAO", None), ("LPO", None), ("SWIMMERS", None),
])
def test_mimic_views_beyond_the_four_are_mapped_or_named(tmp_path, written, view):
    root = make_phantom_tree(tmp_path / "p")
    _edit_csv(root / "mimic-cxr-2.0.0-metadata.csv", 2, ViewPosition=written)   # f2
    table, summary = load_dataset("mimic-cxr-jpg", root)
    if view is not None:
        assert summary.n_skipped == 0 and _by_id(table)[D["f2"]]["view"] == view
        return
    assert D["f2"] not in set(table["image_id"]) and summary.skipped == {"view not modelled": 1}
    (example,) = summary.examples["view not modelled"]
    assert example.startswith(f"mimic-cxr-2.0.0-metadata.csv row 4: dicom_id {D['f2']}: ViewPosition {written!r}")
    assert example.endswith("expected a frontal or lateral chest view")
