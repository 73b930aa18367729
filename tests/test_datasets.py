"""Torch datasets over record tables, and the image reading/fitting they stand on."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from test_adapters import D, make_phantom_tree, make_rsna_tree, make_siim_tree

from support.data.adapters import load_dataset
from support.data.datasets import (
    BoxDataset, FrontalLateralReportDataset, ImageDataset, ImageOptions, ImageReportDataset,
    MaskDataset, collate_with_boxes,
)
from support.data.images import ImageReadError, fit_square, read_image, square_fit
from support.data.records import empty_record, make_table, pair_studies
from support.data.rle import rle_encode

torch.set_num_threads(1)


def _table_with(tmp_path, arrays: dict[str, np.ndarray], boxes=None, masks=None, **fields):
    """A record table over PNG files written from ``arrays`` (uint8)."""
    recs = []
    for i, (name, arr) in enumerate(arrays.items()):
        path = tmp_path / f"{name}.png"
        Image.fromarray(arr).save(path)
        rec = empty_record("test")
        rec.update(subject_id=f"s{i}", study_id=f"st{i}", image_id=name, view="PA", path=str(path),
                   split="train", boxes=(boxes or {}).get(name, []), masks=(masks or {}).get(name, []),
                   **fields)
        recs.append(rec)
    return make_table(recs)


def _blob(h=40, w=32, box=(8, 4, 24, 24)) -> np.ndarray:
    """Dark image with a bright rectangle x0, y0, x1, y1 (exclusive ends)."""
    arr = np.full((h, w), 20, np.uint8)
    x0, y0, x1, y1 = box
    arr[y0:y1, x0:x1] = 230
    return arr


# ------------------------------------------------------------------------------ images.py
def test_read_image_depths_and_colour(tmp_path):
    sixteen = (np.arange(40 * 32, dtype=np.uint32).reshape(40, 32) * 50).astype(np.uint16)
    Image.fromarray(sixteen).save(tmp_path / "16.png")
    got = read_image(tmp_path / "16.png")
    np.testing.assert_allclose(got, sixteen / 65535.0, atol=1e-6)
    rgb = np.zeros((10, 12, 3), np.uint8)
    rgb[..., 0] = 255
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    red = read_image(tmp_path / "rgb.png")
    assert red.shape == (10, 12) and red[0, 0] == pytest.approx(76 / 255, abs=1 / 255)  # ITU-R 601 luma
    assert read_image(tmp_path / "16.png").dtype == np.float32
    as_u8 = read_image(tmp_path / "16.png", dtype="uint8")
    assert as_u8.dtype == np.uint8 and as_u8.max() == round(sixteen.max() / 65535 * 255)


def test_square_fit_crop_and_pad():
    img = np.ones((40, 32), np.float32)
    crop, pad = fit_square(img, 16, "crop"), fit_square(img, 16, "pad")
    assert crop.shape == pad.shape == (16, 16)
    assert crop.min() == 1.0                              # crop: no border
    assert pad[:, :1].max() == 0.0 and pad[:, 2:-2].min() > 0.99   # pad: black side bands (13 px wide image)
    f = square_fit(40, 32, 16, "pad")
    assert (f.new_h, f.new_w, f.dx, f.dy) == (16, 13, 1, 0)
    with pytest.raises(ValueError, match="fit mode"):
        square_fit(4, 4, 4, "stretch")


# ------------------------------------------------------------------------------ datasets
def test_image_dataset_shapes_ranges_and_labels(tmp_path):
    table, _ = load_dataset("mimic-cxr-jpg", make_phantom_tree(tmp_path / "p"))
    ds = ImageDataset(table, size=16)
    item = ds[0]
    assert item["image"].shape == (1, 16, 16) and item["image"].dtype == torch.float32
    assert 0.0 <= item["image"].min() and item["image"].max() <= 1.0
    assert item["labels"].shape == (14,) and torch.isnan(item["labels"]).sum() == 13
    rgb = ImageDataset(table, size=16, channels=3, value_range=(-1.0, 1.0))[0]["image"]
    assert rgb.shape == (3, 16, 16) and torch.equal(rgb[0], rgb[2])
    torch.testing.assert_close(rgb[0], item["image"][0] * 2 - 1)
    frontal = ImageDataset(table, size=16, views=["PA", "AP"])
    assert len(frontal) == 3 and frontal.summary.excluded == {"view not selected": 1}
    with pytest.raises(ValueError, match="channels"):
        ImageOptions(channels=2)
    with pytest.raises(ValueError, match="value_range"):
        ImageOptions(value_range=(0, 255))


def test_no_flip_by_default_and_augmentation_is_opt_in(tmp_path):
    left_bright = np.zeros((32, 32), np.uint8)
    left_bright[:, :10] = 255
    table = _table_with(tmp_path, {"a": left_bright})
    img = ImageDataset(table, size=32)[0]["image"][0]
    assert img[:, :10].mean() > 0.99 and img[:, 16:].max() == 0.0     # the bright side stays left
    torch.manual_seed(0)
    aug1 = ImageDataset(table, size=32, augment=True)[0]["image"]
    torch.manual_seed(0)
    aug2 = ImageDataset(table, size=32, augment=True)[0]["image"]
    assert torch.equal(aug1, aug2) and not torch.equal(aug1[0], img)
    assert aug1[0, :, :8].mean() > aug1[0, :, 20:].mean()             # small affine: still left-bright


def test_box_geometry_follows_the_image(tmp_path):
    box = (8, 4, 24, 24)
    table = _table_with(tmp_path, {"a": _blob(box=box)},
                        boxes={"a": [{"label": "Lung Lesion", "x0": 8 / 32, "y0": 4 / 40, "x1": 24 / 32, "y1": 24 / 40}]})
    for fit, size, expected in (("crop", 32, [8, 0, 24, 20]), ("pad", 20, [6, 2, 14, 12])):
        item = BoxDataset(table, size=size, fit=fit, classes=["Lung Lesion"])[0]
        torch.testing.assert_close(item["boxes"], torch.tensor([expected], dtype=torch.float32))
        x0, y0, x1, y1 = map(int, expected)
        inside = item["image"][0, y0:y1, x0:x1]
        assert inside.mean() > 0.85                      # the bright blob is where the box says
        assert item["box_classes"].tolist() == [0] and item["box_labels"] == ["Lung Lesion"]
    # a box of another class is dropped; loader collates per-image boxes as lists
    other = BoxDataset(table, size=16, classes=["Pneumothorax"])
    assert other[0]["boxes"].shape == (0, 4)
    batch = next(iter(torch.utils.data.DataLoader(BoxDataset(table, size=16), batch_size=2,
                                                  collate_fn=collate_with_boxes)))
    assert batch["image"].shape == (1, 1, 16, 16) and batch["boxes"][0].shape == (1, 4)


def test_mask_dataset_from_rle_boxes_and_unannotated(tmp_path):
    mask = np.zeros((40, 32), bool)
    mask[8:24, 4:20] = True
    table = _table_with(tmp_path, {"a": _blob(), "b": _blob()},
                        masks={"a": [{"label": "Pneumothorax", "rle": rle_encode(mask), "width": 32, "height": 40}]})
    ds = MaskDataset(table, size=20, fit="pad")
    assert len(ds) == 1 and ds.summary.excluded == {"no mask annotation": 1}
    m = ds[0]["mask"]
    expected = torch.from_numpy(fit_square(mask.astype(np.float32), 20, "pad")).round()
    assert m.shape == (1, 20, 20) and set(m.unique().tolist()) <= {0.0, 1.0}
    assert (m[0] != expected).float().mean() < 0.03
    assert len(MaskDataset(table, size=20, unannotated="empty")) == 2

    root, union = make_siim_tree(tmp_path / "siim")
    siim, _ = load_dataset("siim-acr", root)
    ms = MaskDataset(siim, size=32, fit="pad")
    masks = {ms.records.iloc[i]["Pneumothorax"]: ms[i]["mask"] for i in range(len(ms))}
    assert masks[0.0].sum() == 0
    assert masks[1.0].sum() == pytest.approx(union.sum() * (32 / 40) ** 2, rel=0.15)

    rsna, _ = load_dataset("rsna-pneumonia", make_rsna_tree(tmp_path / "rsna"))
    rs = MaskDataset(rsna, size=40, fit="pad", boxes_as_masks=True)
    sums = sorted(float(rs[i]["mask"].sum()) for i in range(len(rs)))
    assert len(rs) == 3 and sums[:2] == [0.0, 0.0] and sums[2] > 100


def test_image_report_pairs(tmp_path):
    table, _ = load_dataset("mimic-cxr-jpg", make_phantom_tree(tmp_path / "p"))
    table.loc[table["study_id"] == "90000003", ["findings", "impression"]] = ""
    ds = ImageReportDataset(table, size=16, template="view_position = {view}. modality = CR. {text}")
    assert len(ds) == 3 and ds.summary.excluded == {"no report text": 1}
    reports = {ds[i]["image_id"]: ds[i]["report"] for i in range(len(ds))}
    assert reports[D["f1"]] == "view_position = PA. modality = CR. Left pneumothorax. Small left pneumothorax."
    only = ImageReportDataset(table, size=16, text="findings")
    assert {only[i]["report"] for i in range(len(only))} >= {"Small left pneumothorax."}


def test_frontal_lateral_report_triplets(tmp_path):
    table, _ = load_dataset("mimic-cxr-jpg", make_phantom_tree(tmp_path / "p"))
    ds = FrontalLateralReportDataset(table, size=16, value_range=(-1.0, 1.0))
    assert len(ds) == 3
    items = {ds[i]["study_id"]: ds[i] for i in range(len(ds))}
    both, alone = items["90000001"], items["90000002"]
    assert both["has_lateral"].item() and both["frontal_id"] == D["f1"] and both["lateral_id"] == D["l1"]
    assert both["report"] == "Left pneumothorax. Small left pneumothorax."
    assert not alone["has_lateral"].item() and torch.all(alone["lateral"] == -1.0)
    assert any("without a lateral" in n for n in ds.summary.notes)
    strict = FrontalLateralReportDataset(table, size=16, require_lateral=True)
    assert len(strict) == 1 and strict.summary.excluded == {"study without a lateral view": 2}
    pairs = pair_studies(table)
    assert list(pairs["study_id"]) == ["90000001", "90000002", "90000003"]
    assert list(pairs["lateral_id"]) == [D["l1"], "", ""] and pairs["Pneumothorax"].iat[0] == 1.0
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=3)))
    assert batch["frontal"].shape == (3, 1, 16, 16) and batch["has_lateral"].tolist().count(True) == 1


def test_corrupt_image_at_getitem_is_replaced_or_raises(tmp_path):
    table = _table_with(tmp_path, {"a": _blob(), "b": _blob(), "c": _blob()})
    Path(table["path"].iat[1]).write_bytes(b"broken")
    ds = ImageDataset(table, size=8)
    with pytest.warns(UserWarning, match="skipping unreadable item 1"):
        item = ds[1]
    assert item["image_id"] == "c" and item["index"] == 2
    assert ds.summary.skipped == {"unreadable at load time": 1}
    assert "b.png" in ds.summary.examples["unreadable at load time"][0]
    with pytest.raises(ImageReadError, match="b.png"):
        ImageDataset(table, size=8, strict=True)[1]
    for p in table["path"]:
        Path(p).write_bytes(b"broken")
    with pytest.warns(UserWarning), pytest.raises(RuntimeError, match="unreadable"):
        ImageDataset(table, size=8)[0]
    assert math.isnan(table["Edema"].iat[0])
