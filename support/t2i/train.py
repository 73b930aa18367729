"""LoRA fine-tuning of a Stable Diffusion pipeline on image-report pairs, with accelerate.

From a notebook: :func:`launch_lora_training`; from a shell:
``accelerate launch -m support.t2i.train --config job.yaml``. Both run :func:`train_lora`, which
follows diffusers' ``train_text_to_image_lora.py`` (frozen VAE, text encoder and UNet; peft
adapters on the UNet attention projections, optionally on the text encoder; adapters in fp32
under fp16; epsilon/v target from the base model's scheduler; optional Min-SNR-gamma weighting
and noise offset) inside the DDPM stage's machinery: per-micro-batch random draws that are a
pure function of (seed, micro-batch, rank) so a resumed run repeats an uninterrupted one,
checkpoints of the adapters only with retention and resume, a stop before a non-finite loss
reaches the weights, and validation images from fixed prompts and seeds each epoch.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import sys
from pathlib import Path
from typing import Any, Callable, Mapping

import torch

from support.diffusion.schedules import diffusion_loss, loss_weights, training_target
from support.training import (
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
from support.io import read_json, write_json_atomic
from support.params import ParameterError, from_mapping, read_yaml_mapping
from support.t2i.config import T2IConfig, config_dict, t2i_config

HISTORY_JSON = "history.json"
CONFIG_JSON = "config.json"
LORA_DIR = "lora"
LORA_INFO_JSON = "lora.json"
CHECKPOINT_DIR = "checkpoints"
SAMPLES_DIR = "samples"
VALIDATION_BATCH = 8
# Training fields that change what a resumed run computes (the rest may change between sessions).
_RESUME_KEYS = ("resolution", "random_crop", "views", "caption_template", "text_source", "batch_size",
                "gradient_accumulation_steps", "learning_rate", "lr_schedule", "lr_warmup_steps", "adam_betas",
                "adam_epsilon", "weight_decay", "max_grad_norm", "snr_gamma", "noise_offset", "caption_dropout", "seed")

__all__ = ["NonFiniteLossError", "train_lora", "launch_lora_training", "lora_training_set", "training_resolution",
           "validation_pipeline"]


# ------------------------------------------------------------------------------------ helpers
def training_resolution(config: T2IConfig, base_model) -> int:
    """``train.resolution``, or the base model's native size when it is null."""
    if config.train.resolution:
        return int(config.train.resolution)
    if isinstance(base_model, (str, os.PathLike)):
        from support.t2i.base_model import check_pipeline_dir

        path = check_pipeline_dir(base_model)
        unet, vae = read_json(path / "unet" / "config.json"), read_json(path / "vae" / "config.json")
        size = unet["sample_size"] if isinstance(unet["sample_size"], int) else unet["sample_size"][0]
        return int(size) * 2 ** (len(vae["block_out_channels"]) - 1)
    from support.t2i.base_model import pipeline_resolution

    return pipeline_resolution(base_model)


def _image_channels(base_model) -> int:
    if isinstance(base_model, (str, os.PathLike)):
        return int(read_json(Path(base_model) / "vae" / "config.json")["in_channels"])
    return int(base_model.vae.config.in_channels)


def lora_training_set(records, config: T2IConfig, base_model, splits=("train",), strict: bool = False):
    """The image-caption pairs of ``records`` that :func:`train_lora` expects for ``base_model``:
    its resolution and channel count, ``train.views``, the caption template and crop policy."""
    from support.t2i.data import CaptionedImages

    t = config.train
    return CaptionedImages(records, training_resolution(config, base_model), channels=_image_channels(base_model),
                           template=t.caption_template, text_source=t.text_source, views=t.views, splits=splits,
                           random_crop=t.random_crop, seed=t.seed, strict=strict)


