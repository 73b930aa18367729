"""CM-CGNS's parts against their definitions: spatial tokens, both InfoNCE directions, the
cluster-guided report loss (hard negative, false negatives), k-means across processes (a fake
two-rank world here; real gloo processes in test_cmcgns_distributed.py), CM-MIR."""

import math

import pytest
import torch
import torch.nn.functional as F

from support.cmcgns.losses import (SentenceClusters, cluster_guided_infonce, global_infonce, reconstruction_l1,
                                   simsiam)
from support.cmcgns.model import MIRDecoder, sentence_means, spatial_tokens, token_map

torch.set_num_threads(1)


def test_tokens_keep_spatial_order():
    b, c, h, w = 2, 3, 4, 5
    x = torch.arange(b * c * h * w, dtype=torch.float32).reshape(b, c, h, w)
    tokens = spatial_tokens(x)
    assert tokens.shape == (b, h * w, c)
    for r in range(h):
        for col in range(w):
            assert torch.equal(tokens[:, r * w + col], x[:, :, r, col])     # token r*w+c is cell (r, c), all channels
    assert torch.equal(token_map(tokens, h, w), x)
    # the original's reshape without a permute mixes channels into positions
    assert not torch.equal(x.reshape(b, h * w, c), tokens)


def test_sentence_embeddings_are_means_of_their_tokens():
    features = torch.randn(2, 6, 4)
    index = torch.tensor([[-1, 0, 0, 1, -1, -1], [-1, 0, 1, 1, 1, -1]])
    means, present = sentence_means(features, index, 2)
    assert torch.allclose(means[0, 0], features[0, 1:3].mean(0))
    assert torch.allclose(means[0, 1], features[0, 3])
    assert torch.allclose(means[1, 1], features[1, 2:5].mean(0))
    assert present.tolist() == [[True, True], [True, True]]
    means, present = sentence_means(features[:1], index[:1].clamp(max=0), 2)
    assert present.tolist() == [[True, False]]


def test_global_infonce_is_both_directions():
    torch.manual_seed(0)
    image, report, scale = torch.randn(5, 8), torch.randn(5, 8), torch.tensor(7.0)
    i, r = F.normalize(image, dim=-1), F.normalize(report, dim=-1)
    sim = scale * i @ r.t()
    image_to_report = -sum(torch.log_softmax(sim[k], 0)[k] for k in range(5)) / 5       # rows: one image, all reports
    report_to_image = -sum(torch.log_softmax(sim[:, k], 0)[k] for k in range(5)) / 5    # columns: one report, all images
    assert not torch.isclose(image_to_report, report_to_image)
    assert torch.isclose(global_infonce(image, report, scale), (image_to_report + report_to_image) / 2, atol=1e-6)


def _clusters(centroids: torch.Tensor) -> SentenceClusters:
    clusters = SentenceClusters(len(centroids), centroids.shape[1], momentum=0.0)
    clusters.centroids.copy_(centroids)
    clusters.active.fill_(len(centroids))
    return clusters


def test_hard_negative_is_the_second_nearest_centroid_and_false_negatives_leave_the_denominator():
    centroids = torch.eye(4)                                    # four directions
    z1 = F.normalize(torch.tensor([[1.0, 0.6, 0.2, 0.0],       # nearest 0, second 1
                                   [0.1, 1.0, 0.0, 0.5],       # nearest 1, second 3
                                   [0.9, 0.0, 0.0, 0.4]]), dim=-1)   # nearest 0, second 3
    z2 = F.normalize(torch.tensor([[1.0, 0.1, 0.0, 0.0],       # cluster 0
                                   [0.0, 1.0, 0.1, 0.0],       # cluster 1
                                   [1.0, 0.0, 0.2, 0.0]]), dim=-1)   # cluster 0: a false negative of sentence 0
    scale = torch.tensor(5.0)
    loss, stats = cluster_guided_infonce(z1, z2, scale, _clusters(centroids))
    sim = scale * z1 @ z2.t()
    hard = scale * z1[:, [1, 3, 3]].diagonal()                  # z1_i . e_second(i)
    rows = []
    for i, (excluded, h) in enumerate(zip([{2}, set(), {0}], hard)):
        logits = [sim[i, j] for j in range(3) if j not in excluded] + [h]
        rows.append(-(sim[i, i] - torch.logsumexp(torch.stack(logits), 0)))
    assert torch.isclose(loss, torch.stack(rows).mean(), atol=1e-6)
    assert stats["false_negatives"] == pytest.approx(2 / 3)
    plain, _ = cluster_guided_infonce(z1, z2, scale)           # without clusters: plain InfoNCE
    assert torch.isclose(plain, F.cross_entropy(sim, torch.arange(3)), atol=1e-6)
    assert not torch.isclose(plain, loss)


