"""The shared sample writer with a study of two views and a generated report (XGeM's case):
read back through the MIMIC-CXR-JPG adapter, resumed, orphans registered, bad generators named."""

import numpy as np
import pandas as pd
import pytest

from support.core.sample_writer import Generated, PlannedImage, PlannedStudy, study_ids, write_samples
from support.data.adapters import load_dataset
from support.data.writer import make_dicom_id

COLUMNS = ("generator", "seed")


def plan(n: int) -> list[PlannedStudy]:
    studies = []
    for seed in range(n):
        subject, study = study_ids(seed)
        images = [PlannedImage(make_dicom_id("toy", view, seed), view, {"generator": "toy", "seed": seed})
                  for view in ("PA", "LATERAL")]
        studies.append(PlannedStudy(seed, subject, study, images, labels={"Pleural Effusion": 1.0}))
    return studies


def generator(calls: list):
    def generate(batch):
        calls.append([s.seed for s in batch])
        out = []
        for s in batch:
            frontal = np.full((16, 12), 10 * s.seed, np.uint8)
            lateral = np.full((16, 16), 5 * s.seed, np.uint8)
            out.append(Generated([frontal, lateral], report=f"FINDINGS:\nStudy {s.seed}.\n\nIMPRESSION:\nEffusion."))
        return out
    return generate


def write(root, studies, calls, **kw):
    return write_samples(root, studies, generator(calls), dataset_name="synthetic:toy", provenance_columns=COLUMNS,
                         identity={"generator": "toy"}, batch_size=2, generated_reports=True, progress=False, **kw)


def test_two_views_and_a_generated_report_per_study(tmp_path):
    calls = []
    first = write(tmp_path, plan(3), calls)
    assert (first["generated"], first["present"], first["images_written"]) == (3, 0, 6)
    assert calls == [[0, 1], [2]]
    records, summary = load_dataset("mimic-cxr-jpg", tmp_path)
    assert len(records) == 6 and summary.n_skipped == 0
    assert sorted(records["view"].value_counts().to_dict().items()) == [("LATERAL", 3), ("PA", 3)]
    one = records[records["study_id"] == study_ids(2)[1]].set_index("view")
    assert one.loc["PA", "findings"] == "Study 2." and one.loc["PA", "impression"] == "Effusion."
    meta = pd.read_csv(tmp_path / "mimic-cxr-2.0.0-metadata.csv", dtype=str).set_index("dicom_id")
    assert tuple(meta.loc[one.loc["PA", "image_id"], ["Rows", "Columns"]]) == ("16", "12")   # the image's own size
    assert (records["Pleural Effusion"] == 1.0).all()
    prov = pd.read_csv(tmp_path / "provenance.csv", dtype=str)
    assert sorted(prov["seed"].astype(int)) == [0, 0, 1, 1, 2, 2]

    # rerun: nothing generated; more studies: only the new ones
    assert write(tmp_path, plan(3), calls)["generated"] == 0
    more = write(tmp_path, plan(4), calls)
    assert (more["generated"], more["present"]) == (1, 3) and calls[-1] == [3]

    # files without rows (killed before rank 0 registered them) are registered, not redone; a study
    # whose generated report is missing is made again
    for name in ("mimic-cxr-2.0.0-metadata.csv", "mimic-cxr-2.0.0-split.csv", "provenance.csv", "dataset.json"):
        (tmp_path / name).unlink()
    next(tmp_path.glob("files/p*/p*/s*.txt")).unlink()
    again = write(tmp_path, plan(4), calls)
    assert (again["generated"], again["present"]) == (1, 3)
    assert len(load_dataset("mimic-cxr-jpg", tmp_path)[0]) == 8


def test_a_root_of_another_setting_and_a_generator_that_miscounts_are_refused(tmp_path):
    calls = []
    write(tmp_path, plan(1), calls)
    with pytest.raises(ValueError, match="another generator setting .*generator: 'toy' there, 'other' here"):
        write_samples(tmp_path, plan(1), generator(calls), dataset_name="synthetic:toy", provenance_columns=COLUMNS,
                      identity={"generator": "other"}, progress=False)

    def one_image(batch):
        return [Generated([np.zeros((8, 8), np.uint8)]) for _ in batch]

    with pytest.raises(ValueError, match="plans 2 image"):
        write_samples(tmp_path / "b", plan(1), one_image, dataset_name="synthetic:toy", provenance_columns=COLUMNS,
                      progress=False)
