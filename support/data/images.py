"""Read any radiograph file into float32 (H, W) in [0, 1], and fit it to a square.

JPEG and PNG (8 or 16 bit, grayscale or colour -> luminance) through Pillow; DICOM through
:mod:`support.data.dicom`. Every failure is an :class:`ImageReadError` naming the file.

The size in the header is checked before any pixel is decoded: more than :data:`MAX_PIXELS`
pixels, or a long side more than :data:`MAX_ASPECT_RATIO` times the short one, is refused. A few
hundred compressed bytes can declare gigapixels, and fitting a strip to a square multiplies it: a
2x40000 PNG of under 200 bytes becomes 256 x 5,120,000 float32 pixels (5.2 GB) at 256 px.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from pathlib import Path

import numpy as np

# The largest radiograph detectors are about 4300 px a side: 8192^2 leaves room for stitched
# long-leg and spine images while one float32 copy stays within 256 MiB.
MAX_PIXELS = 8192 * 8192
# Stitched long-leg and full-spine images reach about 1:4; crop-fitting multiplies the pixels by
# this ratio, so it is bounded too.
MAX_ASPECT_RATIO = 8.0


class ImageReadError(ValueError):
    """An image file that is missing, truncated or not an image; ``reason`` says which."""

    def __init__(self, path, reason: str):
        self.path, self.reason = Path(path), reason
        super().__init__(f"{path}: {reason}")


class MissingImageError(ImageReadError, FileNotFoundError):
    """An image file that is not there (both an :class:`ImageReadError` and a ``FileNotFoundError``)."""

    def __init__(self, path):
        super().__init__(path, "file not found")


def size_refusal(width: int, height: int) -> str | None:
    """Why an image of this header size is refused before decoding; None when it is not."""
    if width * height > MAX_PIXELS:
        return f"{width}x{height} pixels, more than MAX_PIXELS={MAX_PIXELS} (a decompression bomb?)"
    if max(width, height) > MAX_ASPECT_RATIO * min(width, height):
        return (f"{width}x{height} pixels, a side ratio beyond MAX_ASPECT_RATIO={MAX_ASPECT_RATIO:g}; "
                "no radiograph is that elongated")
    return None


@contextlib.contextmanager
def opened_image(path: str | os.PathLike):
    """``PIL.Image.open`` with the pixels decoded at once (a truncated file fails here, not later
    in a worker) once the header size passes :func:`size_refusal`; every failure inside, reading
    or converting, is an :class:`ImageReadError` naming the file."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            if refusal := size_refusal(*im.size):
                raise ImageReadError(path, refusal)
            im.load()
            yield im
    except FileNotFoundError:
        raise MissingImageError(path) from None
    except UnidentifiedImageError:
        raise ImageReadError(path, "not an image Pillow can identify") from None
    except Image.DecompressionBombError as exc:  # Pillow's own limit, met in open() already
        raise ImageReadError(path, f"refused as a decompression bomb ({exc})") from None
    except (OSError, SyntaxError, ValueError) as exc:
        if isinstance(exc, ImageReadError):
            raise
        raise ImageReadError(path, f"cannot decode ({exc})") from None


def _read_pillow(path: Path) -> np.ndarray:
    with opened_image(path) as im:
        mode = im.mode
        if mode in ("I;16", "I;16B", "I;16L", "I;16N"):
            return np.asarray(im, dtype=np.float32) / 65535.0
        if mode == "I":
            # 16-bit PNGs open as 32-bit "I"; their values still lie in 0..65535
            arr = np.asarray(im, dtype=np.float64)
            if arr.min() < 0 or arr.max() > 65535:
                raise ImageReadError(path, "32-bit integer values outside 0..65535")
            return (arr / 65535.0).astype(np.float32)
        if mode == "F":
            raise ImageReadError(path, "floating-point TIFF/PNG images have no defined range")
        if mode != "L":
            im = im.convert("L")  # RGB(A), P, LA, 1 -> luminance (ITU-R 601)
        return np.asarray(im, dtype=np.float32) / 255.0


def read_image(path: str | os.PathLike, dtype: str = "float32") -> np.ndarray:
    """Read a radiograph (JPEG, PNG 8/16-bit, DICOM) -> (H, W) float32 in [0, 1], or uint8 0..255."""
    if dtype not in ("float32", "uint8"):
        raise ValueError(f"dtype {dtype!r}: expected 'float32' or 'uint8'")
    arr = _read_float(Path(path))
    return to_uint8(arr) if dtype == "uint8" else arr


def _read_float(path: Path) -> np.ndarray:
    from support.data.dicom import DicomError, is_dicom_file, read_dicom

    if not path.is_file():
        raise MissingImageError(path)
    if is_dicom_file(path):
        try:
            pixels, _ = read_dicom(path)
        except DicomError as exc:
            raise ImageReadError(path, str(exc).split(": ", 1)[-1]) from None
        return pixels
    arr = _read_pillow(path)
    if arr.ndim != 2 or min(arr.shape) < 1:
        raise ImageReadError(path, f"decoded to shape {arr.shape}; expected (H, W)")
    return arr


