"""MimicLayoutWriter: the MIMIC-CXR-JPG layout, deterministic bytes, resume, and refusals."""

import csv
import io
import json
import math

import numpy as np
import pytest
from PIL import Image

from support.data.rle import rle_decode
from support.data.schema import CHEXPERT_LABELS
from support.data.writer import (
    MimicLayoutWriter, encode_jpeg, make_dicom_id, make_study_id, make_subject_id,
)

S1, S2 = make_subject_id(32), make_subject_id(1234)
ST1, ST2 = make_study_id(414267), make_study_id(7)
D1, D2, D3 = make_dicom_id("a", 1), make_dicom_id("a", 2), make_dicom_id("b", 1)


def _image(seed: int, shape=(48, 40)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    # smooth content so JPEG round-trips closely
    y, x = np.mgrid[:shape[0], :shape[1]]
    return np.clip(100 + 60 * np.sin(x / 7 + seed) + 40 * np.cos(y / 9) + rng.normal(0, 2, shape),
                   0, 255).astype(np.uint8)


def _rows(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _write_dataset(root, order=(0, 1, 2), provenance_columns=("generator", "seed", "prompt")):
    calls = [
        lambda w: (w.add_image(subject_id=S1, study_id=ST1, dicom_id=D1, image=_image(1), view="PA",
                               split="train", provenance={"generator": "ddpm", "seed": 7,
                                                          "prompt": "PA, clear lungs, \"no\" effusion"},
                               study_date="21800506"),
                   w.add_box(D1, "Lung Lesion", 4, 5.5, 10, 12.25),
                   w.add_mask(D1, "Pneumothorax", _mask())),
        lambda w: (w.add_image(subject_id=S1, study_id=ST1, dicom_id=D2, image=_image(2), view="LATERAL",
                               split="train"),
                   w.add_report(S1, ST1, "FINAL REPORT\n FINDINGS: Clear.\n IMPRESSION: Normal."),
                   w.add_labels(S1, ST1, {"No Finding": 1.0, "Pneumothorax": 0.0, "Edema": -1.0}),
                   w.add_patient(S1, "F", 52)),
        lambda w: (w.add_image(subject_id=S2, study_id=ST2, dicom_id=D3, image=_image(3), view="AP",
                               split="test"),
                   w.add_patient(S2, "M", 70.5),
                   w.add_labels(S2, ST2, {"Cardiomegaly": 1.0}),
                   w.write_extra("phantom/clean/x.png", b"png-bytes")),
    ]
    with MimicLayoutWriter(root, "phantom", provenance_columns=provenance_columns,
                           info={"seed": 0}) as w:
        for i in order:
            calls[i](w)
    return root


def _mask():
    m = np.zeros((48, 40), bool)
    m[10:20, 5:9] = True
    m[30, 30] = True
    return m


def test_layout_paths_and_tables(tmp_path):
    root = _write_dataset(tmp_path / "ds")
    img = root / "files" / f"p{S1[:2]}" / f"p{S1}" / f"s{ST1}" / f"{D1}.jpg"
    assert img.is_file()
    assert (root / "files" / f"p{S2[:2]}" / f"p{S2}" / f"s{ST2}" / f"{D3}.jpg").is_file()
    report = root / "files" / f"p{S1[:2]}" / f"p{S1}" / f"s{ST1}.txt"
    assert report.read_text().startswith("FINAL REPORT\n FINDINGS: Clear.")

    decoded = np.asarray(Image.open(img))
    assert decoded.shape == (48, 40) and decoded.dtype == np.uint8
    assert np.abs(decoded.astype(int) - _image(1).astype(int)).mean() < 3

    meta = _rows(root / "mimic-cxr-2.0.0-metadata.csv")
    assert list(meta[0]) == ["dicom_id", "subject_id", "study_id", "PerformedProcedureStepDescription",
                             "ViewPosition", "Rows", "Columns", "StudyDate", "StudyTime",
                             "ProcedureCodeSequence_CodeMeaning", "ViewCodeSequence_CodeMeaning",
                             "PatientOrientationCodeSequence_CodeMeaning"]
    by_id = {r["dicom_id"]: r for r in meta}
    assert by_id[D1]["ViewPosition"] == "PA" and by_id[D1]["Rows"] == "48" and by_id[D1]["Columns"] == "40"
    assert by_id[D1]["StudyDate"] == "21800506"
    assert by_id[D1]["PerformedProcedureStepDescription"] == "CHEST (PA AND LAT)"
    assert by_id[D2]["ViewCodeSequence_CodeMeaning"] == "lateral"
    assert by_id[D3]["PerformedProcedureStepDescription"] == "CHEST (PORTABLE AP)"

    split = {r["dicom_id"]: r for r in _rows(root / "mimic-cxr-2.0.0-split.csv")}
    assert split[D1]["split"] == "train" and split[D3]["split"] == "test"
    assert split[D3]["subject_id"] == S2 and split[D3]["study_id"] == ST2

    labels = {r["study_id"]: r for r in _rows(root / "mimic-cxr-2.0.0-chexpert.csv")}
    assert list(labels[ST1])[2:] == list(CHEXPERT_LABELS)
    assert labels[ST1]["No Finding"] == "1.0" and labels[ST1]["Edema"] == "-1.0"
    assert labels[ST1]["Pneumothorax"] == "0.0" and labels[ST1]["Atelectasis"] == ""

    patients = {r["subject_id"]: r for r in _rows(root / "patients.csv")}
    assert patients[S1] == {"subject_id": S1, "gender": "F", "anchor_age": "52"}
    assert patients[S2]["anchor_age"] == "70.5"

    (box,) = _rows(root / "annotations" / "boxes.csv")
    assert box == {"dicom_id": D1, "label": "Lung Lesion", "x": "4", "y": "5.5", "width": "10",
                   "height": "12.25"}
    (mask,) = _rows(root / "annotations" / "masks.csv")
    assert mask["ImageId"] == D1 and (mask["width"], mask["height"]) == ("40", "48")
    assert np.array_equal(rle_decode(mask["EncodedPixels"], 40, 48), _mask())

    prov = {r["dicom_id"]: r for r in _rows(root / "provenance.csv")}
    assert prov[D1]["prompt"] == 'PA, clear lungs, "no" effusion' and prov[D1]["seed"] == "7"
    assert D2 not in prov

    assert (root / "phantom" / "clean" / "x.png").read_bytes() == b"png-bytes"
    meta_json = json.loads((root / "dataset.json").read_text())
    assert meta_json["name"] == "phantom" and meta_json["layout"] == "mimic-cxr-jpg-2.0.0"
    assert meta_json["counts"]["images"] == 3 and meta_json["counts"]["reports"] == 1
    assert meta_json["info"] == {"seed": 0}


def _tree_bytes(root):
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_inputs_same_bytes_in_any_order(tmp_path):
    a = _tree_bytes(_write_dataset(tmp_path / "a", order=(0, 1, 2)))
    b = _tree_bytes(_write_dataset(tmp_path / "b", order=(2, 0, 1)))
    assert a.keys() == b.keys()
    assert a == b
    assert encode_jpeg(_image(5)) == encode_jpeg(_image(5))


def test_resume_loads_rows_and_gives_the_same_dataset(tmp_path):
    full = _tree_bytes(_write_dataset(tmp_path / "full"))
    root = tmp_path / "resumed"
    _write_dataset(root, order=(0, 1))
    with MimicLayoutWriter(root, "phantom", info={"seed": 0}) as w:
        assert w.has_image(D1) and w.has_image(D2) and not w.has_image(D3)
        assert w.provenance_columns == ["generator", "seed", "prompt"]
        w.add_image(subject_id=S2, study_id=ST2, dicom_id=D3, image=_image(3), view="AP", split="test")
        w.add_patient(S2, "M", 70.5)
        w.add_labels(S2, ST2, {"Cardiomegaly": 1.0})
        w.write_extra("phantom/clean/x.png", b"png-bytes")
    assert _tree_bytes(root) == full

    # a row whose file vanished is not "had": the resumed job writes it again
    (root / "files" / f"p{S2[:2]}" / f"p{S2}" / f"s{ST2}" / f"{D3}.jpg").unlink()
    with MimicLayoutWriter(root, "phantom") as w:
        assert not w.has_image(D3)


def test_flush_every_writes_tables_before_close(tmp_path):
    w = MimicLayoutWriter(tmp_path, "syn", flush_every=2)
    w.add_image(subject_id=S1, study_id=ST1, dicom_id=D1, image=_image(1), view="PA", split="train")
    assert not (tmp_path / "mimic-cxr-2.0.0-metadata.csv").exists()
    w.add_image(subject_id=S1, study_id=ST1, dicom_id=D2, image=_image(2), view="PA", split="train")
    assert len(_rows(tmp_path / "mimic-cxr-2.0.0-metadata.csv")) == 2


def test_add_existing_image(tmp_path):
    with MimicLayoutWriter(tmp_path, "syn", provenance_columns=["sampler"]) as w:
        path = w.image_path(S1, ST1, D1)
        with pytest.raises(FileNotFoundError, match=D1):
            w.add_existing_image(subject_id=S1, study_id=ST1, dicom_id=D1, view="PA", split="train",
                                 rows=48, columns=40)
        path.parent.mkdir(parents=True)
        path.write_bytes(encode_jpeg(_image(1)))
        w.add_existing_image(subject_id=S1, study_id=ST1, dicom_id=D1, view="PA", split="train",
                             rows=48, columns=40, provenance={"sampler": "ddim"})
        assert w.has_image(D1)
    (row,) = _rows(tmp_path / "mimic-cxr-2.0.0-metadata.csv")
    assert row["dicom_id"] == D1 and row["Rows"] == "48"
    assert _rows(tmp_path / "provenance.csv") == [{"dicom_id": D1, "sampler": "ddim"}]


def test_ids_are_mimic_shaped():
    assert make_subject_id(32) == "90000032" and make_study_id(7) == "90000007"   # outside MIMIC's ranges
    d = make_dicom_id("x", 3)
    assert len(d) == 44 and d.count("-") == 4 and d == make_dicom_id("x", 3) != make_dicom_id("x", 4)


@pytest.mark.parametrize("kwargs, match", [
    ({"subject_id": "20000001"}, "subject_id '20000001'"),
    ({"study_id": "1234"}, "study_id '1234'"),
    ({"dicom_id": "../../etc/passwd"}, "dicom_id"),
    ({"view": "OBLIQUE"}, "view 'OBLIQUE'"),
    ({"split": "val"}, "split 'val'"),
    ({"image": np.zeros((4, 4), np.float32)}, "uint8"),
    ({"image": np.zeros((4, 4, 3), np.uint8)}, "uint8"),
    ({"study_date": "2180-05-06"}, "YYYYMMDD"),
    ({"provenance": {"unknown": 1}}, "provenance key"),
])
def test_bad_image_calls_are_refused_and_leave_nothing(tmp_path, kwargs, match):
    args = dict(subject_id=S1, study_id=ST1, dicom_id=D1, image=_image(1), view="PA", split="train")
    args.update(kwargs)
    w = MimicLayoutWriter(tmp_path, "syn")
    with pytest.raises(ValueError, match=match):
        w.add_image(**args)
    assert not (tmp_path / "files").exists()
    w.close()
    assert _rows(tmp_path / "mimic-cxr-2.0.0-metadata.csv") == []


def test_consistency_rules(tmp_path):
    w = MimicLayoutWriter(tmp_path, "syn")
    w.add_image(subject_id=S1, study_id=ST1, dicom_id=D1, image=_image(1), view="PA", split="train")
    with pytest.raises(ValueError, match="splits must be by patient"):
        w.add_image(subject_id=S1, study_id=ST1, dicom_id=D2, image=_image(2), view="LL", split="test")
    with pytest.raises(ValueError, match=f"study_id {ST1} already belongs to subject {S1}"):
        w.add_image(subject_id=S2, study_id=ST1, dicom_id=D3, image=_image(2), view="PA", split="train")
    with pytest.raises(ValueError, match="add the image first"):
        w.add_box(D2, "Pneumonia", 0, 0, 1, 1)
    with pytest.raises(ValueError, match="outside the 40x48 image"):
        w.add_box(D1, "Pneumonia", 35, 0, 10, 10)
    with pytest.raises(ValueError, match="positive size"):
        w.add_box(D1, "Pneumonia", 1, 1, 0, 10)
    with pytest.raises(ValueError, match=r"shape \(48, 48\)"):
        w.add_mask(D1, "Pneumothorax", np.zeros((48, 48), bool))
    with pytest.raises(ValueError, match="bool"):
        w.add_mask(D1, "Pneumothorax", np.zeros((48, 40), np.uint8))
    with pytest.raises(ValueError, match="unknown name"):
        w.add_labels(S1, ST1, {"Nodule": 1.0})
    with pytest.raises(ValueError, match="expected 1, 0, -1 or NaN"):
        w.add_labels(S1, ST1, {"Edema": 0.5})
    with pytest.raises(ValueError, match="sex"):
        w.add_patient(S1, "female", 40)
    with pytest.raises(ValueError, match="age"):
        w.add_patient(S1, "F", -3)
    with pytest.raises(ValueError, match="non-empty text"):
        w.add_report(S1, ST1, "   ")
    for bad in ("../outside.png", "/etc/passwd", "phantom/../../x", "mimic-cxr-2.0.0-split.csv",
                "files/p10/x.jpg"):
        with pytest.raises(ValueError, match="extra file"):
            w.write_extra(bad, b"x")
    w.add_labels(S1, ST1, {"Edema": math.nan})
    w.close()
    assert not (tmp_path.parent / "outside.png").exists()


def test_reopening_with_another_dataset_name_is_refused(tmp_path):
    MimicLayoutWriter(tmp_path, "phantom").close()
    with pytest.raises(ValueError, match="holds dataset 'phantom'"):
        MimicLayoutWriter(tmp_path, "synthetic:ddpm")


def test_jpeg_is_baseline_grayscale():
    im = Image.open(io.BytesIO(encode_jpeg(_image(4), quality=90)))
    assert im.mode == "L" and im.format == "JPEG" and im.size == (40, 48)
