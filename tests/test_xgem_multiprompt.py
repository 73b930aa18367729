"""Multi-Prompt training as published: three conditions in equal shares where both sources exist,
the one source otherwise, 10% dropout to the empty embedding of the matching type; inference's
weighted combination of several conditions."""

import pytest
import torch
import torch.nn.functional as F

from support.xgem.multiprompt import choice_weights, combine, draw_choices, multi_prompt_condition, sources

E = 6


def unit(*shape, seed):
    return F.normalize(torch.randn(*shape, generator=torch.Generator().manual_seed(seed)), dim=-1)


EMPTY = {"image": unit(E, seed=1), "text": unit(E, seed=2)}


def test_sources_of_each_model():
    assert sources("frontal") == ("lateral", "report")
    assert sources("lateral") == ("frontal", "report")
    assert sources("report") == ("frontal", "lateral")
    with pytest.raises(ValueError, match="modality 'pa'"):
        sources("pa")


def test_three_conditions_in_equal_shares_when_both_sources_exist():
    n = 30000
    g = torch.Generator().manual_seed(0)
    both = torch.ones(n, dtype=torch.bool)
    choices = draw_choices(both, both, g)
    shares = torch.bincount(choices, minlength=3).double() / n
    # each share within 4 standard errors of 1/3 (sd of a share: sqrt(p(1-p)/n) = 0.0027)
    assert torch.allclose(shares, torch.full((3,), 1 / 3, dtype=torch.float64), atol=4 * 0.0027), shares
    # the draws are the generator's: the same seed repeats them, another does not
    assert torch.equal(choices, draw_choices(both, both, torch.Generator().manual_seed(0)))
    assert not torch.equal(choices, draw_choices(both, both, torch.Generator().manual_seed(1)))


def test_one_source_means_that_source_and_single_prompt_means_the_named_one():
    g = torch.Generator().manual_seed(0)
    has_a = torch.tensor([True, False, True, True] * 50)
    has_b = torch.tensor([False, True, True, True] * 50)
    choices = draw_choices(has_a, has_b, g)
    assert (choices[~has_b] == 0).all() and (choices[~has_a] == 1).all()
    assert set(choices[has_a & has_b].tolist()) == {0, 1, 2}
    assert (draw_choices(has_a[2:4], has_b[2:4], g, multi_prompt=False, single="b") == 1).all()
    assert (draw_choices(has_a[2:4], has_b[2:4], g, multi_prompt=False, single="a") == 0).all()
    with pytest.raises(ValueError, match="neither condition source"):
        draw_choices(torch.tensor([False]), torch.tensor([False]), g)
    with pytest.raises(ValueError, match="needs source b in every study; 1 lack it"):
        draw_choices(has_a[:2], has_b[:2], g, multi_prompt=False, single="b")
    # single-prompt training asks only for its own source: b without a is fine, a without b is not
    assert (draw_choices(has_a[1:3], has_b[1:3], g, multi_prompt=False, single="b") == 1).all()
    with pytest.raises(ValueError, match="needs source a in every study; 1 lack it"):
        draw_choices(has_a[1:3], has_b[1:3], g, multi_prompt=False, single="a")


def test_weights_are_a_b_and_the_half_half_average():
    assert choice_weights(torch.tensor([0, 1, 2])).tolist() == [[1, 0], [0, 1], [0.5, 0.5]]


@pytest.mark.parametrize("target", ["frontal", "report"])
def test_condition_vectors_and_dropout_to_the_empty_of_the_matching_type(target):
    n = 20000
    a, b = unit(n, E, seed=3), unit(n, E, seed=4)
    both = torch.ones(n, dtype=torch.bool)
    cond, drawn = multi_prompt_condition(target, a, b, both, both, EMPTY, torch.Generator().manual_seed(5))
    dropped, choices = drawn["dropped"], drawn["choices"]
    assert abs(dropped.double().mean().item() - 0.1) < 4 * (0.1 * 0.9 / n) ** 0.5      # 10% dropout
    kind_a = "image"
    kind_b = "text" if target != "report" else "image"
    average = F.normalize(a + b, dim=-1)
    empty_average = F.normalize(EMPTY[kind_a] + EMPTY[kind_b], dim=-1)
    for row in range(200):
        c = choices[row].item()
        if dropped[row]:
            expected = [EMPTY[kind_a], EMPTY[kind_b], empty_average][c]
        else:
            expected = [a[row], b[row], average[row]][c]
        torch.testing.assert_close(cond[row], expected)
    # the image model's dropped report condition is the text empty, its dropped view the image empty
    if target == "frontal":
        row = int(torch.nonzero(dropped & (choices == 1))[0])
        torch.testing.assert_close(cond[row], EMPTY["text"])
        row = int(torch.nonzero(dropped & (choices == 0))[0])
        torch.testing.assert_close(cond[row], EMPTY["image"])
    assert torch.allclose(cond.norm(dim=-1), torch.ones(n), atol=1e-5)


