"""Find burned-in text and markers on radiographs: DBNet for words, a top-hat detector for markers.

DBNet is PP-OCRv4's detector (the DBNet family the published pipeline used), run offline through
onnxruntime with the weights that ship inside ``rapidocr-onnxruntime``; its post-processing
(binarise, boxes from contours, score, unclip) is rapidocr's own ``DBPostProcess``. On films it
reliably finds words, dates and times but often misses a lone laterality letter; the marker
detector adds those: small, sharp strokes far brighter (or darker) than their surroundings.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

from support.cleanup.config import DetectConfig

SOURCES = ("dbnet", "marker")


@dataclasses.dataclass
class TextBox:
    """One detection in image pixels: axis-aligned box (``x1``/``y1`` exclusive) and its polygon."""

    x0: float
    y0: float
    x1: float
    y1: float
    score: float
    source: str                 # "dbnet" or "marker"
    polygon: np.ndarray         # (K, 2) float32 (x, y) vertices

    @property
    def area(self) -> float:
        return max(0.0, self.x1 - self.x0) * max(0.0, self.y1 - self.y0)

    def as_dict(self) -> dict:
        """JSON-ready form (the per-image cleanup record)."""
        return {"x0": round(float(self.x0), 1), "y0": round(float(self.y0), 1), "x1": round(float(self.x1), 1),
                "y1": round(float(self.y1), 1), "score": round(float(self.score), 4), "source": self.source,
                "polygon": [[round(float(x), 1), round(float(y), 1)] for x, y in self.polygon]}


def _box_from_polygon(polygon: np.ndarray, score: float, source: str) -> TextBox:
    poly = np.asarray(polygon, dtype=np.float32).reshape(-1, 2)
    return TextBox(float(poly[:, 0].min()), float(poly[:, 1].min()), float(poly[:, 0].max()),
                   float(poly[:, 1].max()), float(score), source, poly)


def _short_side(polygon: np.ndarray) -> float:
    """Shorter side of the polygon's minimum-area rectangle (a slanted line is still thin)."""
    (_, _), (w, h), _ = cv2.minAreaRect(np.asarray(polygon, np.float32).reshape(-1, 1, 2))
    return float(min(w, h))


def default_dbnet_model() -> Path:
    """The PP-OCRv4 text detector (ONNX) shipped inside the ``rapidocr-onnxruntime`` wheel."""
    try:
        import rapidocr_onnxruntime
    except ImportError:
        raise ImportError("text detection needs rapidocr-onnxruntime (environments/requirements-nodeps.txt)") from None
    path = Path(rapidocr_onnxruntime.__file__).parent / "models" / "ch_PP-OCRv4_det_infer.onnx"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: PP-OCRv4 detector weights missing from rapidocr-onnxruntime")
    return path


class DBNetDetector:
    """PP-OCRv4 DBNet through onnxruntime: session opened once, same-size images run as one batch."""

    def __init__(self, config: DetectConfig):
        import onnxruntime as ort
        from rapidocr_onnxruntime.ch_ppocr_det.utils import DBPostProcess

        self.config = config
        path = Path(config.dbnet_model) if config.dbnet_model else default_dbnet_model()
        if not path.is_file():
            raise FileNotFoundError(f"{path}: DBNet ONNX model not found (DetectConfig.dbnet_model)")
        options = ort.SessionOptions()
        options.log_severity_level = 3
        options.inter_op_num_threads = 1
        if config.onnx_threads:
            options.intra_op_num_threads = config.onnx_threads
        if config.onnx_threads != 1:   # idle threads that spin steal the cores other work needs
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        providers = ["CPUExecutionProvider"]
        if config.device != "cpu" and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        self.session = ort.InferenceSession(str(path), options, providers=providers)
        self.input_name = self.session.get_inputs()[0].name
        self.postprocess = DBPostProcess(thresh=config.dbnet_threshold, box_thresh=config.dbnet_box_threshold,
                                         max_candidates=1000, unclip_ratio=config.dbnet_unclip_ratio,
                                         score_mode="fast", use_dilation=True)

    def input_size(self, height: int, width: int) -> tuple[int, int]:
        """(H, W) fed to the network: the longer side brought into [dbnet_min_side, dbnet_max_side],
        both sides multiples of 32 (the network downsamples 32-fold)."""
        c, longer = self.config, max(height, width)
        scale = min(max(longer, c.dbnet_min_side), c.dbnet_max_side) / longer
        return (max(32, int(round(height * scale / 32)) * 32), max(32, int(round(width * scale / 32)) * 32))

    def _prepare(self, gray: np.ndarray) -> np.ndarray:
        """PP-OCR's input: resized, (x / 255 - 0.5) / 0.5, gray repeated on 3 channels."""
        h, w = self.input_size(*gray.shape)
        interp = cv2.INTER_AREA if h < gray.shape[0] else cv2.INTER_LINEAR
        x = cv2.resize(gray, (w, h), interpolation=interp).astype(np.float32) * np.float32(2.0 / 255.0) - 1.0
        return np.broadcast_to(x, (3, h, w))

    def detect_batch(self, grays: Sequence[np.ndarray]) -> list[list[TextBox]]:
        """uint8 (H, W) images -> their text boxes, in order."""
        out: list[list[TextBox]] = [[] for _ in grays]
        groups: dict[tuple[int, int], list[int]] = {}
        for i, g in enumerate(grays):
            groups.setdefault(self.input_size(*g.shape), []).append(i)
        for idx in groups.values():
            batch = np.stack([self._prepare(grays[i]) for i in idx]).astype(np.float32)
            probs = self.session.run(None, {self.input_name: batch})[0]
            for j, i in enumerate(idx):
                polys, scores = self.postprocess(probs[j:j + 1], grays[i].shape[:2])
                limit = self.config.dbnet_max_box * min(grays[i].shape[:2])
                out[i] = [_box_from_polygon(p, s, "dbnet") for p, s in zip(polys, scores)
                          if _short_side(p) <= limit]
        return out


