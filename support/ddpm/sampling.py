"""Sample a trained DDPM into a synthetic dataset in the MIMIC-CXR-JPG layout.

Sample ``i`` always uses seed ``base_seed + i`` (its own CPU generator for the initial noise and
for every stochastic step), so any subset can be regenerated alone and GPU and CPU start from the
same noise. Sharding across processes, atomic writes, registration and resuming are the shared
sample writer's (:mod:`support.core.sample_writer`).

Shell: ``accelerate launch -m support.ddpm.sampling --config sample.yaml``.
"""

from __future__ import annotations

import argparse
import inspect
import os
import sys
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from support.core.sample_writer import (Generated, PlannedImage, PlannedStudy, print_summary, study_ids,
                                        write_samples)
from support.core.schedules import make_sampler
from support.ddpm.config import SamplingConfig, sampling_config

PROVENANCE_COLUMNS = ("generator", "checkpoint_sha256", "sampler", "steps", "seed")
UNET_WEIGHTS = Path("unet") / "diffusion_pytorch_model.safetensors"


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


def load_pipeline(path: str | os.PathLike, device: str = "auto", dtype: str = "auto"):
    """A saved ``DDPMPipeline`` folder on ``device`` (``support.devices`` rule), network in ``dtype``."""
    from diffusers import DDPMPipeline

    import support.ddpm.network.unet  # noqa: F401  diffusers loads a model class only once its module is imported
    from support.devices import pick_device, pick_dtype

    path = Path(path)
    if not (path / "model_index.json").is_file():
        raise FileNotFoundError(f"{path}: not a diffusers pipeline folder (model_index.json missing)")
    dev = pick_device(device)
    pipe = DDPMPipeline.from_pretrained(path, local_files_only=True,   # .bin: torch.load(weights_only=True)
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


def sample_plan(cfg: SamplingConfig, sha256: str) -> list[PlannedStudy]:
    """One single-image study per requested sample; ids follow from the weights, sampler and seed."""
    from support.data.writer import make_dicom_id

    plan = []
    for i in range(cfg.num_samples):
        seed = cfg.base_seed + i
        subject, study = study_ids(seed)
        provenance = {"generator": cfg.generator_name, "checkpoint_sha256": sha256, "sampler": cfg.sampler,
                      "steps": cfg.steps, "seed": seed}
        image = PlannedImage(make_dicom_id(cfg.generator_name, sha256, cfg.sampler, cfg.steps, seed), cfg.view,
                             provenance)
        plan.append(PlannedStudy(seed, subject, study, [image]))
    return plan


def sample_to_dataset(pipeline_dir: str | os.PathLike, root: str | os.PathLike, cfg: SamplingConfig,
                      accelerator=None, progress: bool = True) -> dict[str, Any]:
    """Write ``cfg.num_samples`` images of the pipeline under ``root`` (MIMIC-CXR-JPG layout).

    Provenance columns: generator, checkpoint_sha256, sampler, steps, seed. Runs on every process
    (of ``accelerator`` or of the ``accelerate launch``) and returns, on every rank, a summary:
    requested, already present, generated (by all ranks), images/s of this run.
    """
    from accelerate import PartialState

    from support.data.images import to_uint8

    cfg = cfg.validate()
    state = accelerator.state if accelerator is not None else PartialState(cpu=cfg.device == "cpu" or not
                                                                           torch.cuda.is_available())
    device = state.device if cfg.device == "auto" else torch.device(cfg.device)
    pipe = load_pipeline(pipeline_dir, device=str(device), dtype=cfg.dtype)
    unet = pipe.unet
    if unet.config.in_channels != 1:
        raise ValueError(f"{pipeline_dir}: the UNet makes {unet.config.in_channels}-channel images; "
                         f"the MIMIC-CXR-JPG layout holds grayscale radiographs")
    sha = checkpoint_sha256(pipeline_dir)
    scheduler = make_sampler(cfg.sampler, pipe.scheduler.config)

    def generate(studies: list[PlannedStudy]) -> list[Generated]:
        images = sample_images(unet, scheduler, [s.seed for s in studies], cfg.steps, device=device)
        return [Generated([image]) for image in to_uint8(images[:, 0]).numpy()]

    identity = {"generator": cfg.generator_name, "checkpoint_sha256": sha, "sampler": cfg.sampler, "steps": cfg.steps}
    summary = write_samples(root, sample_plan(cfg, sha), generate, dataset_name=cfg.dataset_name,
                            provenance_columns=PROVENANCE_COLUMNS, identity=identity,
                            info={"prediction_type": pipe.scheduler.config.prediction_type}, split=cfg.split,
                            batch_size=cfg.batch_size, jpeg_quality=cfg.jpeg_quality, accelerator=accelerator,
                            progress=progress, desc=f"sample {cfg.sampler}")
    return {**summary, **identity}


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

    parser = argparse.ArgumentParser(prog="accelerate launch -m support.ddpm.sampling",
                                     description="Sample a DDPMPipeline folder into a MIMIC-CXR-JPG-layout dataset.")
    parser.add_argument("--config", required=True,
                        help="YAML with pipeline, output_root, profile and SamplingConfig fields")
    args = parser.parse_args(argv)
    path = Path(args.config)
    raw = read_yaml_mapping(path, required=("pipeline", "output_root"))
    pipeline, root, profile = raw.pop("pipeline"), raw.pop("output_root"), raw.pop("profile", "quick")
    cfg = sampling_config(profile, raw, source=str(path))
    summary = sample_to_dataset(pipeline, root, cfg)
    print_summary(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
