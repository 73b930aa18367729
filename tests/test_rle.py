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
