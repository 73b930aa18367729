"""Stage 4: one latent diffusion model per modality, conditioned on one context token of the shared
space and trained with Multi-Prompt training (:mod:`support.xgem.multiprompt`).

The frontal and lateral models are diffusers ``UNet2DConditionModel``s over the image latents; the
report model is a residual MLP over the report latent (:class:`ReportDenoiser`). All three learn
epsilon under the scaled-linear schedule (betas 0.00085-0.012, 1,000 steps). The frozen spaces
(the two autoencoders and the contrastive towers) are applied once, before training
(:mod:`support.xgem.encoded`); each step draws a latent from the stored posterior, the noise, the
timestep, the condition and its dropout from the trainer's generator, so a resumed run repeats
the draws of an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from support.core import trainer
from support.core.config import LoopConfig
from support.core.schedules import NoiseConfig, diffusion_loss, make_noise_scheduler
from support.params import Checked
from support.xgem.config import DiffusionConfig, ImageUNetConfig, ReportDenoiserConfig, XGeMConfig
from support.xgem.encoded import EncodedStudies, ModalityRows
from support.xgem.multiprompt import multi_prompt_condition, sources

MODEL_DIR = "denoiser"
REPORT_WEIGHTS = "model.safetensors"
REPORT_CONFIG = "config.json"


# ------------------------------------------------------------------------------ networks
def noise_config(cfg: DiffusionConfig) -> NoiseConfig:
    return NoiseConfig(num_train_timesteps=cfg.num_train_timesteps, beta_schedule=cfg.beta_schedule,
                       beta_start=cfg.beta_start, beta_end=cfg.beta_end, prediction_type=cfg.prediction_type,
                       clip_sample=False)           # latents are not bounded to [-1, 1]


def unet_blocks(cfg: ImageUNetConfig) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """diffusers down/up block names: cross-attention at ``attention_levels`` (SD: all but the innermost)."""
    levels = range(len(cfg.channel_mults))
    down = tuple("CrossAttnDownBlock2D" if cfg.attention_levels[i] else "DownBlock2D" for i in levels)
    up = tuple("CrossAttnUpBlock2D" if cfg.attention_levels[i] else "UpBlock2D" for i in reversed(levels))
    return down, up


def build_image_unet(cfg: ImageUNetConfig, latent_channels: int, latent_size: int, context_dim: int):
    """SD's UNet layout at ``cfg``'s width: cross-attention blocks at ``attention_levels``, one
    context token of ``context_dim``."""
    from diffusers import UNet2DConditionModel

    down, up = unet_blocks(cfg)
    return UNet2DConditionModel(
        sample_size=latent_size, in_channels=latent_channels, out_channels=latent_channels,
        block_out_channels=tuple(cfg.base_channels * m for m in cfg.channel_mults), layers_per_block=cfg.layers_per_block,
        down_block_types=down, up_block_types=up, cross_attention_dim=context_dim,
        attention_head_dim=cfg.heads,           # diffusers' legacy name: the number of heads, as in SD
        norm_num_groups=cfg.norm_num_groups)


class DenoiserBlock(nn.Module):
    """A residual MLP block (FiLM by the timestep), then cross-attention from the latent to the context."""

    def __init__(self, width: int, context_dim: int, heads: int):
        super().__init__()
        self.norm = nn.LayerNorm(width, elementwise_affine=False)
        self.film = nn.Linear(width, 2 * width)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.SiLU(), nn.Linear(4 * width, width))
        self.attn_norm = nn.LayerNorm(width)
        self.attn = nn.MultiheadAttention(width, heads, kdim=context_dim, vdim=context_dim, batch_first=True)
        self.joint: nn.Module | None = None          # stage 5's joint cross-attention, when added

    def forward(self, h: torch.Tensor, temb: torch.Tensor, context: torch.Tensor,
                environment: torch.Tensor | None = None) -> torch.Tensor:
        scale, shift = self.film(temb).chunk(2, dim=-1)
        h = h + self.mlp(self.norm(h) * (1 + scale) + shift)
        q = self.attn_norm(h)[:, None]
        out = self.attn(q, context, context, need_weights=False)[0]
        if self.joint is not None and environment is not None:
            out = out + self.joint(q, environment)
        return h + out[:, 0]


class ReportDenoiser(nn.Module):
    """The report latent's epsilon network: ``(sample (B, D), timestep (B,), context (B, K, E)) -> (B, D)``."""

    def __init__(self, latent_dim: int, context_dim: int, width: int, blocks: int, heads: int):
        from diffusers.models.embeddings import TimestepEmbedding, Timesteps

        super().__init__()
        self.dims = {"latent_dim": latent_dim, "context_dim": context_dim, "width": width, "blocks": blocks,
                     "heads": heads}
        self.time_proj = Timesteps(width, flip_sin_to_cos=True, downscale_freq_shift=0)
        self.time_embed = TimestepEmbedding(width, width)
        self.proj_in = nn.Linear(latent_dim, width)
        self.blocks = nn.ModuleList(DenoiserBlock(width, context_dim, heads) for _ in range(blocks))
        self.proj_out = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, latent_dim))
        nn.init.zeros_(self.proj_out[1].weight)     # starts predicting zero noise, as SD's conv_out
        nn.init.zeros_(self.proj_out[1].bias)

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor,
                environment: torch.Tensor | None = None) -> torch.Tensor:
        timestep = timestep.expand(sample.shape[0]) if timestep.dim() == 0 else timestep
        temb = self.time_embed(self.time_proj(timestep).to(sample.dtype))
        h = self.proj_in(sample)
        for block in self.blocks:
            h = block(h, temb, encoder_hidden_states, environment)
        return self.proj_out(h)


