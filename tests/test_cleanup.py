"""Text and marker removal: detection, masks, Telea cleanup, scores, and whole-dataset cleaning."""

import json
import math

import numpy as np
import pytest
import torch

from support.io import read_json
from support.cleanup import (
    Cleaner, CleanupConfig, DetectConfig, InpaintConfig, MaskConfig, TextBox, clean_dataset, cleanup_config,
    evaluate_cleanup, load_text_truth, masked_psnr, masked_ssim, match_items, read_cleanup_records,
)
from support.cleanup.detect import DBNetDetector, MarkerDetector
from support.cleanup.masks import box_region, dilate, grow, polygon_mask, sam_mask
from support.cleanup.pixels import composite, from_unit, read_pixels, to_unit, value_span
from support.cleanup.synthetic import burn_text, radiograph_background, synthetic_text_images, write_text_dataset
from support.data.adapters import load_dataset
from support.data.records import RecordError
from support.params import ParameterError

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def cleaner():
    return Cleaner(CleanupConfig())


@pytest.fixture(scope="module")
def text_set():
    return synthetic_text_images(12, 256, seed=3, p_no_text=0.0)


def _background(seed=0, size=256):
    rng = np.random.default_rng(seed)
    return np.clip(np.rint(radiograph_background(rng, size) * 255), 0, 255).astype(np.uint8)


def test_burned_text_leaves_other_pixels_and_knows_its_boxes():
    clean = _background(1)
    item = burn_text(clean, [("L", 24, True), ("03/14/2021 10:22", 10, True)], np.random.default_rng(0))
    assert len(item.items) == 2
    assert np.array_equal(item.image[~item.text_mask], clean[~item.text_mask])
    assert (item.image[item.text_mask] != clean[item.text_mask]).mean() > 0.5
    for it in item.items:   # every text pixel lies inside some item box
        item.text_mask[it["y0"]:it["y1"], it["x0"]:it["x1"]] = False
    assert not item.text_mask.any()


def test_marker_detector_finds_a_lone_laterality_letter_but_not_anatomy():
    clean = _background(2)
    item = burn_text(clean, [("R", 26, False)], np.random.default_rng(1))
    found = MarkerDetector(DetectConfig()).detect(item.image)
    hits, correct = match_items(item.items, found)
    assert hits == [True]
    assert all(correct), f"marker false positives: {[b for b, c in zip(found, correct) if not c]}"
    assert MarkerDetector(DetectConfig()).detect(clean) == []


def test_dbnet_finds_a_date_and_drops_boxes_larger_than_text_lines():
    item = burn_text(_background(3), [("03/14/2021 10:22", 11, True)], np.random.default_rng(2))
    boxes = DBNetDetector(DetectConfig()).detect_batch([item.image])[0]
    assert match_items(item.items, boxes)[0] == [True]
    assert all(b.source == "dbnet" and b.polygon.shape[1] == 2 for b in boxes)
    # a size limit below the text height removes them all
    assert DBNetDetector(DetectConfig(dbnet_max_box=0.02)).detect_batch([item.image])[0] == []


def test_polygons_are_grown_and_dilated_by_the_configured_amounts():
    box = TextBox(100, 100, 101, 101, 1.0, "marker", np.array([[100, 100], [100, 100], [100, 100], [100, 100]], np.float32))
    grown = polygon_mask([box], (200, 200), grow_px=4)
    ys, xs = np.nonzero(grown)
    assert (xs.min(), xs.max(), ys.min(), ys.max()) == (96, 104, 96, 104)
    point = np.zeros((50, 50), bool)
    point[25, 25] = True
    d = dilate(point, 5, 2)   # a 5x5 square twice: 9x9
    assert d.sum() == 81 and d[21:30, 21:30].all()
    assert np.array_equal(dilate(point, 5, 0), point)


def _box(x0, y0, x1, y1):
    poly = np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], np.float32)
    return TextBox(x0, y0, x1, y1, 1.0, "dbnet", poly)


def _point(shape=(41, 41), at=(20, 20)):
    mask = np.zeros(shape, bool)
    mask[at] = True
    return mask