def image_size(path: str | os.PathLike) -> tuple[int, int]:
    """(width, height) from the file header, without decoding the pixels."""
    from PIL import Image, UnidentifiedImageError

    from support.data.dicom import DicomError, is_dicom_file, read_dicom_header

    path = Path(path)
    try:
        if is_dicom_file(path):
            h = read_dicom_header(path)
            return h.columns, h.rows
        with Image.open(path) as im:
            return im.size
    except FileNotFoundError:
        raise MissingImageError(path) from None
    except (UnidentifiedImageError, OSError, DicomError, Image.DecompressionBombError) as exc:
        raise ImageReadError(path, f"cannot read the header ({exc})") from None


def to_uint8(images):
    """Float pixels in [0, 1] -> uint8 by rounding ``x * 255`` (computed in float64), clipped.

    The one conversion of the project: a numpy array gives a numpy array, a torch tensor a torch
    tensor (on the CPU), of the same shape.
    """
    if hasattr(images, "detach"):  # a torch tensor
        import torch

        x = images.detach().cpu().double()
        return torch.clamp(torch.round(x * 255.0), 0, 255).to(torch.uint8)
    return np.clip(np.rint(np.asarray(images, dtype=np.float64) * 255.0), 0, 255).astype(np.uint8)


def png_bytes(image: np.ndarray) -> bytes:
    """A uint8 (H, W) array as lossless 8-bit grayscale PNG bytes; the same array gives the same bytes."""
    import io

    from PIL import Image

    arr = np.asarray(image)
    if arr.dtype != np.uint8 or arr.ndim != 2:
        raise ValueError(f"PNG: expected a uint8 (H, W) grayscale array, got {arr.dtype} {arr.shape}")
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(arr), mode="L").save(buf, format="PNG", optimize=False, compress_level=6)
    return buf.getvalue()


@dataclasses.dataclass(frozen=True)
class SquareFit:
    """A square fit: resize (H, W) to (new_h, new_w), then place at integer offset (dx, dy).

    Point ``(x, y)`` of the input maps to ``(x * sx + dx, y * sy + dy)`` of the output; a
    negative offset crops, a positive one pads.
    """

    height: int
    width: int
    new_h: int
    new_w: int
    dx: int
    dy: int
    size: int

    @property
    def sx(self) -> float:
        return self.new_w / self.width

    @property
    def sy(self) -> float:
        return self.new_h / self.height

    def points(self, xy: np.ndarray) -> np.ndarray:
        """Map (N, 2) input pixel coordinates to output pixel coordinates."""
        xy = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
        return xy * np.array([self.sx, self.sy]) + np.array([self.dx, self.dy])


def square_fit(height: int, width: int, size: int, mode: str = "crop") -> SquareFit:
    """``crop``: short side to ``size`` then centre crop; ``pad``: long side to ``size``, centred."""
    if mode not in ("crop", "pad"):
        raise ValueError(f"fit mode {mode!r}: expected 'crop' or 'pad'")
    if size < 1 or height < 1 or width < 1:
        raise ValueError(f"square fit of {height}x{width} to {size}: sizes must be positive")
    scale = size / (min(height, width) if mode == "crop" else max(height, width))
    new_w, new_h = max(1, round(width * scale)), max(1, round(height * scale))
    return SquareFit(height, width, new_h, new_w, (size - new_w) // 2, (size - new_h) // 2, size)


def apply_fit(image: np.ndarray, fit: SquareFit, nearest: bool = False) -> np.ndarray:
    """Warp an (H, W) array by ``fit`` into (size, size); area averaging when shrinking.

    Padding is 0 (black), the background of a radiograph; masks use nearest neighbour.
    """
    import cv2

    arr = np.ascontiguousarray(image, dtype=np.float32)
    if arr.shape != (fit.height, fit.width):
        raise ValueError(f"array of shape {arr.shape} does not match the fit's {(fit.height, fit.width)}")
    if nearest:
        interp = cv2.INTER_NEAREST
    else:
        interp = cv2.INTER_AREA if fit.new_w < fit.width else cv2.INTER_LINEAR
    resized = cv2.resize(arr, (fit.new_w, fit.new_h), interpolation=interp)
    out = np.zeros((fit.size, fit.size), dtype=np.float32)
    sx0, sy0 = max(0, -fit.dx), max(0, -fit.dy)          # first source pixel inside the square
    ox0, oy0 = max(0, fit.dx), max(0, fit.dy)            # where it lands
    cw = min(fit.new_w - sx0, fit.size - ox0)
    ch = min(fit.new_h - sy0, fit.size - oy0)
    out[oy0:oy0 + ch, ox0:ox0 + cw] = resized[sy0:sy0 + ch, sx0:sx0 + cw]
    return out


def fit_square(image: np.ndarray, size: int, mode: str = "crop") -> np.ndarray:
    """Resize + centre-crop (``crop``) or resize + zero-pad (``pad``) to ``size`` x ``size``."""
    return apply_fit(image, square_fit(*np.asarray(image).shape[:2], size, mode))
