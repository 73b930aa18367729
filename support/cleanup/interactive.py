"""Look, choose, erase: text removal one image at a time, as the cleanup app serves it.

A person opens a radiograph (a file, or an image of a dataset or synthetic set), sees what the
detectors found, picks the regions to erase (and may add boxes of their own), chooses the
inpainting backend, and gets the cleaned image with its mask and a record of what was erased.
Everything here is the batch step's own code (:class:`~support.cleanup.cleaner.Cleaner`): the
same detection, masks, inpainting and composite, so only pixels under the mask change. Models
are loaded once per session: the detector (and SAM) when it starts, each backend's model the
first time it is used. Nothing here imports a web framework: :mod:`support.cleanup.app` wires
these methods to Gradio, and tests call them directly.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import io
import itertools
import os
import threading
from pathlib import Path
from typing import Any, Sequence

import cv2
import numpy as np

from support.cleanup.cleaner import Cleaner, CleanResult
from support.cleanup.config import CleanupConfig, with_backend
from support.cleanup.detect import TextBox
from support.cleanup.pixels import check_image, gray8, read_pixels
from support.data.images import ImageReadError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".dcm", ".dicom", ".tif", ".tiff")
MAX_LISTED = 2000            # images offered per folder (the first, in order)
SOURCE_NAMES = {"dbnet": "DBNet text", "marker": "marker", "manual": "drawn box"}
# RGB outline colours per detector: DBNet orange, markers cyan, boxes drawn by hand magenta.
COLOURS = {"dbnet": (255, 140, 0), "marker": (0, 200, 255), "manual": (255, 0, 200)}


class InputError(ValueError):
    """Input the app cannot use, with the sentence shown to the person."""


@dataclasses.dataclass
class OpenedImage:
    """A radiograph as the app holds it: its own pixels and how they were read."""

    name: str                 # file name (downloads are named after it)
    pixels: np.ndarray        # uint8/uint16 (H, W) or uint8 (H, W, 3): what is cleaned
    read_as: str              # "8-bit grayscale PNG", "DICOM (display values, 16 bit)", ...
    note: str = ""            # what the person should know about how it was read or will be saved

    @property
    def stem(self) -> str:
        return Path(self.name).stem or "image"


def _reason(exc: Exception, path: Path) -> str:
    """The error's message with the file named by its name only (uploads live in temp folders)."""
    if isinstance(exc, ImageReadError):
        return f"{path.name}: {exc.reason}"
    return str(exc).replace(str(path), path.name)


def open_image(path: str | os.PathLike, name: str | None = None) -> OpenedImage:
    """Read an uploaded or listed file: PNG/JPEG (8 or 16 bit, gray or RGB) with its own pixels,
    DICOM through its display pipeline into 16 bits. The loaders' bounds apply (MAX_PIXELS,
    side ratio) before any pixel is decoded. Failures are :class:`InputError` naming the file."""
    from support.data.dicom import DicomError, is_dicom_file, read_dicom

    path = Path(path)
    name = name or path.name
    if not path.is_file():
        raise InputError(f"{name}: file not found")
    try:
        if is_dicom_file(path):
            values, header = read_dicom(path)
            pixels = np.clip(np.rint(values * 65535.0), 0, 65535).astype(np.uint16)
            return OpenedImage(name, check_image(pixels, name), "DICOM (display values, 16 bit)",
                               f"{name}: DICOM {header.columns}x{header.rows}, {header.bits_stored}-bit stored, "
                               f"read through its modality and VOI LUTs (MONOCHROME1 inverted) into 16 bits; the "
                               f"cleaned image is saved as a 16-bit PNG without the DICOM header (no identifiers "
                               f"leave).")
        pixels = read_pixels(path)
    except (ImageReadError, DicomError) as exc:
        raise InputError(_reason(exc, path)) from None
    try:
        check_image(pixels, name)
    except ValueError as exc:
        raise InputError(str(exc)) from None
    depth = "16-bit" if pixels.dtype == np.uint16 else "8-bit"
    layout = "RGB" if pixels.ndim == 3 else "grayscale"
    fmt = path.suffix.lstrip(".").upper() or "image"
    read_as = f"{depth} {layout} {fmt}"
    notes = []
    if pixels.dtype == np.uint16:
        notes.append("16 bits: the detectors see it stretched over its own range to 8 bits; it is cleaned and "
                     "saved in its own 16 bits (the preview is stretched)")
    if fmt in ("JPG", "JPEG"):
        notes.append("the cleaned image is saved as PNG, so no second JPEG compression touches the unmasked pixels")
    return OpenedImage(name, pixels, read_as, f"{name}: " + "; ".join(notes) + "." if notes else "")


