"""Encoders judged by the harness, built by name from a small config.

An encoder is any ``torch.nn.Module`` that maps 1-channel float images (N, 1, H, W) in [0, 1] to

- pooled features: ``features(x) -> (N, feature_dim)`` (classification, kNN);
- for dense tasks, feature maps fine to coarse: ``feature_maps(x) -> [maps]`` with
  ``feature_channels`` and ``feature_strides`` (segmentation, detection).

Built-ins: ``reference`` (the project's reference network), ``resnet18`` / ``resnet50``
(torchvision, built from config), ``vit`` (a Vision Transformer, ViT-S/16 by default, with a
simple feature pyramid for dense tasks) and ``timm`` (any timm model by name). A system adds its own in
one line, ``register_encoder("dino-vit", ViTConfig)(build_vit)``. Nothing is ever downloaded:
weights come only from a local file (safetensors; ``.pt``/``.pth`` read with ``weights_only``).
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, Callable, Mapping, Protocol, runtime_checkable

import torch
import torch.nn as nn

from support.params import Checked, from_mapping

from .backbones import (ReferenceConfig, ReferenceNet, ResNetConfig, TimmConfig, TimmEncoder, TorchvisionResNet,
                        ViTConfig, ViTEncoder)


@runtime_checkable
class Encoder(Protocol):
    """What classification and kNN need of an encoder."""

    feature_dim: int

    def features(self, x: torch.Tensor) -> torch.Tensor: ...


@runtime_checkable
class DenseEncoder(Encoder, Protocol):
    """What segmentation and detection need besides: maps fine to coarse with their channels and strides."""

    feature_channels: tuple[int, ...]
    feature_strides: tuple[int, ...]

    def feature_maps(self, x: torch.Tensor) -> list[torch.Tensor]: ...


def check_encoder(encoder: Any, dense: bool = False, where: str = "encoder") -> None:
    """Raise TypeError naming what ``encoder`` lacks for a pooled (or, with ``dense``, a dense) task."""
    protocol = DenseEncoder if dense else Encoder
    if not isinstance(encoder, nn.Module) or not isinstance(encoder, protocol):
        wanted = ["feature_dim", "features"]
        if dense:
            wanted += ["feature_channels", "feature_strides", "feature_maps"]
        lacking = [name for name in wanted if not hasattr(encoder, name)]
        raise TypeError(f"{where}: expected a torch module with {wanted}; {type(encoder).__name__} "
                        f"{'lacks ' + str(lacking) if lacking else 'is not a torch module'}")
    if dense and not encoder.feature_channels:
        raise TypeError(f"{where}: {type(encoder).__name__} gives no feature maps (feature_channels is empty)")


# ------------------------------------------------------------------------------------ registry
@dataclasses.dataclass(frozen=True)
class EncoderEntry:
    builder: Callable[[Any], nn.Module]
    config_type: type


ENCODERS: dict[str, EncoderEntry] = {}


def register_encoder(name: str, config_type: type) -> Callable[[Callable], Callable]:
    """Decorator: ``builder(config) -> encoder`` becomes buildable as ``build_encoder(name, ...)``."""
    def register(builder: Callable[[Any], nn.Module]) -> Callable[[Any], nn.Module]:
        ENCODERS[name] = EncoderEntry(builder, config_type)
        return builder
    return register


def encoder_names() -> list[str]:
    return sorted(ENCODERS)


def build_encoder(name: str, config: Any = None, weights: str | os.PathLike | None = None,
                  prefix: str = "") -> nn.Module:
    """The encoder registered as ``name``, built from ``config`` (its config dataclass, a mapping
    of its fields, or None for the defaults), with the weights of a local file when given."""
    if name not in ENCODERS:
        raise KeyError(f"encoder {name!r}: expected one of {encoder_names()}")
    entry = ENCODERS[name]
    if config is None:
        config = entry.config_type()
    elif isinstance(config, Mapping):
        config = from_mapping(entry.config_type, config, source=f"encoder {name!r}")
    elif not isinstance(config, entry.config_type):
        raise TypeError(f"encoder {name!r}: expected a {entry.config_type.__name__}, got {type(config).__name__}")
    if isinstance(config, Checked):
        config.validate()
    encoder = entry.builder(config)
    check_encoder(encoder, where=f"encoder {name!r}")
    if weights is not None:
        load_encoder_weights(encoder, weights, prefix)
    return encoder


def load_encoder_weights(encoder: nn.Module, path: str | os.PathLike, prefix: str = "") -> list[str]:
    """Load a local weights file into ``encoder``; return the file's keys the encoder has no use
    for (a classifier head, a projection).

    The file holds the encoder's own state dict, or that of the library model it wraps
    (``encoder.library_prefix``, e.g. timm's); ``prefix`` picks the encoder out of a bigger
    model's file ("backbone.", "module."). A missing weight is an error: a partly loaded
    encoder is a random one in disguise.
    """
    from support.io import load_state_dict

    state = load_state_dict(path)
    if prefix:
        state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        if not state:
            raise ValueError(f"{path}: no weight starts with prefix {prefix!r}")
    own = encoder.state_dict()
    inner = getattr(encoder, "library_prefix", "")
    if inner and not any(k in own for k in state):  # a file of the wrapped library model itself
        state = {inner + k: v for k, v in state.items()}
    missing = [k for k in own if k not in state]
    if missing:
        raise ValueError(f"{path}: {len(missing)} of the encoder's {len(own)} weights are missing from the file "
                         f"(e.g. {missing[:3]}); expected a state dict of {type(encoder).__name__}")
    reshaped = [f"{k} {tuple(state[k].shape)}, expected {tuple(v.shape)}" for k, v in own.items()
                if tuple(state[k].shape) != tuple(v.shape)]
    if reshaped:
        raise ValueError(f"{path}: {len(reshaped)} weights have another shape than the encoder's (e.g. {reshaped[:3]})")
    encoder.load_state_dict({k: state[k] for k in own}, strict=True)
    return sorted(set(state) - set(own))


def save_encoder(encoder: nn.Module, path: str | os.PathLike) -> os.PathLike:
    """Write the encoder's weights as safetensors (what ``build_encoder(..., weights=path)`` reads)."""
    from support.io import save_state_dict

    return save_state_dict(encoder.state_dict(), path)


ENCODER_WEIGHTS = "encoder.safetensors"
ENCODER_JSON = "encoder.json"


def save_encoder_folder(encoder: nn.Module, name: str, config: Any, folder: str | os.PathLike,
                        info: Mapping[str, Any] | None = None) -> Path:
    """An encoder as a folder: ``encoder.safetensors`` and ``encoder.json`` (registry ``name``, its
    config, and ``info`` such as the method and data it was pretrained with), what
    :func:`load_encoder_folder` rebuilds: the harness's encoders and 06's feature spaces."""
    from support.core.config import config_dict
    from support.io import write_json_atomic

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_encoder(encoder, folder / ENCODER_WEIGHTS)
    write_json_atomic(folder / ENCODER_JSON, {"encoder": name, "config": config_dict(config), **(info or {})})
    return folder


def load_encoder_folder(folder: str | os.PathLike) -> nn.Module:
    """The encoder :func:`save_encoder_folder` wrote, in eval mode; its ``encoder.json`` as ``.info``."""
    from support.io import read_json

    folder = Path(folder)
    if not (folder / ENCODER_JSON).is_file():
        raise FileNotFoundError(f"{folder}: not an encoder folder (expected {ENCODER_JSON} and {ENCODER_WEIGHTS})")
    meta = read_json(folder / ENCODER_JSON)
    for key in ("encoder", "config"):
        if key not in meta:
            raise ValueError(f"{folder / ENCODER_JSON}: field {key!r} missing (expected the registry name and config)")
    encoder = build_encoder(meta["encoder"], meta["config"], weights=folder / ENCODER_WEIGHTS).eval()
    encoder.info = meta
    return encoder


# ------------------------------------------------------------------------------------ built-ins
@register_encoder("reference", ReferenceConfig)
def build_reference(config: ReferenceConfig) -> nn.Module:
    return ReferenceNet(config.num_labels, config.width, config.blocks)


@register_encoder("resnet18", ResNetConfig)
def build_resnet18(config: ResNetConfig) -> nn.Module:
    from torchvision.models.resnet import BasicBlock

    return TorchvisionResNet(BasicBlock, [2, 2, 2, 2], config)


@register_encoder("resnet50", ResNetConfig)
def build_resnet50(config: ResNetConfig) -> nn.Module:
    from torchvision.models.resnet import Bottleneck

    return TorchvisionResNet(Bottleneck, [3, 4, 6, 3], config)


@register_encoder("timm", TimmConfig)
def build_timm(config: TimmConfig) -> nn.Module:
    return TimmEncoder(config)


@register_encoder("vit", ViTConfig)
def build_vit(config: ViTConfig) -> nn.Module:
    return ViTEncoder(config)
