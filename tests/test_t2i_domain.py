"""The base model's source domain: another detector response and contrast curve."""

import numpy as np
import pytest

from support.params import ParameterError
from support.t2i.domain import SourceDomain, identity


def test_identity_leaves_the_image_as_it_is():
    image = np.random.default_rng(0).uniform(0, 1, (16, 16)).astype(np.float32)
    assert identity().is_identity() and not SourceDomain().is_identity()
    np.testing.assert_allclose(identity()(image), image, atol=1e-7)


def test_the_tone_curve_lifts_blacks_keeps_order_and_stays_in_its_levels():
    ramp = np.tile(np.linspace(0, 1, 32, dtype=np.float32), (32, 1))
    domain = SourceDomain(blur=0.0, gamma=0.5, black=0.25, white=0.9)
    out = domain(ramp)
    assert out.min() == pytest.approx(0.25) and out.max() == pytest.approx(0.9)
    assert np.all(np.diff(out[0]) > 0)                    # monotone: anatomy keeps its order
    # gamma below 1 lifts the darks more than a linear map to the same levels would
    linear = 0.25 + 0.65 * ramp
    assert np.all(out[0, 1:-1] > linear[0, 1:-1])


def test_undo_inverts_the_tone_curve_and_clips_what_lies_outside_its_levels():
    image = np.random.default_rng(1).uniform(0, 1, (2, 16, 16)).astype(np.float32)
    domain = SourceDomain(blur=0.0, gamma=0.5, black=0.25, white=0.9)
    np.testing.assert_allclose(domain.undo(np.stack([domain(i) for i in image])), image, atol=1e-5)
    assert not np.allclose(domain(image[0]), image[0], atol=0.05)     # the round trip above did work
    assert domain.undo(np.array([0.0, 1.0])).tolist() == [0.0, 1.0]   # below black / above white: clipped
    np.testing.assert_allclose(identity().undo(image), image, atol=1e-7)


def test_blur_scales_with_the_image_side():
    edge = np.zeros((64, 64), np.float32)
    edge[:, 32:] = 1.0
    sharp, blurred = SourceDomain(blur=0.0, gamma=1.0, black=0.0, white=1.0), SourceDomain(blur=0.03, gamma=1.0,
                                                                                            black=0.0, white=1.0)
    assert np.abs(np.diff(blurred(edge)[0])).max() < 0.5 < np.abs(np.diff(sharp(edge)[0])).max()


@pytest.mark.parametrize("field, value, expected", [("gamma", 0.0, "positive"), ("black", 0.95, "black < white"),
                                                    ("blur", -0.1, "non-negative")])
def test_bad_parameters_are_refused_by_name(field, value, expected):
    with pytest.raises(ParameterError, match=f"{field}.*{expected}"):
        SourceDomain(**{field: value}).validate()


def test_own_domain_sets_show_the_base_in_target_tones_and_give_the_round_trip_ceiling():
    from support.t2i.evaluate import own_domain_sets

    rng = np.random.default_rng(2)
    target = rng.uniform(0, 1, (3, 16, 16)).astype(np.float32)
    domain = SourceDomain(blur=0.0, gamma=0.5, black=0.25, white=0.9)
    drawn_in_source = np.stack([domain(t) for t in target])      # a base that drew these in its own domain
    own, ceiling = own_domain_sets(domain, drawn_in_source, target)
    assert list(own) == ["base, own domain"] and list(ceiling) == ["real, source look and back"]
    np.testing.assert_allclose(own["base, own domain"], target, atol=1e-5)
    np.testing.assert_allclose(ceiling["real, source look and back"], target, atol=1e-5)
    assert own["base, own domain"].shape == (3, 16, 16)
