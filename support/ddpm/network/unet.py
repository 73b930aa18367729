"""I-SynMed's denoising network as a diffusers model: the ``Unet`` of denoising-diffusion-pytorch
(2.x) that I-SynMed trained, ``Unet(dim=64, dim_mults=(1, 2, 4, 8), channels=1)`` in ``full``.

diffusers has no block for its layout, so it is written here as a ``ModelMixin`` that
``DDPMPipeline.from_pretrained`` loads like its own UNets (``model_index.json`` names this module):

- a 7x7 input convolution; a sinusoidal time embedding through Linear-GELU-Linear (4 x dim);
- per level, on the way down: two residual blocks (3x3 conv, RMS norm, time scale-shift, SiLU),
  an attention layer with a residual (linear attention, full attention at the innermost level),
  then a pixel-unshuffle downsampling (a 3x3 convolution at the last level); each block's output
  is kept for the way up;
- in the middle: residual block, full attention, residual block;
- on the way up: two residual blocks, each on the upsampled path joined with one kept map, the
  attention layer, nearest upsampling with a 3x3 convolution; a last residual block on the joined
  input convolution's output, then a 1x1 convolution.

Attention layers have 4 heads of 32 dimensions and 4 learned memory key/value pairs.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from diffusers.models.unets.unet_2d import UNet2DOutput


class RMSNorm(nn.Module):
    """Channel-wise L2 normalisation with a learned gain, scaled by sqrt(channels)."""

    def __init__(self, channels: int):
        super().__init__()
        self.gain = nn.Parameter(torch.ones(1, channels, 1, 1))
        self.scale = channels ** 0.5

    def forward(self, x):
        return F.normalize(x, dim=1) * self.gain * self.scale


def timestep_embedding(t: torch.Tensor, dim: int, theta: float = 10000.0) -> torch.Tensor:
    """(B,) timesteps -> (B, dim): sines then cosines of geometric frequencies."""
    half = dim // 2
    freqs = torch.exp(torch.arange(half, device=t.device) * -(math.log(theta) / (half - 1)))
    angles = t.float()[:, None] * freqs[None, :]
    return torch.cat([angles.sin(), angles.cos()], dim=-1)


class ConvNormAct(nn.Module):
    def __init__(self, channels_in: int, channels_out: int):
        super().__init__()
        self.conv = nn.Conv2d(channels_in, channels_out, 3, padding=1)
        self.norm = RMSNorm(channels_out)

    def forward(self, x, scale_shift=None):
        x = self.norm(self.conv(x))
        if scale_shift is not None:
            scale, shift = scale_shift
            x = x * (scale + 1) + shift
        return F.silu(x)


class ResidualBlock(nn.Module):
    """Two conv-norm-SiLU blocks; the time embedding scales and shifts the first."""

    def __init__(self, channels_in: int, channels_out: int, time_dim: int):
        super().__init__()
        self.time = nn.Linear(time_dim, channels_out * 2)
        self.block1 = ConvNormAct(channels_in, channels_out)
        self.block2 = ConvNormAct(channels_out, channels_out)
        self.skip = nn.Conv2d(channels_in, channels_out, 1) if channels_in != channels_out else nn.Identity()

    def forward(self, x, t):
        scale_shift = self.time(F.silu(t))[:, :, None, None].chunk(2, dim=1)
        return self.block2(self.block1(x, scale_shift)) + self.skip(x)


class LinearAttention(nn.Module):
    """Attention linear in the number of pixels: softmax over features for queries, over pixels
    (and memory slots) for keys, a (d x d) context per head."""

    def __init__(self, channels: int, heads: int = 4, dim_head: int = 32, memory: int = 4):
        super().__init__()
        self.heads, self.scale = heads, dim_head ** -0.5
        hidden = heads * dim_head
        self.norm = RMSNorm(channels)
        self.memory = nn.Parameter(torch.randn(2, heads, dim_head, memory))
        self.to_qkv = nn.Conv2d(channels, hidden * 3, 1, bias=False)
        self.to_out = nn.Sequential(nn.Conv2d(hidden, channels, 1), RMSNorm(channels))

    def forward(self, x):
        b, _, h, w = x.shape
        q, k, v = (part.reshape(b, self.heads, -1, h * w) for part in self.to_qkv(self.norm(x)).chunk(3, dim=1))
        mk, mv = (m.unsqueeze(0).expand(b, -1, -1, -1) for m in self.memory)
        k, v = torch.cat([mk, k], dim=-1), torch.cat([mv, v], dim=-1)
        q = q.softmax(dim=-2) * self.scale
        k = k.softmax(dim=-1)
        context = torch.einsum("bhdn,bhen->bhde", k, v)
        out = torch.einsum("bhde,bhdn->bhen", context, q)
        return self.to_out(out.reshape(b, -1, h, w))


class FullAttention(nn.Module):
    """Softmax attention over all pixels and the memory slots (scaled dot product)."""

    def __init__(self, channels: int, heads: int = 4, dim_head: int = 32, memory: int = 4):
        super().__init__()
        self.heads = heads
        hidden = heads * dim_head
        self.norm = RMSNorm(channels)
        self.memory = nn.Parameter(torch.randn(2, heads, memory, dim_head))
        self.to_qkv = nn.Conv2d(channels, hidden * 3, 1, bias=False)
        self.to_out = nn.Conv2d(hidden, channels, 1)

    def forward(self, x):
        b, _, h, w = x.shape
        q, k, v = (part.reshape(b, self.heads, -1, h * w).transpose(-1, -2)
                   for part in self.to_qkv(self.norm(x)).chunk(3, dim=1))
        mk, mv = (m.unsqueeze(0).expand(b, -1, -1, -1) for m in self.memory)
        k, v = torch.cat([mk, k], dim=-2), torch.cat([mv, v], dim=-2)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.to_out(out.transpose(-1, -2).reshape(b, -1, h, w))


class Downsample(nn.Module):
    """2x2 pixels to channels, then a 1x1 convolution."""

    def __init__(self, channels_in: int, channels_out: int):
        super().__init__()
        self.conv = nn.Conv2d(channels_in * 4, channels_out, 1)

    def forward(self, x):
        return self.conv(F.pixel_unshuffle(x, 2))


class Upsample(nn.Module):
    def __init__(self, channels_in: int, channels_out: int):
        super().__init__()
        self.conv = nn.Conv2d(channels_in, channels_out, 3, padding=1)

    def forward(self, x):
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


class Level(nn.Module):
    """Two residual blocks, an attention layer (with its residual) and a resampling."""

    def __init__(self, block_in: int, block_out: int, resample: nn.Module, full: bool, time_dim: int,
                 heads: int, dim_head: int, memory: int, skip: int = 0):
        super().__init__()
        self.block1 = ResidualBlock(block_in + skip, block_out, time_dim)
        self.block2 = ResidualBlock(block_out + skip, block_out, time_dim)
        self.attn = (FullAttention if full else LinearAttention)(block_out, heads, dim_head, memory)
        self.resample = resample


class DiffusionUNet(ModelMixin, ConfigMixin):
    """denoising-diffusion-pytorch's ``Unet`` layout (see the module docstring) with diffusers'
    interface: ``model(sample, timestep).sample``, ``config.sample_size``, ``config.in_channels``."""

    @register_to_config
    def __init__(self, sample_size: int = 256, in_channels: int = 1, out_channels: int | None = None,
                 dim: int = 64, dim_mults: Sequence[int] = (1, 2, 4, 8), full_attention: Sequence[bool] | None = None,
                 attention_heads: int = 4, attention_head_dim: int = 32, memory_kv: int = 4,
                 theta: float = 10000.0):
        super().__init__()
        full = tuple(full_attention) if full_attention is not None else (False,) * (len(dim_mults) - 1) + (True,)
        if len(full) != len(dim_mults):
            raise ValueError(f"full_attention {full}: one flag per level of dim_mults {tuple(dim_mults)}")
        widths = [dim, *(dim * m for m in dim_mults)]
        pairs = list(zip(widths[:-1], widths[1:]))
        time_dim = dim * 4
        attn = dict(heads=attention_heads, dim_head=attention_head_dim, memory=memory_kv)
        self.init_conv = nn.Conv2d(in_channels, dim, 7, padding=3)
        self.time_mlp = nn.Sequential(nn.Linear(dim, time_dim), nn.GELU(), nn.Linear(time_dim, time_dim))
        last = len(pairs) - 1
        self.downs = nn.ModuleList(
            Level(c_in, c_in, Downsample(c_in, c_out) if i < last else nn.Conv2d(c_in, c_out, 3, padding=1),
                  full[i], time_dim, **attn)
            for i, (c_in, c_out) in enumerate(pairs))
        mid = widths[-1]
        self.mid_block1 = ResidualBlock(mid, mid, time_dim)
        self.mid_attn = FullAttention(mid, **attn)
        self.mid_block2 = ResidualBlock(mid, mid, time_dim)
        self.ups = nn.ModuleList(
            Level(c_out, c_out, Upsample(c_out, c_in) if i < last else nn.Conv2d(c_out, c_in, 3, padding=1),
                  full[last - i], time_dim, skip=c_in, **attn)
            for i, (c_in, c_out) in enumerate(reversed(pairs)))
        self.final_block = ResidualBlock(dim * 2, dim, time_dim)
        self.final_conv = nn.Conv2d(dim, out_channels or in_channels, 1)

    def forward(self, sample: torch.Tensor, timestep, return_dict: bool = True):
        factor = 2 ** (len(self.downs) - 1)
        if sample.shape[-1] % factor or sample.shape[-2] % factor:
            raise ValueError(f"input of {tuple(sample.shape[-2:])} pixels: each side must be a multiple of {factor}")
        t = torch.as_tensor(timestep, device=sample.device)
        t = t.expand(sample.shape[0]) if t.ndim == 0 else t
        t = self.time_mlp(timestep_embedding(t, self.config.dim, self.config.theta).to(sample.dtype))
        x = self.init_conv(sample)
        first, kept = x, []
        for level in self.downs:
            x = level.block1(x, t)
            kept.append(x)
            x = level.block2(x, t)
            x = level.attn(x) + x
            kept.append(x)
            x = level.resample(x)
        x = self.mid_block1(x, t)
        x = self.mid_attn(x) + x
        x = self.mid_block2(x, t)
        for level in self.ups:
            x = level.block1(torch.cat([x, kept.pop()], dim=1), t)
            x = level.block2(torch.cat([x, kept.pop()], dim=1), t)
            x = level.attn(x) + x
            x = level.resample(x)
        out = self.final_conv(self.final_block(torch.cat([x, first], dim=1), t))
        return UNet2DOutput(sample=out) if return_dict else (out,)
