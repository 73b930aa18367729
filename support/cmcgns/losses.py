"""CM-CGNS's losses, vectorised over the batch (no per-sample Python loops) and correct across
processes.

- :func:`global_infonce`: symmetric image<->report InfoNCE (CLIP/ConVIRT), learnable temperature;
- :func:`simsiam`: the local image loss, patch tokens against their text-attended versions;
- :class:`SentenceClusters`: k-means centroids of the image-conditioned sentence features, each an
  EMA of the *mean* of the features assigned to it, summed over every process;
- :func:`cluster_guided_infonce`: the CM-CGNS local report loss: each sentence against every
  image-attended sentence of the global batch, plus one hard negative (its second-nearest
  centroid), with same-cluster pairs masked from the denominator as false negatives;
- :func:`reconstruction_l1`: CM-MIR's L1 to the image.
"""

from __future__ import annotations

import logging

import torch
import torch.nn as nn
import torch.nn.functional as F

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------ processes
def _world() -> tuple[int, int]:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def gather_rows(x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Rows of ``x`` from every process, in rank order, with gradients flowing back to this
    process's rows; and where this process's rows start. Processes may hold different numbers
    of rows (a batch's sentence count varies): rows are padded to the largest, then cut."""
    rank, world = _world()
    if world == 1:
        return x, 0
    import torch.distributed as dist
    import torch.distributed.nn.functional as dnn

    counts = [torch.zeros(1, dtype=torch.long, device=x.device) for _ in range(world)]
    dist.all_gather(counts, torch.tensor([x.shape[0]], device=x.device))
    counts = [int(c) for c in counts]
    padded = F.pad(x, (0,) * (2 * (x.dim() - 1)) + (0, max(counts) - x.shape[0]))
    parts = dnn.all_gather(padded)
    return torch.cat([p[:n] for p, n in zip(parts, counts)]), sum(counts[:rank])


def all_reduce_sum(x: torch.Tensor) -> torch.Tensor:
    """``x`` summed over the processes (no gradient)."""
    rank, world = _world()
    if world > 1:
        import torch.distributed as dist
        x = x.clone()
        dist.all_reduce(x)
    return x


# ------------------------------------------------------------------------------------ global
class LogitScale(nn.Module):
    """A learnable inverse temperature, stored as its log (CLIP), starting at 1/``temperature``."""

    def __init__(self, temperature: float = 0.1, max_scale: float = 100.0):
        super().__init__()
        self.log_scale = nn.Parameter(torch.tensor(float(-torch.log(torch.tensor(temperature)))))
        self.max_scale = max_scale

    def forward(self) -> torch.Tensor:
        return self.log_scale.exp().clamp(max=self.max_scale)


def global_infonce(image: torch.Tensor, report: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE of matching image and report embeddings (B, D) against every pair of the
    global batch: image->report and report->image cross-entropies, averaged."""
    image, report = F.normalize(image, dim=-1), F.normalize(report, dim=-1)
    all_image, start = gather_rows(image)
    all_report, _ = gather_rows(report)
    target = torch.arange(start, start + image.shape[0], device=image.device)
    image_to_report = scale * image @ all_report.t()
    report_to_image = scale * report @ all_image.t()
    return (F.cross_entropy(image_to_report, target) + F.cross_entropy(report_to_image, target)) / 2


# ------------------------------------------------------------------------------------ local image
def simsiam(x: torch.Tensor, y: torch.Tensor, predictor: nn.Module, mask: torch.Tensor | None = None) -> torch.Tensor:
    """SimSiam's symmetric negative cosine between ``x`` and ``y`` (..., D): each side's prediction
    against the other side with its gradient stopped. ``mask`` (...) keeps some rows."""
    px, py = predictor(x), predictor(y)
    agree = (F.cosine_similarity(px, y.detach(), dim=-1) + F.cosine_similarity(py, x.detach(), dim=-1)) / 2
    if mask is not None:
        return -(agree * mask).sum() / mask.sum().clamp(min=1)
    return -agree.mean()


# ------------------------------------------------------------------------------------ clusters
class SentenceClusters(nn.Module):
    """k-means over the image-conditioned sentence features, online: each centroid moves toward the
    mean of the features assigned to it (an EMA with ``momentum``; clusters that drew nothing stay),
    with sums and counts added over every process so that all ranks hold the same centroids.

    Centroids start as a farthest-point pick from the first features seen (all ranks pick from the
    same gathered features, so they agree). A first batch with fewer features than ``k`` starts
    ``min(k, features)`` clusters and says so.
    """

    def __init__(self, k: int, dim: int, momentum: float = 0.9):
        super().__init__()
        self.k, self.momentum = k, momentum
        self.register_buffer("centroids", torch.zeros(k, dim))
        self.register_buffer("active", torch.tensor(0, dtype=torch.long))   # clusters started (0: not yet)

    @property
    def started(self) -> bool:
        return int(self.active) > 0

    def current(self) -> torch.Tensor:
        """The started centroids, unit length (K', D)."""
        return F.normalize(self.centroids[: int(self.active)], dim=-1)

    @torch.no_grad()
    def start(self, features: torch.Tensor) -> None:
        """Farthest-point initialisation from (gathered) ``features`` (N, D)."""
        z = F.normalize(features.float(), dim=-1)
        k = min(self.k, z.shape[0])
        if k < self.k:
            log.warning("k-means: %d sentence features in the first batch, fewer than k=%d; starting %d clusters",
                        z.shape[0], self.k, k)
        chosen = [0]
        nearest = z @ z[0]
        for _ in range(1, k):
            i = int(torch.argmin(nearest))
            chosen.append(i)
            nearest = torch.maximum(nearest, z @ z[i])
        self.centroids.zero_()
        self.centroids[:k] = z[chosen]
        self.active.fill_(k)

    def assign(self, features: torch.Tensor, top: int = 1) -> torch.Tensor:
        """Indices of the ``top`` nearest centroids (cosine) of each feature (N, top), nearest first."""
        sim = F.normalize(features.detach().float(), dim=-1) @ self.current().t()
        return sim.topk(min(top, sim.shape[1]), dim=-1).indices

    @torch.no_grad()
    def update(self, features: torch.Tensor) -> torch.Tensor:
        """One k-means step on this process's ``features`` (N, D), summed over processes; returns the
        assignments (N,). Starts the clusters first if needed (on the gathered features)."""
        z = F.normalize(features.detach().float(), dim=-1)
        if not self.started:
            self.start(gather_rows(z)[0])
        k = int(self.active)
        index = self.assign(z)[:, 0]
        one_hot = F.one_hot(index, k).to(z.dtype)                     # (N, K')
        sums = all_reduce_sum(one_hot.t() @ z)                        # (K', D)
        counts = all_reduce_sum(one_hot.sum(0))                       # (K',)
        drew = counts > 0
        means = sums[drew] / counts[drew, None]
        old = self.centroids[:k][drew]
        self.centroids[:k][drew] = self.momentum * old + (1 - self.momentum) * means
        return index


# ------------------------------------------------------------------------------------ local report
def cluster_guided_infonce(sentences: torch.Tensor, attended: torch.Tensor, scale: torch.Tensor,
                           clusters: SentenceClusters | None = None) -> tuple[torch.Tensor, dict]:
    """InfoNCE of each sentence feature (N, D) against every image-attended sentence feature of the
    global batch, its own being the positive.

    With ``clusters`` (started), CM-CGNS's guidance:
    - one hard negative per sentence: the centroid second-nearest to it (the nearest is its own
      cluster, which holds its positives), an extra logit of that sentence only;
    - false negatives: an attended sentence in the anchor's own cluster says what the anchor says
      (the phantom's "No pneumothorax." in a hundred reports); such pairs leave the denominator.

    Returns the loss and counts (``false_negatives`` masked per anchor, mean).
    """
    z1, z2 = F.normalize(sentences, dim=-1), F.normalize(attended, dim=-1)
    all_z2, start = gather_rows(z2)
    n = z1.shape[0]
    target = torch.arange(start, start + n, device=z1.device)
    logits = scale * z1 @ all_z2.t()                                  # (n, N_global)
    stats = {"false_negatives": 0.0}
    if clusters is not None and clusters.started and int(clusters.active) >= 2:
        near = clusters.assign(z1, top=2)                             # (n, 2): own cluster, hard negative
        own, hard = near[:, 0], near[:, 1]
        centroids = clusters.current().to(z1.dtype)
        hard_logit = scale * (z1 * centroids[hard]).sum(-1, keepdim=True)
        candidate = clusters.assign(all_z2)[:, 0]                     # (N_global,)
        false_negative = own[:, None] == candidate[None, :]
        false_negative[torch.arange(n, device=z1.device), target] = False
        logits = torch.cat([logits.masked_fill(false_negative, float("-inf")), hard_logit], dim=1)
        stats["false_negatives"] = float(false_negative.sum(1).float().mean())
    return F.cross_entropy(logits, target), stats


# ------------------------------------------------------------------------------------ CM-MIR
def reconstruction_l1(reconstruction: torch.Tensor, image: torch.Tensor, weight: float = 10.0) -> torch.Tensor:
    """CM-MIR's objective: ``weight`` x mean absolute error to the image (the same size and range)."""
    if reconstruction.shape != image.shape:
        raise ValueError(f"reconstruction {tuple(reconstruction.shape)} and image {tuple(image.shape)} differ")
    return weight * (reconstruction - image).abs().mean()
