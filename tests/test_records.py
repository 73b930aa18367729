"""Record boxes at the exact edges of the image, and the patient split by hash."""

from __future__ import annotations

import collections

import pytest

from support.data.records import BoxSpace, box_in_unit_square, patient_split
from support.data.schema import SPLITS


# ------------------------------------------------------------------------------------ boxes
def _box(x0, y0, x1, y1):
    return {"label": "x", "x0": x0, "y0": y0, "x1": x1, "y1": y1}


@pytest.mark.parametrize("box", [
    _box(0.0, 0.0, 1.0, 1.0),          # the whole image: both edges included
    _box(0.0, 0.5, 1e-9, 0.75),        # the thinnest box at the left edge
    _box(0.999, 0.0, 1.0, 1e-9),       # at the right edge, thinnest at the top
    _box(0.25, 0.999, 0.5, 1.0),       # at the bottom edge
])
def test_boxes_inside_the_unit_square_with_an_area(box):
    assert box_in_unit_square(box) is True


@pytest.mark.parametrize("box", [
    _box(-1e-9, 0.0, 0.5, 0.5),        # left of the image
    _box(0.0, -1e-9, 0.5, 0.5),        # above it
    _box(0.5, 0.0, 1.0 + 1e-9, 0.5),   # right of it
    _box(0.0, 0.5, 0.5, 1.0 + 1e-9),   # below it
    _box(0.3, 0.1, 0.3, 0.5),          # no width
    _box(0.1, 0.3, 0.5, 0.3),          # no height
    _box(0.5, 0.1, 0.3, 0.5),          # corners swapped in x
    _box(0.1, 0.5, 0.5, 0.3),          # corners swapped in y
    _box(1.0, 0.0, 1.0, 0.5),          # a line on the right edge
    _box(0.0, 1.0, 0.5, 1.0),          # a line on the bottom edge
    _box(2.0, 0.0, 3.0, 0.5),          # wholly outside
])
def test_boxes_outside_or_without_area_are_refused(box):
    assert box_in_unit_square(box) is False


SPACE = BoxSpace(200, 100, "a 200x100 test space")   # not square: x and y cannot be swapped unseen


def test_normalise_divides_x_by_width_and_y_by_height():
    assert SPACE.normalise("Nodule", 50, 25, 150, 75) == {"label": "Nodule", "x0": 0.25, "y0": 0.25,
                                                          "x1": 0.75, "y1": 0.75}
    assert SPACE.normalise("Mass", 20, 10, 40, 90) == {"label": "Mass", "x0": 0.1, "y0": 0.1,
                                                       "x1": 0.2, "y1": 0.9}


def test_normalise_accepts_the_exact_edges_of_the_space():
    assert SPACE.normalise("all", 0, 0, 200, 100) == {"label": "all", "x0": 0.0, "y0": 0.0, "x1": 1.0, "y1": 1.0}
    assert SPACE.normalise("corner", 199, 99, 200, 100)["x0"] == 199 / 200


@pytest.mark.parametrize("corners", [
    (0, 0, 201, 100),       # x1 one pixel past the width
    (0, 0, 200, 101),       # y1 one pixel past the height
    (-1, 0, 10, 10),        # x0 left of the image
    (0, -1, 10, 10),        # y0 above it
    (10, 0, 10, 10),        # x0 == x1
    (0, 10, 10, 10),        # y0 == y1
    (20, 0, 10, 10),        # corners swapped
])
def test_normalise_refuses_boxes_that_leave_the_space(corners):
    with pytest.raises(ValueError, match=r"leaves the 200x100 px of a 200x100 test space; "
                                         r"expected 0 <= x0 < x1 <= 200 and 0 <= y0 < y1 <= 100"):
        SPACE.normalise("Nodule", *corners)


def test_normalise_uses_width_for_x_even_where_height_would_refuse():
    # x 150..190 fits the 200 px width, not a 100 px one; y 60..90 fits the 100 px height
    box = SPACE.normalise("Nodule", 150, 60, 190, 90)
    assert (box["x0"], box["x1"], box["y0"], box["y1"]) == (0.75, 0.95, 0.6, 0.9)
    with pytest.raises(ValueError):
        BoxSpace(100, 200, "transposed").normalise("Nodule", 150, 60, 190, 90)


@pytest.mark.parametrize("width,height", [
    (200, 100),     # the space itself
    (100, 50),      # rescaled alike on both axes
    (400, 200),
    (101, 50),      # a pixel of rounding in x
    (100, 51),      # a pixel of rounding in y
    (99, 49),
])
def test_check_image_accepts_the_space_and_copies_rescaled_alike(width, height):
    SPACE.check_image(width, height)


@pytest.mark.parametrize("width,height", [
    (100, 100),     # rescaled in x only
    (200, 200),
    (200, 102),     # two pixels off in y
    (196, 100),     # two pixels off in x
    (100, 200),     # transposed
])
def test_check_image_refuses_other_shapes(width, height):
    with pytest.raises(ValueError, match=rf"the file is {width}x{height} px but its boxes are in the "
                                         r"200x100 px of a 200x100 test space"):
        SPACE.check_image(width, height)


