"""FLOPs of a training step (``torch.utils.flop_counter``) and model FLOPs utilisation on CUDA.

MFU = achieved training FLOP/s / the device's dense bf16 peak (vendor datasheets, without
2:4 sparsity). FLOPs are counted, not estimated: one forward and backward of the model under
``FlopCounterMode`` (matrix products and convolutions; element-wise work is not counted, as is
usual for MFU).
"""

from __future__ import annotations

from typing import Callable

import torch

# Dense bf16 tensor-core peaks in TFLOP/s, matched on substrings of torch.cuda.get_device_name().
DENSE_BF16_TFLOPS = (
    ("H200", 989.0), ("H100 PCIe", 756.0), ("H100", 989.0), ("GH200", 989.0), ("B200", 2250.0),
    ("A100", 312.0), ("A10G", 70.0), ("A10", 125.0), ("L40S", 362.0), ("L40", 181.0), ("L4", 121.0),
    ("A6000", 155.0), ("RTX 4090", 165.0), ("RTX 3090", 71.0), ("V100", 125.0), ("T4", 65.0),
)


def dense_bf16_peak(device: torch.device | str = "cuda") -> float:
    """The device's dense bf16 peak in FLOP/s; an unknown device is an error naming it."""
    name = torch.cuda.get_device_name(torch.device(device))
    for key, tflops in DENSE_BF16_TFLOPS:
        if key in name:
            return tflops * 1e12
    raise KeyError(f"no dense bf16 peak known for {name!r}; add it to support.benchmarks.gpu.DENSE_BF16_TFLOPS")


def mfu(flops_per_s: float, device: torch.device | str = "cuda") -> float:
    return flops_per_s / dense_bf16_peak(device)


def step_flops(step: Callable[[], torch.Tensor]) -> float:
    """FLOPs of one call of ``step`` (a forward returning a loss) and the loss's backward."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        step().backward()
    return float(counter.get_total_flops())
