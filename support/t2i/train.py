"""LoRA fine-tuning of a Stable Diffusion pipeline on image-report pairs, as a task of the shared
trainer (:func:`support.core.trainer.fit`).

The method follows diffusers' ``train_text_to_image_lora.py``: the VAE, text encoder and UNet are
frozen; peft adapters sit on the UNet attention projections (optionally on the text encoder),
kept in fp32 under fp16; the objective is the base model's own (epsilon or v, optional
Min-SNR-gamma weighting and noise offset; :mod:`support.t2i.objective`). Checkpoints hold the
adapters only, in peft's naming and in diffusers' format; previews are images of fixed prompts
and seeds at the end of epochs.

From a notebook: :func:`launch_lora_training`; from a shell:
``accelerate launch -m support.t2i.train --config job.yaml``. Both run :func:`train_lora`.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from pathlib import Path
from typing import Any, Callable

import torch

from support.core import trainer
from support.core.config import config_dict
from support.core.trainer import NonFiniteLossError  # noqa: F401  (re-exported)
from support.io import read_json, write_json_atomic
from support.params import from_mapping, read_yaml_mapping
from support.t2i.config import T2IConfig, t2i_config
from support.t2i.objective import collate_captioned, latent_diffusion_loss

LORA_DIR = "lora"
LORA_INFO_JSON = "lora.json"
PEFT_WEIGHTS = "lora.safetensors"
FULL_DIR = "unet"                           # a full fine-tune's UNet (diffusers folder)
FULL_INFO_JSON = "full_finetune.json"
UNET_WEIGHTS = "unet.safetensors"
VALIDATION_BATCH = 8

__all__ = ["NonFiniteLossError", "LoraTask", "FullFinetuneTask", "train_lora", "launch_lora_training", "lora_training_set",
           "training_resolution", "validation_pipeline"]


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
    item = trainer.check_first_item(dataset, name, "pixel_values", (channels, resolution, resolution),
                                    also=("caption",), hint="(the base model's VAE channels, train.resolution)")
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


class LoraTask(trainer.Task):
    """Adapters of ``base_model`` (a Stable Diffusion folder, or a pipeline in memory) trained on
    items ``{"pixel_values": (C, R, R) in [-1, 1], "caption": str}``."""

    name = "lora"
    collate_fn = staticmethod(collate_captioned)

    def __init__(self, config: T2IConfig, base_model, train_set):
        self.config, self.base_model, self.train_set = config, base_model, train_set

    def setup(self) -> trainer.Parts:
        from diffusers import DDPMScheduler
        from diffusers.training_utils import cast_training_params

        from support.t2i.base_model import load_pipeline, model_sha256
        from support.t2i.captions import caption_stats
        from support.t2i.lora import trainable_parameters

        ctx = self.ctx
        if isinstance(self.base_model, (str, os.PathLike)):
            self.base_sha = model_sha256(self.base_model, "unet")
            pipe = load_pipeline(self.base_model, device="cpu", dtype="fp32")
        else:
            self.base_sha, pipe = "in-memory", self.base_model
        self.pipe = pipe
        self.noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
        self.resolution = training_resolution(self.config, pipe)
        check_training_set(self.train_set, int(pipe.vae.config.in_channels), self.resolution)
        captions = getattr(self.train_set, "captions", None)
        self.caption_stats = caption_stats(list(captions), pipe.tokenizer) if captions is not None else None

        # Frozen base in the compute dtype; what is trained (the same initial values on every rank) in fp32.
        for model in (pipe.vae, pipe.text_encoder, pipe.unet):
            model.requires_grad_(False).to(ctx.device, dtype=ctx.weight_dtype)
        pipe.vae.eval()
        pipe.text_encoder.eval()
        trained, params = self.adapt(pipe)
        if ctx.weight_dtype != torch.float32:
            cast_training_params(trained, dtype=torch.float32)
        self.counts = trainable_parameters(unet=pipe.unet, text_encoder=pipe.text_encoder, vae=pipe.vae)
        return trainer.Parts(models=trained, params=params)

    def adapt(self, pipe) -> tuple[list[torch.nn.Module], list[torch.nn.Parameter]]:
        """LoRA adapters on the frozen UNet (and text encoder): the modules and parameters trained."""
        from support.t2i.lora import add_lora, lora_parameters

        add_lora(pipe.unet, pipe.text_encoder, self.config.lora)
        trained = [pipe.unet] + ([pipe.text_encoder] if self.config.lora.text_encoder else [])
        return trained, lora_parameters(*trained)

    def loss(self, batch, step: trainer.Step) -> torch.Tensor:
        t, lcfg = self.config.train, self.config.lora
        text_encoder = self.models[1] if lcfg.text_encoder else self.pipe.text_encoder
        return latent_diffusion_loss(batch, step.generator, vae=self.pipe.vae, text_encoder=text_encoder,
                                     tokenizer=self.pipe.tokenizer, unet=self.models[0],
                                     noise_scheduler=self.noise_scheduler, device=self.ctx.device,
                                     dtype=self.ctx.weight_dtype, caption_dropout=t.caption_dropout,
                                     noise_offset=t.noise_offset, snr_gamma=t.snr_gamma,
                                     train_text_encoder=lcfg.text_encoder)

    def preview(self, step: int, epoch: int) -> str | None:
        from support.core.images import save_grid, save_pngs
        from support.core.schedules import make_sampler
        from support.t2i.sampling import generate_images

        t = self.config.train
        if not t.validation_prompts:
            return None
        prompts = list(t.validation_prompts)
        seeds = [t.validation_seed + i for i in range(len(prompts))]
        pipe = self.pipe
        vpipe = validation_pipeline(pipe.vae, pipe.text_encoder, pipe.tokenizer, pipe.unet,
                                    make_sampler("pndm", pipe.scheduler.config))
        with self.ctx.autocast():
            images = generate_images(vpipe, prompts, seeds, steps=t.validation_steps,
                                     guidance_scale=t.validation_guidance_scale, sampler=t.validation_sampler,
                                     batch_size=VALIDATION_BATCH, resolution=self.resolution)
        path = self.ctx.output_dir / trainer.SAMPLES_DIR / f"step-{step:08d}"
        save_pngs(images, path)
        save_grid(images, path / "grid.png")
        return str(path)

    def state_dict(self):
        from support.t2i.lora import peft_state_dicts

        return {PEFT_WEIGHTS: peft_state_dicts(self.pipe.unet, self.pipe.text_encoder, self.config.lora.text_encoder)}, {}

    def load_state_dict(self, files, meta) -> None:
        from support.t2i.lora import load_peft_state_dicts

        load_peft_state_dicts(files[PEFT_WEIGHTS], self.pipe.unet, self.pipe.text_encoder, where=PEFT_WEIGHTS)

    def write_checkpoint_files(self, folder: Path) -> None:
        """The adapters in diffusers' format too: ``pipeline.load_lora_weights(checkpoint)`` works."""
        from support.t2i.lora import save_lora_weights

        save_lora_weights(folder, self.pipe.unet, self.pipe.text_encoder, self.config.lora.text_encoder)

    def resume_key(self) -> dict[str, Any]:
        t = self.config.train
        return {"lora": config_dict(self.config.lora), "base_model_sha256": self.base_sha,
                "train": {name: getattr(t, name) for name in t.METHOD_FIELDS}}

    def describe(self) -> dict[str, Any]:
        return {"trainable": self.counts, "captions": self.caption_stats, "base_model_sha256": self.base_sha,
                "resolution": self.resolution}

    def export(self) -> None:
        from support.t2i.lora import save_lora_weights

        out, lcfg, t = self.ctx.output_dir / LORA_DIR, self.config.lora, self.config.train
        save_lora_weights(out, self.pipe.unet, self.pipe.text_encoder, lcfg.text_encoder)
        write_json_atomic(out / LORA_INFO_JSON, {
            "lora": config_dict(lcfg), "trainable": self.counts, "resolution": self.resolution,
            "base_model": str(self.base_model) if isinstance(self.base_model, (str, os.PathLike)) else "in-memory",
            "base_model_sha256": self.base_sha, "captions": self.caption_stats,
            "caption_template": t.caption_template, "text_source": t.text_source})


