"""One call that seeds every random number generator a stage touches."""

from __future__ import annotations

import os
import random


def seed_everything(seed: int, deterministic: bool = False) -> int:
    """Seed python, numpy and torch (all devices); optionally force deterministic kernels.

    ``deterministic=True`` makes torch raise on ops without a deterministic implementation rather
    than silently differ between runs, and sets the cuBLAS workspace that determinism needs.
    """
    import numpy as np
    import torch

    seed = int(seed)
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    os.environ["PYTHONHASHSEED"] = str(seed)  # inherited by worker processes started later
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=False)
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
    return seed


def torch_generator(seed: int, device: str = "cpu"):
    """A fresh generator for per-sample seeds (sampling, crops) independent of global state."""
    import torch

    return torch.Generator(device=device).manual_seed(int(seed))
