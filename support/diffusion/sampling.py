"""Sample a trained DDPM into a synthetic dataset in the MIMIC-CXR-JPG layout.

Sample ``i`` always uses seed ``base_seed + i`` (its own CPU generator for the initial noise and
for every stochastic step), so any subset can be regenerated alone and GPU and CPU start from the
same noise. Across processes the pending seeds are dealt out round-robin: each rank writes its
own JPEG files (atomically), rank 0 gathers what was written and registers the rows, and only
rank 0 writes the CSV tables. Rerunning skips every sample whose file is already there.

Shell: ``accelerate launch -m support.diffusion.sampling --config sample.yaml``.
"""

from __future__ import annotations

import argparse
import inspect
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from support.diffusion.config import SamplingConfig, sampling_config

SAMPLERS = ("ddpm", "ddim", "dpmsolver++")
PROVENANCE_COLUMNS = ("generator", "checkpoint_sha256", "sampler", "steps", "seed")
UNET_WEIGHTS = Path("unet") / "diffusion_pytorch_model.safetensors"


def make_sampler(name: str, training_scheduler_config: Mapping[str, Any]):
    """A fresh diffusers scheduler for ``name`` built ``from_config`` of the training scheduler."""
    from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler

    if name == "ddpm":
        return DDPMScheduler.from_config(training_scheduler_config)
    if name == "ddim":
        return DDIMScheduler.from_config(training_scheduler_config)
    if name == "dpmsolver++":
        return DPMSolverMultistepScheduler.from_config(training_scheduler_config, algorithm_type="dpmsolver++",
                                                       solver_order=2)
    raise ValueError(f"sampler {name!r}: expected one of {list(SAMPLERS)}")


@torch.no_grad()
def sample_images(unet, scheduler, seeds: Sequence[int], steps: int, *, device=None, dtype=None,
                  progress: bool = False) -> torch.Tensor:
    """Denoise one image per seed; return float32 (N, C, H, W) in [0, 1] on the CPU.

    The same computation as diffusers' ``DDPMPipeline.__call__`` with one CPU generator per image,
    so for the DDPM sampler ``DDPMPipeline(generator=[...])`` gives the same images. The network
    may run in half precision (``dtype``); the sample itself is kept in float32.
    """
    from diffusers.utils.torch_utils import randn_tensor
    from tqdm.auto import tqdm

    if not seeds:
        raise ValueError("sample_images: no seeds given")
    device = torch.device(device) if device is not None else next(unet.parameters()).device
    dtype = dtype or next(unet.parameters()).dtype
    scheduler = scheduler.__class__.from_config(scheduler.config)  # fresh state (multistep solvers keep history)
    cfg = unet.config
    size = (cfg.sample_size, cfg.sample_size) if isinstance(cfg.sample_size, int) else tuple(cfg.sample_size)
    generators = [torch.Generator(device="cpu").manual_seed(int(s)) for s in seeds]
    x = randn_tensor((len(seeds), cfg.in_channels, *size), generator=generators, device=device,
                     dtype=torch.float32)
    scheduler.set_timesteps(steps)
    x = x * scheduler.init_noise_sigma
    takes_generator = "generator" in inspect.signature(scheduler.step).parameters
    was_training = unet.training
    unet.eval()
    for t in tqdm(scheduler.timesteps, disable=not progress, desc="denoise", leave=False):
        model_input = scheduler.scale_model_input(x, t)
        out = unet(model_input.to(dtype), t).sample.float()
        kwargs = {"generator": generators} if takes_generator else {}
        x = scheduler.step(out, t, x, **kwargs).prev_sample
    unet.train(was_training)
    return (x / 2 + 0.5).clamp(0, 1).cpu()


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """(N, 1, H, W) floats in [0, 1] -> uint8 (N, H, W) grayscale."""
    if images.ndim != 4 or images.shape[1] != 1:
        raise ValueError(f"expected (N, 1, H, W) grayscale images, got {tuple(images.shape)}")
    return (images[:, 0].clamp(0, 1) * 255).round().to(torch.uint8).numpy()