def test_grow_offsets_a_pixel_by_a_round_disk_of_the_radius():
    assert np.array_equal(grow(_point((5, 5), (2, 2)), 1), np.array(
        [[0, 0, 0, 0, 0], [0, 0, 1, 0, 0], [0, 1, 1, 1, 0], [0, 0, 1, 0, 0], [0, 0, 0, 0, 0]], bool))
    assert np.array_equal(grow(_point((5, 5), (2, 2)), 2), np.array(
        [[0, 0, 1, 0, 0], [1, 1, 1, 1, 1], [1, 1, 1, 1, 1], [1, 1, 1, 1, 1], [0, 0, 1, 0, 0]], bool))
    yy, xx = np.mgrid[-20:21, -20:21]
    for r in (1, 2, 3, 4, 6, 9):
        g = grow(_point(), r)
        assert g.dtype == bool
        ys, xs = np.nonzero(g)
        assert (ys.min(), ys.max(), xs.min(), xs.max()) == (20 - r, 20 + r, 20 - r, 20 + r), r
        assert g[np.hypot(yy, xx) <= r].all()                       # every pixel within r
        assert not g[20 - r, 20 - r] and not g[20 + r, 20 + r]     # not the square's corners
        assert np.array_equal(g, g[::-1]) and np.array_equal(g, g[:, ::-1])       # symmetric about the pixel
    for nothing in (0, -3):
        assert np.array_equal(grow(_point(), nothing), _point())
    assert grow(np.zeros((9, 9), np.uint8), 3).dtype == bool and not grow(np.zeros((9, 9), np.uint8), 3).any()
    assert np.array_equal(grow(_point().astype(np.uint8) * 255, 0), _point())


@pytest.mark.parametrize("kernel, iterations", [(3, 1), (3, 2), (5, 1), (5, 2), (5, 3), (7, 2), (2, 1)])
def test_dilate_grows_a_pixel_to_the_square_footprint(kernel, iterations):
    d = dilate(_point(), kernel, iterations)
    side = 1 + iterations * (kernel - 1)
    ys, xs = np.nonzero(d)
    assert d.dtype == bool and d.sum() == side * side
    assert ys.max() - ys.min() + 1 == side and xs.max() - xs.min() + 1 == side
    assert d[ys.min():ys.max() + 1, xs.min():xs.max() + 1].all()
    if kernel % 2:                                              # odd kernels: centred on the pixel
        half = iterations * (kernel - 1) // 2
        assert (ys.min(), xs.min()) == (20 - half, 20 - half)


def test_dilate_defaults_and_no_ops():
    assert dilate(_point()).sum() == 81 and np.nonzero(dilate(_point()))[0].min() == 16   # 5 x 5, twice
    for kernel, iterations in ((1, 3), (0, 2), (5, 0), (5, -1)):
        out = dilate(_point().astype(np.uint8) * 7, kernel, iterations)
        assert out.dtype == bool and np.array_equal(out, _point())
    assert not dilate(np.zeros((9, 9), bool), 5, 2).any()


def test_polygon_mask_fills_the_rounded_polygons_and_grows_them():
    shape = (40, 60)
    rect = _box(10.4, 5.0, 30.6, 9.0)                        # x 10..31, y 5..9 after rounding, edges inside
    expected = np.zeros(shape, bool)
    expected[5:10, 10:32] = True
    assert np.array_equal(polygon_mask([rect], shape, grow_px=0), expected)
    other = _box(40, 20, 45, 30)
    expected[20:31, 40:46] = True
    both = polygon_mask([rect, other], shape + (3,), grow_px=0)   # (H, W, 3): the mask is (H, W)
    assert both.shape == shape and np.array_equal(both, expected)
    assert np.array_equal(polygon_mask([rect, other], shape, grow_px=2), grow(expected, 2))
    assert np.array_equal(polygon_mask([rect, other], shape), grow(expected, 4))   # default: 4 pixels
    assert not polygon_mask([], shape).any() and polygon_mask([], shape).shape == shape