def build_denoiser(config: XGeMConfig, target: str, latent_dim: int) -> nn.Module:
    """The model of ``target``: a UNet over image latents, or the report latent's MLP."""
    context = config.contrastive.embed_dim
    if target == "report":
        c = config.report_denoiser
        return ReportDenoiser(latent_dim, context, c.width, c.blocks, c.heads)
    return build_image_unet(config.unet, config.image_vae.latent_channels, config.image_vae.latent_size, context)


def predict_noise(model: nn.Module, noisy: torch.Tensor, t: torch.Tensor, context: torch.Tensor,
                  environment: torch.Tensor | None = None) -> torch.Tensor:
    """epsilon of either kind of model for one context token per sample (``context`` (B, E)),
    attending to the other modality's environment tokens (B, K, E) once stage 5 added its layers."""
    if isinstance(model, ReportDenoiser):
        return model(noisy, t, context[:, None, :], environment=environment)
    kwargs = {"environment": environment} if environment is not None else None
    return model(noisy, t, encoder_hidden_states=context[:, None, :], cross_attention_kwargs=kwargs).sample


def save_denoiser(model: nn.Module, folder: str | os.PathLike) -> Path:
    from support.io import save_state_dict, write_json_atomic

    folder = Path(folder)
    if isinstance(model, ReportDenoiser):
        folder.mkdir(parents=True, exist_ok=True)
        save_state_dict(model.state_dict(), folder / REPORT_WEIGHTS)
        write_json_atomic(folder / REPORT_CONFIG, {"class": "ReportDenoiser", **model.dims})
    else:
        model.save_pretrained(str(folder), safe_serialization=True)
    return folder


def load_denoiser(folder: str | os.PathLike) -> nn.Module:
    """A denoiser saved by :func:`save_denoiser` (a UNet folder or the report MLP's)."""
    from support.io import load_state_dict

    folder = Path(folder)
    config_path = folder / REPORT_CONFIG
    if not config_path.is_file():
        raise FileNotFoundError(f"{folder}: no {REPORT_CONFIG}; not a saved XGeM denoiser")
    from support.io import read_json
    meta = read_json(config_path)
    if meta.get("class") == "ReportDenoiser":
        dims = {k: meta[k] for k in ("latent_dim", "context_dim", "width", "blocks", "heads")}
        model = ReportDenoiser(**dims)
        model.load_state_dict(load_state_dict(folder / REPORT_WEIGHTS))
        return model
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel.from_pretrained(str(folder), local_files_only=True)