def test_kmeans_starts_with_fewer_clusters_when_a_batch_is_small(caplog):
    clusters = SentenceClusters(8, 4)
    with caplog.at_level("WARNING"):
        index = clusters.update(torch.randn(5, 4))
    assert int(clusters.active) == 5 and index.max() < 5
    assert "fewer than k=8" in caplog.text
    loss, _ = cluster_guided_infonce(torch.randn(3, 4), torch.randn(3, 4), torch.tensor(10.0), clusters)
    assert torch.isfinite(loss)


def test_kmeans_centroids_move_to_the_mean_of_their_features():
    clusters = _clusters(torch.eye(3))
    clusters.momentum = 0.5
    z = torch.tensor([[2.0, 0.1, 0.0], [1.0, -0.1, 0.0], [0.0, 3.0, 0.1]])
    index = clusters.update(z)
    assert index.tolist() == [0, 0, 1]
    unit = F.normalize(z, dim=-1)
    assert torch.allclose(clusters.centroids[0], 0.5 * torch.eye(3)[0] + 0.5 * unit[:2].mean(0))   # a mean, not a sum
    assert torch.allclose(clusters.centroids[1], 0.5 * torch.eye(3)[1] + 0.5 * unit[2])
    assert torch.equal(clusters.centroids[2], torch.eye(3)[2])                                       # drew nothing


def test_mir_output_lies_in_the_targets_range():
    torch.manual_seed(0)
    for low, high in ((0.0, 1.0), (-1.0, 1.0)):
        decoder = MIRDecoder(8, stride=4, width=16, value_range=(low, high)).eval()
        patches = 100 * torch.randn(2, 9, 8)                    # extreme features
        out = decoder(patches, -patches, torch.rand(2, 9) < 0.5, (3, 3))
        assert out.shape == (2, 1, 12, 12)
        assert out.min() >= low and out.max() <= high
        assert (out < (low + high) / 2).any() and (out > (low + high) / 2).any()
    with pytest.raises(ValueError, match="power of two"):
        MIRDecoder(8, stride=6)
    with pytest.raises(ValueError, match="differ"):
        reconstruction_l1(torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 8, 8))
    assert float(reconstruction_l1(torch.zeros(1, 1, 2, 2), torch.ones(1, 1, 2, 2), weight=10)) == 10.0


def test_simsiam_stops_the_gradient_of_its_targets():
    torch.manual_seed(0)
    x, y = torch.randn(4, 6, requires_grad=True), torch.randn(4, 6, requires_grad=True)
    identity = torch.nn.Identity()
    loss = simsiam(x, y, identity)
    assert torch.isclose(loss, -F.cosine_similarity(x, y, dim=-1).mean())
    loss.backward()
    # each side gets the gradient of its own prediction only: half the gradient of a plain cosine
    x2, y2 = x.detach().clone().requires_grad_(), y.detach().clone().requires_grad_()
    (-F.cosine_similarity(x2, y2, dim=-1).mean()).backward()
    assert torch.allclose(x.grad, x2.grad / 2, atol=1e-6)