def test_no_dropout_means_no_empty_and_single_prompt_is_always_the_report():
    n = 500
    a, b = unit(n, E, seed=3), unit(n, E, seed=4)
    both = torch.ones(n, dtype=torch.bool)
    cond, drawn = multi_prompt_condition("lateral", a, b, both, both, EMPTY, torch.Generator().manual_seed(0),
                                         dropout=0.0, multi_prompt=False)
    assert not drawn["dropped"].any()
    torch.testing.assert_close(cond, b)
    # the report model's single prompt is the frontal (its source a), never the lateral
    cond, drawn = multi_prompt_condition("report", a, b, both, both, EMPTY, torch.Generator().manual_seed(0),
                                         dropout=0.0, multi_prompt=False)
    assert (drawn["choices"] == 0).all()
    torch.testing.assert_close(cond, a)
    with pytest.raises(ValueError, match="needs source a in every study"):
        multi_prompt_condition("report", a, b, ~both, both, EMPTY, torch.Generator(), multi_prompt=False)


def test_the_draws_are_the_generators():
    n = 300
    a, b = unit(n, E, seed=3), unit(n, E, seed=4)
    both = torch.ones(n, dtype=torch.bool)
    first, drawn = multi_prompt_condition("frontal", a, b, both, both, EMPTY, torch.Generator().manual_seed(9))
    again, redrawn = multi_prompt_condition("frontal", a, b, both, both, EMPTY, torch.Generator().manual_seed(9))
    assert torch.equal(drawn["dropped"], redrawn["dropped"]) and torch.equal(drawn["choices"], redrawn["choices"])
    torch.testing.assert_close(first, again)


def test_one_pair_of_context_vectors_mixes_too():
    from support.xgem.multiprompt import mix

    a, b = unit(E, seed=11), unit(E, seed=12)
    torch.testing.assert_close(mix(torch.tensor([0.5, 0.5]), a, b), F.normalize(a + b, dim=0))


def test_inference_combines_conditions_by_normalised_weighted_average():
    f, t = unit(3, E, seed=7), unit(3, E, seed=8)
    cond, uncond = combine("lateral", {"frontal": f, "report": t}, EMPTY)
    torch.testing.assert_close(cond, F.normalize(f + t, dim=-1))
    torch.testing.assert_close(uncond, F.normalize(EMPTY["image"] + EMPTY["text"], dim=-1).expand(3, E))
    cond, uncond = combine("lateral", {"frontal": f, "report": t}, EMPTY, {"frontal": 3.0, "report": 1.0})
    torch.testing.assert_close(cond, F.normalize(0.75 * f + 0.25 * t, dim=-1))
    # fractional weights and a zero weight are weights too (only negatives and all-zero are refused)
    cond, _ = combine("lateral", {"frontal": f, "report": t}, EMPTY, {"frontal": 0.25, "report": 0.75})
    torch.testing.assert_close(cond, F.normalize(0.25 * f + 0.75 * t, dim=-1))
    cond, _ = combine("lateral", {"frontal": f, "report": t}, EMPTY, {"frontal": 0.0})
    torch.testing.assert_close(cond, t)
    cond, uncond = combine("frontal", {"report": t}, EMPTY)
    torch.testing.assert_close(cond, t)
    torch.testing.assert_close(uncond, EMPTY["text"].expand(3, E))
    with pytest.raises(ValueError, match="no condition given"):
        combine("frontal", {}, EMPTY)
    with pytest.raises(ValueError, match="cannot also be a condition"):
        combine("frontal", {"frontal": f}, EMPTY)
    with pytest.raises(ValueError, match=r"condition weights \['lateral'\]"):
        combine("frontal", {"report": t}, EMPTY, {"lateral": 1.0})
    with pytest.raises(ValueError, match="not all zero"):
        combine("frontal", {"report": t}, EMPTY, {"report": 0.0})
