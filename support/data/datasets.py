"""Torch datasets over a record table: images, image-report pairs, frontal-lateral-report
triplets, images with boxes, images with masks.

Every item is a dict of tensors and strings. Images are read to [0, 1], fitted to a square
(resize + centre crop, or zero pad), optionally augmented, and mapped to the asked channels and
value range. Horizontal flip is off by default: it moves the heart to the right.

A corrupt image met while training is, by default, replaced by the next readable item and
counted in ``dataset.summary`` (a crash at hour three helps no one); with ``strict=True`` it
raises with the file's path. Each DataLoader worker counts in its own copy of the dataset.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from typing import Any, Iterable, Sequence

import numpy as np
import pandas as pd
from torch.utils.data import Dataset

from support.data.images import ImageReadError, SquareFit, apply_fit, read_image, square_fit
from support.data.records import DatasetSummary, RecordError, box_in_unit_square, pair_studies
from support.data.rle import rle_decode
from support.data.schema import CHEXPERT_LABELS
from support.params import Check, Checked

TEXT_CHOICES = ("impression+findings", "findings+impression", "findings", "impression")


@dataclasses.dataclass(frozen=True)
class ImageOptions(Checked):
    """How images become tensors. Augmentations are off unless ``augment=True``."""

    size: int = 256
    channels: int = 1                          # 1, or 3 (the gray image repeated) for RGB backbones
    value_range: tuple[float, float] = (0.0, 1.0)   # or (-1.0, 1.0) for diffusion models
    fit: str = "crop"                          # "crop": resize + centre crop; "pad": resize + pad
    hflip: bool = False                        # mirrors anatomy (dextrocardia); only if you mean it
    augment: bool = False                      # small random rotation/scale/brightness/contrast
    rotate_degrees: float = 5.0
    scale_range: tuple[float, float] = (0.95, 1.05)
    brightness: float = 0.05
    contrast: float = 0.1

    title = "image options"

    def __post_init__(self):
        self.validate()

    def checks(self) -> Iterable[Check]:
        yield self.size >= 1, "size", "a positive number of pixels"
        yield self.channels in (1, 3), "channels", "1 or 3"
        yield tuple(self.value_range) in ((0.0, 1.0), (-1.0, 1.0)), "value_range", "(0, 1) or (-1, 1)"
        yield self.fit in ("crop", "pad"), "fit", "'crop' or 'pad'"


class ItemError(ValueError):
    """An item that cannot be built (corrupt image, bad mask); names the file."""


def _options(options: ImageOptions | None, overrides: dict) -> ImageOptions:
    if options is not None and overrides:
        return dataclasses.replace(options, **overrides)
    return options or ImageOptions(**overrides)


class _Geometry:
    """Square fit, then (optionally) a random affine and flip, applied alike to image, masks, boxes."""

    def __init__(self, fit: SquareFit, opts: ImageOptions, rng: np.random.Generator | None):
        self.fit, self.size = fit, opts.size
        self.affine = None
        self.flip = bool(opts.hflip and rng is not None and rng.random() < 0.5)
        if opts.augment and rng is not None:
            import cv2
            angle = rng.uniform(-opts.rotate_degrees, opts.rotate_degrees)
            scale = rng.uniform(*opts.scale_range)
            c = (opts.size - 1) / 2.0
            self.affine = cv2.getRotationMatrix2D((c, c), angle, scale)

    def image(self, arr: np.ndarray, nearest: bool = False) -> np.ndarray:
        out = apply_fit(arr, self.fit, nearest=nearest)
        if self.affine is not None:
            import cv2
            out = cv2.warpAffine(out, self.affine, (self.size, self.size),
                                 flags=cv2.INTER_NEAREST if nearest else cv2.INTER_LINEAR,
                                 borderMode=cv2.BORDER_CONSTANT, borderValue=0)
        return out[:, ::-1].copy() if self.flip else out

    def boxes(self, xyxy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(N, 4) input-pixel boxes -> output-pixel boxes clipped to the square, and which survive."""
        if not len(xyxy):
            return np.zeros((0, 4), np.float32), np.zeros(0, bool)
        x0, y0, x1, y1 = xyxy.T
        corners = np.stack([np.stack([x0, y0], 1), np.stack([x1, y0], 1),
                            np.stack([x0, y1], 1), np.stack([x1, y1], 1)], 1)   # (N, 4, 2)
        pts = self.fit.points(corners.reshape(-1, 2))
        if self.affine is not None:
            pts = pts @ self.affine[:, :2].T + self.affine[:, 2]
        pts = pts.reshape(-1, 4, 2)
        out = np.concatenate([pts.min(1), pts.max(1)], 1)
        if self.flip:
            out[:, [0, 2]] = self.size - out[:, [2, 0]]
        out = np.clip(out, 0, self.size)
        keep = (out[:, 2] - out[:, 0] >= 1) & (out[:, 3] - out[:, 1] >= 1)
        return out.astype(np.float32), keep