# ------------------------------------------------------------------------------------ by value
def test_global_infonce_against_a_written_out_log_softmax():
    from support.cmcgns.losses import LogitScale

    # unit images e1, e2; reports e1 and (0.6, 0.8), given at other lengths (they are normalised)
    image = torch.tensor([[3.0, 0.0], [0.0, 0.5]])
    report = torch.tensor([[2.0, 0.0], [1.2, 1.6]])
    scale = LogitScale(temperature=0.5)().detach()             # logits = cosine / temperature = 2 cosine
    assert float(scale) == pytest.approx(2.0)
    # cosines [[1, 0.6], [0, 0.8]], logits [[2, 1.2], [0, 1.6]]
    # image->report (rows): -log softmax of the diagonal = log(1 + e^-(2-1.2)), log(1 + e^-(1.6-0))
    # report->image (columns [2, 0] and [1.2, 1.6]): log(1 + e^-2), log(1 + e^-0.4)
    expected = (math.log1p(math.exp(-0.8)) + math.log1p(math.exp(-1.6))
                + math.log1p(math.exp(-2.0)) + math.log1p(math.exp(-0.4))) / 4
    loss = global_infonce(image, report, scale)
    assert float(loss) == pytest.approx(expected, abs=1e-6)
    assert float(global_infonce(report, image, scale)) == pytest.approx(expected, abs=1e-6)   # symmetric
    # the temperature divides the cosines: at temperature 1 the same pairs give a larger loss
    at_one = (math.log1p(math.exp(-0.4)) + math.log1p(math.exp(-0.8))
              + math.log1p(math.exp(-1.0)) + math.log1p(math.exp(-0.2))) / 4
    assert float(global_infonce(image, report, torch.tensor(1.0))) == pytest.approx(at_one, abs=1e-6)


def test_the_logit_scale_starts_at_one_over_the_temperature_is_learned_and_capped():
    from support.cmcgns.losses import LogitScale

    default = LogitScale()
    assert default().item() == pytest.approx(10.0, rel=1e-6)                     # temperature 0.1
    assert default.log_scale.item() == pytest.approx(math.log(10.0), rel=1e-6)
    assert default.log_scale.requires_grad and list(default.parameters()) == [default.log_scale]
    assert LogitScale(0.05)().item() == pytest.approx(20.0, rel=1e-6)
    assert LogitScale(0.001)().item() == pytest.approx(100.0)                    # capped at max_scale=100
    assert LogitScale(0.001, max_scale=50.0)().item() == pytest.approx(50.0)
    torch.manual_seed(0)
    loss = global_infonce(torch.randn(4, 3), torch.randn(4, 3), default())
    loss.backward()
    assert default.log_scale.grad is not None and float(default.log_scale.grad) != 0.0


def test_simsiam_is_minus_the_mean_cosine_of_the_kept_tokens():
    torch.manual_seed(0)
    x, y = torch.randn(2, 3, 4), torch.randn(2, 3, 4)                     # (batch, tokens, dim)
    predictor = torch.nn.Linear(4, 4)
    px, py = predictor(x), predictor(y)
    agree = torch.zeros(2, 3)
    for b in range(2):
        for t in range(3):
            cos_xy = px[b, t] @ y[b, t] / (px[b, t].norm() * y[b, t].norm())
            cos_yx = py[b, t] @ x[b, t] / (py[b, t].norm() * x[b, t].norm())
            agree[b, t] = (cos_xy + cos_yx) / 2
    assert torch.isclose(simsiam(x, y, predictor), -agree.mean(), atol=1e-6)
    mask = torch.tensor([[True, False, True], [False, False, True]])
    assert torch.isclose(simsiam(x, y, predictor, mask), -(agree[0, 0] + agree[0, 2] + agree[1, 2]) / 3, atol=1e-6)
    one = torch.tensor([[False, True, False], [False, False, False]])
    assert torch.isclose(simsiam(x, y, predictor, one), -agree[0, 1], atol=1e-6)
    assert simsiam(x, y, predictor, torch.zeros(2, 3, dtype=torch.bool)).item() == 0.0   # nothing kept: 0


def test_simsiam_sends_no_gradient_through_the_stopped_targets():
    torch.manual_seed(0)
    x, y = torch.randn(5, 4, requires_grad=True), torch.randn(5, 4, requires_grad=True)

    class Constant(torch.nn.Module):
        """A prediction that ignores its input: x and y then reach the loss only as targets."""

        def __init__(self):
            super().__init__()
            self.c = torch.nn.Parameter(torch.randn(4))

        def forward(self, v):
            return self.c.expand_as(v)

    predictor = Constant()
    loss = simsiam(x, y, predictor)
    expected = -(F.cosine_similarity(predictor.c.expand(5, 4), y, dim=-1)
                 + F.cosine_similarity(predictor.c.expand(5, 4), x, dim=-1)).mean() / 2
    assert torch.isclose(loss, expected, atol=1e-6)
    loss.backward()
    assert x.grad is None and y.grad is None                           # the targets' gradient is stopped
    assert predictor.c.grad is not None and predictor.c.grad.abs().sum() > 0


