"""Every adapter on a small tree in its dataset's official format, and the DICOM display pipeline.

The builders here (``write_dicom``, ``make_*_tree``) are also used by test_bad_input.py and
test_datasets.py.
"""

from __future__ import annotations

import gzip
import io
import math
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from support.data.adapters import KINDS, load_dataset, siim_acr
from support.data.dicom import read_dicom, read_dicom_header
from support.data.images import read_image
from support.data.records import TABLE_COLUMNS, patient_split
from support.data.rle import rle_decode, rle_encode
from support.data.schema import CHEXPERT_LABELS
from support.data.writer import MimicLayoutWriter, make_dicom_id, make_study_id, make_subject_id

IDENTIFIERS = ("Doe^Jane", "MRN-778812", "ACC-55501", "20190314", "General Hospital")


# ------------------------------------------------------------------------------------ builders
def gradient(h=40, w=32, hi=255, dtype=np.uint8) -> np.ndarray:
    y, x = np.mgrid[:h, :w]
    return np.round((x + y) / (h + w - 2) * hi).astype(dtype)


def write_jpeg(path: Path, arr: np.ndarray | None = None, mode: str = "L") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = gradient() if arr is None else arr
    im = Image.fromarray(arr, "L")
    im.convert(mode).save(path, quality=95) if path.suffix == ".jpg" else im.convert(mode).save(path)
    return path


