"""Train the unconditional DDPM with accelerate: one function for notebooks and the shell.

From a notebook: :func:`launch_training` (``accelerate.notebook_launcher`` with ``num_processes``).
From a shell: ``accelerate launch -m support.diffusion.train --config job.yaml`` (one process or
many; gloo on CPU). Both run :func:`train_ddpm`. The loop's machinery (accelerator, resume,
data order, guarded updates, throughput) is :mod:`support.training`, shared with the LoRA stage;
a resumed run repeats exactly the draws of an uninterrupted one.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import math
import os
import sys
from pathlib import Path
from typing import Any, Callable, Mapping

import torch

from support.diffusion.checkpoints import load_checkpoint, prune_checkpoints, rng_state, save_checkpoint
from support.diffusion.config import DDPMConfig, config_dict, ddpm_config
from support.diffusion.model import build_unet
from support.diffusion.schedules import diffusion_loss, loss_weights, make_noise_scheduler, training_target
from support.io import read_json, write_bytes_atomic, write_json_atomic
from support.params import ParameterError, from_mapping, read_yaml_mapping
from support.training import (  # noqa: F401  (NonFiniteLossError, free_port, step_generator: re-exported)
    NonFiniteLossError,
    UpdateMeter,
    checkpoint_to_resume,
    epoch_indices,
    epoch_sampler,
    free_port,
    guarded_update,
    make_accelerator,
    resolve_mixed_precision,
    step_generator,
)

HISTORY_JSON = "history.json"
CONFIG_JSON = "config.json"
PIPELINE_DIR = "pipeline"
CHECKPOINT_DIR = "checkpoints"
SAMPLES_DIR = "samples"


# ------------------------------------------------------------------------------------ helpers
def _batch_images(batch: Any, where: str) -> torch.Tensor:
    if isinstance(batch, Mapping) and "image" in batch:
        return batch["image"]
    raise TypeError(f"{where}: expected batches of dicts with an 'image' tensor, got {type(batch).__name__}")


def check_dataset(dataset, config: DDPMConfig, name: str) -> None:
    """Fail before training on a dataset whose items the model cannot take."""
    try:
        n = len(dataset)
    except TypeError:
        raise TypeError(f"{name}: expected a map-style torch Dataset with len()") from None
    if n == 0:
        raise ValueError(f"{name}: the dataset is empty")
    item = dataset[0]
    if not isinstance(item, Mapping) or "image" not in item:
        raise TypeError(f"{name}[0]: expected a dict with key 'image', got {type(item).__name__}")
    image = item["image"]
    size, channels = config.unet.sample_size, config.unet.in_channels
    if not torch.is_tensor(image) or tuple(image.shape) != (channels, size, size) or not image.is_floating_point():
        shape = tuple(image.shape) if hasattr(image, "shape") else type(image).__name__
        raise ValueError(f"{name}[0]['image']: expected a float tensor of shape {(channels, size, size)} "
                         f"(unet.in_channels, unet.sample_size), got {shape}")
    lo, hi = float(image.min()), float(image.max())
    if lo < -1.0001 or hi > 1.0001:
        raise ValueError(f"{name}[0]['image']: values span [{lo:.3f}, {hi:.3f}]; expected [-1, 1]")


def _new_history() -> dict[str, list]:
    return {"step": [], "loss": [], "lr": [], "images_per_s": [],
            "val_step": [], "val_loss": [], "val_loss_ema": [], "samples": []}


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


def _save_grid(images: torch.Tensor, path: Path) -> None:
    """(N, C, H, W) floats in [0, 1] -> one PNG grid, written atomically."""
    import io

    from PIL import Image
    from torchvision.utils import make_grid

    grid = make_grid(images, nrow=max(1, int(math.ceil(math.sqrt(images.shape[0])))), padding=2, pad_value=1.0)
    array = (grid.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    if array.shape[2] == 1 or images.shape[1] == 1:
        array = array[..., 0]
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    write_bytes_atomic(path, buf.getvalue())


def save_pipeline(unet, noise_scheduler, path: str | os.PathLike) -> Path:
    """Write a diffusers ``DDPMPipeline`` folder (safetensors) that ``from_pretrained`` loads as is.

    Written beside ``path`` first and swapped in, so a reader never sees a half-written pipeline.
    """
    from diffusers import DDPMPipeline

    from support.io import atomic_directory

    path = Path(path)
    with atomic_directory(path) as tmp:
        DDPMPipeline(unet=unet, scheduler=noise_scheduler).save_pretrained(tmp, safe_serialization=True)
    return path


def _assert_finite_parameters(model, ema, step: int) -> None:
    bad = [n for n, p in model.named_parameters() if not torch.isfinite(p).all()]
    bad += [f"ema[{i}]" for i, p in enumerate(ema.shadow_params) if not torch.isfinite(p).all()]
    if bad:
        raise NonFiniteLossError(f"non-finite weights at update {step} ({bad[:3]}); "
                                 f"no checkpoint was written for this update")


# ------------------------------------------------------------------------------------ training
def train_ddpm(config: DDPMConfig, train_dataset, output_dir: str | os.PathLike, val_dataset=None,
               on_update: Callable[[int, torch.nn.Module], None] | None = None) -> dict:
    """Train ``config`` on ``train_dataset`` (items ``{"image": (C, H, W) float in [-1, 1]}``).

    Writes under ``output_dir``: ``checkpoints/checkpoint-<step>/`` (every
    ``train.checkpoint_every`` updates and at the end, the newest ``checkpoints_total_limit``
    kept), ``samples/grid-<step>.png`` (fixed-seed grids from the EMA weights), ``pipeline/`` (a
    diffusers ``DDPMPipeline`` with the EMA weights), ``history.json`` and ``config.json``.
    Resumes from the latest checkpoint when ``train.resume == "latest"``. Only the main process
    writes. A non-finite loss or gradient raises :class:`NonFiniteLossError` before the update is
    applied, leaving the checkpoints as they were. ``on_update(step, model)`` is called on every
    process after each optimizer update with the unwrapped network (live plots, custom logging).
    Returns the history: losses (every ``log_every`` updates), learning rates, images/s,
    validation losses of the online and EMA weights, and the sample grids written.
    """
    from accelerate.utils import gather_object
    from diffusers import UNet2DModel
    from diffusers.optimization import get_scheduler
    from diffusers.training_utils import EMAModel
    from torch.utils.data import DataLoader, Subset
    from tqdm.auto import tqdm

    from support.diffusion.sampling import make_sampler, sample_images
    from support.seeding import seed_everything

    config = config.validate()
    tcfg = config.train
    out = Path(output_dir).expanduser().resolve()
    ckpt_root = out / CHECKPOINT_DIR
    accum = tcfg.gradient_accumulation_steps

    accelerator = make_accelerator(tcfg.mixed_precision, tcfg.cpu, accum)
    rank, world, is_main = accelerator.process_index, accelerator.num_processes, accelerator.is_main_process
    device = accelerator.device
    check_dataset(train_dataset, config, "training set")
    if val_dataset is not None:
        check_dataset(val_dataset, config, "validation set")

    # The same initial weights on every rank; then per-rank streams for anything else (e.g. dropout).
    seed_everything(tcfg.seed)
    noise_scheduler = make_noise_scheduler(config.noise)
    unet = build_unet(config.unet)
    seed_everything(tcfg.seed + 7919 * (rank + 1))
    optimizer = torch.optim.Adam(unet.parameters(), lr=tcfg.learning_rate, betas=tuple(tcfg.adam_betas),
                                 eps=tcfg.adam_epsilon, weight_decay=tcfg.weight_decay)
    # Stepped once per update by this loop (not handed to accelerate, which would step it once per
    # process and tie the schedule to the process count).
    # diffusers' "constant" ignores warm-up; with warm-up steps its constant schedule has another name.
    schedule = "constant_with_warmup" if tcfg.lr_schedule == "constant" and tcfg.lr_warmup_steps else tcfg.lr_schedule
    lr_scheduler = get_scheduler(schedule, optimizer, num_warmup_steps=tcfg.lr_warmup_steps,
                                 num_training_steps=tcfg.max_steps)
    model, optimizer = accelerator.prepare(unet, optimizer)
    raw = accelerator.unwrap_model(model)
    ema = EMAModel(raw.parameters(), decay=tcfg.ema_decay,
                   update_after_step=tcfg.ema_update_after_step // tcfg.ema_update_every,
                   model_cls=UNet2DModel, model_config=raw.config)
    ema.to(device)
    ema_unet = build_unet(config.unet).to(device).eval().requires_grad_(False)

    start_step, history = 0, _new_history()
    resume_from = checkpoint_to_resume(tcfg.resume, ckpt_root)
    if resume_from is not None:
        state = load_checkpoint(resume_from, model=raw, ema=ema, optimizer=optimizer, lr_scheduler=lr_scheduler,
                                scaler=accelerator.scaler, rank=rank, device=device)
        for part in ("unet", "noise"):
            saved = state.get("config", {}).get(part)
            if saved != config_dict(getattr(config, part)):
                raise ParameterError(f"{resume_from}: checkpoint was trained with other {part} parameters "
                                     f"({saved}); start a new output_dir or set train.resume to null")
        start_step, history = int(state["step"]), state["history"]
        if is_main:
            print(f"resuming from {resume_from} (update {start_step})")
    if is_main:
        out.mkdir(parents=True, exist_ok=True)
        write_json_atomic(out / CONFIG_JSON, config_dict(config))

    sampler, batches_per_epoch = epoch_sampler(train_dataset, world, rank, tcfg.seed, tcfg.batch_size)
    micro = start_step * accum
    epoch, skip = divmod(micro, batches_per_epoch)
    T = noise_scheduler.config.num_train_timesteps
    prediction_type = config.noise.prediction_type
    images_per_update = world * tcfg.batch_size * accum
    grid_scheduler = make_sampler(tcfg.sample_grid_sampler, noise_scheduler.config)

    def run_validation(step: int) -> None:
        if val_dataset is None or (history["val_step"] and history["val_step"][-1] == step):
            return
        ema.copy_to(ema_unet.parameters())
        sums = []
        for net in (raw, ema_unet):
            s, n = validation_loss(net, noise_scheduler, val_dataset, prediction_type=prediction_type,
                                   batch_size=tcfg.val_batch_size, max_batches=tcfg.val_max_batches,
                                   seed=tcfg.val_seed, device=device, rank=rank, world=world,
                                   autocast=accelerator.autocast)
            sums += [s, n]
        totals = torch.tensor(sums, dtype=torch.float64, device=device)
        if world > 1:
            totals = accelerator.reduce(totals, reduction="sum")
        history["val_step"].append(step)
        history["val_loss"].append(float(totals[0] / max(totals[1], 1)))
        history["val_loss_ema"].append(float(totals[2] / max(totals[3], 1)))

    def write_samples(step: int) -> None:
        path = out / SAMPLES_DIR / f"grid-{step:08d}.png"
        if is_main:
            ema.copy_to(ema_unet.parameters())
            seeds = [tcfg.sample_grid_seed + i for i in range(tcfg.sample_grid_size)]
            images = sample_images(ema_unet, grid_scheduler, seeds, tcfg.sample_grid_steps, device=device)
            _save_grid(images, path)
        if str(path) not in history["samples"]:
            history["samples"].append(str(path))
        accelerator.wait_for_everyone()

    def write_checkpoint(step: int) -> None:
        _assert_finite_parameters(raw, ema, step)
        states = gather_object([rng_state()])
        if is_main:
            save_checkpoint(ckpt_root, step, model=raw, ema=ema, optimizer=optimizer, lr_scheduler=lr_scheduler,
                            scaler=accelerator.scaler, rng_states=states,
                            extra={"config": config_dict(config), "history": history, "world_size": world})
            prune_checkpoints(ckpt_root, tcfg.checkpoints_total_limit)
        accelerator.wait_for_everyone()

    progress = tqdm(total=tcfg.max_steps, initial=start_step, disable=not is_main, desc="ddpm", unit="update")
    step = start_step
    meter = UpdateMeter()
    update_loss = 0.0
    model.train()
    while step < tcfg.max_steps:
        indices = epoch_indices(sampler, epoch, skip, tcfg.batch_size)
        skip = 0
        loader = DataLoader(Subset(train_dataset, indices), batch_size=tcfg.batch_size, shuffle=False,
                            drop_last=True, num_workers=tcfg.num_workers,
                            generator=torch.Generator().manual_seed(tcfg.seed + epoch),
                            pin_memory=device.type == "cuda")
        for batch in loader:
            x0 = _batch_images(batch, "training set").to(device, non_blocking=True)
            g = step_generator(tcfg.seed, micro, rank, device)
            t = torch.randint(0, T, (x0.shape[0],), generator=g, device=device)
            noise = torch.randn(x0.shape, generator=g, device=device, dtype=x0.dtype)
            noisy = noise_scheduler.add_noise(x0, noise, t)
            target = training_target(noise_scheduler, x0, noise, t, prediction_type)
            weights = loss_weights(noise_scheduler, t, prediction_type, tcfg.loss_weighting, tcfg.min_snr_gamma)
            with accelerator.accumulate(model):
                loss = diffusion_loss(model(noisy, t).sample, target, weights)
                loss_sum = guarded_update(accelerator, loss, model.parameters(), optimizer, tcfg.max_grad_norm,
                                          step=step, micro=micro, checkpoint_root=ckpt_root)
            micro += 1
            update_loss += loss_sum / world / accum
            if not accelerator.sync_gradients:
                continue
            lr_scheduler.step()
            step += 1
            if step % tcfg.ema_update_every == 0:
                ema.step(raw.parameters())
            if on_update is not None:
                on_update(step, raw)
            meter.add(update_loss)
            update_loss = 0.0
            progress.update(1)
            if step % tcfg.log_every == 0 or step == tcfg.max_steps:
                mean_loss, updates_per_s = meter.flush()
                rate = updates_per_s * images_per_update
                history["step"].append(step)
                history["loss"].append(mean_loss)
                history["lr"].append(lr_scheduler.get_last_lr()[0])
                history["images_per_s"].append(rate)
                progress.set_postfix(loss=f"{mean_loss:.4f}", img_s=f"{rate:.1f}")
            side_work = ((tcfg.validate_every and step % tcfg.validate_every == 0)
                         or (tcfg.sample_every and step % tcfg.sample_every == 0)
                         or step % tcfg.checkpoint_every == 0 or step == tcfg.max_steps)
            if side_work:  # kept out of the images/s figure
                meter.pause()
                final = step == tcfg.max_steps  # the final checkpoint carries the final validation and grid
                if final or (tcfg.validate_every and step % tcfg.validate_every == 0):
                    run_validation(step)
                if final or (tcfg.sample_every and step % tcfg.sample_every == 0):
                    write_samples(step)
                if final or step % tcfg.checkpoint_every == 0:
                    write_checkpoint(step)
                meter.resume()
            if step >= tcfg.max_steps:
                break
        epoch += 1
    progress.close()

    if is_main:
        ema.copy_to(ema_unet.parameters())
        save_pipeline(ema_unet, noise_scheduler, out / PIPELINE_DIR)
        write_json_atomic(out / HISTORY_JSON, history)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return history


# ------------------------------------------------------------------------------------ launching
def launch_training(config: DDPMConfig, train_dataset, output_dir: str | os.PathLike, val_dataset=None,
                    num_processes: int = 1, port: int | None = None,
                    on_update: Callable[[int, torch.nn.Module], None] | None = None) -> dict:
    """Run :func:`train_ddpm` from a notebook on ``num_processes`` processes; return the history.

    Several processes go through ``accelerate.notebook_launcher`` (which forks, so no CUDA call may
    have been made in the notebook before); one process runs in the notebook itself.
    """
    if num_processes < 1:
        raise ValueError(f"num_processes {num_processes}: expected at least 1")
    if num_processes == 1:
        return train_ddpm(config, train_dataset, output_dir, val_dataset, on_update)
    from accelerate import notebook_launcher

    notebook_launcher(train_ddpm, args=(config, train_dataset, str(output_dir), val_dataset, on_update),
                      num_processes=num_processes, use_port=str(port or free_port()),
                      mixed_precision=resolve_mixed_precision(config.train.mixed_precision, config.train.cpu))
    return read_json(Path(output_dir) / HISTORY_JSON)


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
    from support.diffusion.data import ImageDataConfig, image_datasets

    path = Path(path)
    job = from_mapping(TrainJob, read_yaml_mapping(path), source=str(path))
    config = ddpm_config(job.profile, {"unet": job.unet, "noise": job.noise, "train": job.train}, source=str(path))
    data = from_mapping(ImageDataConfig, job.data, source=f"{path}: data")
    train_set, val_set = image_datasets(data, config.unet.sample_size, config.unet.in_channels)
    return config, train_set, val_set, job.output_dir


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="accelerate launch -m support.diffusion.train",
                                     description="Train the unconditional DDPM (I-SynMed) on a folder of images "
                                                 "or a MIMIC-CXR-JPG-layout dataset.")
    parser.add_argument("--config", required=True, help="job YAML: output_dir, data, profile, unet/noise/train")
    args = parser.parse_args(argv)
    config, train_set, val_set, output_dir = load_job(args.config)
    history = train_ddpm(config, train_set, output_dir, val_set)
    if history["loss"]:
        print(f"done: {history['step'][-1]} updates, last loss {history['loss'][-1]:.4f}, "
              f"pipeline in {Path(output_dir) / PIPELINE_DIR}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