def load_pipeline(path: str | os.PathLike, device: str = "auto", dtype: str = "auto"):
    """A saved ``DDPMPipeline`` folder on ``device`` (``support.devices`` rule), network in ``dtype``."""
    from diffusers import DDPMPipeline

    from support.devices import pick_device, pick_dtype

    path = Path(path)
    if not (path / "model_index.json").is_file():
        raise FileNotFoundError(f"{path}: not a diffusers pipeline folder (model_index.json missing)")
    dev = pick_device(device)
    pipe = DDPMPipeline.from_pretrained(path, use_safetensors=True, local_files_only=True,
                                        dtype=pick_dtype(dev, dtype))
    pipe.unet.to(dev).eval()
    return pipe


def checkpoint_sha256(pipeline_dir: str | os.PathLike) -> str:
    """SHA-256 of the pipeline's UNet weights file: which weights made a sample."""
    from support.io import sha256_file

    path = Path(pipeline_dir) / UNET_WEIGHTS
    if not path.is_file():
        raise FileNotFoundError(f"{path}: UNet weights not found (pipelines are saved as safetensors)")
    return sha256_file(path)


def shard(items: Sequence, rank: int, world: int) -> list:
    """Rank ``rank``'s share of ``items`` (round-robin): shares are disjoint and cover ``items``."""
    if not 0 <= rank < world:
        raise ValueError(f"rank {rank} outside 0..{world - 1}")
    return list(items[rank::world])


def sample_plan(cfg: SamplingConfig, sha256: str) -> list[dict[str, Any]]:
    """Seed and MIMIC-style ids of every requested sample (ids follow from weights, sampler, seed)."""
    from support.data.writer import make_dicom_id, make_study_id, make_subject_id

    plan = []
    for i in range(cfg.num_samples):
        seed = cfg.base_seed + i
        plan.append({"seed": seed, "subject_id": make_subject_id(seed), "study_id": make_study_id(seed),
                     "dicom_id": make_dicom_id(cfg.generator_name, sha256, cfg.sampler, cfg.steps, seed)})
    return plan


def sample_to_dataset(pipeline_dir: str | os.PathLike, root: str | os.PathLike, cfg: SamplingConfig,
                      accelerator=None) -> dict[str, Any]:
    """Write ``cfg.num_samples`` images of the pipeline under ``root`` (MIMIC-CXR-JPG layout).

    Provenance columns: generator, checkpoint_sha256, sampler, steps, seed. Runs on every process
    of ``accelerator`` (one made here when None) and returns, on every rank, a summary:
    requested, already present, generated (by all ranks), images/s of this run.
    """
    from accelerate import Accelerator
    from accelerate.utils import broadcast_object_list, gather_object
    from tqdm.auto import tqdm

    from support.data.writer import MimicLayoutWriter, encode_jpeg
    from support.io import write_bytes_atomic

    cfg = cfg.validate()
    accelerator = accelerator or Accelerator(cpu=cfg.device == "cpu")
    rank, world, is_main = accelerator.process_index, accelerator.num_processes, accelerator.is_main_process
    device = accelerator.device if cfg.device == "auto" else torch.device(cfg.device)
    pipe = load_pipeline(pipeline_dir, device=str(device), dtype=cfg.dtype)
    unet = pipe.unet
    rows, columns = (unet.config.sample_size,) * 2 if isinstance(unet.config.sample_size, int) \
        else tuple(unet.config.sample_size)
    if unet.config.in_channels != 1:
        raise ValueError(f"{pipeline_dir}: the UNet makes {unet.config.in_channels}-channel images; "
                         f"the MIMIC-CXR-JPG layout holds grayscale radiographs")

    writer = None
    message: list[Any] = [None]
    if is_main:
        sha = checkpoint_sha256(pipeline_dir)
        writer = MimicLayoutWriter(root, cfg.dataset_name, provenance_columns=PROVENANCE_COLUMNS,
                                   info={"generator": cfg.generator_name, "checkpoint_sha256": sha,
                                         "sampler": cfg.sampler, "steps": cfg.steps,
                                         "prediction_type": pipe.scheduler.config.prediction_type})
        pending, present = [], 0
        for item in sample_plan(cfg, sha):
            item["path"] = str(writer.image_path(item["subject_id"], item["study_id"], item["dicom_id"]))
            if writer.has_image(item["dicom_id"]):
                present += 1
            elif Path(item["path"]).is_file():  # written by an interrupted run, not yet registered
                _register(writer, item, cfg, sha, rows, columns)
                present += 1
            else:
                pending.append(item)
        message = [{"sha": sha, "pending": pending, "present": present}]
    message = broadcast_object_list(message, from_process=0) if world > 1 else message
    sha, pending, present = message[0]["sha"], message[0]["pending"], message[0]["present"]

    mine = shard(pending, rank, world)
    rounds = math.ceil(math.ceil(len(pending) / world) / cfg.batch_size) if pending else 0
    scheduler = make_sampler(cfg.sampler, pipe.scheduler.config)
    start, generated = time.perf_counter(), 0
    try:
        for r in tqdm(range(rounds), disable=not is_main, desc=f"sample {cfg.sampler}", unit="batch"):
            batch = mine[r * cfg.batch_size:(r + 1) * cfg.batch_size]
            if batch:
                seeds = [b["seed"] for b in batch]
                images = to_uint8(sample_images(unet, scheduler, seeds, cfg.steps, device=device))
                for item, image in zip(batch, images):
                    write_bytes_atomic(item["path"], encode_jpeg(image, cfg.jpeg_quality))
            done = gather_object(list(batch)) if world > 1 else list(batch)
            generated += len(done)
            if is_main:
                for item in done:
                    _register(writer, item, cfg, sha, rows, columns)
    finally:
        if is_main:  # keep the rows registered so far, even when a batch failed
            writer.close()
    accelerator.wait_for_everyone()
    elapsed = time.perf_counter() - start
    return {"root": str(Path(root).resolve()), "requested": cfg.num_samples, "present": present,
            "generated": generated, "sampler": cfg.sampler, "steps": cfg.steps, "checkpoint_sha256": sha,
            "images_per_s": generated / elapsed if generated and elapsed > 0 else None}


