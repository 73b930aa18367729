"""The networks the harness builds as encoders, with their configs: the project's reference
network, torchvision's ResNets and any timm model. Each maps 1-channel images in [0, 1] to pooled
features and, for dense tasks, to feature maps fine to coarse (see :mod:`.encoders`)."""

from __future__ import annotations

import dataclasses
from typing import Any, Iterable, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torchvision.models.resnet import ResNet

from support.params import Check, Checked


class ScaledInput:
    """Mixin: images in [0, 1] to roughly zero mean and unit spread, gray repeated for 3-channel nets."""

    mean: float
    std: float
    in_channels: int

    def scale_input(self, x: torch.Tensor) -> torch.Tensor:
        x = (x - self.mean) / self.std
        return x.expand(-1, self.in_channels, -1, -1) if self.in_channels != x.shape[1] else x


def _input_checks(config: Any) -> Iterable[Check]:
    yield config.in_channels in (1, 3), "in_channels", "1, or 3 (the gray image repeated)"
    yield config.std > 0, "std", "positive"


# ------------------------------------------------------------------------------------ the reference network
class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = (nn.Identity() if stride == 1 and cin == cout else
                         nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(y)) + self.shortcut(x))


class ReferenceNet(nn.Module):
    """ResNet-style classifier on 1-channel images in [0, 1]; ``features`` is the pooled penultimate
    layer, ``feature_maps`` each stage's output (an encoder of :mod:`support.downstream`)."""

    def __init__(self, num_labels: int, width: int = 32, blocks: Sequence[int] = (2, 2, 2, 2)):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, width, 3, 2, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        stages, cin = [], width
        for i, n in enumerate(blocks):
            cout = width * 2 ** i
            stages += [BasicBlock(cin if j == 0 else cout, cout, 2 if (j == 0 and i > 0) else 1) for j in range(n)]
            cin = cout
        self.stages = nn.Sequential(*stages)
        self.stage_ends = set(np.cumsum(blocks).tolist())   # block counts after which a stage ends
        self.feature_channels = tuple(width * 2 ** i for i in range(len(blocks)))
        self.feature_strides = tuple(2 ** (i + 1) for i in range(len(blocks)))
        self.feature_dim = cin
        self.head = nn.Linear(cin, num_labels)

    def feature_maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.stem((x - 0.5) / 0.25)  # radiographs in [0, 1] to roughly zero mean, unit spread
        maps = []
        for done, block in enumerate(self.stages, 1):
            x = block(x)
            if done in self.stage_ends:
                maps.append(x)
        return maps

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return F.adaptive_avg_pool2d(self.feature_maps(x)[-1], 1).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


@dataclasses.dataclass
class ReferenceConfig(Checked):
    """The reference network (:class:`ReferenceNet`)."""

    title = "reference encoder parameters"
    width: int = 32
    blocks: tuple[int, ...] = (2, 2, 2, 2)
    num_labels: int = 14        # its own head (unused by the harness); 14 reads a saved reference encoder

    def checks(self) -> Iterable[Check]:
        yield self.width > 0, "width", "a positive number of channels"
        yield bool(self.blocks) and all(b > 0 for b in self.blocks), "blocks", "one or more positive block counts"
        yield self.num_labels > 0, "num_labels", "positive"


# ------------------------------------------------------------------------------------ torchvision ResNet
@dataclasses.dataclass
class ResNetConfig(Checked):
    """A torchvision ResNet without its classifier; ``in_channels=3`` (with ImageNet ``mean``/``std``)
    takes a local ImageNet checkpoint."""

    title = "ResNet encoder parameters"
    in_channels: int = 1
    mean: float = 0.5
    std: float = 0.25

    def checks(self) -> Iterable[Check]:
        yield from _input_checks(self)


