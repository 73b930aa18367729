"""The run's dataset pointer: written by 00_data, read by every later notebook."""

import numpy as np
import pytest

from support.data import source
from support.data.writer import MimicLayoutWriter, make_dicom_id, make_study_id, make_subject_id


def tiny_dataset(root, n=3, seed=0):
    rng = np.random.default_rng(seed)
    with MimicLayoutWriter(root, "tiny") as w:
        for i in range(n):
            sub, stu = make_subject_id(i), make_study_id(i)
            w.add_image(subject_id=sub, study_id=stu, dicom_id=make_dicom_id("t", i),
                        image=rng.integers(0, 255, (16, 16), dtype=np.uint8), view="PA", split="train")
            w.add_report(sub, stu, "FINDINGS: The lungs are clear.\n\nIMPRESSION: Normal.")
            w.add_labels(sub, stu, {"No Finding": 1.0})


def test_pointer_fingerprint_and_resolution(tmp_path):
    data = tmp_path / "data"
    tiny_dataset(data)
    run = tmp_path / "run"
    source.write_pointer(run, "phantom", data)
    kind, root = source.resolve(run)
    assert (kind, root) == ("phantom", data.resolve())
    records, summary = source.load_run_dataset(run)
    assert len(records) == 3 and summary.n_skipped == 0
    fp1 = source.fingerprint(data)["sha256"]
    assert fp1 == source.fingerprint(data)["sha256"]
    tiny_dataset(tmp_path / "other", seed=1)  # same ids, other pixels: the index is the same...
    tiny_dataset(tmp_path / "more", n=4)      # ...but different records change the fingerprint
    assert source.fingerprint(tmp_path / "more")["sha256"] != fp1
    # explicit parameters win over the pointer
    assert source.resolve(run, "mimic-cxr-jpg", tmp_path / "more")[1] == (tmp_path / "more").resolve()


def test_missing_pointer_and_unknown_kind_are_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="run 00_data first"):
        source.resolve(tmp_path)
    with pytest.raises(ValueError, match="dataset kind 'dicomdir'"):
        source.layout_of("dicomdir")


@pytest.mark.parametrize("name", ["test_list.txt", "BBox_List_2017.csv", "val.txt", "stage_2_train.csv",
                                  "stage_2_detailed_class_info.csv"])
def test_a_changed_split_box_or_class_file_changes_the_fingerprint(tmp_path, name):
    """Models are cached by this fingerprint: a new split or new boxes must not reuse them."""
    tiny_dataset(tmp_path)
    (tmp_path / name).write_text("a\n")
    before = source.fingerprint(tmp_path)["sha256"]
    (tmp_path / name).write_text("b\n")
    assert source.fingerprint(tmp_path)["sha256"] != before