def preview(pixels: np.ndarray, like: np.ndarray | None = None) -> np.ndarray:
    """uint8 (H, W) or (H, W, 3) for the screen. 16-bit images are stretched over the range of
    ``like`` (default: their own), so before and after are shown on the same scale."""
    if pixels.dtype == np.uint8:
        return pixels
    ref = pixels if like is None else like
    lo, hi = float(ref.min()), float(ref.max())
    scale = 255.0 / (hi - lo) if hi > lo else 0.0
    return np.clip(np.rint((pixels.astype(np.float32) - lo) * scale), 0, 255).astype(np.uint8)


def _rgb(image: np.ndarray) -> np.ndarray:
    return np.repeat(image[..., None], 3, axis=2) if image.ndim == 2 else image.copy()


def draw_regions(image: np.ndarray, boxes: Sequence[TextBox], chosen: Sequence[int] | None = None) -> np.ndarray:
    """RGB uint8: the preview with each region outlined in its detector's colour and numbered from 1;
    chosen regions (all when None) drawn thicker."""
    out = _rgb(image)
    h, w = out.shape[:2]
    thin = max(1, int(round(min(h, w) / 320)))
    picked = set(range(len(boxes))) if chosen is None else set(chosen)
    for i, box in enumerate(boxes):
        colour = COLOURS.get(box.source, (255, 255, 0))
        x0, y0 = int(np.floor(box.x0)), int(np.floor(box.y0))
        x1, y1 = int(np.ceil(box.x1)) - 1, int(np.ceil(box.y1)) - 1
        cv2.rectangle(out, (x0, y0), (x1, y1), colour, thin * (2 if i in picked else 1))
        scale = max(0.35, min(h, w) / 700)
        cv2.putText(out, str(i + 1), (x0, max(int(12 * scale / 0.35), y0 - 3)), cv2.FONT_HERSHEY_SIMPLEX, scale,
                    colour, thin, lineType=cv2.LINE_AA)
    return out


def outline_mask(image: np.ndarray, mask: np.ndarray, colour=(255, 0, 200)) -> np.ndarray:
    """RGB uint8: the preview with the outline of the removal mask drawn on it."""
    out = _rgb(image)
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    cv2.drawContours(out, contours, -1, colour, 1)
    return out


def region_label(index: int, box: TextBox) -> str:
    """``"1 · DBNet text 0.87 · (81, 18)-(171, 31)"``: how a region is listed and ticked."""
    return (f"{index + 1} · {SOURCE_NAMES.get(box.source, box.source)} {box.score:.2f} · "
            f"({box.x0:.0f}, {box.y0:.0f})-({box.x1:.0f}, {box.y1:.0f})")


def region_rows(boxes: Sequence[TextBox]) -> list[list]:
    """One row per region: number, detector, score, x0, y0, x1, y1 (pixels, x1/y1 exclusive)."""
    return [[i + 1, SOURCE_NAMES.get(b.source, b.source), round(float(b.score), 3),
             *(int(round(v)) for v in (b.x0, b.y0, b.x1, b.y1))] for i, b in enumerate(boxes)]


REGION_COLUMNS = ["#", "detector", "score", "x0", "y0", "x1", "y1"]


def manual_box(corner_a: Sequence[float], corner_b: Sequence[float], shape: tuple[int, ...]) -> TextBox:
    """The box spanned by two clicked pixels (both inside it), clipped to the image."""
    h, w = shape[:2]
    (xa, ya), (xb, yb) = corner_a, corner_b
    x0, x1 = sorted((int(np.clip(xa, 0, w - 1)), int(np.clip(xb, 0, w - 1))))
    y0, y1 = sorted((int(np.clip(ya, 0, h - 1)), int(np.clip(yb, 0, h - 1))))
    x1, y1 = x1 + 1, y1 + 1
    poly = np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], np.float32)
    return TextBox(float(x0), float(y0), float(x1), float(y1), 1.0, "manual", poly)


def image_file_bytes(pixels: np.ndarray) -> bytes:
    """Lossless PNG of the cleaned pixels in their own format: 8-bit gray, 16-bit gray, or RGB."""
    from PIL import Image

    arr = check_image(pixels, "cleaned image")
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(arr)).save(buf, format="PNG", compress_level=6)   # L, I;16 or RGB
    return buf.getvalue()