class FullFinetuneTask(LoraTask):
    """What LoRA is measured against: every UNet weight trained on the same pairs, objective and
    loop (text encoder and autoencoder frozen). Checkpoints and the export hold the whole UNet."""

    name = "full-finetune"

    def adapt(self, pipe) -> tuple[list[torch.nn.Module], list[torch.nn.Parameter]]:
        pipe.unet.requires_grad_(True)
        return [pipe.unet], list(pipe.unet.parameters())

    def state_dict(self):
        return {UNET_WEIGHTS: {k: v.detach().contiguous() for k, v in self.pipe.unet.state_dict().items()}}, {}

    def load_state_dict(self, files, meta) -> None:
        self.pipe.unet.load_state_dict(files[UNET_WEIGHTS])

    def write_checkpoint_files(self, folder: Path) -> None:
        return None

    def resume_key(self) -> dict[str, Any]:
        t = self.config.train
        return {"full_finetune": "unet", "base_model_sha256": self.base_sha,
                "train": {name: getattr(t, name) for name in t.METHOD_FIELDS}}

    def export(self) -> None:
        from support.t2i.base_model import save_pipeline

        out = self.ctx.output_dir / FULL_DIR
        save_pipeline(self.pipe.unet, out)
        write_json_atomic(out / FULL_INFO_JSON, {
            "trainable": self.counts, "resolution": self.resolution,
            "base_model": str(self.base_model) if isinstance(self.base_model, (str, os.PathLike)) else "in-memory",
            "base_model_sha256": self.base_sha, "caption_template": self.config.train.caption_template,
            "text_source": self.config.train.text_source})