class RecordDataset(Dataset):
    """Base: one item per record (map-style torch dataset); subclasses say what an item holds."""

    kind = "images"

    def __init__(self, records: pd.DataFrame, options: ImageOptions | None = None, *,
                 strict: bool = False, max_replacements: int = 50, **image_options: Any):
        missing = [c for c in ("path", "image_id") if c not in records.columns]
        if missing:
            raise ValueError(f"record table lacks column(s) {missing}; build it with support.data.adapters")
        self.options = _options(options, image_options)
        self.strict = strict
        self.max_replacements = max_replacements
        name = records["dataset"].iat[0] if len(records) and "dataset" in records.columns else "records"
        self.summary = DatasetSummary(f"{self.kind} of {name}", "(record table)", strict=strict)
        self.records = self._select(records.reset_index(drop=True))
        self.summary.kept = len(self)

    # subclasses narrow the table (and count what they drop) here
    def _select(self, records: pd.DataFrame) -> pd.DataFrame:
        return records

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict[str, Any]:
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for {n} items")
        index %= n
        last = None
        for step in range(min(n, self.max_replacements + 1)):
            i = (index + step) % n
            try:
                item = self._item(i)
                item["index"] = i
                return item
            except (ImageReadError, ItemError) as exc:
                if self.strict:
                    raise  # the message names the file
                path = getattr(exc, "path", "")
                self.summary.skip("unreadable at load time", path or f"item {i}", str(exc))
                warnings.warn(f"skipping unreadable item {i} ({exc}); using the next one", stacklevel=2)
                last = exc
        raise RuntimeError(f"{self.max_replacements + 1} consecutive items from {index} are unreadable "
                           f"(last: {last}); see dataset.summary")

    # ------------------------------------------------------------------ shared pieces
    def _rng(self) -> np.random.Generator | None:
        if not (self.options.augment or self.options.hflip):
            return None
        import torch
        # torch's generator is seeded per worker and per epoch by DataLoader
        return np.random.default_rng(int(torch.randint(0, 2**62, (1,)).item()))

    def _to_tensor(self, arr: np.ndarray, rng: np.random.Generator | None):
        import torch

        opts = self.options
        if opts.augment and rng is not None:
            contrast = 1 + rng.uniform(-opts.contrast, opts.contrast)
            arr = np.clip((arr - 0.5) * contrast + 0.5 + rng.uniform(-opts.brightness, opts.brightness), 0, 1)
        lo, hi = opts.value_range
        t = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32)) * (hi - lo) + lo
        return t.unsqueeze(0).repeat(opts.channels, 1, 1)

    def _read(self, path: str) -> np.ndarray:
        return read_image(path)

    def _image(self, rec) -> tuple[Any, _Geometry, np.ndarray]:
        arr = self._read(rec["path"])
        rng = self._rng()
        geo = _Geometry(square_fit(*arr.shape, self.options.size, self.options.fit), self.options, rng)
        return self._to_tensor(geo.image(arr), rng), geo, arr

    @staticmethod
    def _labels(rec):
        import torch
        return torch.tensor([float(rec.get(k, math.nan)) for k in CHEXPERT_LABELS], dtype=torch.float32)

    @staticmethod
    def _ids(rec) -> dict[str, str]:
        return {k: str(rec.get(k, "")) for k in ("image_id", "subject_id", "study_id", "view", "split", "path")}

    def _item(self, i: int) -> dict[str, Any]:
        rec = self.records.iloc[i]
        image, _, _ = self._image(rec)
        return {"image": image, "labels": self._labels(rec), **self._ids(rec)}