def test_reconstruction_l1_is_ten_times_the_mean_absolute_error_by_default():
    reconstruction = torch.tensor([[[[0.2, 0.5], [1.0, -0.3]]]])
    image = torch.tensor([[[[0.0, 0.9], [0.5, 0.1]]]])
    # |0.2| + |-0.4| + |0.5| + |-0.4| = 1.5 over 4 pixels = 0.375
    assert float(reconstruction_l1(reconstruction, image)) == pytest.approx(3.75)
    assert float(reconstruction_l1(reconstruction, image, weight=2.0)) == pytest.approx(0.75)
    assert float(reconstruction_l1(image, image)) == 0.0


def test_kmeans_step_with_the_default_momentum_is_an_ema_of_the_mean():
    clusters = SentenceClusters(3, 3)                                   # momentum 0.9
    old = torch.tensor([[2.0, 0.0, 0.0], [0.0, 3.0, 0.0], [0.0, 0.0, 1.0]])
    clusters.centroids.copy_(old)
    clusters.active.fill_(3)
    assert torch.allclose(clusters.current(), torch.eye(3))             # unit length
    z = torch.tensor([[1.0, 0.2, 0.0], [3.0, 0.0, 0.4], [0.1, 2.0, 0.0]])
    assert clusters.assign(z).tolist() == [[0], [0], [1]]                # the nearest only, by default
    assert clusters.assign(z, top=2).tolist() == [[0, 1], [0, 2], [1, 0]]
    assert clusters.update(z).tolist() == [0, 0, 1]
    unit = F.normalize(z, dim=-1)
    assert torch.allclose(clusters.centroids[0], 0.9 * old[0] + 0.1 * (unit[0] + unit[1]) / 2)
    assert torch.allclose(clusters.centroids[1], 0.9 * old[1] + 0.1 * unit[2])
    assert torch.equal(clusters.centroids[2], old[2])
    clusters.active.fill_(2)
    assert clusters.current().shape == (2, 3)                           # the started ones only


def test_kmeans_first_update_starts_from_farthest_points_then_steps():
    clusters = SentenceClusters(2, 2, momentum=0.5)
    assert not clusters.started
    z = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]])
    index = clusters.update(z)
    assert clusters.started and int(clusters.active) == 2
    assert index.tolist() == [0, 0, 1]
    unit = F.normalize(z, dim=-1)
    # started at z0 and the farthest from it, z2; then half-way to the means of their members
    assert torch.allclose(clusters.centroids[0], 0.5 * unit[0] + 0.5 * (unit[0] + unit[1]) / 2)
    assert torch.allclose(clusters.centroids[1], unit[2])


def test_two_clusters_already_guide_and_one_does_not():
    centroids = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    z1 = F.normalize(torch.tensor([[1.0, 0.4, 0.2], [0.2, 1.0, 0.1]]), dim=-1)        # clusters 0, 1
    z2 = F.normalize(torch.tensor([[1.0, 0.1, 0.3], [0.3, 1.0, 0.0], [1.0, 0.2, 0.0]]), dim=-1)  # 0, 1, 0
    scale = torch.tensor(4.0)
    sim = scale * z1 @ z2.t()
    plain = F.cross_entropy(sim, torch.arange(2))
    loss, stats = cluster_guided_infonce(z1, z2, scale, _clusters(centroids))
    # anchor 0: attended 2 shares its cluster and leaves; hard negative: centroid 1
    # anchor 1: nothing else in cluster 1; hard negative: centroid 0
    row0 = -(sim[0, 0] - torch.logsumexp(torch.stack([sim[0, 0], sim[0, 1], scale * z1[0, 1]]), 0))
    row1 = -(sim[1, 1] - torch.logsumexp(torch.stack([sim[1, 0], sim[1, 1], sim[1, 2], scale * z1[1, 0]]), 0))
    assert torch.isclose(loss, (row0 + row1) / 2, atol=1e-6) and not torch.isclose(loss, plain)
    assert stats == {"false_negatives": pytest.approx(0.5)}
    one = _clusters(centroids[:1])
    loss, stats = cluster_guided_infonce(z1, z2, scale, one)
    assert torch.isclose(loss, plain, atol=1e-6) and stats == {"false_negatives": 0.0}
    loss, stats = cluster_guided_infonce(z1, z2, scale, SentenceClusters(2, 3))          # not started
    assert torch.isclose(loss, plain, atol=1e-6) and stats == {"false_negatives": 0.0}


