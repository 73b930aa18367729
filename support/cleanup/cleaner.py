"""The removal step as one object: models loaded once, images cleaned in batches.

Per batch: detect (DBNet, markers) -> mask (SAM box prompts, or polygons grown) -> dilate ->
inpaint the images that have something to remove -> composite the result into the original
inside the mask only. An image where nothing is found comes back unchanged, recorded as such.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import hashlib
import time
from typing import Iterator, Sequence

import numpy as np

from support.cleanup.config import CleanupConfig
from support.cleanup.detect import TextBox, TextDetector
from support.cleanup.inpaint import make_inpainter
from support.cleanup.masks import dilate, polygon_mask, sam_mask
from support.cleanup.pixels import check_image, composite, gray8

STAGES = ("dbnet", "markers", "segment", "dilate", "inpaint", "composite")


@dataclasses.dataclass
class CleanResult:
    """What the step did to one image."""

    image: np.ndarray            # the cleaned image, dtype and shape of the input
    mask: np.ndarray             # bool (H, W): the removal mask (after dilation), the only pixels changed
    text_mask: np.ndarray        # bool (H, W): polygons or SAM masks before dilation
    boxes: list[TextBox]
    backend: str                 # the inpainting backend, or "none" when nothing was found
    sam_fallbacks: int = 0       # boxes SAM could not segment (their polygon was used)

    @property
    def changed(self) -> bool:
        return bool(self.mask.any())

    def record(self) -> dict:
        """The per-image record: status, boxes (with their detector), mask area, backend."""
        area = int(self.mask.sum())
        return {"status": "cleaned" if self.changed else "no text found", "backend": self.backend,
                "n_boxes": len(self.boxes),
                "n_dbnet": sum(b.source == "dbnet" for b in self.boxes),
                "n_marker": sum(b.source == "marker" for b in self.boxes),
                "mask_pixels": area, "mask_fraction": round(area / self.mask.size, 6),
                "text_mask_pixels": int(self.text_mask.sum()), "sam_fallbacks": self.sam_fallbacks,
                "boxes": [b.as_dict() for b in self.boxes]}


class StageTimes:
    """Seconds spent per stage and images seen, to report images/s per stage."""

    def __init__(self):
        self.seconds: collections.Counter = collections.Counter()
        self.images = 0

    @contextlib.contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[stage] += time.perf_counter() - start

    def reset(self) -> None:
        self.seconds.clear()
        self.images = 0

    def per_image(self) -> dict[str, float]:
        """Mean seconds per image of each stage seen."""
        return {k: v / self.images for k, v in self.seconds.items()} if self.images else {}

    def images_per_s(self) -> dict[str, float]:
        """Throughput of each stage alone, and of all of them (``total``)."""
        out = {k: (self.images / v if v > 0 else float("inf")) for k, v in self.seconds.items()}
        total = sum(self.seconds.values())
        out["total"] = self.images / total if total > 0 else float("inf")
        return out


def image_seed(base: int, image: np.ndarray, key: str | None = None) -> int:
    """A per-image seed from ``base`` and the image's key (or content): the same image gets the
    same seed whatever batch or order it comes in."""
    h = hashlib.sha256(str(int(base)).encode())
    if key is not None:
        h.update(str(key).encode("utf-8"))
    else:
        h.update(str((image.dtype.str, image.shape)).encode())
        h.update(np.ascontiguousarray(image).tobytes())
    return int.from_bytes(h.digest()[:4], "little") & 0x7FFFFFFF


class Cleaner:
    """Text and marker removal with every model loaded once.

    >>> cleaner = Cleaner(CleanupConfig())          # DBNet + markers, grown polygons, Telea
    >>> results = cleaner.clean_all(images)         # uint8/uint16 (H, W) or (H, W, 3) arrays
    """

    def __init__(self, config: CleanupConfig | None = None, share: "Cleaner | None" = None):
        """``share``: a cleaner with the same detection and mask settings whose detector and SAM
        are reused, so another inpainting backend loads only its own model."""
        self.config = (config or CleanupConfig()).validate()
        self.times = StageTimes()
        start = time.perf_counter()
        if share is not None:
            for part in ("detect", "mask"):
                if getattr(share.config, part) != getattr(self.config, part):
                    raise ValueError(f"Cleaner(share=...): its {part} settings differ from this configuration's; "
                                     f"only the inpainting may differ between cleaners that share models")
            self.detector, self.sam = share.detector, share.sam
        else:
            self.detector = TextDetector(self.config.detect)
            self.sam = None
            if self.config.mask.sam_checkpoint:
                from support.cleanup.sam import SamRefiner

                m = self.config.mask
                self.sam = SamRefiner.from_checkpoint(m.sam_checkpoint, m.sam_kind, m.sam_spec, m.device)
        self.inpainter = make_inpainter(self.config.inpaint)
        self.load_seconds = time.perf_counter() - start

    @property
    def backend(self) -> str:
        return self.inpainter.name

    def detect(self, grays: Sequence[np.ndarray]) -> list[list[TextBox]]:
        """Boxes of both detectors for uint8 (H, W) images, timed per detector."""
        found: list[list[TextBox]] = [[] for _ in grays]
        for stage, detector in (("dbnet", self.detector.dbnet), ("markers", self.detector.markers)):
            if detector is None:
                continue
            with self.times(stage):
                for i, boxes in enumerate(detector.detect_batch(grays)):
                    found[i].extend(boxes)
        return found

    def text_mask(self, gray: np.ndarray, boxes: Sequence[TextBox]) -> tuple[np.ndarray, int]:
        """The mask of the boxes before dilation (SAM when loaded) and SAM's fallback count."""
        m = self.config.mask
        if self.sam is not None and boxes:
            return sam_mask(self.sam, gray, boxes, margin=m.sam_box_margin, grow_px=m.grow_px)
        return polygon_mask(boxes, gray.shape, m.grow_px), 0

    def clean_batch(self, images: Sequence[np.ndarray], keys: Sequence[str] | None = None) -> list[CleanResult]:
        """Clean one batch; ``keys`` (e.g. dicom ids) seed the diffusion backends per image."""
        arrays, grays = self._checked(images, keys)
        return self._remove(arrays, grays, self.detect(grays), keys)

    def erase_boxes(self, images: Sequence[np.ndarray], boxes: Sequence[Sequence[TextBox]],
                    keys: Sequence[str] | None = None) -> list[CleanResult]:
        """Clean one batch where the boxes are given (a person's choice among the detections, boxes
        drawn by hand) instead of detected; mask, inpainting and composite as :meth:`clean_batch`."""
        if len(boxes) != len(images):
            raise ValueError(f"{len(boxes)} box lists for {len(images)} images")
        arrays, grays = self._checked(images, keys)
        return self._remove(arrays, grays, [list(b) for b in boxes], keys)

    def _checked(self, images, keys) -> tuple[list[np.ndarray], list[np.ndarray]]:
        if keys is not None and len(keys) != len(images):
            raise ValueError(f"{len(keys)} keys for {len(images)} images")
        arrays = [check_image(im, f"image {keys[i] if keys is not None else i}") for i, im in enumerate(images)]
        return arrays, [gray8(a) for a in arrays]

    def _remove(self, arrays, grays, boxes, keys) -> list[CleanResult]:
        """Mask, dilate, inpaint and composite the boxes of each image."""
        text_masks, masks, fallbacks = [], [], []
        m = self.config.mask
        for gray, bx in zip(grays, boxes):
            with self.times("segment"):
                tm, fb = self.text_mask(gray, bx)
            with self.times("dilate"):
                masks.append(dilate(tm, m.dilate_kernel, m.dilate_iterations))
            text_masks.append(tm)
            fallbacks.append(fb)
        todo = [i for i, mask in enumerate(masks) if mask.any()]
        filled: dict[int, np.ndarray] = {}
        if todo:
            seeds = [image_seed(self.config.seed, arrays[i], keys[i] if keys is not None else None) for i in todo]
            with self.times("inpaint"):
                out = self.inpainter.inpaint_batch([arrays[i] for i in todo], [masks[i] for i in todo], seeds)
            filled = dict(zip(todo, out))
        results = []
        with self.times("composite"):
            for i, arr in enumerate(arrays):
                if i in filled:
                    cleaned, backend = composite(arr, filled[i], masks[i]), self.backend
                else:
                    cleaned, backend = arr.copy(), "none"
                results.append(CleanResult(cleaned, masks[i], text_masks[i], boxes[i], backend, fallbacks[i]))
        self.times.images += len(arrays)
        return results

    def clean(self, image: np.ndarray, key: str | None = None) -> CleanResult:
        """Clean a single image (a batch of one)."""
        return self.clean_batch([image], None if key is None else [key])[0]

    def clean_all(self, images: Sequence[np.ndarray], keys: Sequence[str] | None = None,
                  progress: bool = True) -> list[CleanResult]:
        """Clean a list of images in batches of ``config.batch_size``."""
        from tqdm.auto import tqdm

        n, bs = len(images), self.config.batch_size
        results: list[CleanResult] = []
        for start in tqdm(range(0, n, bs), desc=f"cleanup ({self.backend})", unit="batch",
                          disable=not progress or n <= bs, leave=False):
            results.extend(self.clean_batch(images[start:start + bs],
                                            None if keys is None else keys[start:start + bs]))
        return results