@dataclasses.dataclass
class Erased:
    """One erase: what the person chose, what the cleaner did, and the files written."""

    result: CleanResult
    chosen: list[int]
    files: dict[str, Path]       # "image", "mask", "record"
    record: dict[str, Any]
    seconds: float


def list_folder(folder: str | os.PathLike) -> dict[str, Path]:
    """Images of a folder by a short label: a dataset in the MIMIC-CXR-JPG layout (the phantom, a
    synthetic or cleaned set) through its adapter, any other folder by its image files (searched
    below it). At most :data:`MAX_LISTED`, in order."""
    from support.data.adapters import load_dataset

    root = Path(folder).expanduser()
    if not root.is_dir():
        raise InputError(f"{root}: not a folder")
    if (root / "mimic-cxr-2.0.0-metadata.csv").is_file():
        records, _ = load_dataset("mimic-cxr-jpg", root, reports=False)
        rows = records.iloc[:MAX_LISTED]
        return {f"{r.image_id} ({r.view}, {r.split})": Path(r.path) for r in rows.itertuples()}
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise InputError(f"{root}: no images ({', '.join(IMAGE_SUFFIXES)}) in this folder or below it")
    return {str(p.relative_to(root)): p for p in files[:MAX_LISTED]}


class InteractiveCleanup:
    """The cleanup app's state: models loaded once, choices and results per call.

    ``config`` sets detection and masks (05's parameters; the backend in it is the default);
    ``ddpm_path`` enables RePaint, ``sd_path`` SD-2 inpainting. ``run`` (a run folder) lists its
    dataset and synthetic sets and supplies its DDPM when ``ddpm_path`` is not given. Files go
    under ``out_dir``, one folder per erase.
    """

    def __init__(self, config: CleanupConfig | None = None, *, run: str | os.PathLike | None = None,
                 ddpm_path: str | os.PathLike | None = None, sd_path: str | os.PathLike | None = None,
                 out_dir: str | os.PathLike | None = None):
        import tempfile

        self.config = (config or CleanupConfig()).validate()
        self.run = Path(run).expanduser().resolve() if run else None
        if self.run is not None and not self.run.is_dir():
            raise FileNotFoundError(f"--run {self.run}: not a folder")
        ddpm = ddpm_path or self.config.inpaint.ddpm_path
        if not ddpm and self.run is not None and (self.run / "models/ddpm/pipeline/model_index.json").is_file():
            ddpm = self.run / "models/ddpm/pipeline"
        self.paths = {"repaint": str(ddpm) if ddpm else None,
                      "sd": str(sd_path or self.config.inpaint.sd_path or "") or None}
        for backend, field in (("repaint", "ddpm_path"), ("sd", "sd_path")):
            folder = self.paths[backend]
            if folder and not (Path(folder) / "model_index.json").is_file():
                raise FileNotFoundError(f"{folder}: not a diffusers pipeline folder (model_index.json missing); "
                                        f"given for the {backend} backend ({field})")
        if out_dir is None:
            out_dir = (self.run / "cleanup-app") if self.run is not None else tempfile.mkdtemp(prefix="cleanup-app-")
        self.out_dir = Path(out_dir).expanduser().resolve()
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.backends = ["telea"] + [b for b in ("repaint", "sd") if self.paths[b]]
        self.default_backend = self.config.inpaint.backend if self.config.inpaint.backend in self.backends else "telea"
        self._lock = threading.Lock()
        self._cleaners: dict[str, Cleaner] = {}
        self._counter = itertools.count(1)
        self.base = self.cleaner(self.default_backend)    # the detector (and SAM) load here, once

    def cleaner(self, backend: str) -> Cleaner:
        """The cleaner of ``backend``, its model loaded the first time; detector and SAM shared."""
        if backend not in self.backends:
            hint = {"repaint": "give a DDPM pipeline folder (--ddpm-path, or --run with models/ddpm)",
                    "sd": "give a local SD-2 inpainting folder (--sd-path)"}.get(backend, "")
            raise InputError(f"backend {backend!r} is not available here; expected one of {self.backends}"
                             + (f" ({hint})" if hint else ""))
        with self._lock:
            if backend not in self._cleaners:
                extra = {"ddpm_path": self.paths["repaint"]} if backend == "repaint" else \
                        {"sd_path": self.paths["sd"]} if backend == "sd" else {}
                config = with_backend(self.config, backend, **extra)
                share = next(iter(self._cleaners.values()), None)
                self._cleaners[backend] = Cleaner(config, share=share)
            return self._cleaners[backend]

    def sources(self) -> dict[str, Path]:
        """Dataset folders to pick images from: the run's dataset and its synthetic sets."""
        found: dict[str, Path] = {}
        if self.run is None:
            return found
        from support.data import source
        from support.eval.sets import discover_sets

        if (self.run / source.POINTER).is_file():
            kind, root = source.resolve(self.run)
            if source.layout_of(kind) == "mimic-cxr-jpg":
                found[f"run dataset ({kind})"] = Path(root)
        for name, root in discover_sets(self.run).items():
            found[f"set {name}"] = root
        return found

    def detect(self, image: OpenedImage) -> list[TextBox]:
        """Both detectors' regions (DBNet first, then markers), in image pixels."""
        return self.base.detect([gray8(image.pixels)])[0]

    def erase(self, image: OpenedImage, boxes: Sequence[TextBox], chosen: Sequence[int],
              backend: str | None = None) -> Erased:
        """Erase the chosen regions (indices into ``boxes``) with ``backend``; write the cleaned
        image (PNG, the input's bit depth), its mask (255 = inpainted) and a JSON record."""
        import time

        from support.io import write_bytes_atomic, write_json_atomic
        from support.params import to_dict

        chosen = sorted({int(i) for i in chosen})
        if not chosen:
            raise InputError("no region is ticked: tick the regions to erase, or draw a box on the image")
        bad = [i for i in chosen if not 0 <= i < len(boxes)]
        if bad:
            raise InputError(f"region(s) {[i + 1 for i in bad]} do not exist; this image has {len(boxes)}")
        cleaner = self.cleaner(backend or self.default_backend)
        start = time.perf_counter()
        with self._lock:      # one inpainting at a time: the models are shared
            result = cleaner.erase_boxes([image.pixels], [[boxes[i] for i in chosen]], keys=[image.name])[0]
        seconds = time.perf_counter() - start
        stamp = f"{_dt.datetime.now():%Y%m%d-%H%M%S}-{next(self._counter):03d}"
        folder = self.out_dir / f"{image.stem}-{stamp}"
        files = {"image": folder / f"{image.stem}-cleaned.png", "mask": folder / f"{image.stem}-mask.png",
                 "record": folder / f"{image.stem}-erased.json"}
        folder.mkdir(parents=True, exist_ok=True)
        write_bytes_atomic(files["image"], image_file_bytes(result.image), durable=False)
        write_bytes_atomic(files["mask"], image_file_bytes(np.where(result.mask, 255, 0).astype(np.uint8)),
                           durable=False)
        h, w = image.pixels.shape[:2]
        record = {
            "source": image.name, "read_as": image.read_as, "width": w, "height": h,
            "dtype": str(image.pixels.dtype), "backend": result.backend,
            "erased": [{"region": i + 1, **boxes[i].as_dict()} for i in chosen],
            "kept": [{"region": i + 1, **b.as_dict()} for i, b in enumerate(boxes) if i not in chosen],
            "mask_pixels": int(result.mask.sum()), "mask_fraction": round(float(result.mask.mean()), 6),
            "text_mask_pixels": int(result.text_mask.sum()), "sam_fallbacks": result.sam_fallbacks,
            "seconds": round(seconds, 4), "files": {k: p.name for k, p in files.items()},
            "config": to_dict(cleaner.config),
        }
        write_json_atomic(files["record"], record)
        return Erased(result, chosen, files, record, seconds)

    def apply_to_folder(self, src_root: str | os.PathLike, out_root: str | os.PathLike,
                        backend: str | None = None, progress: bool = False) -> dict[str, Any]:
        """The batch cleaner over a whole dataset (MIMIC-CXR-JPG layout) with this session's
        settings and backend: every detected region of every image, as 05 cleans."""
        from support.cleanup.dataset import clean_dataset

        src = Path(src_root).expanduser()
        if not (src / "mimic-cxr-2.0.0-metadata.csv").is_file():
            raise InputError(f"{src}: the whole-folder cleaner needs a dataset in the MIMIC-CXR-JPG layout "
                             f"(mimic-cxr-2.0.0-metadata.csv missing): the phantom, a synthetic or a cleaned set")
        if not str(out_root).strip():
            raise InputError("give an output folder for the cleaned dataset")
        cleaner = self.cleaner(backend or self.default_backend)
        with self._lock:
            return clean_dataset(src, Path(out_root).expanduser(), cleaner=cleaner, progress=progress)

    def default_output(self, src_root: str | os.PathLike, backend: str | None = None) -> Path:
        """Where a folder's cleaned copy goes unless the person says otherwise."""
        return self.out_dir / "folders" / f"{Path(src_root).name}-cleaned-{backend or self.default_backend}"