# ------------------------------------------------------------------------------------ two ranks
class TwoRanks:
    """This process as rank ``rank`` of two, the other rank holding ``other`` (rows; a list: what it
    gathers in turn): torch's collectives answered in-process, the other rank's padding filled with
    NaN (it must be cut)."""

    def __init__(self, monkeypatch, rank: int, other, other_sum: torch.Tensor | None = None):
        import torch.distributed as dist
        import torch.distributed.nn.functional as dnn

        self.rank, self.other_sum = rank, other_sum
        self.others = list(other) if isinstance(other, list) else [other]
        monkeypatch.setattr(dist, "is_available", lambda: True)
        monkeypatch.setattr(dist, "is_initialized", lambda: True)
        monkeypatch.setattr(dist, "get_rank", lambda *a, **k: rank)
        monkeypatch.setattr(dist, "get_world_size", lambda *a, **k: 2)
        monkeypatch.setattr(dist, "all_gather", self.all_gather)
        monkeypatch.setattr(dist, "all_reduce", self.all_reduce)
        monkeypatch.setattr(dnn, "all_gather", self.all_gather_rows)

    def all_gather(self, out, tensor):
        assert len(out) == 2 and out[0].shape == tensor.shape == (1,) and tensor.dtype == out[0].dtype
        out[self.rank].copy_(tensor)
        out[1 - self.rank].copy_(torch.tensor([len(self.others[0])]))
        self.mine = int(tensor)

    def all_gather_rows(self, tensor):
        other = self.others.pop(0) if len(self.others) > 1 else self.others[0]
        rows = tensor.shape[0]
        # a collective of equal shapes on every rank: each pads its rows to the largest count
        assert rows == max(self.mine, len(other)) and tensor.shape[1:] == other.shape[1:]
        other = torch.cat([other, torch.full((rows - len(other), *other.shape[1:]), float("nan"))])
        return (tensor, other) if self.rank == 0 else (other, tensor)

    def all_reduce(self, tensor):
        tensor.add_(self.other_sum)


def test_one_process_is_rank_0_of_1_and_gathers_its_own_rows():
    from support.cmcgns.losses import _world, all_reduce_sum, gather_rows

    assert _world() == (0, 1)
    x = torch.randn(3, 2)
    rows, start = gather_rows(x)
    assert rows is x and start == 0
    assert torch.equal(all_reduce_sum(x), x)


@pytest.mark.parametrize("rank", [0, 1])
def test_rows_are_gathered_in_rank_order_with_unequal_counts(monkeypatch, rank):
    from support.cmcgns.losses import _world, gather_rows

    g = torch.Generator().manual_seed(rank)
    for mine_shape, other_shape in (((2, 5), (4, 5)), ((4, 3, 2), (1, 3, 2)), ((3, 7), (3, 7))):
        other = torch.randn(other_shape, generator=g)
        TwoRanks(monkeypatch, rank, other)
        assert _world() == (rank, 2)
        mine = torch.randn(mine_shape, generator=g, requires_grad=True)
        rows, start = gather_rows(mine)
        expected = torch.cat([mine, other] if rank == 0 else [other, mine])
        assert rows.shape == expected.shape and torch.equal(rows, expected)     # padding cut, no NaN
        assert start == (0 if rank == 0 else len(other))
        weights = torch.randn(rows.shape, generator=g)
        (rows * weights).sum().backward()
        assert torch.equal(mine.grad, weights[start:start + len(mine)])           # gradient to this rank's rows


