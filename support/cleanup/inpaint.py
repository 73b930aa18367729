"""Inpainting backends: OpenCV Telea (fast default), Stable Diffusion 2 inpainting, RePaint.

Each backend is built once (models loaded once) and fills a batch of images at a time. It gets
the input's own pixels (uint8/uint16, gray or RGB) and returns an array of the same dtype and
shape; only the pixels under the mask are used afterwards (see :func:`pixels.composite`).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Protocol, Sequence

import cv2
import numpy as np

from support.cleanup.config import InpaintConfig
from support.cleanup.pixels import from_unit, luminance, to_unit


class Inpainter(Protocol):
    name: str

    def inpaint_batch(self, images: Sequence[np.ndarray], masks: Sequence[np.ndarray],
                      seeds: Sequence[int]) -> list[np.ndarray]: ...


def _resize(image: np.ndarray, width: int, height: int) -> np.ndarray:
    shrink = width < image.shape[1] or height < image.shape[0]
    return cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_CUBIC)


def _resize_mask(mask: np.ndarray, width: int, height: int) -> np.ndarray:
    """A mask at another size that still covers every masked pixel (any coverage counts)."""
    return cv2.resize(mask.astype(np.float32), (width, height), interpolation=cv2.INTER_AREA) > 0


class TeleaInpainter:
    """OpenCV's fast-marching inpainting (Telea 2004) on the native pixels; no model to load."""

    name = "telea"

    def __init__(self, config: InpaintConfig):
        self.radius = float(config.telea_radius)

    def inpaint(self, image: np.ndarray, mask: np.ndarray) -> np.ndarray:
        m = mask.astype(np.uint8)
        if image.ndim == 3 and image.dtype != np.uint8:   # OpenCV fills 16-bit images one channel at a time
            return np.stack([cv2.inpaint(np.ascontiguousarray(image[..., c]), m, self.radius, cv2.INPAINT_TELEA)
                             for c in range(image.shape[2])], axis=2)
        return cv2.inpaint(np.ascontiguousarray(image), m, self.radius, cv2.INPAINT_TELEA)

    def inpaint_batch(self, images, masks, seeds=()) -> list[np.ndarray]:
        return [self.inpaint(im, m) for im, m in zip(images, masks)]


def _require_pipeline_folder(path: str | None, what: str, field: str) -> Path:
    if not path:
        raise ValueError(f"InpaintConfig.{field}: a local {what} folder is required")
    folder = Path(path).expanduser()
    if not (folder / "model_index.json").is_file():
        raise FileNotFoundError(f"{folder}: not a diffusers {what} folder (model_index.json missing); "
                                f"set InpaintConfig.{field}")
    return folder


class StableDiffusionInpainter:
    """``StableDiffusionInpaintPipeline`` from a local folder (SD-2 inpainting in the published setup).

    Images go in at ``sd_resolution`` square (as the original), prompt/steps/guidance from the
    config, one seeded generator per image; the result is resized back to the input's size.
    """

    name = "sd"

    def __init__(self, config: InpaintConfig):
        import torch
        from diffusers import StableDiffusionInpaintPipeline

        from support.devices import pick_device, pick_dtype

        folder = _require_pipeline_folder(config.sd_path, "StableDiffusionInpaintPipeline", "sd_path")
        self.config = config
        self.device = pick_device(config.device)
        self.pipe = StableDiffusionInpaintPipeline.from_pretrained(
            folder, local_files_only=True, safety_checker=None, feature_extractor=None,
            requires_safety_checker=False, dtype=pick_dtype(self.device, config.dtype))
        self.pipe.to(self.device)
        self.pipe.set_progress_bar_config(disable=True)
        self._torch = torch

    def inpaint_batch(self, images, masks, seeds) -> list[np.ndarray]:
        from PIL import Image

        res = self.config.sd_resolution
        pil_images, pil_masks = [], []
        for image, mask in zip(images, masks):
            unit = to_unit(image)
            rgb = np.repeat(unit[..., None], 3, axis=2) if unit.ndim == 2 else unit
            rgb8 = np.clip(np.rint(_resize(rgb, res, res) * 255.0), 0, 255).astype(np.uint8)
            pil_images.append(Image.fromarray(rgb8, mode="RGB"))
            pil_masks.append(Image.fromarray(_resize_mask(mask, res, res).astype(np.uint8) * 255, mode="L"))
        generators = [self._torch.Generator("cpu").manual_seed(int(s)) for s in seeds]
        out = self.pipe(prompt=[self.config.prompt] * len(images),
                        negative_prompt=[self.config.negative_prompt] * len(images) if self.config.negative_prompt else None,
                        image=pil_images, mask_image=pil_masks, height=res, width=res,
                        num_inference_steps=self.config.sd_steps, guidance_scale=self.config.guidance_scale,
                        generator=generators, output_type="np").images
        results = []
        for image, filled in zip(images, out):
            h, w = image.shape[:2]
            back = _resize(np.asarray(filled, np.float32), w, h)
            results.append(from_unit(back if image.ndim == 3 else luminance(back), image))
        return results