class TorchvisionResNet(ScaledInput, ResNet):
    """torchvision's ResNet under its own weight names, without its classifier: pooled features
    and its five maps (strides 2 to 32). A 1-channel first convolution unless ``in_channels=3``."""

    def __init__(self, block, layers: list[int], config: ResNetConfig):
        super().__init__(block, layers)
        self.mean, self.std, self.in_channels = config.mean, config.std, config.in_channels
        if config.in_channels == 1:
            self.conv1 = nn.Conv2d(1, 64, 7, 2, 3, bias=False)
            nn.init.kaiming_normal_(self.conv1.weight, mode="fan_out", nonlinearity="relu")  # as ResNet's own
        self.fc = nn.Identity()
        e = block.expansion
        self.feature_channels = (64, 64 * e, 128 * e, 256 * e, 512 * e)
        self.feature_strides = (2, 4, 8, 16, 32)
        self.feature_dim = 512 * e

    def feature_maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.relu(self.bn1(self.conv1(self.scale_input(x))))
        maps = [x]
        x = self.maxpool(x)
        for layer in (self.layer1, self.layer2, self.layer3, self.layer4):
            x = layer(x)
            maps.append(x)
        return maps

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return F.adaptive_avg_pool2d(self.feature_maps(x)[-1], 1).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)


# ------------------------------------------------------------------------------------ timm
@dataclasses.dataclass
class TimmConfig(Checked):
    """Any timm model by name, never pretrained. ``features_only`` gives feature maps (dense tasks)
    and pools the last one; otherwise the model's own pooled features (``num_classes=0``)."""

    title = "timm encoder parameters"
    model_name: str = "resnet18"
    features_only: bool = True
    out_indices: tuple[int, ...] | None = None
    in_channels: int = 1
    mean: float = 0.5
    std: float = 0.25
    options: dict[str, Any] = dataclasses.field(default_factory=dict)   # more create_model arguments, e.g. img_size

    def checks(self) -> Iterable[Check]:
        yield bool(self.model_name), "model_name", "a timm model name"
        yield from _input_checks(self)
        yield "pretrained" not in self.options, "options", "free of 'pretrained' (weights come from a local file)"