def test_all_reduce_sums_over_ranks_without_touching_its_input(monkeypatch):
    from support.cmcgns.losses import all_reduce_sum

    TwoRanks(monkeypatch, 1, torch.zeros(1, 2), other_sum=torch.tensor([10.0, 20.0]))
    x = torch.tensor([1.0, 2.0])
    total = all_reduce_sum(x)
    assert total.tolist() == [11.0, 22.0] and x.tolist() == [1.0, 2.0]


def test_infonce_on_rank_1_is_its_rows_of_the_global_batch(monkeypatch):
    torch.manual_seed(0)
    image, report = torch.randn(5, 4), torch.randn(5, 4)            # the global batch: rank 0 has 3, rank 1 has 2
    i, r = F.normalize(image, dim=-1), F.normalize(report, dim=-1)
    sim = 6.0 * i @ r.t()
    target = torch.tensor([3, 4])
    expected = (F.cross_entropy(sim[3:], target) + F.cross_entropy(sim.t()[3:], target)) / 2
    TwoRanks(monkeypatch, 1, [i[:3], r[:3]])         # rank 0's (normalised) images, then its reports
    own = image[3:].clone().requires_grad_()
    loss = global_infonce(own, report[3:], torch.tensor(6.0))
    assert torch.isclose(loss, expected, atol=1e-6)
    loss.backward()
    assert own.grad is not None and own.grad.abs().sum() > 0


def test_cluster_guided_infonce_on_rank_1_masks_against_its_global_targets(monkeypatch):
    eye = torch.eye(3)
    # attended sentences of the global batch: rank 0 holds 0..2, this rank (1) holds 3, 4
    z2 = F.normalize(torch.tensor([[1.0, 0.1, 0.0],      # cluster 0
                                   [0.0, 1.0, 0.2],      # cluster 1
                                   [0.2, 0.0, 1.0],      # cluster 2
                                   [1.0, 0.0, 0.3],      # cluster 0
                                   [0.1, 1.0, 0.0]]), dim=-1)   # cluster 1
    z1 = F.normalize(torch.tensor([[1.0, 0.5, 0.1],      # cluster 0, second nearest 1; positive: 3
                                   [0.3, 1.0, 0.6]]), dim=-1)   # cluster 1, second nearest 2; positive: 4
    scale = torch.tensor(5.0)
    sim = scale * z1 @ z2.t()
    TwoRanks(monkeypatch, 1, z2[:3])
    plain, stats = cluster_guided_infonce(z1, z2[3:], scale)
    assert torch.isclose(plain, F.cross_entropy(sim, torch.tensor([3, 4])), atol=1e-6)
    assert stats == {"false_negatives": 0.0}
    loss, stats = cluster_guided_infonce(z1, z2[3:], scale, _clusters(eye))
    # anchor 0 drops attended 0 (its cluster, not its positive); anchor 1 drops attended 1
    row0 = -(sim[0, 3] - torch.logsumexp(torch.stack([sim[0, 1], sim[0, 2], sim[0, 3], sim[0, 4],
                                                      scale * z1[0, 1]]), 0))
    row1 = -(sim[1, 4] - torch.logsumexp(torch.stack([sim[1, 0], sim[1, 2], sim[1, 3], sim[1, 4],
                                                      scale * z1[1, 2]]), 0))
    assert torch.isclose(loss, (row0 + row1) / 2, atol=1e-6)
    assert stats["false_negatives"] == pytest.approx(1.0)


def test_current_centroids_are_each_unit_length_and_keep_their_direction():
    # centroids are EMAs of means of unit features, so shorter than 1; each row is scaled by its own norm
    raw = torch.tensor([[0.3, 0.4, 0.0], [0.0, 0.1, 0.0], [2.0, 0.0, 2.0]])
    clusters = _clusters(raw)
    clusters.active.fill_(2)                                    # only the started ones
    current = clusters.current()
    assert current.shape == (2, 3)
    assert torch.allclose(current, torch.tensor([[0.6, 0.8, 0.0], [0.0, 1.0, 0.0]]))
