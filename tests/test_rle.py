"""SIIM relative RLE: round trip, the format's own conventions, malformed strings."""

import numpy as np
import pytest

from support.data.rle import rle_decode, rle_encode


def test_round_trip_random_masks():
    rng = np.random.default_rng(0)
    for shape in [(7, 5), (32, 32), (1, 9)]:
        mask = rng.random(shape) > 0.6
        assert np.array_equal(rle_decode(rle_encode(mask), shape[1], shape[0]), mask)


def test_column_major_relative_runs():
    mask = np.zeros((4, 3), bool)   # height 4, width 3
    mask[1:3, 0] = True             # column 0, rows 1-2 -> flat 1..2
    mask[0, 1] = True               # column 1, row 0   -> flat 4
    assert rle_encode(mask) == "1 2 1 1"  # gap 1, len 2; then gap (4 - 3) = 1, len 1


def test_empty_and_malformed():
    assert rle_encode(np.zeros((3, 3), bool)) == "-1"
    assert not rle_decode(" -1", 3, 3).any()
    with pytest.raises(ValueError, match="integers"):
        rle_decode("1 x", 3, 3)
    with pytest.raises(ValueError, match="pairs"):
        rle_decode("1 2 3", 3, 3)
    with pytest.raises(ValueError, match="past the end"):
        rle_decode("5 10", 3, 3)


# ------------------------------------------------------------------ properties of the two conventions
def _kaggle_absolute(mask: np.ndarray) -> str:
    """Kaggle's standard RLE written from its definition: column-major, (start from 1, length)."""
    flat = np.asarray(mask, bool).T.reshape(-1).tolist()
    runs, i = [], 0
    while i < len(flat):
        if flat[i]:
            j = i
            while j < len(flat) and flat[j]:
                j += 1
            runs += [i + 1, j - i]
            i = j
        else:
            i += 1
    return " ".join(map(str, runs)) if runs else "-1"


def _relative_by_hand(mask: np.ndarray) -> str:
    """The relative convention written from its definition: gap since the end of the last run."""
    pairs, end = [], 0
    for start, length in np.array(_kaggle_absolute(mask).split(), int).reshape(-1, 2) if mask.any() else []:
        pairs += [start - 1 - end, length]
        end = start - 1 + length
    return " ".join(map(str, pairs)) if pairs else "-1"


@pytest.mark.parametrize("shape", [(1, 1), (1, 9), (9, 1), (4, 7), (7, 4), (16, 16)])
def test_encoder_matches_the_definition_and_both_conventions_decode(shape):
    rng = np.random.default_rng(sum(shape))
    for density in (0.1, 0.5, 0.9, 1.0):
        mask = rng.random(shape) < density
        height, width = shape
        assert rle_encode(mask) == _relative_by_hand(mask)
        decoded = rle_decode(rle_encode(mask), width, height)
        assert decoded.dtype == bool and decoded.shape == shape and np.array_equal(decoded, mask)
        absolute = rle_decode(_kaggle_absolute(mask), width, height, "absolute")
        assert absolute.dtype == bool and np.array_equal(absolute, mask)


@pytest.mark.parametrize("height,width", [(4, 3), (3, 5)])
def test_single_pixel_is_numbered_column_major(height, width):
    for row in range(height):
        for col in range(width):
            mask = np.zeros((height, width), bool)
            mask[row, col] = True
            flat = col * height + row        # top to bottom, then left to right
            assert rle_encode(mask) == f"{flat} 1"
            assert np.array_equal(rle_decode(f"{flat} 1", width, height), mask)
            assert np.array_equal(rle_decode(f"{flat + 1} 1", width, height, "absolute"), mask)


def test_full_mask_and_runs_at_both_ends():
    assert rle_encode(np.ones((3, 2), bool)) == "0 6"
    mask = np.zeros((3, 2), bool)
    mask[0, 0] = mask[2, 1] = True       # the first and the last pixel
    assert rle_encode(mask) == "0 1 4 1"
    # a run that ends exactly at the last pixel is inside the mask
    assert rle_decode("0 6", 2, 3).all()
    assert rle_decode("1 6", 2, 3, "absolute").all()
    assert np.array_equal(rle_decode("0 1 4 1", 2, 3), mask)


