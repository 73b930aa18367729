"""Heads on an encoder: a linear classifier, a U-Net decoder (segmentation-models-pytorch) and an
FCOS detector (torchvision) over the encoder's feature maps.

Each wraps the encoder trained with the head (fine-tune) or frozen (linear probe): a frozen
encoder takes no gradient and stays in eval mode, so its batch-norm statistics are untouched
while the trainer puts the model in train mode.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Callable, Sequence

import torch
import torch.nn as nn


class EncoderPart(nn.Module):
    """A module over an encoder that is fine-tuned with it or keeps it frozen."""

    def __init__(self, encoder: nn.Module, frozen: bool):
        super().__init__()
        self.encoder, self.frozen = encoder, frozen
        if frozen:
            encoder.requires_grad_(False)

    def train(self, mode: bool = True) -> "EncoderPart":
        super().train(mode)
        if self.frozen:
            self.encoder.eval()
        return self

    def encode(self, method: Callable[[torch.Tensor], object], x: torch.Tensor):
        if not self.frozen:
            return method(x)
        with torch.no_grad():
            return method(x)


class Classifier(EncoderPart):
    """Logits (N, num_outputs) of a linear layer on the encoder's pooled features."""

    def __init__(self, encoder: nn.Module, num_outputs: int, frozen: bool = False):
        super().__init__(encoder, frozen)
        self.head = nn.Linear(encoder.feature_dim, num_outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encode(self.encoder.features, x))


class SegmentationModel(EncoderPart):
    """Mask logits (N, 1, H, W): smp's U-Net decoder on the encoder's maps, the image itself as the
    full-resolution level."""

    def __init__(self, encoder: nn.Module, frozen: bool = False,
                 decoder_channels: Sequence[int] = (256, 128, 64, 32, 16)):
        from segmentation_models_pytorch.base import SegmentationHead
        from segmentation_models_pytorch.decoders.unet.decoder import UnetDecoder

        super().__init__(encoder, frozen)
        levels = len(encoder.feature_channels)
        if len(decoder_channels) < levels:
            raise ValueError(f"decoder_channels {tuple(decoder_channels)}: one per feature map needed, "
                             f"the encoder gives {levels}")
        channels = tuple(decoder_channels[:levels])
        self.decoder = UnetDecoder(encoder_channels=(1, *encoder.feature_channels), decoder_channels=channels,
                                   n_blocks=levels)
        self.head = SegmentationHead(channels[-1], 1, kernel_size=3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        maps = self.encode(self.encoder.feature_maps, x)
        return self.head(self.decoder([x, *maps]))


class PyramidBackbone(EncoderPart):
    """The encoder's coarsest ``levels`` maps through a feature pyramid: what torchvision's
    detectors take as a backbone (``out_channels``, an ordered dict of maps)."""

    def __init__(self, encoder: nn.Module, frozen: bool, levels: int, out_channels: int):
        from torchvision.ops import FeaturePyramidNetwork

        super().__init__(encoder, frozen)
        n = len(encoder.feature_channels)
        self.picked = list(range(max(0, n - levels), n))
        self.strides = [int(encoder.feature_strides[i]) for i in self.picked]
        self.fpn = FeaturePyramidNetwork([int(encoder.feature_channels[i]) for i in self.picked], out_channels)
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> "OrderedDict[str, torch.Tensor]":
        maps = self.encode(self.encoder.feature_maps, x)
        return self.fpn(OrderedDict((str(i), maps[i]) for i in self.picked))


def detector(encoder: nn.Module, num_classes: int, image_size: int, frozen: bool = False, levels: int = 3,
             channels: int = 64, head_convs: int = 2, score_threshold: float = 0.05,
             detections_per_image: int = 100) -> nn.Module:
    """An FCOS detector on the encoder: one anchor point per location of each pyramid level,
    sized as its stride (FCOS's scale ranges follow), images taken as they are (no resize, no
    normalization: the encoder scales its own input). Train mode: ``model(images, targets)`` ->
    losses; eval mode: ``model(images)`` -> boxes, scores, labels per image."""
    from torchvision.models.detection import FCOS
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.fcos import FCOSHead

    backbone = PyramidBackbone(encoder, frozen, levels, channels)
    anchors = AnchorGenerator(tuple((s,) for s in backbone.strides), ((1.0,),) * len(backbone.strides))
    head = FCOSHead(channels, 1, num_classes, num_convs=head_convs)
    return FCOS(backbone, num_classes, min_size=image_size, max_size=image_size, image_mean=[0.0], image_std=[1.0],
                anchor_generator=anchors, head=head, score_thresh=score_threshold,
                detections_per_img=detections_per_image)