class ImageDataset(RecordDataset):
    """Single images: ``image`` (C, S, S), ``labels`` (14, NaN = unmentioned), ids and view."""

    kind = "images"

    def __init__(self, records: pd.DataFrame, options: ImageOptions | None = None, *,
                 views: Sequence[str] | None = None, **kwargs):
        self.views = tuple(views) if views else None
        super().__init__(records, options, **kwargs)

    def _select(self, records):
        if self.views is None:
            return records
        keep = records["view"].isin(self.views)
        self.summary.exclude("view not selected", int((~keep).sum()))
        return records[keep].reset_index(drop=True)


def report_text(rec, text: str = "impression+findings") -> str:
    """The report text of a record: its sections in the asked order, blanks dropped."""
    if text not in TEXT_CHOICES:
        raise ValueError(f"text {text!r}: expected one of {list(TEXT_CHOICES)}")
    parts = [str(rec.get(name, "") or "").strip() for name in text.split("+")]
    return " ".join(p for p in parts if p)


class ImageReportDataset(ImageDataset):
    """Image-report pairs: adds ``report``. Records without text are dropped and counted.

    ``template`` formats the text, e.g. ``"view_position = {view}. modality = CR. {text}"``.
    """

    kind = "image-report pairs"

    def __init__(self, records: pd.DataFrame, options: ImageOptions | None = None, *,
                 text: str = "impression+findings", template: str = "{text}", **kwargs):
        if text not in TEXT_CHOICES:
            raise ValueError(f"text {text!r}: expected one of {list(TEXT_CHOICES)}")
        self.text, self.template = text, template
        super().__init__(records, options, **kwargs)

    def _select(self, records):
        records = super()._select(records)
        has = records.apply(lambda r: bool(report_text(r, self.text)), axis=1) if len(records) else records.index == 0
        self.summary.exclude("no report text", int((~has).sum()))
        return records[has].reset_index(drop=True)

    def _item(self, i):
        item = super()._item(i)
        rec = self.records.iloc[i]
        item["report"] = self.template.format(text=report_text(rec, self.text), view=rec["view"])
        return item


