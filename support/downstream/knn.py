"""Cosine k-nearest-neighbour voting on pooled features: the protocol that trains nothing."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def cosine_neighbours(bank: np.ndarray, queries: np.ndarray, k: int, temperature: float = 0.07
                      ) -> tuple[np.ndarray, np.ndarray]:
    """(weights, indices), both (Q, k): each query's ``k`` most cosine-similar bank rows, weighted
    ``exp(similarity / temperature)`` as in DINO's kNN evaluation."""
    if not 1 <= k <= len(bank):
        raise ValueError(f"kNN: k={k} neighbours asked from {len(bank)} training samples; "
                         f"expected 1 <= k <= {len(bank)}")
    b = F.normalize(torch.as_tensor(np.asarray(bank), dtype=torch.float64), dim=1)
    q = F.normalize(torch.as_tensor(np.asarray(queries), dtype=torch.float64), dim=1)
    top = (q @ b.T).topk(k, dim=1)
    weights = torch.exp((top.values - 1.0) / temperature)   # shifted by the maximum similarity: no overflow
    return weights.numpy(), top.indices.numpy()


def knn_vote(bank: np.ndarray, values: np.ndarray, queries: np.ndarray, k: int, temperature: float = 0.07
             ) -> np.ndarray:
    """Weighted mean of the neighbours' ``values`` (N,) or (N, C) for every query: a score per
    finding, or class probabilities when ``values`` is one-hot."""
    weights, idx = cosine_neighbours(bank, queries, k, temperature)
    values = np.asarray(values, dtype=np.float64)
    picked = values[idx]                                    # (Q, k) or (Q, k, C)
    w = weights if picked.ndim == 2 else weights[..., None]
    return (w * picked).sum(axis=1) / w.sum(axis=1)