def _register(writer, item: Mapping[str, Any], cfg: SamplingConfig, sha: str, rows: int, columns: int) -> None:
    writer.add_existing_image(
        subject_id=item["subject_id"], study_id=item["study_id"], dicom_id=item["dicom_id"], view=cfg.view,
        split=cfg.split, rows=rows, columns=columns,
        provenance={"generator": cfg.generator_name, "checkpoint_sha256": sha, "sampler": cfg.sampler,
                    "steps": cfg.steps, "seed": item["seed"]})


# ------------------------------------------------------------------------------------ quality
def pixel_frechet(a, b, size: int = 16) -> float:
    """Fréchet distance between two image sets on ``size`` x ``size`` area-downsampled pixels.

    ``a``, ``b``: arrays or tensors (N, H, W) or (N, C, H, W); uint8 is scaled to [0, 1], floats are
    taken as they are. A model-free check that samples match the training images' intensity
    layout (not a substitute for FID on learned features).
    """
    def features(x) -> np.ndarray:
        t = torch.as_tensor(np.asarray(x)) if not torch.is_tensor(x) else x.detach().cpu()
        is_uint8 = t.dtype == torch.uint8
        t = t.float() / 255.0 if is_uint8 else t.float()
        if t.ndim == 3:
            t = t[:, None]
        if t.ndim != 4:
            raise ValueError(f"pixel_frechet: expected (N, H, W) or (N, C, H, W) images, got {tuple(t.shape)}")
        if t.shape[0] < 2:
            raise ValueError("pixel_frechet: need at least 2 images per set")
        t = torch.nn.functional.adaptive_avg_pool2d(t, size)
        return t.flatten(1).double().numpy()

    fa, fb = features(a), features(b)
    if fa.shape[1] != fb.shape[1]:
        raise ValueError(f"pixel_frechet: channel counts differ ({fa.shape[1] // size**2} vs {fb.shape[1] // size**2})")
    from support.eval.distribution import frechet_distance

    return max(float(frechet_distance(fa, fb)), 0.0)


# ------------------------------------------------------------------------------------ CLI
def main(argv: list[str] | None = None) -> int:
    from support.params import read_yaml_mapping

    parser = argparse.ArgumentParser(prog="accelerate launch -m support.diffusion.sampling",
                                     description="Sample a DDPMPipeline folder into a MIMIC-CXR-JPG-layout dataset.")
    parser.add_argument("--config", required=True,
                        help="YAML with pipeline, output_root, profile and SamplingConfig fields")
    args = parser.parse_args(argv)
    path = Path(args.config)
    raw = read_yaml_mapping(path, required=("pipeline", "output_root"))
    pipeline, root, profile = raw.pop("pipeline"), raw.pop("output_root"), raw.pop("profile", "quick")
    cfg = sampling_config(profile, raw, source=str(path))
    summary = sample_to_dataset(pipeline, root, cfg)
    print(f"{summary['generated']} generated, {summary['present']} already present, in {summary['root']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