class MarkerDetector:
    """Small sharp bright (or dark) marks: laterality letters, symbols, lone characters.

    A top-hat with a square kernel a few strokes wide keeps thin strokes and removes anatomy
    wider than the kernel; pixels above ``marker_grow_threshold`` that connect (within
    ``marker_link_px``) to a peak above ``marker_seed_threshold`` form one marker. Printed strokes
    are evenly bright, so their mean top-hat must reach ``marker_mean_threshold`` too, which
    sharp anatomy (rib and vessel edges, a single bright point) rarely does; markers larger than
    ``marker_max_size`` of the image are anatomy or collimation edges and are dropped.
    """

    def __init__(self, config: DetectConfig):
        self.config = config

    def _responses(self, gray: np.ndarray) -> list[np.ndarray]:
        c = self.config
        k = max(3, int(round(c.marker_kernel * min(gray.shape))) | 1)
        kernel = cv2.getStructuringElement(cv2.MORPH_RECT, (k, k))
        f = gray.astype(np.float32) / np.float32(255.0)
        out = []
        if c.marker_polarity in ("bright", "both"):
            out.append(cv2.morphologyEx(f, cv2.MORPH_TOPHAT, kernel))
        if c.marker_polarity in ("dark", "both"):
            out.append(cv2.morphologyEx(f, cv2.MORPH_BLACKHAT, kernel))
        return out

    def detect(self, gray: np.ndarray) -> list[TextBox]:
        """uint8 (H, W) -> marker boxes (polygon = the box), scored by their top-hat peak."""
        c = self.config
        h, w = gray.shape
        limit = c.marker_max_size * min(h, w)
        boxes = []
        link = np.ones((c.marker_link_px, c.marker_link_px), np.uint8)
        for response in self._responses(gray):
            strokes = (response >= c.marker_grow_threshold).astype(np.uint8)
            if not strokes.any():
                continue
            n, labels, stats, _ = cv2.connectedComponentsWithStats(cv2.dilate(strokes, link), connectivity=8)
            on = strokes > 0
            peak = np.zeros(n, np.float32)
            np.maximum.at(peak, labels[on], response[on])
            count = np.bincount(labels[on], minlength=n)
            mean = np.bincount(labels[on], weights=response[on], minlength=n) / np.maximum(count, 1)
            for i in range(1, n):
                x, y, bw, bh, _ = stats[i]
                if (peak[i] < c.marker_seed_threshold or mean[i] < c.marker_mean_threshold
                        or count[i] < c.marker_min_pixels or max(bw, bh) > limit):
                    continue
                # the box of the stroke pixels themselves, not of the linking dilation
                ys, xs = np.nonzero((labels[y:y + bh, x:x + bw] == i) & (strokes[y:y + bh, x:x + bw] > 0))
                x0, y0, x1, y1 = x + xs.min(), y + ys.min(), x + xs.max() + 1, y + ys.max() + 1
                poly = np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], np.float32)
                boxes.append(TextBox(float(x0), float(y0), float(x1), float(y1), float(peak[i]), "marker", poly))
        return boxes

    def detect_batch(self, grays: Sequence[np.ndarray]) -> list[list[TextBox]]:
        return [self.detect(g) for g in grays]


class TextDetector:
    """Both detectors, each optional; loaded once and applied to batches."""

    def __init__(self, config: DetectConfig | None = None):
        self.config = (config or DetectConfig()).validate()
        self.dbnet = DBNetDetector(self.config) if self.config.dbnet else None
        self.markers = MarkerDetector(self.config) if self.config.markers else None

    def detect_batch(self, grays: Sequence[np.ndarray]) -> list[list[TextBox]]:
        """uint8 (H, W) images -> all their boxes (DBNet first, then markers)."""
        found: list[list[TextBox]] = [[] for _ in grays]
        for detector in (self.dbnet, self.markers):
            if detector is not None:
                for i, boxes in enumerate(detector.detect_batch(grays)):
                    found[i].extend(boxes)
        return found
