"""The denoising UNet, built from a :class:`UNetConfig`."""

from __future__ import annotations

from support.ddpm.config import UNetConfig


def block_types(cfg: UNetConfig) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """diffusers down/up block names: attention blocks only at ``cfg.attention_levels``."""
    levels = len(cfg.channel_mults)
    with_attention = {a % levels for a in cfg.attention_levels}
    down = tuple("AttnDownBlock2D" if i in with_attention else "DownBlock2D" for i in range(levels))
    up = tuple("AttnUpBlock2D" if i in with_attention else "UpBlock2D" for i in reversed(range(levels)))
    return down, up


def build_unet(cfg: UNetConfig):
    """A freshly initialised network of ``cfg.architecture`` (initialisation draws from torch's
    global RNG): I-SynMed's :class:`~support.ddpm.network.unet.DiffusionUNet` or diffusers' ``UNet2DModel``."""
    from diffusers import UNet2DModel

    if cfg.architecture == "isynmed":
        from support.ddpm.network.unet import DiffusionUNet

        levels = len(cfg.channel_mults)
        full = {a % levels for a in cfg.attention_levels}
        return DiffusionUNet(sample_size=cfg.sample_size, in_channels=cfg.in_channels, dim=cfg.base_channels,
                             dim_mults=tuple(cfg.channel_mults), full_attention=[i in full for i in range(levels)],
                             attention_head_dim=cfg.attention_head_dim)

    down, up = block_types(cfg)
    channels = tuple(cfg.base_channels * m for m in cfg.channel_mults)
    return UNet2DModel(
        sample_size=cfg.sample_size,
        in_channels=cfg.in_channels,
        out_channels=cfg.in_channels,
        block_out_channels=channels,
        layers_per_block=cfg.layers_per_block,
        down_block_types=down,
        up_block_types=up,
        add_attention=cfg.mid_attention,
        attention_head_dim=cfg.attention_head_dim,
        norm_num_groups=cfg.norm_num_groups,
        dropout=cfg.dropout,
        resnet_time_scale_shift=cfg.time_scale_shift,
    )


def count_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())