class TimmEncoder(ScaledInput, nn.Module):
    """A timm model as an encoder; a timm checkpoint of the model loads as is (``library_prefix``)."""

    library_prefix = "model."

    def __init__(self, config: TimmConfig):
        import timm

        super().__init__()
        self.mean, self.std, self.in_channels = config.mean, config.std, config.in_channels
        self.name, self.features_only = config.model_name, config.features_only
        kind = {"features_only": True} if config.features_only else {"num_classes": 0}
        if config.features_only and config.out_indices is not None:
            kind["out_indices"] = tuple(config.out_indices)
        self.model = timm.create_model(config.model_name, pretrained=False, in_chans=config.in_channels,
                                       **kind, **config.options)
        if config.features_only:
            info = self.model.feature_info
            self.feature_channels, self.feature_strides = tuple(info.channels()), tuple(info.reduction())
            self.feature_dim = self.feature_channels[-1]
        else:
            self.feature_channels, self.feature_strides = (), ()
            self.feature_dim = int(self.model.num_features)

    def feature_maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        if not self.features_only:
            raise ValueError(f"timm encoder {self.name!r}: built with features_only=False; "
                             f"dense tasks need feature maps (features_only=True)")
        return list(self.model(self.scale_input(x)))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        if self.features_only:
            return F.adaptive_avg_pool2d(self.feature_maps(x)[-1], 1).flatten(1)
        return self.model(self.scale_input(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)


# ------------------------------------------------------------------------------------ Vision Transformer
@dataclasses.dataclass
class ViTConfig(Checked):
    """A Vision Transformer (timm's, never pretrained): ViT-S/16 by default (384-d, 12 blocks, 6 heads,
    224 px). Other image sizes interpolate the position embedding (DINO's small crops)."""

    title = "ViT encoder parameters"
    image_size: int = 224
    patch_size: int = 16
    embed_dim: int = 384
    depth: int = 12
    num_heads: int = 6
    mlp_ratio: float = 4.0
    in_channels: int = 1
    mean: float = 0.5
    std: float = 0.25

    def checks(self) -> Iterable[Check]:
        yield from _input_checks(self)
        yield self.image_size % self.patch_size == 0, "image_size", f"a multiple of patch_size ({self.patch_size})"
        yield self.embed_dim % self.num_heads == 0, "embed_dim", f"a multiple of num_heads ({self.num_heads})"
        yield self.depth >= 4, "depth", "at least 4 blocks (the dense maps come from four of them)"


class ViTEncoder(ScaledInput, nn.Module):
    """Pooled features: the class token. Dense maps: the patch tokens of four evenly spaced blocks,
    resampled to strides patch/4, patch/2, patch and 2 x patch (a simple pyramid, as ViTDet's), so a
    U-Net decoder or a detection pyramid can sit on a plain ViT."""

    library_prefix = "model."

    def __init__(self, config: ViTConfig):
        from timm.models.vision_transformer import VisionTransformer

        super().__init__()
        self.mean, self.std, self.in_channels = config.mean, config.std, config.in_channels
        self.model = VisionTransformer(img_size=config.image_size, patch_size=config.patch_size,
                                       in_chans=config.in_channels, num_classes=0, embed_dim=config.embed_dim,
                                       depth=config.depth, num_heads=config.num_heads, mlp_ratio=config.mlp_ratio,
                                       dynamic_img_size=True)
        self.feature_dim = config.embed_dim
        self.blocks = [config.depth * (i + 1) // 4 - 1 for i in range(4)]
        self.feature_channels = (config.embed_dim,) * 4
        p = config.patch_size
        self.feature_strides = (max(1, p // 4), max(1, p // 2), p, 2 * p)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(self.scale_input(x))

    def feature_maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        maps = self.model.forward_intermediates(self.scale_input(x), indices=self.blocks, output_fmt="NCHW",
                                                intermediates_only=True)
        grid = maps[0].shape[-2:]
        p = self.feature_strides[2]
        sizes = [(grid[0] * p // s, grid[1] * p // s) for s in self.feature_strides]
        return [F.interpolate(m, size=size, mode="bilinear", align_corners=False) if m.shape[-2:] != size else m
                for m, size in zip(maps, sizes)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)


def load_vit_weights(encoder: ViTEncoder, path) -> list[str]:
    """Start a :class:`ViTEncoder` from a local timm ViT checkpoint (ImageNet ViT-S/16, a DINO
    release): the position embedding is resampled to this grid (timm's checkpoint filter) and an
    RGB patch embedding summed to the encoder's channels (timm's ``adapt_input_conv``, so a gray
    image meets the response it had as an RGB gray). Returns the file's keys left unused (a
    classifier head); a missing block weight is an error."""
    from timm.models._manipulate import adapt_input_conv
    from timm.models.vision_transformer import checkpoint_filter_fn

    from support.io import load_state_dict

    state = load_state_dict(path)
    key = "patch_embed.proj.weight"
    if key in state and state[key].ndim == 4 and state[key].shape[1] != encoder.in_channels:
        state[key] = adapt_input_conv(encoder.in_channels, state[key])
    state = checkpoint_filter_fn(state, encoder.model)
    own = encoder.model.state_dict()
    missing = [k for k in own if k not in state]
    if missing:
        raise ValueError(f"{path}: {len(missing)} of the ViT's {len(own)} weights are missing (e.g. {missing[:3]}); "
                         "expected a timm VisionTransformer checkpoint of the same depth and width")
    reshaped = [f"{k} {tuple(state[k].shape)}, expected {tuple(v.shape)}" for k, v in own.items()
                if tuple(state[k].shape) != tuple(v.shape)]
    if reshaped:
        raise ValueError(f"{path}: {len(reshaped)} weights have another shape than the ViT's (e.g. {reshaped[:3]})")
    encoder.model.load_state_dict({k: state[k] for k in own}, strict=True)
    return sorted(set(state) - set(own))
