"""XGeM stage 1: the image autoencoder shared by the frontal and lateral views.

A diffusers ``AutoencoderKL``. With ``image_vae.vae_path`` it is SD's kl-f8 VAE read from that
local folder (3 channels: the gray image is copied to each on the way in and channel 0 of the
output kept) and nothing is trained. Otherwise a 1-channel one is built from the config fields and
trained here on every frontal and lateral image of the train split: L1 reconstruction of a latent
drawn from the posterior, plus ``kl_weight`` times the KL to N(0, I) (summed over the latent,
averaged over the batch, as in LDM's autoencoder). Held-out images give the reconstruction PSNR.

The diffusion stages see latents through :class:`ImageCodec`: scaled by ``scaling_factor``, so
they are about unit variance.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from support.core import trainer
from support.core.config import LoopConfig
from support.params import Checked
from support.xgem.config import ImageVAEConfig, XGeMConfig
from support.xgem.data import view_images

VAE_DIR = "vae"
MAX_VAL_IMAGES = 64            # held-out images behind the reported PSNR
SD_LATENT_CHANNELS = 4
SD_DOWNSAMPLING = 8
MSE_FLOOR = 1e-10              # identical images: 100 dB rather than infinity


@dataclass
class ImageVAEStage(Checked):
    """What the trainer gets: the autoencoder's fields (the resume key) and the stage's loop."""

    title = "XGeM image autoencoder stage"

    image_vae: ImageVAEConfig = field(default_factory=ImageVAEConfig)
    train: LoopConfig = field(default_factory=LoopConfig)


# ------------------------------------------------------------------------------ the model
def _block_types(levels: int) -> tuple[tuple[str, ...], tuple[str, ...]]:
    return ("DownEncoderBlock2D",) * levels, ("UpDecoderBlock2D",) * levels


def build_image_vae(cfg: ImageVAEConfig):
    """SD's VAE from ``cfg.vae_path`` (checked), else a fresh 1-channel ``AutoencoderKL`` of ``cfg``
    (initialisation draws from torch's global RNG)."""
    from diffusers import AutoencoderKL

    if cfg.vae_path:
        vae = _load_vae(cfg.vae_path)
        _check_sd_vae(vae, cfg)
        return vae
    down, up = _block_types(len(cfg.block_out_channels))
    return AutoencoderKL(in_channels=1, out_channels=1, down_block_types=down, up_block_types=up,
                         block_out_channels=tuple(cfg.block_out_channels), layers_per_block=cfg.layers_per_block,
                         latent_channels=cfg.latent_channels, norm_num_groups=cfg.norm_num_groups,
                         sample_size=cfg.size, scaling_factor=cfg.scaling_factor)


def _load_vae(folder: str | os.PathLike):
    """An ``AutoencoderKL`` from a local folder, every weight accounted for."""
    from diffusers import AutoencoderKL

    try:
        vae, info = AutoencoderKL.from_pretrained(str(folder), local_files_only=True, output_loading_info=True)
    except (OSError, ValueError, EnvironmentError) as exc:
        raise ValueError(f"{folder}: not a diffusers AutoencoderKL folder ({exc})") from exc
    problems = {k: v for k, v in info.items() if v}
    if problems:
        raise ValueError(f"{folder}: the weights do not fit the AutoencoderKL of its config.json: {problems}")
    return vae


def _check_sd_vae(vae, cfg: ImageVAEConfig) -> None:
    """SD's kl-f8 as the config expects it: 3 channels in and out, 4 latent channels, a factor of 8
    and the config's scaling factor."""
    c = vae.config
    factor = 2 ** (len(c.block_out_channels) - 1)
    wrong = [f"{name} {got} (expected {want})" for name, got, want in (
        ("in_channels", c.in_channels, 3), ("out_channels", c.out_channels, 3),
        ("latent_channels", c.latent_channels, SD_LATENT_CHANNELS),
        ("downsampling factor", factor, SD_DOWNSAMPLING),
        ("scaling_factor", c.scaling_factor, cfg.scaling_factor)) if got != want]
    if c.latent_channels != cfg.latent_channels:
        wrong.append(f"latent_channels {c.latent_channels} (image_vae.latent_channels is {cfg.latent_channels})")
    if wrong:
        raise ValueError(f"image_vae.vae_path {cfg.vae_path}: not SD's kl-f8 VAE as XGeM uses it: {'; '.join(wrong)}")


class ImageCodec:
    """Gray images (B, 1, S, S) in [-1, 1] <-> scaled latents of ``vae`` (1- or 3-channel)."""

    def __init__(self, vae):
        c = vae.config
        if c.in_channels not in (1, 3) or c.out_channels != c.in_channels:
            raise ValueError(f"image autoencoder with {c.in_channels} input and {c.out_channels} output channels: "
                             f"expected 1 and 1, or 3 and 3")
        self.vae = vae
        self.channels = int(c.in_channels)
        self.scale = float(c.scaling_factor)

    @property
    def device(self) -> torch.device:
        return next(self.vae.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.vae.parameters()).dtype

    def encode(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, std) of the scaled latent posterior of ``images``."""
        x = images.to(self.device, self.dtype)
        if self.channels == 3:
            x = x.repeat(1, 3, 1, 1)          # the gray image in each of SD's channels
        posterior = self.vae.encode(x).latent_dist
        return posterior.mean * self.scale, posterior.std * self.scale

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Images (B, 1, S, S) in [-1, 1] from scaled latents (channel 0 of a 3-channel output)."""
        out = self.vae.decode(latents.to(self.device, self.dtype) / self.scale).sample
        return out[:, :1].clamp(-1.0, 1.0)

    def reconstruct(self, images: torch.Tensor) -> torch.Tensor:
        """The decoded posterior mean of ``images`` (deterministic)."""
        return self.decode(self.encode(images)[0])


def load_image_vae(folder: str | os.PathLike) -> ImageCodec:
    """The autoencoder saved in ``folder`` (this stage's ``vae/`` or SD's VAE), in eval mode."""
    vae = _load_vae(folder)
    try:
        codec = ImageCodec(vae)
    except ValueError as exc:
        raise ValueError(f"{folder}: {exc}") from None
    vae.eval().requires_grad_(False)
    return codec


def image_vae_folder(config: XGeMConfig, output_dir: str | os.PathLike) -> Path:
    """Where the stage's autoencoder is: ``vae_path``, else ``output_dir/vae``."""
    return Path(config.image_vae.vae_path) if config.image_vae.vae_path else Path(output_dir) / VAE_DIR


class ReconstructionObjective(nn.Module):
    """L1 reconstruction of a posterior sample + ``kl_weight`` x KL; the trainer's module, so the
    whole loss runs inside ``forward`` (as distributed training needs)."""

    def __init__(self, vae, kl_weight: float):
        super().__init__()
        self.vae, self.kl_weight = vae, kl_weight

    def forward(self, images: torch.Tensor, generator: torch.Generator):
        posterior = self.vae.encode(images).latent_dist
        noise = torch.randn(posterior.mean.shape, generator=generator, device=generator.device)
        latents = posterior.mean + posterior.std * noise.to(posterior.mean.dtype)
        reconstruction = self.vae.decode(latents).sample
        l1 = (reconstruction.float() - images.float()).abs().mean()
        kl = posterior.kl().float().mean()
        return l1 + self.kl_weight * kl, {"l1": l1.detach(), "kl": kl.detach()}


# ------------------------------------------------------------------------------ PSNR
def image_psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """PSNR (dB) of each image pair, images in [-1, 1] compared in [0, 1] (peak 1)."""
    mse = ((a.float() - b.float()) / 2).pow(2).flatten(1).mean(dim=1)
    return 10 * torch.log10(1.0 / mse.clamp_min(MSE_FLOOR))


def _image_batches(images, batch_size: int):
    if torch.is_tensor(images):
        yield from images.split(batch_size)
        return
    for batch in DataLoader(images, batch_size=batch_size, shuffle=False):
        yield batch["image"]


@torch.no_grad()
def _psnr_sum(codec: ImageCodec, images, batch_size: int, rank: int = 0, world: int = 1) -> tuple[float, int]:
    """Sum and count of the per-image PSNR of this rank's share (batches round-robin)."""
    total, count = 0.0, 0
    for i, batch in enumerate(_image_batches(images, batch_size)):
        if i % world == rank:
            values = image_psnr(batch.to(codec.device), codec.reconstruct(batch))
            total, count = total + float(values.sum()), count + int(values.numel())
    return total, count


def reconstruction_psnr(vae, images, batch_size: int = 16) -> dict[str, float]:
    """Mean PSNR (dB, over [0, 1] images) of the reconstructions of ``images``: a tensor (N, 1, S, S)
    in [-1, 1] or a dataset of dicts with ``image``; ``vae`` an :class:`ImageCodec` or ``AutoencoderKL``."""
    codec = vae if isinstance(vae, ImageCodec) else ImageCodec(vae)
    was_training = codec.vae.training
    codec.vae.eval()
    total, count = _psnr_sum(codec, images, batch_size)
    codec.vae.train(was_training)
    return {"psnr": total / count if count else math.nan, "n": count}


# ------------------------------------------------------------------------------ training
class ImageVAETask(trainer.Task):
    """Stage 1 on ``images`` (items with ``image`` (1, S, S) in [-1, 1]); ``held_out`` gives the PSNR."""

    name = "xgem-image-vae"

    def __init__(self, stage: ImageVAEStage, images: Dataset, held_out: Dataset | None = None):
        if stage.image_vae.vae_path:
            raise ValueError("image_vae.vae_path is set: the pretrained VAE is used as it is, not trained")
        self.stage, self.train_set, self.held_out = stage, images, held_out

    def setup(self) -> trainer.Parts:
        cfg = self.stage.image_vae
        trainer.check_first_item(self.train_set, "image autoencoder training set", "image", (1, cfg.size, cfg.size),
                                 hint="(1, image_vae.size, image_vae.size)")
        self.vae = build_image_vae(cfg)
        return trainer.Parts(models=[ReconstructionObjective(self.vae, cfg.kl_weight)])

    def loss(self, batch: Mapping[str, Any], step: trainer.Step):
        return self.models[0](batch["image"].to(self.ctx.device, non_blocking=True), step.generator)

    def validate(self, step: int) -> Mapping[str, float] | None:
        if not self.held_out:
            return None
        objective = self.ctx.accelerator.unwrap_model(self.models[0])
        objective.eval()
        with self.ctx.autocast():
            total, count = _psnr_sum(ImageCodec(objective.vae), self.held_out, self.ctx.loop.batch_size,
                                     self.ctx.rank, self.ctx.world)
        objective.train()
        total, count = self.ctx.reduce_sum([total, count])
        return {"val_psnr": total / count} if count else None

    def describe(self) -> dict[str, Any]:
        cfg = self.stage.image_vae
        return {"trained": True, "n_images": len(self.train_set), "n_val_images": len(self.held_out or ()),
                "latent_shape": [cfg.latent_channels, cfg.latent_size, cfg.latent_size],
                "parameters": sum(p.numel() for p in self.vae.parameters())}

    def export(self) -> None:
        vae = self.ctx.accelerator.unwrap_model(self.models[0]).vae
        vae.save_pretrained(str(self.ctx.output_dir / VAE_DIR), safe_serialization=True)


def _split(records: pd.DataFrame) -> pd.Series:
    if "split" not in records.columns:
        raise ValueError("XGeM image autoencoder: the record table has no 'split' column; build it with "
                         "support.data.adapters")
    return records["split"] == "train"


def _held_out_images(records: pd.DataFrame, size: int) -> Dataset | None:
    images = view_images(records, size)
    return Subset(images, range(min(len(images), MAX_VAL_IMAGES))) if len(images) else None


def train_image_vae(config: XGeMConfig, records: pd.DataFrame, output_dir: str | os.PathLike,
                    num_processes: int = 1, progress: bool = True) -> dict:
    """Stage 1 on the frontal and lateral images of ``records``' train split (validation PSNR on up
    to ``MAX_VAL_IMAGES`` held-out images); returns the history. Writes the trainer's folder and
    ``vae/`` (:func:`load_image_vae`). With ``vae_path`` the pretrained VAE is only loaded, checked
    and measured: the history says ``trained: False``."""
    config = config.validate()
    cfg, out = config.image_vae, Path(output_dir)
    train = _split(records)
    held_out = _held_out_images(records[~train], cfg.size)
    if cfg.vae_path:
        return _pretrained_history(cfg, held_out, out)
    images = view_images(records[train], cfg.size)
    if not len(images):
        raise ValueError(f"XGeM image autoencoder: no frontal or lateral image in the train split of "
                         f"{len(records)} records")
    stage = ImageVAEStage(image_vae=cfg, train=config.loops.image_vae)
    return trainer.launch(ImageVAETask(stage, images, held_out), stage, out, num_processes, progress=progress)


def _pretrained_history(cfg: ImageVAEConfig, held_out: Dataset | None, out: Path) -> dict:
    from support.io import write_json_atomic

    vae = build_image_vae(cfg).eval().requires_grad_(False)
    vae.to("cuda" if torch.cuda.is_available() else "cpu")
    psnr = reconstruction_psnr(vae, held_out) if held_out else {"psnr": math.nan, "n": 0}
    history = {"trained": False, "vae_path": str(cfg.vae_path),
               "note": "pretrained VAE from vae_path, used as it is (nothing trained)",
               "val_psnr": [psnr["psnr"]], "n_val_images": psnr["n"]}
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / trainer.HISTORY_JSON, history)
    return history
