"""Bad input: broken layouts raise clear errors; bad records are skipped, counted, listed (or raise
in strict mode); paths that leave the dataset root are refused."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from test_adapters import (
    D, ST1, S1, make_chexpert_tree, make_covidx_tree, make_mimic_official_tree, make_nih_tree,
    make_object_cxr_tree, make_phantom_tree, make_rsna_tree, make_siim_tree,
)

from support.data.adapters import KINDS, load_dataset
from support.data.images import ImageReadError, read_image
from support.data.records import DatasetLayoutError, DatasetSummary, RecordError, UnsafePathError, resolve_inside

BUILDERS = {
    "mimic-cxr-jpg": lambda p: make_phantom_tree(p),
    "chexpert": lambda p: make_chexpert_tree(p),
    "nih-cxr14": lambda p: make_nih_tree(p),
    "rsna-pneumonia": lambda p: make_rsna_tree(p),
    "siim-acr": lambda p: make_siim_tree(p)[0],
    "covidx": lambda p: make_covidx_tree(p),
    "object-cxr": lambda p: make_object_cxr_tree(p),
}
# the main table of each layout, and one column it must have
MAIN_TABLE = {
    "mimic-cxr-jpg": ("mimic-cxr-2.0.0-metadata.csv", "ViewPosition"),
    "chexpert": ("valid.csv", "Frontal/Lateral"),
    "nih-cxr14": ("Data_Entry_2017.csv", "Finding Labels"),
    "rsna-pneumonia": ("stage_2_train_labels.csv", "Target"),
    "siim-acr": ("train-rle.csv", "EncodedPixels"),
    "covidx": ("train.txt", None),
    "object-cxr": ("dev.csv", "annotation"),
}


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_missing_root_names_the_path(tmp_path, kind):
    with pytest.raises(FileNotFoundError, match=f"{kind} dataset root .*nowhere.*not found"):
        load_dataset(kind, tmp_path / "nowhere")


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_missing_table_names_the_file(tmp_path, kind):
    root = BUILDERS[kind](tmp_path / "ds")
    name, _ = MAIN_TABLE[kind]
    (root / name).unlink()
    with pytest.raises((FileNotFoundError, DatasetLayoutError)) as info:
        load_dataset(kind, root)
    assert name.split(".")[0] in str(info.value) and str(root) in str(info.value)


@pytest.mark.parametrize("kind", [k for k in sorted(KINDS) if MAIN_TABLE[k][1]])
def test_missing_column_names_file_and_column(tmp_path, kind):
    root = BUILDERS[kind](tmp_path / "ds")
    name, column = MAIN_TABLE[kind]
    df = pd.read_csv(root / name, dtype=str, keep_default_na=False)
    df.columns = [c.strip() for c in df.columns]
    df.drop(columns=[column]).to_csv(root / name, index=False)
    with pytest.raises(DatasetLayoutError, match=rf"{name} lacks column\(s\) \[{column!r}\]"):
        load_dataset(kind, root)


def test_mimic_gz_table_that_is_not_gzip(tmp_path):
    root = make_mimic_official_tree(tmp_path / "m")
    (root / "mimic-cxr-2.0.0-split.csv.gz").write_bytes(b"not gzip at all")
    with pytest.raises(DatasetLayoutError, match="split.csv.gz is not a readable CSV"):
        load_dataset("mimic-cxr-jpg", root, reports=False)


def _corrupt(path: Path, how: str) -> None:
    data = path.read_bytes()
    path.write_bytes(b"\x00garbage" * 20 if how == "garbage" else data[: len(data) // 2])


@pytest.mark.parametrize("how", ["garbage", "truncated"])
def test_corrupt_image_is_skipped_counted_or_raises_in_strict(tmp_path, how):
    root = make_phantom_tree(tmp_path / "p")
    table, _ = load_dataset("mimic-cxr-jpg", root)
    victim = Path(table.loc[table["image_id"] == D["f3"], "path"].iat[0])   # an image without boxes
    _corrupt(victim, how)
    # without verification the file is only checked for existence (fast path)
    assert len(load_dataset("mimic-cxr-jpg", root)[0]) == 4
    table, summary = load_dataset("mimic-cxr-jpg", root, verify_images=True)
    assert len(table) == 3 and D["f3"] not in set(table["image_id"])
    assert summary.skipped == {"corrupt image": 1} and str(victim) in summary.examples["corrupt image"][0]
    with pytest.raises(RecordError, match=f"corrupt image: {victim}"):
        load_dataset("mimic-cxr-jpg", root, verify_images=True, strict=True)


def test_row_pointing_to_a_missing_file(tmp_path):
    root = make_chexpert_tree(tmp_path)
    victim = root / "train" / "patient00002" / "study2" / "view1_frontal.jpg"
    victim.unlink()
    table, summary = load_dataset("chexpert", root)
    assert len(table) == 3 and summary.skipped == {"missing file": 1}
    assert str(victim) in summary.examples["missing file"][0]
    with pytest.raises(RecordError, match="missing file"):
        load_dataset("chexpert", root, strict=True)


def test_empty_and_missing_reports(tmp_path):
    root = make_phantom_tree(tmp_path / "p")
    report = root / "files" / f"p{S1[:2]}" / f"p{S1}" / f"s{ST1}.txt"
    report.write_text("  \n")
    table, summary = load_dataset("mimic-cxr-jpg", root)
    assert summary.skipped == {"empty report": 1}
    assert set(table["study_id"]) == {"90000002", "90000003"}   # both images of study 1 gone
    report.unlink()
    _, summary = load_dataset("mimic-cxr-jpg", root)
    assert summary.skipped == {"missing report": 2 - 1}
    with pytest.raises(RecordError, match="missing report"):
        load_dataset("mimic-cxr-jpg", root, strict=True)
    # reports not wanted: no complaint
    assert load_dataset("mimic-cxr-jpg", root, reports=False)[1].n_skipped == 0


def test_unknown_view_skipped_or_strict(tmp_path):
    root = make_mimic_official_tree(tmp_path / "m")
    _, summary = load_dataset("mimic-cxr-jpg", root, reports=False)
    assert summary.skipped["unknown view"] == 1   # the blank one; "AP AXIAL" is read as AP
    assert any("ViewPosition ''" in e for e in summary.examples["unknown view"])
    with pytest.raises(RecordError, match="unknown view"):
        load_dataset("mimic-cxr-jpg", root, reports=False, strict=True)
    root2 = make_nih_tree(tmp_path / "nih")
    df = pd.read_csv(root2 / "Data_Entry_2017.csv")
    df.loc[0, "View Position"] = "OBLIQUE"
    df.to_csv(root2 / "Data_Entry_2017.csv", index=False)
    t, s = load_dataset("nih-cxr14", root2)
    assert s.skipped == {"unknown view": 1} and len(t) == 4
    root3 = make_chexpert_tree(tmp_path / "cx")
    df = pd.read_csv(root3 / "train.csv", dtype=str, keep_default_na=False)
    df.loc[2, "AP/PA"] = "RL"   # CheXpert has a few decubitus "frontal" rows
    df.to_csv(root3 / "train.csv", index=False)
    t, s = load_dataset("chexpert", root3)
    assert s.skipped == {"unknown view": 1} and "'RL'" in s.examples["unknown view"][0]


@pytest.mark.parametrize("bad", ["../../etc/passwd", "/etc/passwd", "C:\\Windows\\win.ini",
                                 "CheXpert-v1.0-small/../../../etc/passwd"])
def test_paths_outside_the_root_are_refused(tmp_path, bad):
    root = make_chexpert_tree(tmp_path)
    df = pd.read_csv(root / "valid.csv", dtype=str, keep_default_na=False)
    df.loc[0, "Path"] = bad
    df.to_csv(root / "valid.csv", index=False)
    table, summary = load_dataset("chexpert", root)
    assert summary.skipped == {"unsafe path": 1} and len(table) == 3
    assert not table["path"].str.contains("passwd|win.ini").any()
    with pytest.raises(RecordError, match="unsafe path"):
        load_dataset("chexpert", root, strict=True)


def test_unsafe_paths_in_other_layouts(tmp_path):
    root = make_covidx_tree(tmp_path / "c")
    with open(root / "test.txt", "a") as fh:
        fh.write("9 ../../../etc/passwd negative rsna\n")
    _, s = load_dataset("covidx", root)
    assert s.skipped == {"unsafe path": 1}
    root = make_object_cxr_tree(tmp_path / "o")
    with open(root / "dev.csv", "a") as fh:
        fh.write("/etc/hosts,\n")
    _, s = load_dataset("object-cxr", root)
    assert s.skipped == {"unsafe path": 1}
    root, _ = make_siim_tree(tmp_path / "s")
    with open(root / "train-rle.csv", "a") as fh:
        fh.write("../../secret, -1\n")
    _, s = load_dataset("siim-acr", root)
    assert s.skipped == {"unsafe path": 1}
    with pytest.raises(UnsafePathError):
        resolve_inside(tmp_path, "a/../../b")
    assert resolve_inside(tmp_path, "a/b.png") == tmp_path / "a" / "b.png"


def test_bad_values_are_skipped_with_reasons(tmp_path):
    root = make_chexpert_tree(tmp_path / "cx")
    df = pd.read_csv(root / "train.csv", dtype=str, keep_default_na=False)
    df.loc[0, "Edema"] = "2.0"
    df.to_csv(root / "train.csv", index=False)
    _, s = load_dataset("chexpert", root)
    assert s.skipped == {"bad label value": 1} and "Edema" in s.examples["bad label value"][0]

    root, _ = make_siim_tree(tmp_path / "siim")
    text = (root / "train-rle.csv").read_text().replace(", -1", ", 5 7 3")   # odd count of numbers
    (root / "train-rle.csv").write_text(text)
    _, s = load_dataset("siim-acr", root)
    assert s.skipped == {"bad mask": 1}

    root = make_object_cxr_tree(tmp_path / "ocxr")
    (root / "dev.csv").write_text("image_name,annotation\n08001.jpg,7 1 2 3 4\n")
    t, s = load_dataset("object-cxr", root)
    assert s.skipped == {"bad annotation": 1} and "type 7" in s.examples["bad annotation"][0]

    root = make_rsna_tree(tmp_path / "rsna")
    with open(root / "stage_2_train_labels.csv", "a") as fh:
        fh.write("0004cfab-14fd-4e49-80ba-63a80b6bddd6,1,2,3,4,1\n")   # contradicts Target 0
        fh.write("ffffffff-0000-0000-0000-000000000000,,,,,1\n")       # positive without a box
    _, s = load_dataset("rsna-pneumonia", root)
    assert s.skipped == {"bad label value": 1, "conflicting rows in stage_2_train_labels.csv": 1}

    root = make_covidx_tree(tmp_path / "covidx")
    with open(root / "test.txt", "a") as fh:
        fh.write("only-two fields\n9 x.png tuberculosis nih\n")
    _, s = load_dataset("covidx", root)
    assert s.skipped == {"bad line": 1, "bad label value": 1}


def test_corrupt_and_missing_dicoms(tmp_path):
    root = make_rsna_tree(tmp_path / "rsna")
    images = sorted((root / "stage_2_train_images").glob("*.dcm"))
    images[0].write_bytes(b"this is not a DICOM file")
    data = images[1].read_bytes()
    images[1].write_bytes(data[: len(data) - 600])      # header intact, pixels truncated
    images[2].unlink()
    table, s = load_dataset("rsna-pneumonia", root)
    assert s.skipped == {"corrupt image": 1, "missing file": 1} and len(table) == 1
    table, s = load_dataset("rsna-pneumonia", root, verify_images=True)
    assert s.skipped == {"corrupt image": 2, "missing file": 1} and len(table) == 0
    assert s.kept == 0


def test_read_image_errors_name_the_file(tmp_path):
    with pytest.raises(ImageReadError, match="nope.png: file not found"):
        read_image(tmp_path / "nope.png")
    (tmp_path / "text.jpg").write_text("hello")
    with pytest.raises(ImageReadError, match="text.jpg: not an image"):
        read_image(tmp_path / "text.jpg")
    (tmp_path / "bad.dcm").write_bytes(b"\x00" * 10)
    with pytest.raises(ImageReadError, match="bad.dcm"):
        read_image(tmp_path / "bad.dcm")


@pytest.mark.parametrize("reader", ["read_image", "read_pixels"])
def test_pillow_readers_name_the_file_and_the_failure(tmp_path, reader):
    import io

    import numpy as np
    from PIL import Image

    from support.cleanup.pixels import read_pixels

    read = {"read_image": read_image, "read_pixels": read_pixels}[reader]
    with pytest.raises(ImageReadError, match="nope.png: file not found"):
        read(tmp_path / "nope.png")
    (tmp_path / "text.png").write_text("hello")
    with pytest.raises(ImageReadError, match="text.png: not an image Pillow can identify"):
        read(tmp_path / "text.png")
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8)).save(buf, "PNG")
    (tmp_path / "cut.png").write_bytes(buf.getvalue()[:-200])            # header intact, data cut
    with pytest.raises(ImageReadError, match="cut.png: cannot decode"):
        read(tmp_path / "cut.png")


def test_summary_is_a_readable_table(tmp_path):
    s = DatasetSummary("demo", "/data/demo", max_examples=2)
    for i in range(3):
        s.skip("missing file", f"/data/demo/{i}.jpg", "image x")
    s.skip("unknown view", "row 7", "'OBLIQUE'")
    s.exclude("view LL not selected", 4)
    s.note("split by patient hash")
    s.kept = 10
    text = str(s)
    assert text.splitlines()[0] == "demo at /data/demo: 10 records kept, 4 skipped, 4 excluded"
    assert "missing file" in text and "      3" in text and "/data/demo/1.jpg" in text
    assert "/data/demo/2.jpg" not in text   # only the first max_examples examples
    assert "note: split by patient hash" in text
    assert s.to_dict()["skipped"] == {"missing file": 3, "unknown view": 1}


def test_strict_raise_names_the_dataset_and_record(tmp_path):
    s = DatasetSummary("nih-cxr14", "/x", strict=True)
    with pytest.raises(RecordError, match=r"nih-cxr14 \(/x\): missing file: a.png: gone"):
        s.skip("missing file", "a.png", "gone")
