"""The speed switches of the training loop, one at a time: DDPM training with the switch on (ours)
against the same run with it off (the peer).

Each switch is a :class:`~support.core.config.LoopConfig` field every system's training reads:
``mixed_precision`` bf16 (autocast), ``sdpa`` (fused attention kernels against the math backend),
``channels_last``, ``fused_optimizer`` (Adam's fused kernel), ``num_workers`` with ``pin_memory``
(data-loader worker processes, page-locked batches on CUDA) and ``compile`` (``torch.compile``,
on CUDA only here: on the CPU it needs a C++ toolchain and minutes of compilation). On the CPU the
figures say what each switch does there; the GPU figures are what the switches are for.
"""

from __future__ import annotations

from typing import Any

import torch

# name -> (loop fields switched on, loop fields of the peer)
SWITCHES: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "bf16 autocast": ({"mixed_precision": "bf16"}, {"mixed_precision": "no"}),
    "SDPA fused attention": ({"sdpa": True}, {"sdpa": False}),
    "channels-last": ({"channels_last": True}, {"channels_last": False}),
    "fused Adam": ({"fused_optimizer": True}, {"fused_optimizer": False}),
    "2 loader workers + pinned memory": ({"num_workers": 2, "pin_memory": True}, {"num_workers": 0, "pin_memory": False}),
    "torch.compile": ({"compile": True}, {"compile": False}),
}
CUDA_ONLY = ("torch.compile",)
SUITE_SIZES = {"toy": dict(size="toy", updates=2, warmup=1), "default": dict(size="default", updates=6, warmup=2),
               "gpu": dict(size="gpu", updates=20, warmup=5)}


def suite_cases(size: str, device) -> list:
    """One row per switch that applies on ``device``: ``train_ddpm`` at the DDPM rows' size."""
    import dataclasses

    from support.benchmarks.ddpm import ours_training, suite_config
    from support.benchmarks.ddpm import SUITE_SIZES as DDPM_SIZES
    from support.benchmarks.runner import Case, Work

    s = SUITE_SIZES[size]
    dev = torch.device(device)
    base = suite_config(s["size"])
    batch = DDPM_SIZES[s["size"]]["train_batch"]
    cases = []
    for name, (on, off) in SWITCHES.items():
        if name in CUDA_ONLY and dev.type != "cuda":
            continue
        fixed = {"mixed_precision": "bf16" if dev.type == "cuda" else "no"}   # the precision runs use
        configs = [dataclasses.replace(base, train=dataclasses.replace(base.train, **{**fixed, **fields}))
                   for fields in (on, off)]

        def call(config):
            return lambda: Work(*ours_training(config, batch, s["updates"], s["warmup"], dev.type))

        cases.append(Case("switch", f"DDPM train: {name}", "images/s", call(configs[0]), call(configs[1]),
                          "the same run with the switch off", batch=batch,
                          # train_ddpm drops its own warm-up updates: no round is dropped
                          warm_ours=lambda: None, warm_peer=lambda: None, rounds=1 if size == "toy" else None))
    return cases