class FrontalLateralReportDataset(RecordDataset):
    """One item per study: ``frontal``, ``lateral`` (zeros when absent), ``has_lateral``, ``report``.

    The frontal is the study's PA (else AP), the lateral its LATERAL (else LL). A study without a
    lateral is kept with ``has_lateral`` False and counted in ``summary``, or dropped with
    ``require_lateral=True``. Studies without a frontal or without report text are dropped.
    """

    kind = "frontal-lateral-report triplets"

    def __init__(self, records: pd.DataFrame, options: ImageOptions | None = None, *,
                 require_lateral: bool = False, text: str = "impression+findings",
                 require_report: bool = True, **kwargs):
        if text not in TEXT_CHOICES:
            raise ValueError(f"text {text!r}: expected one of {list(TEXT_CHOICES)}")
        self.require_lateral, self.text, self.require_report = require_lateral, text, require_report
        super().__init__(records, options, **kwargs)

    def _select(self, records):
        studies = pair_studies(records, self.require_lateral, self.summary)
        studies["report"] = [report_text(r, self.text) for _, r in studies.iterrows()]
        if self.require_report:
            has = studies["report"] != ""
            if (~has).any():
                self.summary.exclude("study without report text", int((~has).sum()))
            studies = studies[has].reset_index(drop=True)
        return studies

    def _item(self, i):
        import torch

        rec = self.records.iloc[i]
        frontal, _, _ = self._image({"path": rec["frontal_path"]})
        has_lateral = bool(rec["lateral_path"])
        if has_lateral:
            lateral, _, _ = self._image({"path": rec["lateral_path"]})
        else:
            lo = self.options.value_range[0]
            lateral = torch.full_like(frontal, lo)  # "black" in the asked range
        return {"frontal": frontal, "lateral": lateral, "has_lateral": torch.tensor(has_lateral),
                "report": rec["report"], "labels": self._labels(rec), "subject_id": rec["subject_id"],
                "study_id": rec["study_id"], "frontal_id": rec["frontal_id"], "lateral_id": rec["lateral_id"],
                "split": rec["split"], "path": rec["frontal_path"]}


def _box_array(boxes: list[dict], width: int, height: int, labels: Sequence[str] | None, path: str):
    """The record's boxes of ``labels`` in pixels; a box outside [0, 1] or without area is an
    error naming the file (the adapters never yield one), not a box that quietly vanishes."""
    kept = [b for b in boxes if labels is None or b["label"] in labels]
    for b in kept:
        if not box_in_unit_square(b):
            raise ItemError(f"{path}: {b['label']} box ({b['x0']:g}, {b['y0']:g}, {b['x1']:g}, {b['y1']:g}): "
                            f"expected 0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1")
    arr = np.array([[b["x0"] * width, b["y0"] * height, b["x1"] * width, b["y1"] * height] for b in kept],
                   dtype=np.float64).reshape(-1, 4)
    return arr, [b["label"] for b in kept]


class BoxDataset(ImageDataset):
    """Images with boxes: ``boxes`` (N, 4) as x0, y0, x1, y1 in output pixels, ``box_labels``.

    ``classes`` maps label names to ``box_classes`` indices (boxes of other labels are dropped).
    Images without boxes are kept as negatives unless ``only_annotated``. Use
    :func:`collate_with_boxes` in the DataLoader.
    """

    kind = "images with boxes"

    def __init__(self, records: pd.DataFrame, options: ImageOptions | None = None, *,
                 classes: Sequence[str] | None = None, only_annotated: bool = False, **kwargs):
        self.classes = list(classes) if classes is not None else None
        self.only_annotated = only_annotated
        super().__init__(records, options, **kwargs)

    def _select(self, records):
        records = super()._select(records)
        if self.only_annotated:
            has = records["boxes"].map(lambda bs: any(self.classes is None or b["label"] in self.classes
                                                      for b in (bs or [])))
            self.summary.exclude("no box", int((~has).sum()))
            records = records[has].reset_index(drop=True)
        return records

    def _item(self, i):
        import torch

        rec = self.records.iloc[i]
        image, geo, arr = self._image(rec)
        xyxy, names = _box_array(list(rec["boxes"] or []), arr.shape[1], arr.shape[0], self.classes, rec["path"])
        out, keep = geo.boxes(xyxy)
        names = [n for n, k in zip(names, keep) if k]
        item = {"image": image, "boxes": torch.from_numpy(out[keep]), "box_labels": names,
                "labels": self._labels(rec), **self._ids(rec)}
        if self.classes is not None:
            item["box_classes"] = torch.tensor([self.classes.index(n) for n in names], dtype=torch.long)
        return item


