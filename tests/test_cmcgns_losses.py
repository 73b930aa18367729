"""CM-CGNS's parts against their definitions: spatial tokens, both InfoNCE directions, the
cluster-guided report loss (hard negative, false negatives), k-means across processes, CM-MIR."""

import json
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F

from launch import ENV
from support.cmcgns.losses import (SentenceClusters, cluster_guided_infonce, global_infonce, reconstruction_l1,
                                   simsiam)
from support.cmcgns.model import MIRDecoder, sentence_means, spatial_tokens, token_map
from support.core.trainer import free_port

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


DISTRIBUTED = textwrap.dedent('''
    import json, sys
    import torch, torch.distributed as dist
    import torch.nn.functional as F
    from support.cmcgns.losses import SentenceClusters, gather_rows, global_infonce

    def run(rank, port, out):
        torch.set_num_threads(1)
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
        torch.manual_seed(0)
        data = torch.randn(11, 6)                     # the same draw on both ranks; each takes its rows
        mine = data[:5] if rank == 0 else data[5:]    # unequal row counts
        clusters = SentenceClusters(4, 6, momentum=0.0)
        index = clusters.update(mine)                 # start (on gathered rows) + one step; the assignments
        rows, start = gather_rows(mine.clone().requires_grad_())
        image, report = torch.randn(2, 11, 6)         # the same on both ranks
        part = slice(0, 5) if rank == 0 else slice(5, 11)
        loss = global_infonce(image[part], report[part], torch.tensor(5.0))
        # each rank's loss averages its rows: weighting by rows gives the global mean
        total = loss.detach() * (5 if rank == 0 else 6)
        dist.all_reduce(total)
        json.dump({"centroids": clusters.centroids.tolist(), "active": int(clusters.active),
                   "rows": rows.tolist(), "start": start, "assigned": index.tolist(), "loss": float(total) / 11},
                  open(f"{out}/rank{rank}.json", "w"))
        dist.destroy_process_group()

    if __name__ == "__main__":
        torch.multiprocessing.spawn(run, args=(int(sys.argv[1]), sys.argv[2]), nprocs=2)
''')


def test_kmeans_and_infonce_agree_across_two_gloo_processes(tmp_path):
    script = tmp_path / "dist.py"
    script.write_text(DISTRIBUTED)
    proc = subprocess.run([sys.executable, str(script), str(free_port()), str(tmp_path)], env=ENV,
                          capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["centroids"] == ranks[1]["centroids"] and ranks[0]["active"] == 4
    torch.manual_seed(0)
    data = torch.randn(11, 6)
    assert torch.allclose(torch.tensor(ranks[0]["rows"]), data) and torch.allclose(torch.tensor(ranks[1]["rows"]), data)
    assert (ranks[0]["start"], ranks[1]["start"]) == (0, 5)
    # with momentum 0 each started centroid is the mean of the unit features assigned to it, over both ranks
    unit = F.normalize(data, dim=-1)
    single = SentenceClusters(4, 6, momentum=0.0)
    single.update(data)
    assert torch.allclose(torch.tensor(ranks[0]["centroids"]), single.centroids, atol=1e-6)
    assigned = torch.tensor(ranks[0]["assigned"] + ranks[1]["assigned"])
    for k in assigned.unique():
        assert torch.allclose(single.centroids[k], unit[assigned == k].mean(0), atol=1e-5)
    # the global InfoNCE over two processes is the one-process loss of the whole batch
    torch.manual_seed(0)
    torch.randn(11, 6)
    image, report = torch.randn(2, 11, 6)
    assert ranks[0]["loss"] == pytest.approx(float(global_infonce(image, report, torch.tensor(5.0))), abs=1e-5)


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
