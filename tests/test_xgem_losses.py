"""XGeM's losses and retrieval measure by hand: InfoNCE (symmetric, temperature-scaled, both
directions), its weighting over sets of pairs, and recall@k with its "too few samples" guard. Pure
arithmetic, the tests `make mutation` judges these functions by."""

import math

import pytest
import torch
import torch.nn.functional as F

from support.xgem.contrastive import recall_at_k, retrieval_table, symmetric_infonce, weighted_infonce


# ------------------------------------------------------------------------------ InfoNCE
# a = I, so the similarities are S[i][j] = b[j][i]: rows and columns differ.
A = torch.eye(3)
B = torch.tensor([[0.8, 0.6, 0.0], [0.0, 0.6, 0.8], [0.6, 0.0, 0.8]])
S = [[0.8, 0.0, 0.6], [0.6, 0.6, 0.0], [0.0, 0.8, 0.8]]


def _by_hand(scale: float, columns: bool = True) -> float:
    """Mean of -log softmax over rows (a->b) and over columns (b->a); ``columns=False`` repeats the
    rows instead (the untransposed second direction)."""
    def row(i):
        return -math.log(math.exp(scale * S[i][i]) / sum(math.exp(scale * S[i][j]) for j in range(3)))

    def column(j):
        return -math.log(math.exp(scale * S[j][j]) / sum(math.exp(scale * S[i][j]) for i in range(3)))

    second = column if columns else row
    return (sum(row(i) for i in range(3)) / 3 + sum(second(j) for j in range(3)) / 3) / 2


def test_infonce_by_hand_is_symmetric_temperature_scaled_and_transposed():
    assert torch.allclose(A @ B.T, torch.tensor(S))
    loss = symmetric_infonce(A, B, 10.0).item()
    assert loss == pytest.approx(_by_hand(10.0), rel=1e-5)
    assert symmetric_infonce(B, A, 10.0).item() == pytest.approx(loss, rel=1e-5)          # a, b swapped
    assert symmetric_infonce(A, B, 20.0).item() == pytest.approx(_by_hand(20.0), rel=1e-5)
    assert abs(_by_hand(20.0) - _by_hand(10.0)) > 0.1                                       # the scale matters
    assert abs(_by_hand(10.0, columns=False) - _by_hand(10.0)) > 0.05                       # and the transpose


def test_terms_are_weighted_by_their_pairs_and_a_single_pair_is_skipped():
    g = torch.Generator().manual_seed(0)
    f, t3 = (F.normalize(torch.randn(3, 8, generator=g), dim=-1) for _ in range(2))
    l2, t2 = (F.normalize(torch.randn(2, 8, generator=g), dim=-1) for _ in range(2))
    first, second = symmetric_infonce(f, t3, 5.0), symmetric_infonce(l2, t2, 5.0)
    loss, counts = weighted_infonce([(f, t3), (l2, t2)], 5.0)
    assert counts == [3, 2] and loss.item() == pytest.approx((3 * first + 2 * second).item() / 5, rel=1e-6)
    loss, counts = weighted_infonce([(f, t3), (l2[:1], t2[:1])], 5.0)
    assert counts == [3, 0] and loss.item() == pytest.approx(first.item(), rel=1e-6)
    loss, counts = weighted_infonce([(f[:1], t3[:1]), (l2[:1], t2[:1])], 5.0)
    assert counts == [0, 0] and loss.item() == 0


# ------------------------------------------------------------------------------ retrieval
def _embeddings(n: int, has_lateral=None, has_report=None, report=None):
    eye = torch.eye(n)
    return {"frontal": eye, "lateral": eye.clone(), "report": eye.clone() if report is None else report,
            "has_lateral": torch.ones(n, dtype=torch.bool) if has_lateral is None else torch.tensor(has_lateral),
            "has_report": torch.ones(n, dtype=torch.bool) if has_report is None else torch.tensor(has_report)}


def test_recall_on_hand_made_embeddings():
    table = retrieval_table(_embeddings(6)).set_index("direction")
    assert list(table.index) == ["F->T", "T->F", "L->T", "T->L", "F->L", "L->F"]
    assert (table["recall@1"] == 1.0).all() and (table["recall@5"] == 1.0).all() and (table["left_out"] == 0).all()
    assert (table["note"] == "").all()                                     # enough candidates: nothing to say
    # reports shifted by one study: no query finds its own at rank 1; each is the 2nd among 6
    shifted = torch.eye(6)[[1, 2, 3, 4, 5, 0]] + 0.5 * torch.eye(6)
    table = retrieval_table(_embeddings(6, report=shifted)).set_index("direction")
    assert table.loc["F->T", "recall@1"] == 0.0 and table.loc["F->T", "recall@5"] == 1.0
    assert table.loc["F->L", "recall@1"] == 1.0
    # ties count against the query
    assert recall_at_k(torch.ones(4, 3), torch.ones(4, 3), 1) == 0.0
    assert recall_at_k(torch.eye(4), torch.eye(4)[[0, 1, 3, 2]], 1) == 0.5


def test_too_few_samples_give_nan_and_a_reason_and_absent_modalities_are_counted():
    table = retrieval_table(_embeddings(6, has_lateral=[True, False, False, False, True, True],
                                        has_report=[True, True, True, True, True, False])).set_index("direction")
    assert table.loc["F->T", "studies"] == 5 and table.loc["F->T", "left_out"] == 1
    row = table.loc["L->T"]                                 # studies 0 and 4: two candidates
    assert (row["studies"], row["left_out"], row["recall@1"]) == (2, 4, 1.0)
    assert math.isnan(row["recall@5"]) and "too few samples: 2 candidates" in row["note"]
    assert table.loc["F->L", "studies"] == 3 and math.isnan(table.loc["F->L", "recall@5"])
    single = retrieval_table(_embeddings(3, has_lateral=[True, False, False])).set_index("direction")
    row = single.loc["F->L"]
    assert math.isnan(row["recall@1"]) and math.isnan(row["recall@5"]) and "1 candidate " in row["note"]
    assert single.loc["F->T", "note"].startswith("too few samples") and single.loc["F->T", "recall@1"] == 1.0


def test_recall_is_scored_from_exactly_enough_candidates_and_the_note_names_what_is_missing():
    five = retrieval_table(_embeddings(5)).set_index("direction").loc["F->T"]
    assert five["recall@5"] == 1.0 and five["note"] == ""                  # 5 candidates: recall@5 counts
    two = retrieval_table(_embeddings(6, has_lateral=[True, True, False, False, False, False])
                          ).set_index("direction").loc["F->L"]
    assert two["recall@1"] == 1.0 and math.isnan(two["recall@5"])         # 2 candidates: recall@1 counts
    assert two["note"] == "too few samples: 2 candidates (recall@5 needs 5)"
    one = retrieval_table(_embeddings(3, has_lateral=[True, False, False])).set_index("direction").loc["F->L"]
    assert one["note"] == "too few samples: 1 candidate (recall@1 needs 2, recall@5 needs 5)"
