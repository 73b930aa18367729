"""LoRA adapters (peft) on the UNet attention projections, and their diffusers-format files.

Training follows diffusers' ``train_text_to_image_lora.py``: the base weights are frozen, the
adapters are added with ``add_adapter(LoraConfig(...))`` (Gaussian init of A, zero B, so the
untrained adapter changes nothing), and under fp16 only the adapters are kept in fp32
(``cast_training_params``). The result is saved with ``StableDiffusionPipeline.save_lora_weights``
(``get_peft_model_state_dict`` -> ``convert_state_dict_to_diffusers``) together with the adapter
configuration, so ``pipeline.load_lora_weights(folder)`` restores the same rank, alpha and scale
in a fresh pipeline of the base model.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import torch

from support.t2i.config import LoraParams

LORA_WEIGHTS = "pytorch_lora_weights.safetensors"


def unet_lora_config(params: LoraParams):
    """peft ``LoraConfig`` of the UNet's attention projections."""
    from peft import LoraConfig

    return LoraConfig(r=params.rank, lora_alpha=params.alpha, lora_dropout=params.dropout,
                      init_lora_weights="gaussian", target_modules=list(params.target_modules))


def text_encoder_lora_config(params: LoraParams):
    """peft ``LoraConfig`` of the CLIP text encoder's attention projections."""
    from peft import LoraConfig

    return LoraConfig(r=params.text_encoder_rank, lora_alpha=params.text_encoder_alpha,
                      lora_dropout=params.dropout, init_lora_weights="gaussian",
                      target_modules=list(params.text_encoder_target_modules))


def add_lora(unet, text_encoder, params: LoraParams) -> None:
    """Freeze every base weight and add the adapters (UNet; text encoder when asked)."""
    for model in (unet, text_encoder):
        model.requires_grad_(False)
    unet.add_adapter(unet_lora_config(params))
    if params.text_encoder:
        text_encoder.add_adapter(text_encoder_lora_config(params))
    names = [n for n, p in unet.named_parameters() if p.requires_grad]
    if not names:
        raise ValueError(f"LoRA target modules {list(params.target_modules)} match no layer of the UNet")


def trainable_parameters(**models: torch.nn.Module) -> dict[str, Any]:
    """Trainable and total parameter counts per model and overall, with the trainable share."""
    out: dict[str, Any] = {}
    trainable_all = total_all = 0
    for name, model in models.items():
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        total = sum(p.numel() for p in model.parameters())
        out[name] = {"trainable": trainable, "total": total, "share": trainable / total if total else 0.0}
        trainable_all += trainable
        total_all += total
    out["all"] = {"trainable": trainable_all, "total": total_all,
                  "share": trainable_all / total_all if total_all else 0.0}
    return out


def lora_parameters(*models: torch.nn.Module) -> list[torch.nn.Parameter]:
    """The adapter parameters (what the optimizer updates)."""
    return [p for m in models if m is not None for p in m.parameters() if p.requires_grad]


def peft_state_dicts(unet, text_encoder=None, with_text_encoder: bool = False) -> dict[str, torch.Tensor]:
    """Adapter weights in peft's naming, prefixed ``unet.`` / ``text_encoder.`` (checkpoints)."""
    from peft.utils import get_peft_model_state_dict

    state = {f"unet.{k}": v for k, v in get_peft_model_state_dict(unet).items()}
    if with_text_encoder and text_encoder is not None:
        state.update({f"text_encoder.{k}": v for k, v in get_peft_model_state_dict(text_encoder).items()})
    return state


def load_peft_state_dicts(state: dict[str, torch.Tensor], unet, text_encoder=None, where: str = "LoRA weights") -> None:
    """Put what :func:`peft_state_dicts` saved back into the adapters; every key must match."""
    from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict

    for prefix, model in (("unet.", unet), ("text_encoder.", text_encoder)):
        part = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        if model is None or not hasattr(model, "peft_config"):
            if part:
                raise ValueError(f"{where}: holds {prefix[:-1]} adapters but that model has none "
                                 f"(was it trained with lora.text_encoder on?)")
            continue
        own = get_peft_model_state_dict(model)
        if set(own) != set(part):
            diff = sorted(set(own) ^ set(part))[:4]
            raise ValueError(f"{where}: {prefix[:-1]} adapter tensors differ from the model's ({diff}); "
                             f"was it trained with other LoRA parameters or another base model?")
        bad = [k for k in own if own[k].shape != part[k].shape]
        if bad:
            raise ValueError(f"{where}: {prefix[:-1]} adapter shapes differ for {bad[:4]} (another rank?)")
        result = set_peft_model_state_dict(model, part)
        unexpected = getattr(result, "unexpected_keys", None)
        if unexpected:
            raise ValueError(f"{where}: unexpected adapter keys {unexpected[:4]}")


def save_lora_weights(directory: str | os.PathLike, unet, text_encoder=None, with_text_encoder: bool = False) -> Path:
    """Write ``directory/pytorch_lora_weights.safetensors`` in diffusers' format, atomically.

    The adapter configuration (rank, alpha, targets) travels in the file's metadata, so
    ``load_lora_weights`` rebuilds the same scale.
    """
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tmp = directory / f".tmp-lora-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    kwargs: dict[str, Any] = {
        "unet_lora_layers": convert_state_dict_to_diffusers(get_peft_model_state_dict(unet)),
        "unet_lora_adapter_metadata": unet.peft_config["default"].to_dict(),
    }
    if with_text_encoder and text_encoder is not None:
        kwargs["text_encoder_lora_layers"] = convert_state_dict_to_diffusers(get_peft_model_state_dict(text_encoder))
        kwargs["text_encoder_lora_adapter_metadata"] = text_encoder.peft_config["default"].to_dict()
    try:
        StableDiffusionPipeline.save_lora_weights(tmp, safe_serialization=True, **kwargs)
        os.replace(tmp / LORA_WEIGHTS, directory / LORA_WEIGHTS)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return directory / LORA_WEIGHTS


def lora_weights_file(path: str | os.PathLike) -> Path:
    """The weights file of a LoRA folder (or the file itself); an error names what is missing."""
    path = Path(path).expanduser()
    file = path / LORA_WEIGHTS if path.is_dir() else path
    if not file.is_file():
        raise FileNotFoundError(f"{file}: LoRA weights not found (expected a folder holding {LORA_WEIGHTS})")
    return file


def load_lora(pipe, path: str | os.PathLike, adapter_name: str = "t2i-lora"):
    """Load saved LoRA weights into ``pipe`` (diffusers' ``load_lora_weights``); return ``pipe``."""
    file = lora_weights_file(path)
    pipe.load_lora_weights(str(file.parent), weight_name=file.name, adapter_name=adapter_name)
    return pipe