def write_dicom(path: Path, pixels: np.ndarray, *, photometric: str = "MONOCHROME2", bits_stored: int = 12,
                window: tuple[float, float] | None = None, rescale: tuple[float, float] | None = None,
                voi_lut: np.ndarray | None = None, signed: bool = False, view: str = "PA",
                sex: str = "F", age: str = "045Y", jpeg8: bool = False,
                patient_id: str | None = IDENTIFIERS[1]) -> Path:
    """A minimal radiograph DICOM with identifying tags filled in (they must never leak);
    ``patient_id=None`` leaves PatientID out."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.encaps import encapsulate
    from pydicom.uid import ExplicitVRLittleEndian, JPEGBaseline8Bit, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1"  # CR image storage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = JPEGBaseline8Bit if jpeg8 else ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.PatientName, ds.AccessionNumber = IDENTIFIERS[0], IDENTIFIERS[2]
    if patient_id is not None:
        ds.PatientID = patient_id
    ds.StudyDate, ds.InstitutionName = IDENTIFIERS[3], IDENTIFIERS[4]
    with warnings.catch_warnings():   # RSNA writes ages like "51", not the standard "051Y"
        warnings.simplefilter("ignore")
        ds.PatientSex, ds.PatientAge, ds.ViewPosition, ds.Modality = sex, age, view, "CR"
    ds.BodyPartExamined = "CHEST"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    if jpeg8:
        buf = io.BytesIO()
        Image.fromarray(pixels.astype(np.uint8), "L").save(buf, format="JPEG", quality=100)
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
        ds.PixelData = encapsulate([buf.getvalue()])
        ds["PixelData"].VR = "OB"
    else:
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, bits_stored, bits_stored - 1
        ds.PixelRepresentation = 1 if signed else 0
        ds.PixelData = pixels.astype(np.int16 if signed else np.uint16).tobytes()
    if window:
        ds.WindowCenter, ds.WindowWidth = window
    if rescale:
        ds.RescaleSlope, ds.RescaleIntercept = rescale
    if voi_lut is not None:
        item = Dataset()
        item.add_new(0x00283002, "US", [len(voi_lut), 0, 16])      # LUTDescriptor
        item.add_new(0x00283006, "US", [int(v) for v in voi_lut])  # LUTData
        ds.VOILUTSequence = [item]
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def make_mimic_official_tree(root: Path) -> Path:
    """MIMIC-CXR-JPG as PhysioNet ships it (.csv.gz) plus mimic-cxr-reports.zip beside it."""
    root.mkdir(parents=True)
    meta = pd.DataFrame([
        # dicom_id, subject, study, view, rows, cols
        ("02aa804e-bde0afdd-112c0b34-7bc16630-4e384014", "10000032", "50414267", "PA"),
        ("174413ec-4ec4c1f7-34ea26b7-c5f994f8-79ef1962", "10000032", "50414267", "LATERAL"),
        ("2a2277a9-b0ded155-c0de8eb9-c124d10e-82c5caab", "10000032", "53189527", "AP"),
        ("68b5c4b1-227d0485-9cc38c3f-7b84ab51-4b472714", "10000764", "57375967", "AP"),
        ("096052b7-d256dc40-453a102b-fa7d01c6-1b22c6b4", "10000764", "57375967", "AP AXIAL"),
        ("8959e402-2175d68d-edba5a6c-520f3d0b-2f8b0e4c", "10000898", "50771383", ""),
    ], columns=["dicom_id", "subject_id", "study_id", "ViewPosition"])
    meta.insert(3, "PerformedProcedureStepDescription", "CHEST (PA AND LAT)")
    meta["Rows"], meta["Columns"] = 40, 32
    meta["StudyDate"], meta["StudyTime"] = "21800506", "213014.531"
    meta["ProcedureCodeSequence_CodeMeaning"] = "CHEST (PA AND LAT)"
    meta["ViewCodeSequence_CodeMeaning"] = "postero-anterior"
    meta["PatientOrientationCodeSequence_CodeMeaning"] = "Erect"
    split = meta[["dicom_id", "study_id", "subject_id"]].assign(
        split=["train", "train", "train", "test", "test", "validate"])
    labels = pd.DataFrame([
        ("10000032", "50414267", {"No Finding": 1.0}),
        ("10000032", "53189527", {"Cardiomegaly": 1.0, "Edema": -1.0, "Pleural Effusion": 0.0}),
        ("10000764", "57375967", {"Pneumonia": -1.0}),
    ], columns=["subject_id", "study_id", "l"])
    for name in CHEXPERT_LABELS:
        labels[name] = labels["l"].map(lambda d: d.get(name, np.nan))
    labels = labels.drop(columns="l")
    for stem, df in (("metadata", meta), ("split", split), ("chexpert", labels)):
        with gzip.open(root / f"mimic-cxr-2.0.0-{stem}.csv.gz", "wt") as fh:
            df.to_csv(fh, index=False)
    for r in meta.itertuples():
        write_jpeg(root / "files" / f"p{r.subject_id[:2]}" / f"p{r.subject_id}" / f"s{r.study_id}" / f"{r.dicom_id}.jpg")
    reports = {
        "50414267": "                                 FINAL REPORT\n EXAMINATION:  CHEST (PA AND LAT)\n\n"
                    " INDICATION:  ___F with new onset ascites\n\n FINDINGS:\n\n There is no focal consolidation.\n"
                    " Heart size is normal.\n\n IMPRESSION:\n\n No acute cardiopulmonary process.\n",
        "53189527": " FINAL REPORT\n FINDINGS AND IMPRESSION:  Mild cardiomegaly, possible edema.\n",
        "57375967": " FINAL REPORT\n CONCLUSION:  Possible right lower lobe pneumonia.\n",
    }
    subjects = {"50414267": "10000032", "53189527": "10000032", "57375967": "10000764"}
    with zipfile.ZipFile(root.parent / "mimic-cxr-reports.zip", "w") as zf:
        for study, text in reports.items():
            s = subjects[study]
            zf.writestr(f"files/p{s[:2]}/p{s}/s{study}.txt", text)
    return root


S1, S2 = make_subject_id(1), make_subject_id(2)
ST1, ST2, ST3 = make_study_id(1), make_study_id(2), make_study_id(3)
D = {k: make_dicom_id("t", k) for k in ("f1", "l1", "f2", "f3")}


def make_phantom_tree(root: Path) -> Path:
    """A set written by MimicLayoutWriter, as the phantom and synthetic generators write theirs."""
    mask = np.zeros((40, 32), bool)
    mask[5:15, 4:12] = True
    with MimicLayoutWriter(root, "phantom", provenance_columns=["generator", "seed"]) as w:
        w.add_image(subject_id=S1, study_id=ST1, dicom_id=D["f1"], image=gradient(), view="PA", split="train",
                    provenance={"generator": "phantom", "seed": 3})
        w.add_image(subject_id=S1, study_id=ST1, dicom_id=D["l1"], image=gradient(), view="LATERAL", split="train")
        w.add_image(subject_id=S1, study_id=ST2, dicom_id=D["f2"], image=gradient(), view="AP", split="train")
        w.add_image(subject_id=S2, study_id=ST3, dicom_id=D["f3"], image=gradient(), view="PA", split="test")
        w.add_report(S1, ST1, "FINAL REPORT\n FINDINGS: Small left pneumothorax.\n IMPRESSION: Left pneumothorax.")
        w.add_report(S1, ST2, "FINAL REPORT\n FINDINGS: 14 mm nodule in the right upper zone.\n"
                              " IMPRESSION: Right upper lobe nodule.")
        w.add_report(S2, ST3, "FINAL REPORT\n FINDINGS: Normal.\n IMPRESSION: No acute process.")
        w.add_labels(S1, ST1, {"Pneumothorax": 1.0})
        w.add_labels(S1, ST2, {"Lung Lesion": 1.0})
        w.add_labels(S2, ST3, {"No Finding": 1.0})
        w.add_patient(S1, "F", 61)
        w.add_patient(S2, "M", 34)
        w.add_box(D["f2"], "Lung Lesion", 8, 4, 16, 20)
        w.add_mask(D["f1"], "Pneumothorax", mask)
        w.add_mask(D["f3"], "Pneumothorax", np.zeros((40, 32), bool))
    return root


def make_chexpert_tree(root: Path) -> Path:
    top = root / "CheXpert-v1.0-small"
    header = ["Path", "Sex", "Age", "Frontal/Lateral", "AP/PA", *CHEXPERT_LABELS]

    def row(rel, sex, age, fl, appa, **labels):
        write_jpeg(root / rel)   # images live beside the CSVs' release folder prefix
        return [f"CheXpert-v1.0-small/{rel}", sex, age, fl, appa,
                *[labels.get(k.replace(" ", "_"), "") for k in CHEXPERT_LABELS]]

    train = [row("train/patient00001/study1/view1_frontal.jpg", "Female", 68, "Frontal", "AP",
                 Edema="-1.0", Cardiomegaly="1.0", Pneumothorax="0.0"),
             row("train/patient00001/study1/view2_lateral.jpg", "Female", 68, "Lateral", "",
                 Edema="-1.0", Cardiomegaly="1.0", Pneumothorax="0.0"),
             row("train/patient00002/study2/view1_frontal.jpg", "Male", 87, "Frontal", "PA", No_Finding="1.0")]
    valid = [row("valid/patient64541/study1/view1_frontal.jpg", "Male", 73, "Frontal", "AP",
                 Atelectasis="1.0", Edema="0.0")]
    top.mkdir(parents=True)
    pd.DataFrame(train, columns=header).to_csv(top / "train.csv", index=False)
    pd.DataFrame(valid, columns=header).to_csv(top / "valid.csv", index=False)
    # move images under the release folder, as the official archive extracts
    for sub in ("train", "valid"):
        (root / sub).rename(top / sub)
    return top


def make_nih_tree(root: Path) -> Path:
    rows = [("00000001_000.png", "Cardiomegaly", 0, 1, 58, "M", "PA"),
            ("00000001_001.png", "Cardiomegaly|Emphysema", 1, 1, 58, "M", "PA"),
            ("00000002_000.png", "No Finding", 0, 2, 81, "F", "AP"),
            ("00000003_000.png", "Infiltration|Nodule", 0, 3, 414, "F", "PA"),   # NIH's famous age typo
            ("00000004_000.png", "Effusion", 0, 4, 30, "M", "PA")]
    df = pd.DataFrame(rows, columns=["Image Index", "Finding Labels", "Follow-up #", "Patient ID",
                                     "Patient Age", "Patient Gender", "View Position"])
    df["OriginalImage[Width"], df["Height]"] = 2500, 2048
    df["OriginalImagePixelSpacing[x"], df["y]"] = 0.143, 0.143
    root.mkdir(parents=True)
    df.to_csv(root / "Data_Entry_2017.csv", index=False)
    # the official box file: "Bbox [x,y,w,h]" split over four columns, then empty ones; its
    # boxes are in the 1024 px of the released PNGs, whatever size the copies here are
    (root / "BBox_List_2017.csv").write_text(
        "Image Index,Finding Label,Bbox [x,y,w,h],,,,,,\n"
        "00000003_000.png,Nodule,256,128,256,384,,,\n"
        "00000001_000.png,Cardiomegaly,128,512,768,384,,,\n")
    (root / "train_val_list.txt").write_text("00000001_000.png\n00000001_001.png\n00000003_000.png\n00000004_000.png\n")
    (root / "test_list.txt").write_text("00000002_000.png\n")
    for i, name in enumerate(df["Image Index"]):
        folder = root / ("images_001" if i < 3 else "images_002") / "images"
        write_jpeg(folder / name, gradient(32, 32), mode="RGBA" if name == "00000004_000.png" else "L")
    return root


def make_rsna_tree(root: Path) -> Path:
    ids = ["0004cfab-14fd-4e49-80ba-63a80b6bddd6", "00313ee0-9eaa-42f4-b0ab-c148ed3241cd",
           "00436515-870c-4b36-a041-de91049b9ab4"]
    (root / "stage_2_train_images").mkdir(parents=True)
    (root / "stage_2_train_labels.csv").write_text(
        "patientId,x,y,width,height,Target\n"
        f"{ids[0]},,,,,0\n"
        f"{ids[1]},,,,,0\n"
        f"{ids[2]},4,8,10,12,1\n"
        f"{ids[2]},18,6,8,20,1\n")
    (root / "stage_2_detailed_class_info.csv").write_text(
        f"patientId,class\n{ids[0]},No Lung Opacity / Not Normal\n{ids[1]},Normal\n"
        f"{ids[2]},Lung Opacity\n{ids[2]},Lung Opacity\n")
    write_dicom(root / "stage_2_train_images" / f"{ids[0]}.dcm", gradient(), jpeg8=True, view="PA", age="51")
    write_dicom(root / "stage_2_train_images" / f"{ids[1]}.dcm", gradient(hi=4095, dtype=np.uint16),
                photometric="MONOCHROME1", view="AP", sex="M")
    write_dicom(root / "stage_2_train_images" / f"{ids[2]}.dcm", gradient(), jpeg8=True, view="AP", age="093Y")
    return root


def make_siim_tree(root: Path) -> tuple[Path, np.ndarray]:
    m1 = np.zeros((40, 32), bool)
    m1[10:20, 3:9] = True
    m2 = np.zeros((40, 32), bool)
    m2[25:30, 20:28] = True
    ids = ["1.2.276.0.7230010.3.1.4.8323329.5597.1517875188.959090",
           "1.2.276.0.7230010.3.1.4.8323329.12515.1517875239.501137"]
    (root).mkdir(parents=True)
    (root / "train-rle.csv").write_text(
        "ImageId, EncodedPixels\n"
        f"{ids[0]}, -1\n"
        f"{ids[1]}, {rle_encode(m1)}\n"
        f"{ids[1]}, {rle_encode(m2)}\n")
    for i, image_id in enumerate(ids):
        folder = root / "dicom-images-train" / f"1.2.276.0.7230010.3.1.2.{i}" / f"1.2.276.0.7230010.3.1.3.{i}"
        write_dicom(folder / f"{image_id}.dcm", gradient(hi=4095, dtype=np.uint16),
                    photometric="MONOCHROME1" if i else "MONOCHROME2", view="PA")
    return root, m1 | m2


def make_covidx_tree(root: Path) -> Path:
    lines = {"train": ["419639-003251 MIDRC-RICORD-1C-419639-003251-46647-0.png positive ricord",
                       "3 SARS-10.1148rg.242035193-g04mr34g04a-Fig4a-day7.jpeg positive cohen",
                       "3 SARS-10.1148rg.242035193-g04mr34g04b-Fig4b-day12.jpeg positive cohen",
                       "8a4f3d0e-1b5c-4f6c-9d2e-000000000001 8a4f3d0e-1b5c-4f6c-9d2e-000000000001.png negative rsna"],
             "val": ["3 SARS-10.1148rg.242035193-g04mr34g04c-Fig4c.jpeg positive cohen"],
             "test": ["7 8a4f-test.png negative rsna"]}
    for split, rows in lines.items():
        for line in rows:
            write_jpeg(root / split / line.split()[1])
        (root / f"{split}.txt").write_text("\n".join(rows) + "\n")
    return root


def make_object_cxr_tree(root: Path) -> Path:
    for name, folder in (("00001.jpg", "train"), ("00002.jpg", "train"), ("08001.jpg", "dev")):
        write_jpeg(root / folder / name, gradient(h=50, w=40))
    (root / "train.csv").write_text(
        "image_name,annotation\n"
        "00001.jpg,0 4 5 14 15;1 20 30 30 40\n"
        "00002.jpg,\n")
    (root / "dev.csv").write_text("image_name,annotation\n08001.jpg,2 10 10 20 10 15 30\n")
    return root


def assert_no_identifiers(table: pd.DataFrame) -> None:
    text = table.astype(str).to_csv()
    for ident in IDENTIFIERS:
        assert ident not in text, f"identifier {ident!r} leaked into the record table"


def _by_id(table):
    return {r["image_id"]: r for r in table.to_dict("records")}


# ------------------------------------------------------------------------------------ DICOM
def test_dicom_monochrome2_and_monochrome1_normalised_by_bits_stored(tmp_path):
    px = gradient(hi=4095, dtype=np.uint16)
    m2, h2 = read_dicom(write_dicom(tmp_path / "m2.dcm", px))
    m1, h1 = read_dicom(write_dicom(tmp_path / "m1.dcm", px, photometric="MONOCHROME1"))
    assert m2.dtype == np.float32 and m2.shape == (40, 32)
    np.testing.assert_allclose(m2, px / 4095.0, atol=1e-6)
    np.testing.assert_allclose(m1, 1.0 - px / 4095.0, atol=1e-6)   # MONOCHROME1 inverted
    assert (h2.rows, h2.columns, h2.bits_stored, h2.view, h2.sex, h2.age) == (40, 32, 12, "PA", "F", 45.0)
    assert h1.photometric == "MONOCHROME1"
    # 10-bit data normalises by its own range
    ten, _ = read_dicom(write_dicom(tmp_path / "ten.dcm", gradient(hi=1023, dtype=np.uint16), bits_stored=10))
    assert ten.max() == pytest.approx(1.0)


def test_dicom_window_rescale_and_voi_lut(tmp_path):
    px = np.array([[0, 1000, 2000], [2047, 3000, 4095]], dtype=np.uint16)
    win, _ = read_dicom(write_dicom(tmp_path / "w.dcm", px, window=(2048, 2048)))
    assert win[0, 0] == 0.0 and win[1, 2] == 1.0           # below/above the window: clipped
    assert win[1, 0] == pytest.approx(0.5, abs=0.01)        # the centre maps to mid-grey
    assert win[0, 1] == pytest.approx((1000 - 1024) / 2048, abs=0.01) or win[0, 1] == 0.0
    nowin, _ = read_dicom(write_dicom(tmp_path / "w2.dcm", px, window=(2048, 2048)), apply_voi=False)
    np.testing.assert_allclose(nowin, px / 4095.0, atol=1e-6)

    # signed data with a rescale: normalised over the rescaled range
    spx = np.array([[-2048, 0], [1000, 2047]], dtype=np.int16)
    sig, _ = read_dicom(write_dicom(tmp_path / "s.dcm", spx, signed=True, rescale=(2.0, -10.0)))
    np.testing.assert_allclose(sig, (spx + 2048) / 4095.0, atol=1e-6)

    # a VOI LUT that inverts a 3-entry domain: output normalised by the LUT's own range
    lut = np.array([4000, 2000, 0])
    voi, _ = read_dicom(write_dicom(tmp_path / "v.dcm", np.array([[0, 1], [2, 7]], np.uint16), voi_lut=lut))
    np.testing.assert_allclose(voi, [[1.0, 0.5], [0.0, 0.0]], atol=1e-6)


def test_dicom_jpeg_baseline_like_rsna_and_siim(tmp_path):
    px = gradient()
    arr, header = read_dicom(write_dicom(tmp_path / "j.dcm", px, jpeg8=True, age="093Y"))
    assert np.abs(arr - px / 255.0).max() < 0.03
    assert header.age == 90.0   # ages over 89 are reported as 90
    assert not any(hasattr(header, f) for f in ("PatientName", "PatientID", "patient_id", "name", "date"))
    assert read_image(tmp_path / "j.dcm").shape == (40, 32)
    assert read_dicom_header(tmp_path / "j.dcm").bits_stored == 8


# ------------------------------------------------------------------------------------ adapters
def test_mimic_official_layout_with_gz_tables_and_reports_zip(tmp_path):
    root = make_mimic_official_tree(tmp_path / "mimic-cxr-jpg")
    table, summary = load_dataset("mimic-cxr-jpg", root, reports_root=tmp_path / "mimic-cxr-reports.zip",
                                  verify_images=True)
    assert list(table.columns) == list(TABLE_COLUMNS)
    recs = _by_id(table)
    assert len(recs) == 5   # "AP AXIAL" read as AP; the blank ViewPosition skipped as an unknown view
    assert summary.skipped == {"unknown view": 1}
    assert recs["096052b7-d256dc40-453a102b-fa7d01c6-1b22c6b4"]["view"] == "AP"
    pa = recs["02aa804e-bde0afdd-112c0b34-7bc16630-4e384014"]
    assert pa["view"] == "PA" and pa["split"] == "train" and pa["subject_id"] == "10000032"
    assert pa["findings"] == "There is no focal consolidation. Heart size is normal."
    assert pa["impression"] == "No acute cardiopulmonary process."
    assert pa["No Finding"] == 1.0 and math.isnan(pa["Edema"])
    assert Path(pa["path"]).is_file() and Path(pa["path"]).is_relative_to(root)
    ap = recs["2a2277a9-b0ded155-c0de8eb9-c124d10e-82c5caab"]
    assert ap["findings"] == ap["impression"] == "Mild cardiomegaly, possible edema."
    assert (ap["Cardiomegaly"], ap["Edema"], ap["Pleural Effusion"]) == (1.0, -1.0, 0.0)
    assert recs["68b5c4b1-227d0485-9cc38c3f-7b84ab51-4b472714"]["impression"].startswith("Possible right")

    ones, _ = load_dataset("mimic-cxr-jpg", root, reports=False, uncertain="ones")
    assert _by_id(ones)["2a2277a9-b0ded155-c0de8eb9-c124d10e-82c5caab"]["Edema"] == 1.0
    assert (ones["findings"] == "").all()
    pa_only, s = load_dataset("mimic-cxr-jpg", root, reports=False, views=["PA"])
    assert set(pa_only["view"]) == {"PA"} and s.excluded == {"view LATERAL not selected": 1,
                                                            "view AP not selected": 3}
    assert "no reports found" in " ".join(load_dataset("mimic-cxr-jpg", root)[1].notes)


def test_mimic_layout_written_by_the_writer(tmp_path):
    root = make_phantom_tree(tmp_path / "phantom")
    table, summary = load_dataset("mimic-cxr-jpg", root, verify_images=True)
    assert summary.n_skipped == 0 and summary.kept == 4
    assert set(table["dataset"]) == {"phantom"}   # the name in dataset.json
    recs = _by_id(table)
    f1, f2, f3 = recs[D["f1"]], recs[D["f2"]], recs[D["f3"]]
    assert (f1["sex"], f1["age"], f3["sex"], f3["age"]) == ("F", 61.0, "M", 34.0)
    assert f1["provenance"] == {"generator": "phantom", "seed": "3"} and recs[D["l1"]]["provenance"] == {}
    assert f2["boxes"] == [{"label": "Lung Lesion", "x0": 0.25, "y0": 0.1, "x1": 0.75, "y1": 0.6}]
    (m,) = f1["masks"]
    assert rle_decode(m["rle"], m["width"], m["height"])[5:15, 4:12].all()
    assert f3["masks"][0]["rle"] == "-1"
    assert f1["Pneumothorax"] == 1.0 and f1["impression"] == "Left pneumothorax."
    assert recs[D["l1"]]["findings"] == "Small left pneumothorax."   # lateral shares the study's report
    assert list(table["split"]) == ["train"] * 3 + ["test"]


def test_chexpert(tmp_path):
    root = make_chexpert_tree(tmp_path)
    table, summary = load_dataset("chexpert", root, verify_images=True)
    assert summary.n_skipped == 0 and len(table) == 4
    recs = _by_id(table)
    f = recs["patient00001_study1_view1_frontal"]
    assert (f["view"], f["sex"], f["age"], f["split"]) == ("AP", "F", 68.0, "train")
    assert f["study_id"] == "patient00001_study1" and f["Edema"] == -1.0 and math.isnan(f["Atelectasis"])
    assert recs["patient00001_study1_view2_lateral"]["view"] == "LATERAL"
    assert recs["patient64541_study1_view1_frontal"]["split"] == "validate"
    assert Path(f["path"]).is_file()
    for policy, value in (("ones", 1.0), ("zeros", 0.0)):
        t, _ = load_dataset("chexpert", root, uncertain=policy)
        assert _by_id(t)["patient00001_study1_view1_frontal"]["Edema"] == value
    t, _ = load_dataset("chexpert", root, uncertain="ignore", unmentioned="zeros")
    r = _by_id(t)["patient00001_study1_view1_frontal"]
    assert math.isnan(r["Edema"]) and r["Atelectasis"] == 0.0
    t, s = load_dataset("chexpert", root, frontal_only=True)
    assert len(t) == 3 and s.excluded["lateral view (frontal_only)"] == 1


def test_nih_cxr14(tmp_path):
    root = make_nih_tree(tmp_path / "nih")
    table, summary = load_dataset("nih-cxr14", root, verify_images=True, validate_fraction=0.0)
    assert summary.n_skipped == 0 and len(table) == 5
    recs = _by_id(table)
    a = recs["00000001_001"]
    assert a["source_labels"] == ["Cardiomegaly", "Emphysema"] and a["Cardiomegaly"] == 1.0
    assert a["Pneumothorax"] == 0.0 and math.isnan(a["Fracture"]) and a["No Finding"] == 0.0
    assert a["study_id"] == "1_1" and a["subject_id"] == "1" and a["view"] == "PA"
    n = recs["00000002_000"]
    assert n["No Finding"] == 1.0 and n["split"] == "test" and n["sex"] == "F" and n["age"] == 81.0
    nod = recs["00000003_000"]
    assert nod["Lung Lesion"] == 1.0 and nod["Lung Opacity"] == 1.0 and math.isnan(nod["age"])  # age 414
    assert nod["boxes"] == [{"label": "Nodule", "x0": 0.25, "y0": 0.125, "x1": 0.5, "y1": 0.5}]
    assert recs["00000004_000"]["Pleural Effusion"] == 1.0
    assert read_image(recs["00000004_000"]["path"]).ndim == 2   # an RGBA PNG, as a few NIH files are
    t, _ = load_dataset("nih-cxr14", root, validate_fraction=0.5)
    expected = {"validate" if patient_split(p, (0.5, 0.5, 0.0)) == "validate" else "train"
                for p in ("1", "3", "4")}
    assert set(t[t["split"] != "test"]["split"]) == expected


def test_rsna_pneumonia(tmp_path):
    root = make_rsna_tree(tmp_path / "rsna")
    table, summary = load_dataset("rsna-pneumonia", root, verify_images=True)
    assert summary.n_skipped == 0 and len(table) == 3
    recs = _by_id(table)
    pos = recs["00436515-870c-4b36-a041-de91049b9ab4"]
    assert pos["Pneumonia"] == 1.0 and pos["Lung Opacity"] == 1.0 and pos["view"] == "AP"
    assert pos["age"] == 90.0 and pos["sex"] == "F"
    assert pos["boxes"][0] == {"label": "Lung Opacity", "x0": 4 / 32, "y0": 8 / 40, "x1": 14 / 32, "y1": 20 / 40}
    assert len(pos["boxes"]) == 2
    normal = recs["00313ee0-9eaa-42f4-b0ab-c148ed3241cd"]
    assert normal["No Finding"] == 1.0 and normal["Pneumonia"] == 0.0 and normal["boxes"] == []
    assert recs["0004cfab-14fd-4e49-80ba-63a80b6bddd6"]["source_labels"] == ["No Lung Opacity / Not Normal"]
    assert_no_identifiers(table)
    assert all(r["split"] == patient_split(r["subject_id"]) for r in recs.values())


def test_siim_acr(tmp_path):
    root, union = make_siim_tree(tmp_path / "siim")
    table, summary = load_dataset("siim-acr", root, verify_images=True)
    assert summary.n_skipped == 0 and len(table) == 2
    recs = _by_id(table)
    pos = recs["1.2.276.0.7230010.3.1.4.8323329.12515.1517875239.501137"]
    assert pos["Pneumothorax"] == 1.0 and len(pos["masks"]) == 2
    decoded = np.zeros((40, 32), bool)
    for m in pos["masks"]:
        decoded |= rle_decode(m["rle"], m["width"], m["height"])
    assert np.array_equal(decoded, union)
    neg = recs["1.2.276.0.7230010.3.1.4.8323329.5597.1517875188.959090"]
    assert neg["Pneumothorax"] == 0.0 and neg["masks"][0]["rle"] == "-1"
    # MONOCHROME1 file read so that a high stored value is dark
    assert read_image(pos["path"])[-1, -1] == pytest.approx(0.0, abs=1e-6)
    assert read_image(neg["path"])[-1, -1] == pytest.approx(1.0, abs=1e-6)
    assert_no_identifiers(table)
    # both files carry PatientID MRN-778812: one patient, hence one subject and one split, under a
    # pseudonym that is neither the PatientID nor an image id
    assert pos["subject_id"] == neg["subject_id"] == siim_acr.pseudonym(IDENTIFIERS[1])
    assert pos["subject_id"] not in (IDENTIFIERS[1], pos["image_id"], neg["image_id"])
    assert pos["split"] == neg["split"] == patient_split(pos["subject_id"])
    assert pos["study_id"] == pos["image_id"]
    assert not any("PatientID" in n for n in summary.notes)
    assert IDENTIFIERS[1] not in str(summary.to_dict())


def test_siim_acr_pseudonym_is_salted_stable_and_hides_the_patient_id():
    a, b = siim_acr.pseudonym("MRN-778812"), siim_acr.pseudonym("MRN-778813")
    assert a == siim_acr.pseudonym("MRN-778812") and a != b
    assert a.startswith("siim-") and len(a) == len("siim-") + 16 and "778812" not in a
    # salted: not the bare sha256 of the id, which anyone could recompute from a list of ids
    import hashlib
    assert a[5:] not in hashlib.sha256(b"MRN-778812").hexdigest()


def test_siim_acr_images_without_patient_id_are_their_own_subject_and_noted(tmp_path):
    root, _ = make_siim_tree(tmp_path / "siim")
    for path in sorted(root.rglob("*.dcm")):
        write_dicom(path, gradient(hi=4095, dtype=np.uint16), patient_id=None)
    table, summary = load_dataset("siim-acr", root)
    assert len(table) == 2 and list(table["subject_id"]) == list(table["image_id"])
    assert all(r["split"] == patient_split(r["image_id"]) for r in table.to_dict("records"))
    assert "2 image(s) without a PatientID: each is its own subject (its ImageId)" in summary.notes


def test_covidx(tmp_path):
    root = make_covidx_tree(tmp_path / "covidx")
    table, summary = load_dataset("covidx", root, verify_images=True)
    assert summary.n_skipped == 0 and len(table) == 6
    assert sorted(table["split"]) == ["test", "train", "train", "train", "train", "validate"]
    recs = _by_id(table)
    r = recs["SARS-10.1148rg.242035193-g04mr34g04a-Fig4a-day7"]
    assert r["subject_id"] == "cohen/3" and r["source_labels"] == ["positive"]
    # cohen/3 is in train and val in this toy tree: reported as a leak, not hidden
    assert any("more than one split" in n for n in summary.notes)


def test_object_cxr(tmp_path):
    root = make_object_cxr_tree(tmp_path / "ocxr")
    table, summary = load_dataset("object-cxr", root, verify_images=True, masks=True)
    assert summary.n_skipped == 0 and len(table) == 3
    recs = _by_id(table)
    boxes = recs["00001"]["boxes"]
    assert [b["shape"] for b in boxes] == ["rectangle", "ellipse"]
    assert (boxes[0]["x0"], boxes[0]["y0"], boxes[0]["x1"], boxes[0]["y1"]) == (0.1, 0.1, 0.35, 0.3)
    m = recs["00001"]["masks"][0]
    mask = rle_decode(m["rle"], m["width"], m["height"])
    assert mask.shape == (50, 40) and mask[10, 9] and mask[35, 25] and not mask[45, 2]
    assert recs["00002"]["boxes"] == [] and recs["00002"]["masks"][0]["rle"] == "-1"
    dev = recs["08001"]
    assert dev["split"] == "validate" and dev["boxes"][0]["shape"] == "polygon"
    assert dev["boxes"][0]["y1"] == pytest.approx(30 / 50)


def test_every_kind_is_dispatched():
    assert set(KINDS) == {"mimic-cxr-jpg", "chexpert", "nih-cxr14", "rsna-pneumonia", "siim-acr",
                          "covidx", "object-cxr"}
    with pytest.raises(ValueError, match="expected one of"):
        load_dataset("padchest", "/tmp")