def test_box_region_is_the_outward_rounded_box_plus_margin_inside_the_image():
    expected = np.zeros((30, 50), bool)
    expected[18:27, 8:33] = True                    # floor(10.2) - 2, ceil(30.1) + 2; floor(20.7) - 2, ceil(25) + 2
    assert np.array_equal(box_region(_box(10.2, 20.7, 30.1, 25.0), (30, 50), 2), expected)
    expected = np.zeros((30, 50), bool)
    expected[20:25, 10:30] = True
    assert np.array_equal(box_region(_box(10.0, 20.0, 30.0, 25.0), (30, 50, 3), 0), expected)
    edge = box_region(_box(1.5, 0.5, 48.5, 29.5), (30, 50), 3)     # clipped to the image
    assert edge.all() and edge.shape == (30, 50)
    corner = box_region(_box(45.0, 26.0, 50.0, 30.0), (30, 50), 1)
    expected = np.zeros((30, 50), bool)
    expected[25:30, 44:50] = True
    assert np.array_equal(corner, expected)


class _FakeSam:
    def __init__(self, masks):
        self.masks, self.calls = masks, []

    def box_masks(self, image, boxes):
        self.calls.append((image, boxes))
        return self.masks


def test_sam_masks_are_kept_inside_their_boxes_and_fall_back_to_polygons():
    shape = (60, 80)
    image = np.zeros(shape, np.uint8)
    boxes = [_box(10, 10, 20, 20), _box(40, 30, 50, 35), _box(60, 45, 70, 50)]
    everything = np.ones(shape, bool)
    nothing = np.zeros(shape, bool)
    outside = np.zeros(shape, bool)
    outside[0:3, 0:3] = True                                   # far from the third box
    sam = _FakeSam([everything, nothing, outside])
    union, fallbacks = sam_mask(sam, image, boxes, margin=3, grow_px=2)
    expected = box_region(boxes[0], shape, 3) | polygon_mask([boxes[1]], shape, 2) | polygon_mask([boxes[2]], shape, 2)
    assert np.array_equal(union, expected) and fallbacks == 2
    assert sam.calls[0][0] is image and sam.calls[0][1] == [[10, 10, 20, 20], [40, 30, 50, 35], [60, 45, 70, 50]]
    # the defaults: margin 4, grow 4
    union, fallbacks = sam_mask(_FakeSam([everything, nothing, nothing]), image, boxes)
    expected = box_region(boxes[0], shape, 4) | polygon_mask(boxes[1:], shape, 4)
    assert np.array_equal(union, expected) and fallbacks == 2
    # no boxes: SAM is not asked
    sam = _FakeSam([])
    union, fallbacks = sam_mask(sam, image, [])
    assert union.shape == shape and union.dtype == bool and not union.any() and fallbacks == 0 and sam.calls == []
    # an RGB image (SAM takes both) gives the same (H, W) mask
    rgb = np.zeros(shape + (3,), np.uint8)
    assert sam_mask(_FakeSam([]), rgb, [])[0].shape == shape
    union, fallbacks = sam_mask(_FakeSam([everything, nothing, outside]), rgb, boxes, margin=3, grow_px=2)
    assert union.shape == shape and fallbacks == 2 and np.array_equal(union, sam_mask(
        _FakeSam([everything, nothing, outside]), image, boxes, margin=3, grow_px=2)[0])


def test_composite_takes_the_fill_inside_the_mask_and_the_original_bit_for_bit_outside():
    rng = np.random.default_rng(0)
    for dtype, shape in ((np.uint8, (20, 30)), (np.uint16, (20, 30)), (np.uint8, (20, 30, 3))):
        top = np.iinfo(dtype).max
        original = rng.integers(0, top, shape, endpoint=True).astype(dtype)
        filled = rng.integers(0, top, shape, endpoint=True).astype(dtype)
        mask = rng.random(shape[:2]) < 0.3
        keep = original.copy()
        out = composite(original, filled, mask)
        assert out.dtype == dtype and out.shape == shape
        assert np.array_equal(out[~mask], original[~mask]) and np.array_equal(out[mask], filled[mask])
        assert np.array_equal(original, keep) and out is not original         # the input is left alone
    with pytest.raises(ValueError, match="does not match"):
        composite(np.zeros((8, 8), np.uint8), np.zeros((8, 8), np.uint16), np.ones((8, 8), bool))
    with pytest.raises(ValueError, match="does not match"):
        composite(np.zeros((8, 8), np.uint8), np.zeros((8, 9), np.uint8), np.ones((8, 8), bool))