def _repaint_scheduler(training_scheduler):
    """A ``RePaintScheduler`` on the DDPM's own betas that also accepts v- and x0-prediction UNets.

    diffusers' RePaint step assumes the UNet predicts noise; the project's DDPM predicts v
    (I-SynMed), so its output is turned into the noise estimate first:
    ``eps = sqrt(a) * v + sqrt(1 - a) * x_t`` (``a`` = alpha_bar at t).
    """
    from diffusers import RePaintScheduler

    class PredictionAwareRePaintScheduler(RePaintScheduler):
        prediction_type = "epsilon"

        def step(self, model_output, timestep, sample, original_image, mask, generator=None, return_dict=True):
            if self.prediction_type != "epsilon":
                a = self.alphas_cumprod[timestep].to(device=sample.device, dtype=sample.dtype)
                if self.prediction_type == "v_prediction":
                    model_output = a.sqrt() * model_output + (1 - a).sqrt() * sample
                elif self.prediction_type == "sample":
                    model_output = (sample - a.sqrt() * model_output) / (1 - a).sqrt()
                else:
                    raise ValueError(f"RePaint: prediction type {self.prediction_type!r} is not supported")
            return super().step(model_output, timestep, sample, original_image, mask, generator, return_dict)

    cfg = training_scheduler.config
    betas = np.asarray(training_scheduler.betas.detach().cpu().numpy(), dtype=np.float32)
    scheduler = PredictionAwareRePaintScheduler(num_train_timesteps=int(cfg.num_train_timesteps),
                                                trained_betas=betas, clip_sample=bool(cfg.get("clip_sample", True)))
    scheduler.prediction_type = cfg.get("prediction_type", "epsilon")
    return scheduler


class RePaintInpainter:
    """RePaint (Lugmayr et al. 2022) with the project's DDPM: diffusers ``RePaintPipeline``.

    The DDPM folder is the one the DDPM stage writes (``DDPMPipeline``, 1-channel ``UNet2DModel``);
    images are resized to the UNet's sample size, inpainted, and resized back.
    """

    name = "repaint"

    def __init__(self, config: InpaintConfig):
        import torch
        from diffusers import DDPMPipeline, RePaintPipeline

        import support.ddpm.network.unet  # noqa: F401  the I-SynMed network of a full-profile DDPM
        from support.devices import pick_device, pick_dtype

        folder = _require_pipeline_folder(config.ddpm_path, "DDPMPipeline", "ddpm_path")
        self.config = config
        self.device = pick_device(config.device)
        ddpm = DDPMPipeline.from_pretrained(folder, local_files_only=True,
                                            dtype=pick_dtype(self.device, config.dtype))
        unet = ddpm.unet.to(self.device).eval()
        size = unet.config.sample_size
        self.size = (size, size) if isinstance(size, int) else tuple(size)
        self.channels = int(unet.config.in_channels)
        if self.channels not in (1, 3):
            raise ValueError(f"{folder}: UNet with {self.channels} channels; RePaint here needs 1 or 3")
        self.pipe = RePaintPipeline(unet=unet, scheduler=_repaint_scheduler(ddpm.scheduler))
        self.pipe.set_progress_bar_config(disable=True)
        self._torch = torch

    def inpaint_batch(self, images, masks, seeds) -> list[np.ndarray]:
        torch = self._torch
        sh, sw = self.size
        xs, ks = [], []
        for image, mask in zip(images, masks):
            unit = to_unit(image)
            if self.channels == 1:
                unit = luminance(unit) if unit.ndim == 3 else unit
                x = _resize(unit, sw, sh)[None]
            else:
                rgb = np.repeat(unit[..., None], 3, axis=2) if unit.ndim == 2 else unit
                x = _resize(rgb, sw, sh).transpose(2, 0, 1)
            xs.append(np.clip(x, 0, 1) * 2.0 - 1.0)
            ks.append((~_resize_mask(mask, sw, sh)).astype(np.float32)[None])   # RePaint: 1 keeps, 0 fills
        generators = [torch.Generator("cpu").manual_seed(int(s)) for s in seeds]
        with warnings.catch_warnings():   # tensors skip the deprecated PIL preprocessing it warns about
            warnings.filterwarnings("ignore", message="The preprocess method is deprecated", category=FutureWarning)
            out = self.pipe(image=torch.from_numpy(np.stack(xs).astype(np.float32)),
                            mask_image=torch.from_numpy(np.stack(ks)),
                            num_inference_steps=self.config.repaint_steps, eta=self.config.eta,
                            jump_length=self.config.jump_length, jump_n_sample=self.config.jump_n_sample,
                            generator=generators, output_type="np").images
        results = []
        for image, filled in zip(images, out):
            h, w = image.shape[:2]
            filled = np.asarray(filled, np.float32)
            filled = filled[..., 0] if filled.shape[-1] == 1 else filled
            results.append(from_unit(_resize(filled, w, h), image))
        return results


def make_inpainter(config: InpaintConfig) -> Inpainter:
    """The backend named by ``config.backend``, with its model loaded."""
    kinds = {"telea": TeleaInpainter, "sd": StableDiffusionInpainter, "repaint": RePaintInpainter}
    if config.backend not in kinds:
        raise ValueError(f"inpainting backend {config.backend!r}: expected one of {sorted(kinds)}")
    return kinds[config.backend](config)