def decode_mask(entry: dict, shape: tuple[int, int]) -> np.ndarray:
    """One mask entry of a record -> bool (H, W) of the image's ``shape``."""
    h, w = shape
    if "rle" in entry:
        mw, mh = int(entry.get("width") or w), int(entry.get("height") or h)
        if (mh, mw) != (h, w):
            raise ItemError(f"mask of {mw}x{mh} for an image of {w}x{h}")
        try:
            return rle_decode(entry["rle"], mw, mh)
        except ValueError as exc:
            raise ItemError(f"bad mask RLE ({exc})") from None
    if "path" in entry:
        m = read_image(entry["path"])
        if m.shape != (h, w):
            raise ItemError(f"mask file {entry['path']} is {m.shape[1]}x{m.shape[0]}, image {w}x{h}")
        return m > 0.5
    raise ItemError(f"mask entry with neither 'rle' nor 'path': {sorted(entry)}")


class MaskDataset(ImageDataset):
    """Images with masks: ``mask`` (1, S, S) float {0, 1}, the union of the record's masks.

    ``labels`` picks mask labels. ``boxes_as_masks`` fills the record's boxes instead (RSNA
    segmentation); then a record without boxes is a negative. Otherwise a record with no mask
    entry is unannotated: dropped (``unannotated="drop"``) or an empty mask (``"empty"``).
    """

    kind = "images with masks"

    def __init__(self, records: pd.DataFrame, options: ImageOptions | None = None, *,
                 labels: Sequence[str] | None = None, boxes_as_masks: bool = False,
                 unannotated: str = "drop", **kwargs):
        if unannotated not in ("drop", "empty"):
            raise ValueError(f"unannotated {unannotated!r}: expected 'drop' or 'empty'")
        self.mask_labels = list(labels) if labels is not None else None
        self.boxes_as_masks, self.unannotated = boxes_as_masks, unannotated
        super().__init__(records, options, **kwargs)

    def _entries(self, rec) -> list[dict]:
        return [m for m in (rec["masks"] or []) if self.mask_labels is None or m["label"] in self.mask_labels]

    def _select(self, records):
        records = super()._select(records)
        if self.boxes_as_masks or self.unannotated == "empty":
            return records
        has = records.apply(lambda r: bool(self._entries(r)), axis=1) if len(records) else records.index == 0
        self.summary.exclude("no mask annotation", int((~has).sum()))
        return records[has].reset_index(drop=True)

    def _item(self, i):
        import torch

        rec = self.records.iloc[i]
        image, geo, arr = self._image(rec)
        h, w = arr.shape
        union = np.zeros((h, w), bool)
        if self.boxes_as_masks:
            xyxy, _ = _box_array(list(rec["boxes"] or []), w, h, self.mask_labels, rec["path"])
            for x0, y0, x1, y1 in np.rint(xyxy).astype(int):
                union[max(0, y0):y1, max(0, x0):x1] = True
        else:
            for entry in self._entries(rec):
                try:
                    union |= decode_mask(entry, (h, w))
                except ItemError as exc:
                    raise ItemError(f"{rec['path']}: {exc}") from None
        mask = geo.image(union.astype(np.float32), nearest=True)
        return {"image": image, "mask": torch.from_numpy(mask).unsqueeze(0), "labels": self._labels(rec),
                **self._ids(rec)}


def collate_with_boxes(items: list[dict]) -> dict[str, Any]:
    """Stack same-shaped tensors, keep per-image boxes and strings as lists."""
    import torch

    out: dict[str, Any] = {}
    for key in items[0]:
        values = [it[key] for it in items]
        if key in ("boxes", "box_classes", "box_labels"):
            out[key] = values
        elif isinstance(values[0], torch.Tensor):
            out[key] = torch.stack(values)
        elif isinstance(values[0], (int, float)):
            out[key] = torch.tensor(values)
        else:
            out[key] = values
    return out


__all__ = ["ImageOptions", "ItemError", "RecordError", "ImageDataset", "ImageReportDataset",
           "FrontalLateralReportDataset", "BoxDataset", "MaskDataset", "collate_with_boxes",
           "decode_mask", "report_text"]