# ------------------------------------------------------------------------------ the stage
@dataclass
class DenoiserStage(Checked):
    """What the stage's trainer sees: the parts that shape the model, and this stage's loop."""

    unet: ImageUNetConfig
    report_denoiser: ReportDenoiserConfig
    diffusion: DiffusionConfig
    train: LoopConfig


class LatentDiffusionTask(trainer.Task):
    """Multi-Prompt training of the model of ``target`` on studies already in the frozen spaces."""

    def __init__(self, config: XGeMConfig, target: str, encoded: EncodedStudies, export_dir: str | os.PathLike):
        self.config, self.target = config, target
        self.name = f"xgem-{target}"
        self.encoded = encoded
        self.rows = self.train_set = ModalityRows(encoded, target, config.diffusion.multi_prompt)
        self.export_dir = Path(export_dir)
        self.sources = sources(target)

    def setup(self) -> trainer.Parts:
        self.scheduler = make_noise_scheduler(noise_config(self.config.diffusion))
        self.empty = {k: v.to(self.ctx.device) for k, v in self.encoded.empty.items()}
        return trainer.Parts(models=[build_denoiser(self.config, self.target, self.encoded.report_dim)])

    def loss(self, batch: dict[str, torch.Tensor], step: trainer.Step):
        device, g = self.ctx.device, step.generator
        batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        mean, std = batch["mean"], batch["std"]
        x0 = mean + std * torch.randn(mean.shape, generator=g, device=g.device).to(device)
        noise = torch.randn(mean.shape, generator=g, device=g.device).to(device)
        t = torch.randint(0, self.scheduler.config.num_train_timesteps, (mean.shape[0],), generator=g,
                          device=g.device).to(device)
        noisy = self.scheduler.add_noise(x0, noise, t)
        d = self.config.diffusion
        condition, drawn = multi_prompt_condition(self.target, batch["context_a"], batch["context_b"], batch["has_a"],
                                                  batch["has_b"], self.empty, g, d.condition_dropout, d.multi_prompt)
        with self.ctx.autocast():
            pred = predict_noise(self.models[0], noisy, t, condition)
        return diffusion_loss(pred, noise, None), {"dropped": drawn["dropped"].float().mean()}

    def resume_key(self) -> dict[str, Any]:
        c = self.config
        part = c.report_denoiser if self.target == "report" else c.unet
        return {"model": dataclasses.asdict(part), "diffusion": dataclasses.asdict(c.diffusion),
                "spaces": self.encoded.fingerprint}

    def describe(self) -> dict[str, Any]:
        rows = self.rows
        return {"target": self.target, "multi_prompt": self.config.diffusion.multi_prompt, "n_studies": len(rows),
                "left_out": rows.left_out, "with_both_sources": rows.with_both,
                "parameters": sum(p.numel() for p in self.models[0].parameters())}

    def export(self) -> None:
        save_denoiser(self.ctx.accelerator.unwrap_model(self.models[0]), self.export_dir)


def train_denoiser(config: XGeMConfig, target: str, encoded: EncodedStudies, output_dir: str | os.PathLike,
                   num_processes: int = 1, progress: bool = True) -> dict:
    """Train the model of ``target`` in ``output_dir`` (the trainer's folder; the model in
    ``output_dir/denoiser``); returns the history."""
    out = Path(output_dir)
    task = LatentDiffusionTask(config, target, encoded, out / MODEL_DIR)
    if not len(task.rows):
        raise ValueError(f"XGeM {target} model: no study can train it ({task.rows.left_out})")
    stage = DenoiserStage(config.unet, config.report_denoiser, config.diffusion, getattr(config.loops, target))
    return trainer.launch(task, stage, out, num_processes, progress=progress)