def test_value_span_is_the_bit_depth_for_8_bit_and_the_own_range_for_16_bit():
    assert value_span(np.array([[10, 20]], np.uint8)) == (0.0, 255.0)
    assert value_span(np.array([[7, 7]], np.uint8)) == (0.0, 255.0)
    assert value_span(np.array([[1000, 4095], [2000, 1500]], np.uint16)) == (1000.0, 4095.0)
    assert value_span(np.array([[0, 65535]], np.uint16)) == (0.0, 65535.0)
    assert value_span(np.array([[300, 300]], np.uint16)) == (0.0, 65535.0)    # flat: the full range
    assert value_span(np.array([[300, 301]], np.uint16)) == (300.0, 301.0)


def test_to_unit_maps_the_span_to_zero_and_one():
    u8 = np.arange(256, dtype=np.uint8).reshape(16, 16)
    unit = to_unit(u8)
    assert unit.dtype == np.float32 and unit.shape == (16, 16)
    np.testing.assert_allclose(unit, u8 / 255.0, rtol=1e-6, atol=0)
    assert unit.min() == 0.0 and unit.max() == 1.0
    u16 = np.array([[1000, 4095], [2000, 1500]], np.uint16)
    np.testing.assert_allclose(to_unit(u16), (u16 - 1000.0) / 3095.0, rtol=1e-6, atol=0)
    np.testing.assert_allclose(to_unit(u16, (0.0, 8000.0)), u16 / 8000.0, rtol=1e-6, atol=0)
    np.testing.assert_allclose(to_unit(u8, (100.0, 200.0)), (u8 - 100.0) / 100.0, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("values", [
    np.arange(256, dtype=np.uint8),
    np.arange(65536, dtype=np.uint16),
    np.arange(100, 4096, dtype=np.uint16),            # a 12-bit film in a 16-bit container
    np.array([30000, 30001, 30000], np.uint16),
])
def test_to_unit_and_from_unit_round_trip_exactly(values):
    image = values.reshape(1, -1)
    assert np.array_equal(from_unit(to_unit(image), image), image)
    rgb = np.repeat(image[..., None], 3, axis=2)
    rgb[..., 1] = image[::-1].reshape(-1)[::-1]
    assert np.array_equal(from_unit(to_unit(rgb), rgb), rgb)
    span = (0.0, float(np.iinfo(image.dtype).max))
    assert np.array_equal(from_unit(to_unit(image, span), image, span), image)


def test_from_unit_clips_converts_channels_and_saturates():
    like16 = np.array([[1000, 4095]], np.uint16)                                   # span 1000..4095
    assert from_unit(np.array([[-0.5, 1.5]]), like16).tolist() == [[1000, 4095]]   # overshoot clipped to [0, 1]
    assert from_unit(np.array([[0.0, 0.5, 1.0]]), like16).tolist() == [[1000, 2548, 4095]]
    assert from_unit(np.array([[0.5]]), like16, (0.0, 100.0)).tolist() == [[50]]
    assert from_unit(np.array([[1.0, 0.0]]), np.zeros((1, 2), np.uint8), (0.0, 300.0)).tolist() == [[255, 0]]
    assert from_unit(np.array([[0.0, 0.5, 1.0]]), np.zeros((1, 3), np.uint8), (-100.0, 100.0)).tolist() == [[0, 0, 100]]
    assert from_unit(np.array([[0.2]]), np.zeros((1, 1), np.uint8)).dtype == np.uint8
    gray = np.array([[0.0, 0.5, 1.0]], np.float32)
    rgb_like = np.zeros((1, 3, 3), np.uint8)
    out = from_unit(gray, rgb_like)
    assert out.shape == (1, 3, 3) and out.dtype == np.uint8
    assert out[..., 0].tolist() == out[..., 1].tolist() == out[..., 2].tolist() == [[0, 128, 255]]
    colour = np.array([[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [1.0, 1.0, 1.0]]], np.float32)
    assert from_unit(colour, np.zeros((1, 4), np.uint8)).tolist() == [[76, 150, 29, 255]]   # ITU-R 601 luminance


def test_default_cleanup_removes_text_and_touches_nothing_else(cleaner, text_set):
    results = cleaner.clean_all([t.image for t in text_set], progress=False)
    covered = sum(int((r.mask & t.text_mask).sum()) for r, t in zip(results, text_set))
    assert covered / sum(int(t.text_mask.sum()) for t in text_set) >= 0.9
    before = masked_psnr(np.concatenate([t.image.ravel() for t in text_set]),
                         np.concatenate([t.clean.ravel() for t in text_set]),
                         np.concatenate([t.text_mask.ravel() for t in text_set]), 255)
    after = masked_psnr(np.concatenate([r.image.ravel() for r in results]),
                        np.concatenate([t.clean.ravel() for t in text_set]),
                        np.concatenate([t.text_mask.ravel() for t in text_set]), 255)
    assert after - before >= 6.0
    for r, t in zip(results, text_set):
        assert r.image.dtype == np.uint8 and r.image.shape == t.image.shape
        assert np.array_equal(r.image[~r.mask], t.image[~r.mask])
        assert r.backend == "telea" and r.changed
        rec = r.record()
        assert rec["status"] == "cleaned" and rec["mask_pixels"] == int(r.mask.sum())
        assert json.dumps(rec)   # JSON-ready


def test_an_image_without_text_comes_back_unchanged_and_recorded(cleaner):
    clean = _background(4)
    result = cleaner.clean(clean)
    assert np.array_equal(result.image, clean) and not result.changed
    assert result.backend == "none" and result.record()["status"] == "no text found"
    assert result.boxes == [] and not result.mask.any()


@pytest.mark.parametrize("kind", ["uint16", "rgb"])
def test_sixteen_bit_and_rgb_inputs_keep_their_format(cleaner, kind):
    item = synthetic_text_images(1, 256, seed=9, p_no_text=0.0)[0]
    if kind == "uint16":
        image, clean, peak = item.image.astype(np.uint16) * 257, item.clean.astype(np.uint16) * 257, 65535
    else:
        tint = np.array([1.0, 0.97, 0.94])
        image = np.rint(item.image[..., None] * tint).astype(np.uint8)
        clean, peak = np.rint(item.clean[..., None] * tint).astype(np.uint8), 255
    result = cleaner.clean(image)
    assert result.image.dtype == image.dtype and result.image.shape == image.shape
    assert np.array_equal(result.image[~result.mask], image[~result.mask])
    mask = item.text_mask if kind == "uint16" else np.repeat(item.text_mask[..., None], 3, axis=2)
    assert masked_psnr(result.image, clean, mask, peak) > masked_psnr(image, clean, mask, peak) + 6


def test_bad_arrays_are_refused_with_a_clear_error(cleaner):
    with pytest.raises(ValueError, match="dtype float32"):
        cleaner.clean(np.zeros((64, 64), np.float32))
    with pytest.raises(ValueError, match=r"shape \(64, 64, 4\)"):
        cleaner.clean(np.zeros((64, 64, 4), np.uint8))


def test_match_items_uses_iou_or_coverage():
    items = [{"x0": 10, "y0": 10, "x1": 20, "y1": 20}, {"x0": 30, "y0": 10, "x1": 40, "y1": 20}]
    line = [5, 8, 45, 22]          # one box over both words: covers both
    far = [100, 100, 110, 110]
    found, correct = match_items(items, [line, far])
    assert found == [True, True] and correct == [True, False]
    found, _ = match_items(items, [[10, 10, 14, 20]])   # covers 40%, IoU 0.4: not found at 0.5
    assert found == [False, False]
    assert match_items(items, [[10, 10, 14, 20]], threshold=0.4)[0] == [True, False]


def test_masked_psnr_and_ssim_are_measured_inside_the_mask_only():
    a = np.full((32, 32), 100, np.uint8)
    b = a.copy()
    b[:, :16] = 110                 # differs only on the left
    left = np.zeros((32, 32), bool)
    left[:, :16] = True
    assert masked_psnr(b, a, ~left, 255) == math.inf
    assert masked_psnr(b, a, left, 255) == pytest.approx(10 * math.log10(255 ** 2 / 100))
    assert math.isnan(masked_psnr(b, a, np.zeros_like(left), 255))
    rng = np.random.default_rng(0)
    noisy = np.clip(a + rng.normal(0, 20, a.shape), 0, 255).astype(np.uint8)
    assert masked_ssim(a, a, left, 255) == pytest.approx(1.0)
    assert masked_ssim(noisy, a, left, 255) < 0.5


def test_evaluate_cleanup_compares_configurations(text_set, cleaner):
    images = [t.image for t in text_set[:6]]
    table, per_image = evaluate_cleanup(
        images, [t.text_mask for t in text_set[:6]], [t.clean for t in text_set[:6]], [t.items for t in text_set[:6]],
        {"telea": cleaner, "markers only": CleanupConfig(detect=DetectConfig(dbnet=False))},
        return_per_image=True, progress=False)
    assert list(table["config"]) == ["telea", "markers only"]
    for col in ("det_recall", "det_precision", "recall_dbnet", "recall_marker", "pixel_recall", "mask_iou",
                "psnr_before", "psnr_after", "psnr_gain", "ssim_gain", "images_per_s", "s_inpaint"):
        assert col in table.columns
    assert (table["outside_changed_pixels"] == 0).all()
    assert table.loc[1, "recall_dbnet"] == 0 and table.loc[1, "detections"] > 0
    assert table.loc[0, "psnr_gain"] > 6 and table.loc[0, "det_recall"] >= table.loc[1, "det_recall"]
    assert len(per_image) == 12 and set(per_image["config"]) == {"telea", "markers only"}


def test_config_errors_name_the_field():
    with pytest.raises(ParameterError, match="sd_path"):
        cleanup_config({"inpaint": {"backend": "sd"}})
    with pytest.raises(ParameterError, match="ddpm_path"):
        CleanupConfig(inpaint=InpaintConfig(backend="repaint")).validate()
    with pytest.raises(ParameterError, match="unknown parameter"):
        cleanup_config({"mask": {"dilate_kernal": 3}})
    with pytest.raises(ParameterError, match="marker_grow_threshold"):
        cleanup_config({"detect": {"marker_grow_threshold": 0.5}})
    cfg = cleanup_config({"mask": {"dilate_iterations": 1}, "inpaint": {"sd_steps": 20}})
    assert cfg.mask.dilate_iterations == 1 and cfg.mask.dilate_kernel == 5 and cfg.inpaint.sd_steps == 20


@pytest.fixture(scope="module")
def source_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("cleanup") / "src"
    images = synthetic_text_images(10, 128, seed=4, p_no_text=0.3)
    ids = write_text_dataset(root, images)
    return root, images, ids


def test_text_truth_is_read_back_from_the_phantom_layout(source_root):
    root, images, ids = source_root
    truth = load_text_truth(root, ids)
    assert truth.ids == ids and not truth.skipped
    for i, src in enumerate(images):
        assert np.abs(truth.images[i].astype(int) - src.image).mean() < 2   # JPEG, quality 95
        assert np.array_equal(truth.text_masks[i], src.text_mask)
        assert np.array_equal(truth.clean_images[i], src.clean if src.items else truth.images[i])
        key = lambda it: (it["x0"], it["y0"])
        assert sorted(truth.items[i], key=key) == sorted(
            [{**it, **{k: float(it[k]) for k in ("x0", "y0", "x1", "y1")}} for it in src.items], key=key)


def test_clean_dataset_writes_the_layout_skips_corrupt_files_and_resumes(source_root, tmp_path, cleaner):
    root = source_root[0]
    src = tmp_path / "src"
    import shutil
    shutil.copytree(root, src)
    records, _ = load_dataset("mimic-cxr-jpg", src)
    broken = records.iloc[2]
    with open(broken["path"], "r+b") as fh:     # a truncated JPEG
        fh.truncate(200)
    out = tmp_path / "out"
    summary = clean_dataset(src, out, cleaner=cleaner, progress=False)
    assert summary["skipped"] == 1 and broken["image_id"] in summary["skipped_files"][0]
    assert summary["cleaned"] + summary["unchanged"] == len(records) - 1 and summary["cleaned"] > 0
    assert summary["images_per_s"] > 0 and "dbnet" in summary["seconds_per_image"]

    cleaned, s2 = load_dataset("mimic-cxr-jpg", out)
    assert len(cleaned) == len(records) - 1 and s2.n_skipped == 0
    assert set(cleaned["findings"]) == {"The lungs are clear. The cardiomediastinal silhouette is normal."}
    assert (cleaned["No Finding"] == 1.0).all() and cleaned["sex"].isin(["F", "M"]).all()
    table = read_cleanup_records(out)
    by_id = table.set_index("dicom_id")
    src_paths = dict(zip(records["image_id"], records["path"]))
    for _, rec in cleaned.iterrows():
        row = by_id.loc[rec["image_id"]]
        if row["status"] == "unchanged":   # nothing found: the original bytes, not a re-encoding
            assert open(rec["path"], "rb").read() == open(src_paths[rec["image_id"]], "rb").read()
            assert row["mask_path"] == "" and row["boxes"] == []
        else:
            mask = read_pixels(out / row["mask_path"]) > 0
            assert mask.sum() == row["mask_pixels"] > 0 and len(row["boxes"]) == row["n_boxes"] > 0
            assert rec["provenance"]["cleanup_backend"] == "telea"
    assert json.loads((out / "cleanup" / "summary.json").read_text())["skipped"] == 1

    again = clean_dataset(src, out, cleaner=cleaner, progress=False)
    assert again["already_done"] == len(records) - 1 and again["cleaned"] == again["unchanged"] == 0
    with pytest.raises(ValueError, match="another configuration"):
        clean_dataset(src, out, CleanupConfig(mask=MaskConfig(grow_px=2)), progress=False)
    with pytest.raises(RecordError, match="unreadable image"):
        clean_dataset(src, tmp_path / "strict", cleaner=cleaner, strict=True, progress=False)


def test_the_runs_generated_sets_are_cleaned_beside_themselves(source_root, tmp_path, cleaner):
    import shutil

    from support.cleanup.dataset import clean_synthetic_sets
    from support.eval.sets import discover_sets

    root = source_root[0]
    for name in ("t2i-lora-pndm-25", "ddpm-dpmsolver++-25"):
        shutil.copytree(root, tmp_path / "samples" / name)
    done = clean_synthetic_sets(tmp_path, ["t2i-lora"], cleaner, progress=False)
    assert list(done) == ["t2i-lora-pndm-25"] and done["t2i-lora-pndm-25"]["cleaned"] > 0
    assert set(discover_sets(tmp_path)) == {"t2i-lora-pndm-25", "ddpm-dpmsolver++-25", "t2i-lora-pndm-25-cleaned"}
    source, _ = load_dataset("mimic-cxr-jpg", tmp_path / "samples" / "t2i-lora-pndm-25")
    cleaned, _ = load_dataset("mimic-cxr-jpg", tmp_path / "samples" / "t2i-lora-pndm-25-cleaned")
    assert sorted(cleaned["image_id"]) == sorted(source["image_id"])                 # every image, same labels
    assert (cleaned.set_index("image_id")["No Finding"] == source.set_index("image_id")["No Finding"]).all()
    assert {p["cleanup_status"] for p in cleaned["provenance"]} == {"cleaned", "unchanged"}
    info = read_json(tmp_path / "samples" / "t2i-lora-pndm-25-cleaned" / "dataset.json")
    assert info["info"]["source"] == str((tmp_path / "samples" / "t2i-lora-pndm-25").resolve())
    again = clean_synthetic_sets(tmp_path, ["t2i-lora", "ddpm"], cleaner, progress=False)   # no cleaned set cleaned
    assert set(again) == {"t2i-lora-pndm-25", "ddpm-dpmsolver++-25"}
    assert again["t2i-lora-pndm-25"]["already_done"] == len(source)
