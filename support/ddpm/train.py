"""I-SynMed's DDPM as a task of the shared trainer (:func:`support.core.trainer.fit`).

The method: a UNet learns the v-target (or epsilon) of noised images under a sigmoid schedule,
weighted so every objective equals the epsilon-MSE as in I-SynMed's library; an EMA of the
weights is what gets sampled and saved. Validation measures the target MSE of the online and
the EMA weights on held-out images with fixed noise; previews are fixed-seed sample grids.

From a notebook: :func:`launch_training`; from a shell:
``accelerate launch -m support.ddpm.train --config job.yaml``. Both run :func:`train_ddpm`.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import sys
from pathlib import Path
from typing import Any, Callable, Mapping

import torch

from support.core import trainer
from support.core.schedules import diffusion_loss, loss_weights, make_noise_scheduler, make_sampler, training_target
from support.core.trainer import NonFiniteLossError, free_port  # noqa: F401  (re-exported)
from support.ddpm.config import DDPMConfig, ddpm_config
from support.ddpm.model import build_unet
from support.params import from_mapping, read_yaml_mapping

PIPELINE_DIR = "pipeline"


def _batch_images(batch: Any, where: str) -> torch.Tensor:
    if isinstance(batch, Mapping) and "image" in batch:
        return batch["image"]
    raise TypeError(f"{where}: expected batches of dicts with an 'image' tensor, got {type(batch).__name__}")


def check_dataset(dataset, config: DDPMConfig, name: str) -> None:
    """Fail before training on a dataset whose items the model cannot take."""
    u = config.unet
    trainer.check_first_item(dataset, name, "image", (u.in_channels, u.sample_size, u.sample_size),
                             hint="(unet.in_channels, unet.sample_size)")


@torch.no_grad()
def validation_loss(unet, noise_scheduler, dataset, *, prediction_type: str, batch_size: int,
                    max_batches: int, seed: int, device, rank: int = 0, world: int = 1,
                    autocast=None) -> tuple[float, int]:
    """Sum and count of the per-image target MSE over held-out images, with fixed draws.

    Batch ``i`` always gets the timesteps and noise of generator ``seed + i`` (drawn on the CPU,
    so GPU and CPU agree), so values are comparable across steps, runs and process counts.
    Batches are shared out round-robin over ``world`` processes; sum the results over ranks.
    """
    from torch.utils.data import DataLoader

    was_training = unet.training
    unet.eval()
    total, count = 0.0, 0
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, drop_last=False)
    for i, batch in enumerate(loader):
        if i >= max_batches:
            break
        if i % world != rank:
            continue
        x0 = _batch_images(batch, "validation set").to(device)
        g = torch.Generator().manual_seed(int(seed) + i)
        t = torch.randint(0, noise_scheduler.config.num_train_timesteps, (x0.shape[0],), generator=g).to(device)
        noise = torch.randn(x0.shape, generator=g).to(device)
        noisy = noise_scheduler.add_noise(x0, noise, t)
        with (autocast() if autocast is not None else contextlib.nullcontext()):
            pred = unet(noisy, t).sample
        target = training_target(noise_scheduler, x0, noise, t, prediction_type)
        per_image = (pred.float() - target.float()).pow(2).flatten(1).mean(dim=1)
        total += float(per_image.sum())
        count += int(per_image.numel())
    unet.train(was_training)
    return total, count


def save_pipeline(unet, noise_scheduler, path: str | os.PathLike) -> Path:
    """Write a diffusers ``DDPMPipeline`` folder (safetensors) that ``from_pretrained`` loads as is,
    swapped in whole so a reader never sees a half-written pipeline."""
    from diffusers import DDPMPipeline

    from support.io import atomic_directory

    path = Path(path)
    with atomic_directory(path) as tmp:
        DDPMPipeline(unet=unet, scheduler=noise_scheduler).save_pretrained(tmp, safe_serialization=True)
    return path


def ema_model(unet, t, ema_cls=None, model_cls=None):
    """diffusers' EMAModel with the warm-up of ema_pytorch, which I-SynMed's trainer used: decay
    1 - (1 + n)^(-2/3) after n updates past ``ema_update_after_step``, capped at ``ema_decay``."""
    if ema_cls is None:
        from diffusers.training_utils import EMAModel as ema_cls
    return ema_cls(unet.parameters(), decay=t.ema_decay, update_after_step=t.ema_update_after_step,
                   use_ema_warmup=True, inv_gamma=1.0, power=2 / 3, model_cls=model_cls or type(unet),
                   model_config=getattr(unet, "config", None))


def ema_update(ema, unet, step: int, every: int) -> None:
    """After optimizer update ``step`` (1-based), as ema_pytorch's ``update()`` does: every
    ``every``-th update counted from the first moves the EMA (a copy of the weights until the
    warm-up starts), and the decay counts optimizer updates, not EMA moves."""
    done = step - 1
    if done % every:
        return
    if done > ema.update_after_step >= done - every:    # its first move starts from the weights of now
        for shadow, param in zip(ema.shadow_params, unet.parameters()):
            shadow.data.copy_(param.data)
    ema.optimization_step = done        # step() counts it to ``step``, the number get_decay reads
    ema.step(unet.parameters())


class DDPMTask(trainer.Task):
    """Denoising of ``{"image": (C, H, W) in [-1, 1]}`` items; EMA weights validated, previewed, exported."""

    name = "ddpm"

    def __init__(self, config: DDPMConfig, train_set, val_set=None):
        self.config, self.train_set, self.val_set = config, train_set, val_set
        self._fd_real = None        # the validation images the sample quality is scored against

    def setup(self) -> trainer.Parts:
        from diffusers.training_utils import EMAModel

        cfg, t = self.config, self.config.train
        check_dataset(self.train_set, cfg, "training set")
        if self.val_set is not None:
            check_dataset(self.val_set, cfg, "validation set")
        self.noise_scheduler = make_noise_scheduler(cfg.noise)
        self.unet = build_unet(cfg.unet)
        self.ema = ema_model(self.unet, t, EMAModel)
        self.ema.to(self.ctx.device)
        self.ema_unet = None        # built on first use: the network the EMA weights are copied into
        self.grid_sampler = make_sampler(t.sample_grid_sampler, self.noise_scheduler.config)
        return trainer.Parts(models=[self.unet])

    def loss(self, batch, step: trainer.Step) -> torch.Tensor:
        t_cfg, device, g = self.config.train, self.ctx.device, step.generator
        x0 = _batch_images(batch, "training set").to(device, non_blocking=True)
        t = torch.randint(0, self.noise_scheduler.config.num_train_timesteps, (x0.shape[0],), generator=g, device=device)
        noise = torch.randn(x0.shape, generator=g, device=device, dtype=x0.dtype)
        noisy = self.noise_scheduler.add_noise(x0, noise, t)
        prediction_type = self.config.noise.prediction_type
        target = training_target(self.noise_scheduler, x0, noise, t, prediction_type)
        weights = loss_weights(self.noise_scheduler, t, prediction_type, t_cfg.loss_weighting, t_cfg.min_snr_gamma)
        return diffusion_loss(self.models[0](noisy, t).sample, target, weights)

    def after_update(self, step: int) -> None:
        ema_update(self.ema, self.unet, step, self.config.train.ema_update_every)

    def ema_network(self):
        """A UNet holding the current EMA weights (eval mode, no grad)."""
        if self.ema_unet is None:
            self.ema_unet = build_unet(self.config.unet).to(self.ctx.device).eval().requires_grad_(False)
        self.ema.copy_to(self.ema_unet.parameters())
        return self.ema_unet

    def validate(self, step: int) -> dict[str, float] | None:
        if self.val_set is None:
            return None
        t, ctx = self.config.train, self.ctx
        sums = []
        for net in (self.unet, self.ema_network()):
            sums += validation_loss(net, self.noise_scheduler, self.val_set,
                                    prediction_type=self.config.noise.prediction_type,
                                    batch_size=t.val_batch_size, max_batches=t.val_max_batches, seed=t.val_seed,
                                    device=ctx.device, rank=ctx.rank, world=ctx.world, autocast=ctx.autocast)
        total, count, total_ema, count_ema = ctx.reduce_sum(sums)
        metrics = {"val_loss": total / max(count, 1), "val_loss_ema": total_ema / max(count_ema, 1)}
        if t.val_fd_samples and ctx.rank == 0:      # history is the main process's
            metrics["val_pixel_fd_ema"] = self.sample_quality()
        return metrics

    def sample_quality(self) -> float:
        """Pixel Fréchet distance of ``val_fd_samples`` EMA samples (fixed seeds, the preview's
        sampler) to as many validation images: a loss says little of what samples look like."""
        from support.ddpm.sampling import pixel_frechet, sample_images

        t = self.config.train
        n = min(t.val_fd_samples, len(self.val_set))
        if n < 2:
            raise ValueError(f"val_fd_samples: the validation set has {len(self.val_set)} images; need at least 2")
        if self._fd_real is None:
            self._fd_real = torch.stack([_batch_images(self.val_set[i], "validation set") for i in range(n)])
            self._fd_real = (self._fd_real + 1) / 2
        seeds = [t.val_seed + i for i in range(n)]
        samples = torch.cat([sample_images(self.ema_network(), self.grid_sampler, seeds[i:i + t.val_batch_size],
                                           t.sample_grid_steps, device=self.ctx.device)
                             for i in range(0, n, t.val_batch_size)])
        return pixel_frechet(samples, self._fd_real)

    def preview(self, step: int, epoch: int) -> str:
        from support.core.images import save_grid
        from support.ddpm.sampling import sample_images

        t = self.config.train
        seeds = [t.sample_grid_seed + i for i in range(t.sample_grid_size)]
        images = sample_images(self.ema_network(), self.grid_sampler, seeds, t.sample_grid_steps, device=self.ctx.device)
        return str(save_grid(images, self.ctx.output_dir / trainer.SAMPLES_DIR / f"grid-{step:08d}.png"))

    def state_dict(self):
        names = [n for n, _ in self.unet.named_parameters()]
        ema_state = self.ema.state_dict()
        shadow = ema_state.pop("shadow_params")
        files = {"model.safetensors": self.unet.state_dict(), "ema.safetensors": dict(zip(names, shadow))}
        return files, {"ema": ema_state}

    def load_state_dict(self, files, meta) -> None:
        self.unet.load_state_dict(files["model.safetensors"])
        names = [n for n, _ in self.unet.named_parameters()]
        shadow = files["ema.safetensors"]
        self.ema.load_state_dict({**meta["ema"], "shadow_params": [shadow[n].to(self.ctx.device) for n in names]})

    def export(self) -> None:
        save_pipeline(self.ema_network(), self.noise_scheduler, self.ctx.output_dir / PIPELINE_DIR)


def train_ddpm(config: DDPMConfig, train_dataset, output_dir: str | os.PathLike, val_dataset=None,
               on_update: Callable[[int, torch.nn.Module], None] | None = None, progress: bool = True) -> dict:
    """Train ``config`` on ``train_dataset`` (items ``{"image": (C, H, W) float in [-1, 1]}``).

    Writes under ``output_dir`` what the trainer writes (checkpoints with the online and EMA
    weights, ``history.json``, ``config.json``), ``samples/grid-<step>.png`` (fixed-seed grids from
    the EMA weights) and ``pipeline/`` (a diffusers ``DDPMPipeline`` with the EMA weights).
    Returns the history: losses, learning rates, images/s, validation losses of the online and
    EMA weights, the sample grids written.
    """
    return trainer.fit(DDPMTask(config, train_dataset, val_dataset), config, output_dir, on_update, progress)


def launch_training(config: DDPMConfig, train_dataset, output_dir: str | os.PathLike, val_dataset=None,
                    num_processes: int = 1, port: int | None = None,
                    on_update: Callable[[int, torch.nn.Module], None] | None = None) -> dict:
    """:func:`train_ddpm` from a notebook on ``num_processes`` processes (``notebook_launcher``)."""
    return trainer.launch(DDPMTask(config, train_dataset, val_dataset), config, output_dir, num_processes, port,
                          on_update)


# ------------------------------------------------------------------------------------ CLI
@dataclasses.dataclass
class TrainJob:
    """A training job as one YAML file: profile + overrides, data and where to write."""

    output_dir: Path
    data: dict
    profile: str = "quick"
    unet: dict = dataclasses.field(default_factory=dict)
    noise: dict = dataclasses.field(default_factory=dict)
    train: dict = dataclasses.field(default_factory=dict)


def load_job(path: str | os.PathLike) -> tuple[DDPMConfig, Any, Any, Path]:
    """(config, training set, validation set or None, output_dir) of a job YAML file."""
    from support.ddpm.data import ImageDataConfig, image_datasets

    path = Path(path)
    job = from_mapping(TrainJob, read_yaml_mapping(path), source=str(path))
    config = ddpm_config(job.profile, {"unet": job.unet, "noise": job.noise, "train": job.train}, source=str(path))
    data = from_mapping(ImageDataConfig, job.data, source=f"{path}: data")
    train_set, val_set = image_datasets(data, config.unet.sample_size, config.unet.in_channels)
    return config, train_set, val_set, job.output_dir


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="accelerate launch -m support.ddpm.train",
                                     description="Train the unconditional DDPM (I-SynMed) on a folder of images "
                                                 "or a MIMIC-CXR-JPG-layout dataset.")
    parser.add_argument("--config", required=True, help="job YAML: output_dir, data, profile, unet/noise/train")
    args = parser.parse_args(argv)
    config, train_set, val_set, output_dir = load_job(args.config)
    from accelerate import PartialState

    history = train_ddpm(config, train_set, output_dir, val_set)
    if history["loss"] and PartialState().is_main_process:
        print(f"done: {history['step'][-1]} updates, last loss {history['loss'][-1]:.4f}, "
              f"pipeline in {Path(output_dir) / PIPELINE_DIR}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