def train_lora(config: T2IConfig, base_model, train_dataset, output_dir: str | os.PathLike,
               on_update: Callable[[int, torch.nn.Module], None] | None = None, progress: bool = True) -> dict:
    """Fine-tune LoRA adapters of ``base_model`` on ``train_dataset``; return the history.

    ``base_model``: a diffusers Stable Diffusion folder (SD 2.1-base, or the small model of
    :mod:`support.t2i.base_model`), or a ``StableDiffusionPipeline`` already in memory.
    ``train_dataset``: see :func:`lora_training_set`; a ``set_epoch(epoch)`` method, when present,
    is called before each epoch (random crops).

    Writes under ``output_dir``: ``lora/pytorch_lora_weights.safetensors`` (diffusers format;
    ``pipeline.load_lora_weights(output_dir / "lora")``) with ``lora/lora.json`` (adapter
    parameters, trainable-parameter counts and shares, base model hash, caption statistics);
    ``checkpoints/checkpoint-<step>/`` (adapters in both formats and the training state);
    ``samples/step-<step>/`` (one PNG per validation prompt, seed ``validation_seed + i``, and
    ``grid.png``); ``history.json``; ``config.json``. The base weights are never written.
    """
    return trainer.fit(LoraTask(config, base_model, train_dataset), config, output_dir, on_update, progress)


def launch_lora_training(config: T2IConfig, base_model, train_dataset, output_dir: str | os.PathLike,
                         num_processes: int = 1, port: int | None = None,
                         on_update: Callable[[int, torch.nn.Module], None] | None = None,
                         full_finetune: bool = False) -> dict:
    """:func:`train_lora` from a notebook on ``num_processes`` processes (several load the base
    model themselves: pass its folder, not a pipeline). ``full_finetune``: every UNet weight
    instead (:class:`FullFinetuneTask`, written to ``output_dir/unet``), the comparison."""
    if num_processes > 1 and not isinstance(base_model, (str, os.PathLike)):
        raise TypeError("several processes load the base model themselves: pass its folder, not a pipeline")
    task = (FullFinetuneTask if full_finetune else LoraTask)(config, base_model, train_dataset)
    return trainer.launch(task, config, output_dir, num_processes, port, on_update)


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
    # Every process takes part in pretraining the default base model (when no folder is given).
    base = ensure_base_model(job.base_model, records, Path(job.output_dir) / "base", config.base)
    dataset = lora_training_set(records, config, base)
    history = train_lora(config, base, dataset, job.output_dir)
    if PartialState().is_main_process:
        print(f"done: {history['step'][-1] if history['step'] else 0} updates; LoRA weights in "
              f"{Path(job.output_dir) / LORA_DIR}; trainable share of the UNet "
              f"{history['trainable']['unet']['share']:.4%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