def test_check_image_allows_one_pixel_on_either_axis_of_a_long_space():
    # a 100x10 space: 100x11 is one pixel taller (11 vs 10) though 10 px off in width for that height
    BoxSpace(100, 10, "wide").check_image(100, 11)
    BoxSpace(10, 100, "tall").check_image(11, 100)
    with pytest.raises(ValueError):
        BoxSpace(100, 10, "wide").check_image(100, 12)
    with pytest.raises(ValueError):
        BoxSpace(10, 100, "tall").check_image(12, 100)


# ------------------------------------------------------------------------------------ patient split
IDS = [f"patient-{i}" for i in range(20000)]


def _shares(fractions, salt="synthcxr"):
    counts = collections.Counter(patient_split(p, fractions, salt) for p in IDS)
    assert set(counts) <= set(SPLITS)
    return [counts[s] / len(IDS) for s in SPLITS]


@pytest.mark.parametrize("fractions", [(0.8, 0.1, 0.1), (0.5, 0.25, 0.25), (0.6, 0.4, 0.0),
                                       (0.1, 0.1, 0.8), (1 / 3, 1 / 3, 1 / 3), (0.0, 0.3, 0.7)])
def test_observed_shares_approach_the_fractions(fractions):
    shares = _shares(fractions)
    # binomial sd over 20000 ids is at most 0.0036: 0.015 is four sd
    assert shares == pytest.approx(list(fractions), abs=0.015)
    for share, fraction in zip(shares, fractions):
        assert (share == 0) == (fraction == 0)   # an empty split stays empty, a non-empty one is used


def test_default_fractions_are_80_10_10():
    counts = collections.Counter(patient_split(p) for p in IDS)
    assert [counts[s] / len(IDS) for s in SPLITS] == pytest.approx([0.8, 0.1, 0.1], abs=0.015)


@pytest.mark.parametrize("fractions,only", [((1.0, 0.0, 0.0), "train"), ((0.0, 1.0, 0.0), "validate"),
                                            ((0.0, 0.0, 1.0), "test")])
def test_a_split_of_everything_takes_every_patient(fractions, only):
    assert {patient_split(p, fractions) for p in IDS[:2000]} == {only}


def test_same_id_same_split():
    for p in IDS[:500]:
        assert patient_split(p) == patient_split(p) == patient_split(str(p), (0.8, 0.1, 0.1), "synthcxr")


def test_growing_validation_only_moves_patients_out_of_train():
    """The split is a threshold on one number per patient: a larger validation share takes
    patients from train only, never reshuffles test."""
    small = {p: patient_split(p, (0.8, 0.1, 0.1)) for p in IDS[:3000]}
    large = {p: patient_split(p, (0.7, 0.2, 0.1)) for p in IDS[:3000]}
    assert all(large[p] == "test" for p in IDS[:3000] if small[p] == "test")
    moved = [p for p in IDS[:3000] if small[p] != large[p]]
    assert moved and all(small[p] == "train" and large[p] == "validate" for p in moved)


def test_salt_changes_the_assignment_but_not_the_shares():
    a = [patient_split(p, (0.5, 0.25, 0.25), "one") for p in IDS[:4000]]
    b = [patient_split(p, (0.5, 0.25, 0.25), "two") for p in IDS[:4000]]
    differ = sum(x != y for x, y in zip(a, b)) / len(a)
    # independent draws disagree with probability 1 - (0.5^2 + 2 * 0.25^2) = 0.625
    assert differ == pytest.approx(0.625, abs=0.04)
    assert _shares((0.5, 0.25, 0.25), "two") == pytest.approx([0.5, 0.25, 0.25], abs=0.015)


def test_the_assignment_is_pinned_across_versions():
    """Splits of datasets already written depend on this exact assignment (sha256 of "salt:id"):
    a change of hash, salt or byte order would reshuffle them."""
    default = "".join(str(SPLITS.index(patient_split(f"p{i}"))) for i in range(48))
    assert default == "000000000001000000100000100002200000100000200000"
    other = "".join(str(SPLITS.index(patient_split(f"p{i}", (0.5, 0.25, 0.25), "other"))) for i in range(48))
    assert other == "222011100012200020111101101102001010200020020201"


@pytest.mark.parametrize("fractions", [(0.5, 0.5), (0.5, 0.25, 0.25, 0.0), (1.2, -0.1, -0.1), (-0.0001, 0.5, 0.5001),
                                       (0.5, 0.25, 0.2), (0.5, 0.5, 0.5), ()])
def test_fractions_must_be_three_non_negative_shares_summing_to_one(fractions):
    with pytest.raises(ValueError, match="expected three non-negative numbers summing to 1"):
        patient_split("p1", fractions)


def test_fractions_summing_to_one_up_to_rounding_are_accepted():
    assert patient_split("p1", (0.7, 0.2, 0.1)) in SPLITS   # 0.7 + 0.2 + 0.1 != 1.0 in binary
    assert patient_split("p1", (1 / 3, 1 / 3, 1 / 3)) in SPLITS