def test_non_boolean_masks_count_every_nonzero_pixel():
    labels = np.array([[0, 1], [2, 0], [255, 3]], np.uint8)   # a label image: 1, 2, 255, 3 are all foreground
    assert rle_encode(labels) == rle_encode(labels > 0) == "1 3 1 1"
    assert rle_encode(np.array([[0.0, 0.5], [1.0, 0.0]])) == "1 2"


@pytest.mark.parametrize("empty", [None, "", "   ", "-1", " -1 "])
def test_no_mask_decodes_to_an_empty_boolean_mask(empty):
    mask = rle_decode(empty, 4, 3)
    assert mask.dtype == bool and mask.shape == (3, 4) and not mask.any()
    mask = rle_decode(empty, 4, 3, "absolute")
    assert mask.dtype == bool and mask.shape == (3, 4) and not mask.any()


def test_touching_runs_are_one_region_not_an_overlap():
    # relative: a gap of 0 starts where the last run ended
    assert rle_decode("0 2 0 2", 2, 2).all()
    assert np.array_equal(rle_decode("1 2 3 2 6 1", 7, 1, "absolute"), np.array([[1, 1, 1, 1, 0, 1, 0]], bool))


def test_a_run_past_the_end_is_refused_and_named():
    with pytest.raises(ValueError, match=r"RLE \(relative\): run 1 ends at pixel 10, past the end of a 3x3 mask"):
        rle_decode("5 5", 3, 3)
    # run 1 ends exactly at the end (allowed); run 2 is the one past it
    with pytest.raises(ValueError, match=r"RLE \(relative\): run 2 ends at pixel 10, past the end of a 3x3 mask"):
        rle_decode("0 9 0 1", 3, 3)
    with pytest.raises(ValueError, match=r"RLE \(absolute\): run 2 ends at pixel 10, past the end of a 3x3 mask"):
        rle_decode("1 2 9 2", 3, 3, "absolute")
    with pytest.raises(ValueError, match=r"RLE \(relative\): run 3 ends at pixel 8, past the end of a 2x3 mask"):
        rle_decode("0 1 1 1 3 2", 2, 3)


@pytest.mark.parametrize("rle", ["9223372036854775807 1 9223372036854775807 1", "7 1", "0 1 0 7"])
def test_a_number_beyond_the_mask_is_refused_not_wrapped(rle):
    with pytest.raises(ValueError, match="past the end of a 2x3 mask"):
        rle_decode(rle, 2, 3)
    with pytest.raises(ValueError, match="past the end of a 2x3 mask"):
        rle_decode(rle, 2, 3, "absolute")


def test_numbers_too_large_for_a_pixel_index_are_malformed():
    with pytest.raises(ValueError, match="expected integers"):
        rle_decode("99999999999999999999 1", 3, 3)


@pytest.mark.parametrize("rle,message", [
    ("1 5 3 2", r"run 2 starts at pixel 2, before run 1 ends at 5"),
    ("1 5 10 2 11 2", r"run 3 starts at pixel 10, before run 2 ends at 11"),
    ("1 5 6 3 3 1", r"run 3 starts at pixel 2, before run 2 ends at 8"),
    ("1 2 3 2 4 2", r"run 3 starts at pixel 3, before run 2 ends at 4"),
])
def test_absolute_runs_out_of_order_or_overlapping_are_refused_and_named(rle, message):
    with pytest.raises(ValueError, match=r"RLE \(absolute\): " + message + "; expected sorted, non-overlapping"):
        rle_decode(rle, 5, 5, "absolute")


def test_absolute_pixels_are_numbered_from_one():
    first = rle_decode("1 1", 3, 2, "absolute")
    assert first[0, 0] and first.sum() == 1
    assert rle_decode("2 2", 3, 2, "absolute")[:, 0].tolist() == [False, True] and rle_decode(
        "2 2", 3, 2, "absolute")[0, 1]
    with pytest.raises(ValueError, match="numbered from 1"):
        rle_decode("3 1 0 1", 3, 2, "absolute")


@pytest.mark.parametrize("rle", ["1 -2", "-1 2", "1 2 -3 1"])
def test_negative_numbers_are_refused(rle):
    with pytest.raises(ValueError, match="non-negative"):
        rle_decode(rle, 3, 3)


def test_unknown_convention_is_refused():
    with pytest.raises(ValueError, match="convention 'kaggle'"):
        rle_decode("1 1", 3, 3, "kaggle")
