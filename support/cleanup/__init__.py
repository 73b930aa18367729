"""Removal of burned-in text and markers from radiographs (the 05_cleanup stage).

Detect (DBNet + a top-hat marker detector) -> mask (SAM box prompts or grown polygons) ->
dilate -> inpaint (OpenCV Telea, Stable Diffusion 2 inpainting, or RePaint with the project's
DDPM) -> composite inside the mask only. Models are loaded once (:class:`Cleaner`); whole
datasets are cleaned into a new MIMIC-CXR-JPG root with :func:`clean_dataset`; ground-truth
scores come from :func:`evaluate_cleanup`.
"""

from support.cleanup.cleaner import STAGES, Cleaner, CleanResult, StageTimes, image_seed
from support.cleanup.config import (
    BACKENDS, CleanupConfig, DetectConfig, InpaintConfig, MaskConfig, cleanup_config, with_backend,
)
from support.cleanup.dataset import TextTruth, clean_dataset, load_text_truth, read_cleanup_records
from support.cleanup.detect import DBNetDetector, MarkerDetector, TextBox, TextDetector
from support.cleanup.metrics import (
    box_coverage, box_iou, evaluate_cleanup, masked_psnr, masked_ssim, match_items, score_cleanup,
    summarise_scores,
)

__all__ = [
    "BACKENDS", "STAGES", "CleanResult", "Cleaner", "CleanupConfig", "DBNetDetector", "DetectConfig",
    "InpaintConfig", "MarkerDetector", "MaskConfig", "StageTimes", "TextBox", "TextDetector", "TextTruth",
    "box_coverage", "box_iou", "clean_dataset", "cleanup_config", "evaluate_cleanup", "image_seed",
    "load_text_truth", "masked_psnr", "masked_ssim", "match_items", "read_cleanup_records", "score_cleanup",
    "summarise_scores", "with_backend",
]