def check_training_set(dataset, channels: int, resolution: int, name: str = "training set") -> None:
    """Fail before training on items the model cannot take."""
    try:
        n = len(dataset)
    except TypeError:
        raise TypeError(f"{name}: expected a map-style torch Dataset with len()") from None
    if n == 0:
        raise ValueError(f"{name}: the dataset is empty")
    item = dataset[0]
    if not isinstance(item, Mapping) or "pixel_values" not in item or "caption" not in item:
        got = sorted(item) if isinstance(item, Mapping) else type(item).__name__
        raise TypeError(f"{name}[0]: expected a dict with 'pixel_values' and 'caption', got {got}")
    x = item["pixel_values"]
    if not torch.is_tensor(x) or tuple(x.shape) != (channels, resolution, resolution) or not x.is_floating_point():
        shape = tuple(x.shape) if hasattr(x, "shape") else type(x).__name__
        raise ValueError(f"{name}[0]['pixel_values']: expected a float tensor of shape "
                         f"{(channels, resolution, resolution)} (the base model's VAE channels, train.resolution), "
                         f"got {shape}")
    lo, hi = float(x.min()), float(x.max())
    if lo < -1.0001 or hi > 1.0001:
        raise ValueError(f"{name}[0]['pixel_values']: values span [{lo:.3f}, {hi:.3f}]; expected [-1, 1]")
    if not isinstance(item["caption"], str):
        raise TypeError(f"{name}[0]['caption']: expected a string, got {type(item['caption']).__name__}")


def validation_pipeline(vae, text_encoder, tokenizer, unet, scheduler):
    """A ``StableDiffusionPipeline`` around the live training modules (nothing copied)."""
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _new_history() -> dict[str, Any]:
    return {"step": [], "epoch": [], "loss": [], "lr": [], "steps_per_s": [], "images_per_s": [], "samples": []}


def _collate(items: list[dict]) -> dict[str, Any]:
    return {"pixel_values": torch.stack([it["pixel_values"] for it in items]),
            "caption": [it["caption"] for it in items]}


