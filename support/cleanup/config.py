"""Typed parameters of text and marker removal: detection, mask, inpainting.

Defaults follow the published pipeline (reference.md §1): DBNet-family detector, SAM box prompts
when a checkpoint is given (else polygons grown by 4 px), 5x5 dilation twice, and for Stable
Diffusion inpainting the prompt "No text, clean background", 50 steps, guidance 7.5 at 512 px.
OpenCV's Telea inpainting is the fast default backend.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Iterable, Literal, Mapping

from support.core.config import configure
from support.params import Check, Checked

Backend = Literal["telea", "sd", "repaint"]
BACKENDS: tuple[str, ...] = ("telea", "sd", "repaint")


@dataclass
class DetectConfig(Checked):
    """Where the text is: DBNet (PP-OCRv4 detector, ONNX) plus a top-hat detector of markers.

    DBNet finds words and lines but often misses lone letters (laterality markers "L"/"R") and
    symbols; the marker detector finds small, sharp, bright (or dark) strokes: a white top-hat
    with a kernel wider than a stroke, hysteresis between a seed and a grow threshold, and a
    size limit. Thresholds are fractions of the image's intensity range.
    """

    dbnet: bool = True
    dbnet_model: str | None = None       # ONNX file; None: the PP-OCRv4 detector in rapidocr-onnxruntime
    dbnet_min_side: int = 256            # films whose longer side is below this are upscaled to it
    dbnet_max_side: int = 960            # ... above this, downscaled to it (sides rounded to multiples of 32)
    dbnet_threshold: float = 0.3         # probability-map binarisation
    dbnet_box_threshold: float = 0.5     # mean probability a box must reach
    dbnet_unclip_ratio: float = 1.6      # polygon expansion, as PP-OCR
    dbnet_max_box: float = 0.15          # boxes whose short side exceeds this share of the image's are
                                         # anatomy (rib cages look like lines of text), not annotations
    markers: bool = True
    marker_polarity: Literal["bright", "dark", "both"] = "bright"
    marker_kernel: float = 0.02          # top-hat kernel side, fraction of the shorter image side (>= 3 px)
    marker_seed_threshold: float = 0.15  # top-hat peak a marker must reach
    marker_grow_threshold: float = 0.06  # top-hat level a marker's pixels extend to
    marker_mean_threshold: float = 0.11  # mean top-hat over a marker's pixels (printed strokes are even)
    marker_link_px: int = 3              # strokes closer than this join one marker (letters of a word)
    marker_max_size: float = 0.3         # largest marker side, fraction of the shorter image side
    marker_min_pixels: int = 4
    onnx_threads: int = 1                # onnxruntime intra-op threads (0: one per core); more than one
                                         # only pays on cores nobody else uses
    device: str = "auto"                 # "cuda" runs DBNet on onnxruntime's CUDA provider when present

    def checks(self) -> Iterable[Check]:
        yield 32 <= self.dbnet_min_side <= self.dbnet_max_side, "dbnet_min_side", "in 32 .. dbnet_max_side"
        yield 0.0 < self.dbnet_max_box <= 1.0, "dbnet_max_box", "a value in (0, 1]"
        for name in ("dbnet_threshold", "dbnet_box_threshold", "marker_seed_threshold", "marker_grow_threshold",
                     "marker_mean_threshold"):
            yield 0.0 < getattr(self, name) < 1.0, name, "a value in (0, 1)"
        yield self.marker_grow_threshold <= self.marker_seed_threshold, "marker_grow_threshold", \
            "at most marker_seed_threshold"
        yield 0.0 < self.marker_kernel < 0.5, "marker_kernel", "a value in (0, 0.5)"
        yield 0.0 < self.marker_max_size <= 1.0, "marker_max_size", "a value in (0, 1]"
        yield self.marker_link_px >= 1, "marker_link_px", "at least 1"
        yield self.marker_min_pixels >= 1, "marker_min_pixels", "at least 1"
        yield self.onnx_threads >= 0, "onnx_threads", "0 (one per core) or more"
        yield self.dbnet or self.markers, "markers", "on when dbnet is off (at least one detector)"


@dataclass
class MaskConfig(Checked):
    """From boxes to the removal mask: SAM refinement (optional), growth, dilation."""

    sam_checkpoint: str | None = None    # SAM state dict (.pth read with weights_only=True, or .safetensors)
    sam_kind: Literal["vit_b", "vit_l", "vit_h"] = "vit_h"
    sam_spec: dict[str, Any] | None = None   # SamSpec fields overriding the kind's (other checkpoint shapes)
    sam_box_margin: int = 4              # a SAM mask is kept inside its box grown by this many pixels
    grow_px: int = 4                     # without SAM: detected polygons grown by this many pixels
    dilate_kernel: int = 5               # square kernel side
    dilate_iterations: int = 2
    device: str = "auto"

    def checks(self) -> Iterable[Check]:
        yield self.grow_px >= 0, "grow_px", "0 or more"
        yield self.sam_box_margin >= 0, "sam_box_margin", "0 or more"
        yield self.dilate_kernel >= 1, "dilate_kernel", "at least 1"
        yield self.dilate_iterations >= 0, "dilate_iterations", "0 or more"


@dataclass
class InpaintConfig(Checked):
    """How the masked pixels are filled in."""

    backend: Backend = "telea"
    telea_radius: float = 3.0            # OpenCV inpaintRadius, pixels
    sd_path: str | None = None           # diffusers StableDiffusionInpaintPipeline folder (SD-2 inpainting)
    prompt: str = "No text, clean background"
    negative_prompt: str = ""
    sd_steps: int = 50
    guidance_scale: float = 7.5
    sd_resolution: int = 512             # SD works at this square size; its result is resized back
    ddpm_path: str | None = None         # diffusers DDPMPipeline folder of the project's DDPM stage
    repaint_steps: int = 250
    jump_length: int = 10
    jump_n_sample: int = 10
    eta: float = 0.0
    device: str = "auto"
    dtype: str = "auto"

    def checks(self) -> Iterable[Check]:
        yield self.backend in BACKENDS, "backend", f"one of {list(BACKENDS)}"
        yield self.backend != "sd" or bool(self.sd_path), "sd_path", \
            "a local StableDiffusionInpaintPipeline folder for backend 'sd'"
        yield self.backend != "repaint" or bool(self.ddpm_path), "ddpm_path", \
            "a DDPMPipeline folder for backend 'repaint'"
        yield self.sd_resolution >= 8 and self.sd_resolution % 8 == 0, "sd_resolution", "a multiple of 8"
        for name in ("sd_steps", "repaint_steps", "jump_length", "jump_n_sample"):
            yield getattr(self, name) >= 1, name, "at least 1"
        yield self.telea_radius > 0, "telea_radius", "positive"
        yield 0.0 <= self.eta <= 1.0, "eta", "in [0, 1]"


@dataclass
class CleanupConfig(Checked):
    """The whole removal step. ``seed`` makes the diffusion backends repeatable image by image."""

    detect: DetectConfig = field(default_factory=DetectConfig)
    mask: MaskConfig = field(default_factory=MaskConfig)
    inpaint: InpaintConfig = field(default_factory=InpaintConfig)
    batch_size: int = 8
    seed: int = 0

    title = "cleanup parameters"

    def checks(self) -> Iterable[Check]:
        yield from super().checks()
        yield self.batch_size >= 1, "batch_size", "at least 1"


def cleanup_config(overrides: Mapping[str, Any] | None = None, source: str = "cleanup parameters") -> CleanupConfig:
    """A validated :class:`CleanupConfig` from nested overrides such as ``{"inpaint": {"backend": "sd"}}``."""
    return configure({"default": CleanupConfig()}, "default", overrides, "cleanup", source)


def with_backend(config: CleanupConfig, backend: str, **inpaint: Any) -> CleanupConfig:
    """A copy of ``config`` inpainting with ``backend`` (and other inpaint fields changed)."""
    return dataclasses.replace(config, inpaint=dataclasses.replace(config.inpaint, backend=backend, **inpaint))
