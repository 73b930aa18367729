"""How well text was found and removed, against ground truth (the phantom's or a synthetic set's).

Per image: detection recall and precision per text item, the share of text pixels the removal
mask covers (pixel recall), mask IoU, and PSNR/SSIM inside the ground-truth text mask against
the clean twin, for the image before and after cleanup. :func:`evaluate_cleanup` runs one or
several configurations (backends) over a set and returns the comparison table.
"""

from __future__ import annotations

import math
import time
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from support.cleanup.cleaner import CleanResult, Cleaner
from support.cleanup.config import CleanupConfig
from support.cleanup.detect import SOURCES, TextBox
from support.cleanup.pixels import check_image, max_value



def _xyxy(item: Any) -> tuple[float, float, float, float]:
    if isinstance(item, TextBox):
        return item.x0, item.y0, item.x1, item.y1
    if isinstance(item, Mapping):
        return float(item["x0"]), float(item["y0"]), float(item["x1"]), float(item["y1"])
    x0, y0, x1, y1 = item
    return float(x0), float(y0), float(x1), float(y1)


def _area(b) -> float:
    return max(0.0, b[2] - b[0]) * max(0.0, b[3] - b[1])


def _intersection(a, b) -> float:
    return max(0.0, min(a[2], b[2]) - max(a[0], b[0])) * max(0.0, min(a[3], b[3]) - max(a[1], b[1]))


def box_iou(a, b) -> float:
    """Intersection over union of two boxes (dicts, TextBox or x0, y0, x1, y1)."""
    a, b = _xyxy(a), _xyxy(b)
    inter = _intersection(a, b)
    union = _area(a) + _area(b) - inter
    return inter / union if union > 0 else 0.0


def box_coverage(inner, outer) -> float:
    """Share of box ``inner`` that lies inside box ``outer``."""
    inner, outer = _xyxy(inner), _xyxy(outer)
    a = _area(inner)
    return _intersection(inner, outer) / a if a > 0 else 0.0


def match_items(items: Sequence, boxes: Sequence, threshold: float = 0.5) -> tuple[list[bool], list[bool]]:
    """Which ground-truth items were found, and which detections found something.

    An item is found when a detection overlaps it with IoU >= ``threshold`` or covers at least
    ``threshold`` of it (a line box covering two words finds both; a box a little larger than
    a word, as DBNet's unclipped ones are, still finds it). A detection is correct when it finds
    an item by that rule or lies at least ``threshold`` inside one (a fragment of a line, such
    as the time of a date-time, is text, even if too small to count as finding the line).
    """
    found = [False] * len(items)
    correct = [False] * len(boxes)
    for i, item in enumerate(items):
        for j, box in enumerate(boxes):
            if box_iou(item, box) >= threshold or box_coverage(item, box) >= threshold:
                found[i] = correct[j] = True
            elif box_coverage(box, item) >= threshold:
                correct[j] = True
    return found, correct


def masked_psnr(image: np.ndarray, reference: np.ndarray, mask: np.ndarray, data_range: float) -> float:
    """PSNR (dB) over the pixels of ``mask``; NaN for an empty mask, inf when identical there."""
    if not mask.any():
        return math.nan
    diff = image.astype(np.float64)[mask] - reference.astype(np.float64)[mask]
    mse = float(np.mean(diff * diff))
    return math.inf if mse == 0 else 10.0 * math.log10(data_range ** 2 / mse)


def ssim_map(image: np.ndarray, reference: np.ndarray, data_range: float) -> np.ndarray:
    """SSIM per pixel (Gaussian window 11, sigma 1.5; torchmetrics), float (H, W); RGB averaged."""
    import torch
    from torchmetrics.functional.image import structural_similarity_index_measure

    def tensor(a):
        t = torch.from_numpy(np.asarray(a, dtype=np.float32))
        return t[None, None] if t.ndim == 2 else t.permute(2, 0, 1)[None]

    _, full = structural_similarity_index_measure(tensor(image), tensor(reference), data_range=float(data_range),
                                                   gaussian_kernel=True, sigma=1.5, kernel_size=11,
                                                   return_full_image=True)
    return full[0].mean(0).numpy()