# ------------------------------------------------------------------------------------ training
def train_lora(config: T2IConfig, base_model, train_dataset, output_dir: str | os.PathLike,
               on_update: Callable[[int, torch.nn.Module], None] | None = None, progress: bool = True) -> dict:
    """Fine-tune LoRA adapters of ``base_model`` on ``train_dataset``; return the history.

    ``base_model``: a diffusers Stable Diffusion folder (SD 2.1-base, or the small model of
    :mod:`support.t2i.base_model`), or a ``StableDiffusionPipeline`` already in memory.
    ``train_dataset``: items ``{"pixel_values": (C, R, R) float in [-1, 1], "caption": str}``
    (see :func:`lora_training_set`); a ``set_epoch(epoch)`` method, when present, is called
    before each epoch (random crops).

    Writes under ``output_dir``: ``lora/pytorch_lora_weights.safetensors`` (diffusers format;
    ``pipeline.load_lora_weights(output_dir / "lora")``) with ``lora/lora.json`` (adapter
    parameters, trainable-parameter counts and shares, base model hash, caption statistics);
    ``checkpoints/checkpoint-<step>/`` (adapters, optimizer, schedule, RNG; the newest
    ``checkpoints_total_limit`` kept); ``samples/step-<step>/`` (one PNG per validation prompt,
    seed ``validation_seed + i``, and ``grid.png``) at the end of every
    ``validation_every_epochs``-th epoch and at the end; ``history.json``; ``config.json``.
    The base weights are never written. Resumes from the latest checkpoint when
    ``train.resume == "latest"``. A non-finite loss or gradient raises
    :class:`NonFiniteLossError` before the update is applied.
    """
    from accelerate.utils import gather_object
    from diffusers import DDPMScheduler
    from diffusers.optimization import get_scheduler
    from diffusers.training_utils import cast_training_params
    from torch.utils.data import DataLoader, Subset
    from tqdm.auto import tqdm

    from support.seeding import seed_everything
    from support.t2i.base_model import load_pipeline, model_sha256
    from support.t2i.captions import caption_stats
    from support.t2i.checkpoints import (checkpoint_state, load_lora_checkpoint, prune_checkpoints, rng_state,
                                         save_lora_checkpoint)
    from support.t2i.lora import add_lora, lora_parameters, save_lora_weights, trainable_parameters
    from support.t2i.sampling import generate_images, make_sampler, save_grid, save_pngs

    config = config.validate()
    tcfg, lcfg = config.train, config.lora
    out = Path(output_dir).expanduser().resolve()
    ckpt_root = out / CHECKPOINT_DIR
    accum = tcfg.gradient_accumulation_steps
    accelerator = make_accelerator(tcfg.mixed_precision, tcfg.cpu, accum)
    rank, world, is_main = accelerator.process_index, accelerator.num_processes, accelerator.is_main_process
    device = accelerator.device
    weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(accelerator.mixed_precision, torch.float32)

    if isinstance(base_model, (str, os.PathLike)):
        base_sha = model_sha256(base_model, "unet")
        pipe = load_pipeline(base_model, device="cpu", dtype="fp32")
    else:
        base_sha, pipe = "in-memory", base_model
    tokenizer, text_encoder, vae, unet = pipe.tokenizer, pipe.text_encoder, pipe.vae, pipe.unet
    noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    prediction_type = noise_scheduler.config.prediction_type
    resolution = training_resolution(config, pipe)
    check_training_set(train_dataset, int(vae.config.in_channels), resolution)
    captions = getattr(train_dataset, "captions", None)
    stats = caption_stats(list(captions), tokenizer) if captions is not None else None

    # Frozen base in the compute dtype; adapters (same initial values on every rank) in fp32.
    seed_everything(tcfg.seed)
    for model in (vae, text_encoder, unet):
        model.requires_grad_(False).to(device, dtype=weight_dtype)
    vae.eval()
    text_encoder.eval()
    add_lora(unet, text_encoder, lcfg)
    trained = [unet] + ([text_encoder] if lcfg.text_encoder else [])
    if weight_dtype != torch.float32:
        cast_training_params(trained, dtype=torch.float32)
    counts = trainable_parameters(unet=unet, text_encoder=text_encoder, vae=vae)
    seed_everything(tcfg.seed + 7919 * (rank + 1))
    params = lora_parameters(*trained)
    optimizer = torch.optim.AdamW(params, lr=tcfg.learning_rate, betas=tuple(tcfg.adam_betas),
                                  eps=tcfg.adam_epsilon, weight_decay=tcfg.weight_decay)

    sampler, batches_per_epoch = epoch_sampler(train_dataset, world, rank, tcfg.seed, tcfg.batch_size)
    max_steps = tcfg.max_steps or math.ceil(tcfg.epochs * batches_per_epoch / accum)
    # Stepped once per update by this loop (as in the DDPM stage), not by accelerate.
    lr_scheduler = get_scheduler(tcfg.lr_schedule, optimizer, num_warmup_steps=tcfg.lr_warmup_steps,
                                 num_training_steps=max_steps)
    if lcfg.text_encoder:
        unet, text_encoder, optimizer = accelerator.prepare(unet, text_encoder, optimizer)
    else:
        unet, optimizer = accelerator.prepare(unet, optimizer)
    raw_unet = accelerator.unwrap_model(unet)
    raw_text = accelerator.unwrap_model(text_encoder)

    start_step, history = 0, _new_history()
    resume_from = checkpoint_to_resume(tcfg.resume, ckpt_root)
    if resume_from is not None:
        state = checkpoint_state(resume_from)
        saved = state.get("config", {})
        mine = config_dict(config)
        changed = [f"lora.{k}" for k in mine["lora"] if saved.get("lora", {}).get(k) != mine["lora"][k]]
        changed += [f"train.{k}" for k in _RESUME_KEYS if saved.get("train", {}).get(k) != mine["train"][k]]
        if state.get("base_model_sha256") != base_sha:
            changed.append("base model")
        if changed:
            raise ParameterError(f"{resume_from}: checkpoint was trained with other {changed}; start a new "
                                 f"output_dir or set train.resume to null")
        state = load_lora_checkpoint(resume_from, unet=raw_unet, text_encoder=raw_text, optimizer=optimizer,
                                     lr_scheduler=lr_scheduler, scaler=accelerator.scaler, rank=rank)
        start_step, history = int(state["step"]), state["history"]
        if is_main:
            print(f"resuming from {resume_from} (update {start_step})")
    if is_main:
        out.mkdir(parents=True, exist_ok=True)
        write_json_atomic(out / CONFIG_JSON, config_dict(config))
    history.update({"trainable": counts, "captions": stats, "max_steps": max_steps, "base_model_sha256": base_sha,
                    "updates_per_epoch": batches_per_epoch / accum, "resolution": resolution})

    micro = start_step * accum
    epoch, skip = divmod(micro, batches_per_epoch)
    T = noise_scheduler.config.num_train_timesteps
    images_per_update = world * tcfg.batch_size * accum
    val_scheduler = make_sampler("pndm", pipe.scheduler.config)

    def write_samples(step: int, epoch_index: int) -> None:
        path = out / SAMPLES_DIR / f"step-{step:08d}"
        if is_main and tcfg.validation_prompts:
            prompts = list(tcfg.validation_prompts)
            seeds = [tcfg.validation_seed + i for i in range(len(prompts))]
            vpipe = validation_pipeline(vae, raw_text, tokenizer, raw_unet, val_scheduler)
            with accelerator.autocast():
                images = generate_images(vpipe, prompts, seeds, steps=tcfg.validation_steps,
                                         guidance_scale=tcfg.validation_guidance_scale,
                                         sampler=tcfg.validation_sampler, batch_size=VALIDATION_BATCH,
                                         resolution=resolution)
            save_pngs(images, path)
            save_grid(images, path / "grid.png")
            entry = {"step": step, "epoch": epoch_index, "dir": str(path)}
            if entry not in history["samples"]:
                history["samples"].append(entry)
        accelerator.wait_for_everyone()

    def write_checkpoint(step: int) -> None:
        bad = [n for n, p in raw_unet.named_parameters() if p.requires_grad and not torch.isfinite(p).all()]
        if bad:
            raise NonFiniteLossError(f"non-finite adapter weights at update {step} ({bad[:3]}); "
                                     f"no checkpoint was written for this update")
        states = gather_object([rng_state()])
        if is_main:
            save_lora_checkpoint(ckpt_root, step, unet=raw_unet, text_encoder=raw_text,
                                 with_text_encoder=lcfg.text_encoder, optimizer=optimizer, lr_scheduler=lr_scheduler,
                                 scaler=accelerator.scaler, rng_states=states,
                                 extra={"config": config_dict(config), "history": history, "world_size": world,
                                        "base_model_sha256": base_sha})
            prune_checkpoints(ckpt_root, tcfg.checkpoints_total_limit)
        accelerator.wait_for_everyone()

    progress_bar = tqdm(total=max_steps, initial=start_step, disable=not (is_main and progress), desc="lora",
                        unit="update")
    step = start_step
    meter = UpdateMeter()
    update_loss = 0.0
    validation_due = False
    unet.train()
    if lcfg.text_encoder:
        text_encoder.train()
    while step < max_steps:
        if hasattr(train_dataset, "set_epoch"):
            train_dataset.set_epoch(epoch)
        indices = epoch_indices(sampler, epoch, skip, tcfg.batch_size)
        skip = 0
        loader = DataLoader(Subset(train_dataset, indices), batch_size=tcfg.batch_size, shuffle=False,
                            drop_last=True, num_workers=tcfg.num_workers, collate_fn=_collate,
                            pin_memory=device.type == "cuda")
        for batch in loader:
            pixels = batch["pixel_values"].to(device, dtype=weight_dtype, non_blocking=True)
            g = step_generator(tcfg.seed, micro, rank, device)
            captions_in = list(batch["caption"])
            if tcfg.caption_dropout > 0:
                drop = torch.rand(len(captions_in), generator=g, device=device) < tcfg.caption_dropout
                captions_in = ["" if d else c for c, d in zip(captions_in, drop.tolist())]
            ids = tokenizer(captions_in, padding="max_length", truncation=True, max_length=tokenizer.model_max_length,
                            return_tensors="pt").input_ids.to(device)
            with torch.no_grad():
                latents = vae.encode(pixels).latent_dist.sample(generator=g) * vae.config.scaling_factor
            noise = torch.randn(latents.shape, generator=g, device=device, dtype=latents.dtype)
            if tcfg.noise_offset:
                noise = noise + tcfg.noise_offset * torch.randn((latents.shape[0], latents.shape[1], 1, 1),
                                                                generator=g, device=device, dtype=latents.dtype)
            t = torch.randint(0, T, (latents.shape[0],), generator=g, device=device)
            noisy = noise_scheduler.add_noise(latents, noise, t)
            target = training_target(noise_scheduler, latents, noise, t, prediction_type)
            weights = loss_weights(noise_scheduler, t, prediction_type, "min_snr" if tcfg.snr_gamma else "none",
                                   tcfg.snr_gamma or 5.0)
            with accelerator.accumulate(*([unet, text_encoder] if lcfg.text_encoder else [unet])):
                with accelerator.autocast():
                    with torch.set_grad_enabled(lcfg.text_encoder):  # a frozen encoder keeps no graph
                        context = text_encoder(ids, return_dict=False)[0]
                    pred = unet(noisy, t, context, return_dict=False)[0]
                loss = diffusion_loss(pred, target, weights)
                loss_sum = guarded_update(accelerator, loss, params, optimizer, tcfg.max_grad_norm,
                                          step=step, micro=micro, checkpoint_root=ckpt_root)
            micro += 1
            update_loss += loss_sum / world / accum
            if micro % batches_per_epoch == 0:  # an epoch ended: validation images at this update
                done_epochs = micro // batches_per_epoch
                every = tcfg.validation_every_epochs
                validation_due = validation_due or bool(every and done_epochs % every == 0)
            if not accelerator.sync_gradients:
                continue
            lr_scheduler.step()
            step += 1
            if on_update is not None:
                on_update(step, raw_unet)
            meter.add(update_loss)
            update_loss = 0.0
            progress_bar.update(1)
            if step % tcfg.log_every == 0 or step == max_steps:
                mean_loss, rate = meter.flush()
                history["step"].append(step)
                history["epoch"].append(epoch)
                history["loss"].append(mean_loss)
                history["lr"].append(lr_scheduler.get_last_lr()[0])
                history["steps_per_s"].append(rate)
                history["images_per_s"].append(rate * images_per_update)
                progress_bar.set_postfix(loss=f"{mean_loss:.4f}", it_s=f"{rate:.2f}")
            final = step == max_steps
            checkpoint_due = final or step % tcfg.checkpoint_every == 0
            if validation_due or checkpoint_due:  # kept out of the steps/s figure
                meter.pause()
                if validation_due or final:  # before the checkpoint, so its history lists them
                    write_samples(step, (micro - 1) // batches_per_epoch)
                    validation_due = False
                if checkpoint_due:
                    write_checkpoint(step)
                meter.resume()
            if step >= max_steps:
                break
        epoch += 1
    progress_bar.close()

    if is_main:
        save_lora_weights(out / LORA_DIR, raw_unet, raw_text, lcfg.text_encoder)
        write_json_atomic(out / LORA_DIR / LORA_INFO_JSON, {
            "lora": config_dict(lcfg), "trainable": counts, "steps": step, "resolution": resolution,
            "base_model": str(base_model) if isinstance(base_model, (str, os.PathLike)) else "in-memory",
            "base_model_sha256": base_sha, "captions": stats, "caption_template": tcfg.caption_template,
            "text_source": tcfg.text_source})
        write_json_atomic(out / HISTORY_JSON, history)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return history


# ------------------------------------------------------------------------------------ launching
def launch_lora_training(config: T2IConfig, base_model, train_dataset, output_dir: str | os.PathLike,
                         num_processes: int = 1, port: int | None = None,
                         on_update: Callable[[int, torch.nn.Module], None] | None = None) -> dict:
    """Run :func:`train_lora` from a notebook on ``num_processes`` processes; return the history.

    Several processes go through ``accelerate.notebook_launcher`` (it forks: no CUDA call may
    have been made in the notebook before, and ``base_model`` must be a folder); one process runs
    in the notebook itself. ``on_update(step, unet)`` runs on every process after each update.
    """
    if num_processes < 1:
        raise ValueError(f"num_processes {num_processes}: expected at least 1")
    if num_processes == 1:
        return train_lora(config, base_model, train_dataset, output_dir, on_update)
    if not isinstance(base_model, (str, os.PathLike)):
        raise TypeError("several processes load the base model themselves: pass its folder, not a pipeline")
    from accelerate import notebook_launcher

    notebook_launcher(train_lora, args=(config, str(base_model), train_dataset, str(output_dir), on_update),
                      num_processes=num_processes, use_port=str(port or free_port()),
                      mixed_precision=resolve_mixed_precision(config.train.mixed_precision, config.train.cpu))
    return read_json(Path(output_dir) / HISTORY_JSON)


# ------------------------------------------------------------------------------------ CLI
@dataclasses.dataclass
class LoraJob:
    """A LoRA training job as one YAML file: data, base model, profile + overrides, output."""

    output_dir: Path
    data: Path                              # a MIMIC-CXR-JPG-layout root (real, phantom or synthetic)
    base_model: Path | None = None          # None: the small base model, pretrained under output_dir/base
    profile: str = "quick"
    lora: dict = dataclasses.field(default_factory=dict)
    train: dict = dataclasses.field(default_factory=dict)
    base: dict = dataclasses.field(default_factory=dict)


def main(argv: list[str] | None = None) -> int:
    from accelerate import PartialState

    from support.data.adapters import load_dataset
    from support.t2i.base_model import ensure_base_model

    parser = argparse.ArgumentParser(prog="accelerate launch -m support.t2i.train",
                                     description="LoRA fine-tuning of a Stable Diffusion folder on image-report pairs.")
    parser.add_argument("--config", required=True, help="job YAML: output_dir, data, base_model, profile, lora/train/base")
    args = parser.parse_args(argv)
    path = Path(args.config)
    job = from_mapping(LoraJob, read_yaml_mapping(path), source=str(path))
    config = t2i_config(job.profile, {"lora": job.lora, "train": job.train, "base": job.base}, source=str(path))
    records, summary = load_dataset("mimic-cxr-jpg", job.data)
    state = PartialState()
    if state.is_main_process:  # one process pretrains the default base model; the others wait for it
        base = ensure_base_model(job.base_model, records, Path(job.output_dir) / "base", config.base)
    state.wait_for_everyone()
    base = ensure_base_model(job.base_model, records, Path(job.output_dir) / "base", config.base)
    dataset = lora_training_set(records, config, base)
    history = train_lora(config, base, dataset, job.output_dir)
    print(f"done: {history['step'][-1] if history['step'] else 0} updates; LoRA weights in "
          f"{Path(job.output_dir) / LORA_DIR}; trainable share of the UNet "
          f"{history['trainable']['unet']['share']:.4%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
