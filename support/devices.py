"""Device and dtype choice, the same rule everywhere: CUDA bf16 where supported else fp16, CPU fp32."""

from __future__ import annotations


def pick_device(preference: str = "auto"):
    """``auto`` picks CUDA when present, else CPU. An explicit device that is absent is an error."""
    import torch

    pref = (preference or "auto").lower()
    if pref == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(pref)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {preference!r} requested but CUDA is not available on this machine")
    return dev


def pick_dtype(device, preference: str = "auto"):
    """Compute dtype for mixed precision: bf16 on CUDA that supports it, fp16 on older CUDA, fp32 on CPU."""
    import torch

    pref = (preference or "auto").lower()
    table = {"fp32": torch.float32, "float32": torch.float32, "no": torch.float32,
             "fp16": torch.float16, "float16": torch.float16,
             "bf16": torch.bfloat16, "bfloat16": torch.bfloat16}
    if pref != "auto":
        if pref not in table:
            raise ValueError(f"dtype {preference!r}: expected one of auto, {', '.join(sorted(table))}")
        return table[pref]
    device = torch.device(device)
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def mixed_precision_name(dtype) -> str:
    """The accelerate ``mixed_precision`` string for a dtype."""
    import torch

    return {torch.float16: "fp16", torch.bfloat16: "bf16"}.get(dtype, "no")