def masked_ssim(image: np.ndarray, reference: np.ndarray, mask: np.ndarray, data_range: float) -> float:
    """Mean SSIM over the pixels of ``mask`` (each pixel's SSIM is that of its 11-px window)."""
    if not mask.any():
        return math.nan
    return float(ssim_map(image, reference, data_range)[mask].mean())


def _items_of(items: Any) -> list[dict]:
    if items is None:
        return []
    if isinstance(items, pd.DataFrame):
        return items.to_dict("records")
    return list(items)


def score_image(result: CleanResult, image: np.ndarray, text_mask: np.ndarray, clean: np.ndarray,
                items: Sequence, threshold: float = 0.5) -> dict:
    """Detection, mask and restoration scores of one cleaned image (see the module docstring)."""
    gt = np.asarray(text_mask, dtype=bool)
    if gt.shape != image.shape[:2] or clean.shape != image.shape:
        raise ValueError(f"ground truth shapes: text mask {gt.shape}, clean twin {clean.shape}, "
                         f"image {image.shape}; expected the image's")
    items = _items_of(items)
    found, correct = match_items(items, result.boxes, threshold)
    row: dict[str, Any] = {"n_items": len(items), "n_boxes": len(result.boxes),
                           "items_found": sum(found), "boxes_correct": sum(correct)}
    for source in SOURCES:
        mine = [b for b in result.boxes if b.source == source]
        f, c = match_items(items, mine, threshold)
        row[f"items_found_{source}"] = sum(f)
        row[f"boxes_{source}"] = len(mine)
        row[f"boxes_correct_{source}"] = sum(c)
    removal = result.mask
    text_px, removal_px = int(gt.sum()), int(removal.sum())
    inter, union = int((gt & removal).sum()), int((gt | removal).sum())
    peak = max_value(image)
    outside = ~removal
    row.update({
        "image_pixels": int(gt.size), "text_pixels": text_px, "removal_pixels": removal_px, "covered_text_pixels": inter,
        "pixel_recall": inter / text_px if text_px else math.nan,
        "mask_iou": inter / union if union else math.nan,
        "changed": result.changed,
        # the contract: nothing outside the removal mask moves
        "outside_changed_pixels": int((result.image[outside] != image[outside]).sum()),
        "psnr_before": masked_psnr(image, clean, gt, peak), "psnr_after": masked_psnr(result.image, clean, gt, peak),
        "ssim_before": masked_ssim(image, clean, gt, peak), "ssim_after": masked_ssim(result.image, clean, gt, peak),
        "sq_err_before": float(((image.astype(np.float64) - clean) ** 2)[gt].sum()) / peak ** 2,
        "sq_err_after": float(((result.image.astype(np.float64) - clean) ** 2)[gt].sum()) / peak ** 2,
    })
    return row


def score_cleanup(results: Sequence[CleanResult], images: Sequence[np.ndarray], text_masks: Sequence[np.ndarray],
                  clean_images: Sequence[np.ndarray], items: Sequence, threshold: float = 0.5) -> pd.DataFrame:
    """One row of :func:`score_image` per image."""
    n = len(images)
    if not (len(results) == len(text_masks) == len(clean_images) == len(items) == n):
        raise ValueError(f"lengths differ: {len(results)} results, {n} images, {len(text_masks)} text masks, "
                         f"{len(clean_images)} clean twins, {len(items)} item lists")
    rows = []
    for i in range(n):
        row = score_image(results[i], check_image(images[i], f"image {i}"), text_masks[i],
                          np.asarray(clean_images[i]), items[i], threshold)
        rows.append({"image": i, **row})
    return pd.DataFrame(rows)


def _ratio(a: float, b: float) -> float:
    return a / b if b else math.nan


def summarise_scores(per_image: pd.DataFrame) -> dict[str, float]:
    """Set-level scores: detection counts pooled over items/boxes, pixels pooled over images,
    PSNR from the pooled squared error over all text pixels (so an image restored exactly does
    not make the mean infinite), SSIM averaged over text pixels."""
    t = per_image
    text_px = t["text_pixels"].sum()
    out = {
        "images": len(t), "images_with_text": int((t["n_items"] > 0).sum()), "items": int(t["n_items"].sum()),
        "detections": int(t["n_boxes"].sum()),
        "det_recall": _ratio(t["items_found"].sum(), t["n_items"].sum()),
        "det_precision": _ratio(t["boxes_correct"].sum(), t["n_boxes"].sum()),
    }
    for source in SOURCES:
        out[f"recall_{source}"] = _ratio(t[f"items_found_{source}"].sum(), t["n_items"].sum())
        out[f"precision_{source}"] = _ratio(t[f"boxes_correct_{source}"].sum(), t[f"boxes_{source}"].sum())
    out["pixel_recall"] = _ratio(t["covered_text_pixels"].sum(), text_px)
    with_text = t[t["text_pixels"] > 0]
    out["mask_iou"] = float(with_text["mask_iou"].mean()) if len(with_text) else math.nan
    out["mask_fraction"] = _ratio(t["removal_pixels"].sum(), t["image_pixels"].sum())
    no_text = t[t["n_items"] == 0]
    out["false_alarm_images"] = int(no_text["changed"].sum())
    out["outside_changed_pixels"] = int(t["outside_changed_pixels"].sum())
    for when in ("before", "after"):
        err = t[f"sq_err_{when}"].sum()
        out[f"psnr_{when}"] = math.inf if err == 0 and text_px else (10 * math.log10(text_px / err) if text_px else math.nan)
        weights = with_text["text_pixels"]
        out[f"ssim_{when}"] = float(np.average(with_text[f"ssim_{when}"], weights=weights)) if len(with_text) else math.nan
    out["psnr_gain"] = out["psnr_after"] - out["psnr_before"]
    out["ssim_gain"] = out["ssim_after"] - out["ssim_before"]
    return out


def evaluate_cleanup(images: Sequence[np.ndarray], text_masks: Sequence[np.ndarray],
                     clean_images: Sequence[np.ndarray], items: Sequence,
                     configs: Mapping[str, CleanupConfig | Cleaner] | CleanupConfig | Cleaner | None = None, *,
                     threshold: float = 0.5, return_per_image: bool = False, progress: bool = True):
    """Run each configuration over the set and compare them: one row per configuration.

    ``configs`` maps a row name (e.g. ``"telea"``, ``"sd"``, ``"repaint"``) to a
    :class:`CleanupConfig` or an already loaded :class:`Cleaner`; the default is the default
    configuration. ``items`` holds, per image, its ground-truth items (``x0, y0, x1, y1`` in
    pixels, as ``text_items.csv``). Columns: detection recall/precision (overall and per
    detector), pixel recall, mask IoU, PSNR/SSIM inside the text mask before and after, their
    gains, load seconds, images/s (loading excluded) and seconds per image of each stage.
    With ``return_per_image`` also returns the per-image table (a ``config`` column added).
    """
    if configs is None:
        configs = {"default": CleanupConfig()}
    elif isinstance(configs, (CleanupConfig, Cleaner)):
        configs = {"default": configs}
    rows, per_image = [], []
    for name, cfg in configs.items():
        cleaner = cfg if isinstance(cfg, Cleaner) else Cleaner(cfg)
        cleaner.times.reset()
        start = time.perf_counter()
        results = cleaner.clean_all(list(images), progress=progress)
        elapsed = time.perf_counter() - start
        table = score_cleanup(results, images, text_masks, clean_images, items, threshold)
        row = {"config": name, "backend": cleaner.backend, "sam": cleaner.sam is not None,
               **summarise_scores(table), "load_s": cleaner.load_seconds,
               "images_per_s": len(images) / elapsed if elapsed > 0 else math.inf}
        row.update({f"s_{stage}": s for stage, s in cleaner.times.per_image().items()})
        rows.append(row)
        per_image.append(table.assign(config=name))
    summary = pd.DataFrame(rows)
    if return_per_image:
        return summary, pd.concat(per_image, ignore_index=True)
    return summary
