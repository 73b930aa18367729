"""Malformed and hostile inputs of the image and mask formats: bad numbers in DICOM headers,
decompression bombs, compressed DICOM transfer syntaxes and Presentation LUT Shape, and the two
RLE conventions of SIIM-ACR. Every fixture is written here, in tmp_path."""

from __future__ import annotations

import importlib.metadata
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
from PIL import Image
from pydicom import uid
from test_adapters import make_siim_tree, write_dicom

import support
from support.data import images
from support.data.adapters import load_dataset
from support.data.datasets import ImageDataset, decode_mask
from support.data.dicom import DicomError, read_dicom, read_dicom_header
from support.data.images import ImageReadError, image_size, read_image
from support.data.rle import rle_decode, rle_encode

# The repository's pins: beside the package, or, for a copy of the package and tests made
# elsewhere in the repository (tests/mutation.py's work folders), in the nearest folder above.
REQUIREMENTS = next((folder / "environments" / "requirements-cpu.txt"
                     for folder in Path(support.__file__).resolve().parents
                     if (folder / "environments" / "requirements-cpu.txt").is_file()),
                    Path(support.__file__).resolve().parents[1] / "environments" / "requirements-cpu.txt")


def _pixels() -> np.ndarray:
    """A 12-bit radiograph-like array: a gradient with noise, so no codec gets it for free."""
    rng = np.random.default_rng(7)
    y, x = np.mgrid[:48, :40]
    return np.clip(x * 40 + y * 30 + rng.integers(0, 200, (48, 40)), 0, 4095).astype(np.uint16)


def _retag(path: Path, keyword: str, vr: str, value) -> Path:
    """Rewrite one header element with the given VR and value, however wrong."""
    ds = pydicom.dcmread(path)
    tag = pydicom.datadict.tag_for_keyword(keyword)
    if tag in ds:
        del ds[tag]
    with warnings.catch_warnings():  # pydicom warns about the invalid values these tests want
        warnings.simplefilter("ignore")
        ds.add_new(tag, vr, value)
        ds.save_as(path)
    return path


# ------------------------------------------------------------------ 1. numbers in DICOM headers
@pytest.mark.parametrize("keyword, vr, value", [
    ("Columns", "DS", "inf"),      # int() overflows
    ("Rows", "DS", "64.9"),        # int() truncates to 64
    ("BitsStored", "DS", "nan"),   # int() raises a bare ValueError
    ("Rows", "US", [48, 2]),       # two values where one belongs
])
def test_malformed_header_integer_names_file_tag_and_expectation(tmp_path, keyword, vr, value):
    path = _retag(write_dicom(tmp_path / "bad.dcm", _pixels()), keyword, vr, value)
    tag = pydicom.tag.Tag(pydicom.datadict.tag_for_keyword(keyword))
    expected = rf"{keyword} \({tag.group:04X},{tag.element:04X}\) is .*; expected an integer in \d+\.\.\d+"
    with pytest.raises(DicomError, match=rf"bad\.dcm: {expected}"):
        read_dicom_header(path)
    with pytest.raises(ImageReadError, match=rf"bad\.dcm: {expected}"):
        read_image(path)


@pytest.mark.parametrize("keyword, value", [("WindowCenter", "nan"), ("WindowWidth", "inf"),
                                            ("RescaleSlope", "inf")])
def test_non_finite_window_or_rescale_is_refused_not_turned_into_nan_pixels(tmp_path, keyword, value):
    path = write_dicom(tmp_path / "w.dcm", _pixels(), window=(2048, 2048), rescale=(1.0, 0.0))
    _retag(path, keyword, "DS", value)
    with pytest.raises(ImageReadError, match=rf"w\.dcm: {keyword} \(0028,10..\) is .*; expected finite numbers"):
        read_image(path)


def test_window_width_below_one_is_a_dicom_error(tmp_path):
    path = write_dicom(tmp_path / "w.dcm", _pixels(), window=(2048, 0.5))
    with pytest.raises(ImageReadError, match=r"w\.dcm: the VOI LUT/window cannot be applied .*Window Width"):
        read_image(path)


def test_dataset_adapter_skips_a_header_it_cannot_read_and_says_why(tmp_path):
    root, _ = make_siim_tree(tmp_path / "siim")
    victim = sorted(root.rglob("*.dcm"))[0]
    _retag(victim, "Columns", "DS", "inf")
    table, summary = load_dataset("siim-acr", root)
    assert len(table) == 1 and summary.skipped == {"corrupt image": 1}
    example = summary.examples["corrupt image"][0]
    assert str(victim) in example and "Columns (0028,0011) is 'inf'; expected an integer" in example


# ------------------------------------------------------------------ 2. decompression bombs
def _png_header(path: Path, width: int, height: int) -> Path:
    """A PNG whose header declares width x height; the pixel data is a few bytes (never read)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))
    return path


def _strip_png(path: Path) -> Path:
    Image.new("L", (2, 40000)).save(path)
    assert path.stat().st_size < 1000   # a few hundred bytes for 80,000 pixels
    return path


def test_elongated_strip_is_refused_before_it_is_fitted(tmp_path):
    png = _strip_png(tmp_path / "strip.png")
    with pytest.raises(ImageReadError, match=r"strip\.png: 2x40000 pixels, .*MAX_ASPECT_RATIO"):
        read_image(png)
    dcm = write_dicom(tmp_path / "strip.dcm", np.zeros((40000, 2), np.uint16))
    with pytest.raises(ImageReadError, match=r"strip\.dcm: 2x40000 pixels, .*MAX_ASPECT_RATIO"):
        read_image(dcm)


def test_header_declaring_gigapixels_is_refused_before_decoding(tmp_path, monkeypatch):
    bomb = _png_header(tmp_path / "bomb.png", 30000, 30000)
    with pytest.raises(ImageReadError, match=r"bomb\.png: .*decompression bomb"):
        read_image(bomb)
    with pytest.raises(ImageReadError, match=r"bomb\.png"):
        image_size(bomb)
    # below Pillow's own limit, the module's bound decides
    monkeypatch.setattr(images, "MAX_PIXELS", 1000)
    Image.new("L", (40, 40)).save(tmp_path / "big.png")
    with pytest.raises(ImageReadError, match=r"big\.png: 40x40 pixels, more than MAX_PIXELS=1000"):
        read_image(tmp_path / "big.png")
    with pytest.raises(ImageReadError, match=r"big\.dcm: 40x48 pixels, more than MAX_PIXELS=1000"):
        read_image(write_dicom(tmp_path / "big.dcm", _pixels()))


def test_non_strict_dataset_skips_and_counts_the_bomb(tmp_path):
    good = tmp_path / "good.png"
    Image.new("L", (32, 40), 128).save(good)
    records = pd.DataFrame({"path": [str(_strip_png(tmp_path / "strip.png")), str(good)],
                            "image_id": ["strip", "good"]})
    dataset = ImageDataset(records, size=8)
    with pytest.warns(UserWarning, match="skipping unreadable item 0"):
        item = dataset[0]
    assert item["image_id"] == "good" and tuple(item["image"].shape) == (1, 8, 8)
    assert dataset.summary.skipped == {"unreadable at load time": 1}
    assert "strip.png" in dataset.summary.examples["unreadable at load time"][0]


# ------------------------------------------------------------------ 3. compressed transfer syntaxes
def _segment(marker: int, payload: bytes) -> bytes:
    return struct.pack(">HH", marker, len(payload) + 2) + payload


def _jpeg_lossless(arr: np.ndarray, precision: int, predictor: int) -> bytes:
    """A JPEG Lossless codestream (ITU-T T.81 Process 14, one component, no restarts).

    Predictors 1 (left; the SV1 syntax) and 7 (mean of left and above); the first line predicts
    from the left, the first column from above, the first sample from 2^(P-1). One Huffman table
    gives every difference category (0..16) a 5-bit code, the category's own number.
    """
    x = arr.astype(np.int64)
    left, above = np.roll(x, 1, axis=1), np.roll(x, 1, axis=0)
    pred = left if predictor == 1 else (left + above) >> 1
    pred[0, :], pred[:, 0] = left[0, :], above[:, 0]
    pred[0, 0] = 1 << (precision - 1)
    bits = []
    for diff in (x - pred).reshape(-1).tolist():
        category = abs(diff).bit_length()
        extra = diff if diff >= 0 else diff + (1 << category) - 1   # negatives as diff - 1, low bits
        bits.append(f"{category:05b}" + (f"{extra:0{category}b}" if category else ""))
    stream = "".join(bits)
    stream += "1" * (-len(stream) % 8)                            # pad with 1-bits (T.81 F.1.2.3)
    data = bytes(int(stream[i:i + 8], 2) for i in range(0, len(stream), 8)).replace(b"\xff", b"\xff\x00")
    h, w = x.shape
    return (b"\xff\xd8"
            + _segment(0xFFC3, struct.pack(">BHHB", precision, h, w, 1) + bytes([1, 0x11, 0]))
            + _segment(0xFFC4, bytes([0x00, 0, 0, 0, 0, 17] + [0] * 11) + bytes(range(17)))
            + _segment(0xFFDA, bytes([1, 1, 0x00, predictor, 0, 0]))
            + data + b"\xff\xd9")


def _compress(plain: Path, out: Path, syntax: str) -> Path:
    """``plain`` re-encoded in ``syntax``; JPEG Lossless by :func:`_jpeg_lossless` (pydicom has no
    encoder for it), the others by pydicom's encoders (JPEG-LS: CharLS, JPEG 2000: OpenJPEG)."""
    from pydicom.encaps import encapsulate

    ds = pydicom.dcmread(plain)
    if syntax in (uid.JPEGLosslessSV1, uid.JPEGLossless):
        predictor = 1 if syntax == uid.JPEGLosslessSV1 else 7
        ds.PixelData = encapsulate([_jpeg_lossless(ds.pixel_array, int(ds.BitsStored), predictor)])
        ds["PixelData"].VR = "OB"
        ds.file_meta.TransferSyntaxUID = syntax
    else:
        plugin = {uid.JPEGLSLossless: "pyjpegls", uid.JPEG2000Lossless: "pylibjpeg"}.get(syntax, "")
        ds.compress(syntax, encoding_plugin=plugin)
    ds.save_as(out, enforce_file_format=True)
    return out


@pytest.mark.parametrize("syntax", [uid.JPEGLosslessSV1, uid.JPEGLossless, uid.JPEGLSLossless,
                                    uid.JPEG2000Lossless, uid.RLELossless])
def test_compressed_syntax_reads_like_the_uncompressed_file(tmp_path, syntax):
    plain = write_dicom(tmp_path / "plain.dcm", _pixels(), photometric="MONOCHROME1")
    packed = _compress(plain, tmp_path / "packed.dcm", syntax)
    assert pydicom.dcmread(packed).file_meta.TransferSyntaxUID == syntax
    expected, _ = read_dicom(plain)
    assert np.array_equal(read_dicom(packed)[0], expected)
    assert np.array_equal(read_image(packed), expected)
    if syntax != uid.RLELossless:   # decoded by the pinned pylibjpeg plugins, whatever else is installed
        assert np.array_equal(pydicom.pixels.pixel_array(packed, decoding_plugin="pylibjpeg"), _pixels())


def test_decoder_plugins_are_pinned_and_installed():
    pins = dict(line.split("==") for line in REQUIREMENTS.read_text().splitlines()
                if "==" in line and not line.startswith("#"))
    for package in ("pylibjpeg", "pylibjpeg-libjpeg", "pylibjpeg-openjpeg"):
        assert importlib.metadata.version(package) == pins.get(package), package


def test_syntax_without_an_installed_decoder_names_file_and_syntax(tmp_path, monkeypatch):
    packed = _compress(write_dicom(tmp_path / "plain.dcm", _pixels()), tmp_path / "ls.dcm", uid.JPEGLSLossless)
    decoder = pydicom.pixels.get_decoder(uid.JPEGLSLossless)
    # as on a machine without the plugins
    monkeypatch.setattr(decoder, "_available", {})
    monkeypatch.setattr(decoder, "_unavailable", {"pylibjpeg": ("pylibjpeg>=2.0", "pylibjpeg-libjpeg>=2.1")})
    with pytest.raises(ImageReadError, match=r"ls\.dcm: transfer syntax JPEG-LS Lossless Image Compression "
                                             r"\(1\.2\.840\.10008\.1\.2\.4\.80\) has no decoder installed "
                                             r"\(missing: pylibjpeg - requires pylibjpeg>=2\.0 and pylibjpeg-libjpeg"):
        read_image(packed)


def test_syntax_pydicom_cannot_decode_names_file_and_syntax(tmp_path):
    path = write_dicom(tmp_path / "video.dcm", _pixels())
    ds = pydicom.dcmread(path)
    ds.file_meta.TransferSyntaxUID = uid.MPEG4HP41
    ds.PixelData = pydicom.encaps.encapsulate([b"\x00\x00\x01\xb3" * 4])
    ds["PixelData"].VR = "OB"
    ds.save_as(path, enforce_file_format=True)
    with pytest.raises(ImageReadError, match=r"video\.dcm: transfer syntax MPEG-4 AVC/H\.264 High Profile.*"
                                             r"\(1\.2\.840\.10008\.1\.2\.4\.102\) has no pixel decoder"):
        read_image(path)


@pytest.mark.parametrize("photometric, shape, inverted", [
    ("MONOCHROME2", "INVERSE", True),
    ("MONOCHROME1", "INVERSE", True),     # one inversion described twice: not inverted back
    ("MONOCHROME1", "IDENTITY", True),
    ("MONOCHROME2", "IDENTITY", False),
])
def test_presentation_lut_shape_inverse(tmp_path, photometric, shape, inverted):
    px = _pixels()
    plain, _ = read_dicom(write_dicom(tmp_path / "plain.dcm", px))
    path = _retag(write_dicom(tmp_path / "p.dcm", px, photometric=photometric), "PresentationLUTShape", "CS", shape)
    assert np.allclose(read_image(path), 1.0 - plain if inverted else plain)


def test_presentation_lut_shape_of_a_print_is_refused(tmp_path):
    path = _retag(write_dicom(tmp_path / "p.dcm", _pixels()), "PresentationLUTShape", "CS", "LIN OD")
    with pytest.raises(ImageReadError, match=r"p\.dcm: PresentationLUTShape \(2050,0020\) is 'LIN OD'; "
                                             r"expected IDENTITY or INVERSE"):
        read_image(path)


# ------------------------------------------------------------------ 4. SIIM-ACR RLE conventions
def _kaggle_rle(mask: np.ndarray) -> str:
    """Kaggle's standard RLE, as in stage_2_train.csv: column-major, starts numbered from 1."""
    pixels = np.concatenate([[0], mask.T.reshape(-1).astype(int), [0]])
    runs = np.flatnonzero(pixels[1:] != pixels[:-1]) + 1
    runs[1::2] -= runs[::2]
    return " ".join(map(str, runs))


def _component() -> np.ndarray:
    """A pneumothorax-like component of a 40x32 image: one run in each of six columns."""
    mask = np.zeros((40, 32), bool)
    mask[10:20, 3:9] = True
    return mask


def _stage2_tree(root: Path, encode) -> tuple[Path, list[np.ndarray]]:
    """make_siim_tree with its train-rle.csv rewritten as stage_2_train.csv, runs by ``encode``."""
    root, _ = make_siim_tree(root)
    rows = [line.split(", ") for line in (root / "train-rle.csv").read_text().splitlines()[1:]]
    masks = [rle_decode(run, 32, 40) for _, run in rows if run != "-1"]
    lines = [f"{image_id},{encode(rle_decode(run, 32, 40)) if run != '-1' else '-1'}" for image_id, run in rows]
    (root / "train-rle.csv").unlink()
    (root / "stage_2_train.csv").write_text("ImageId,EncodedPixels\n" + "\n".join(lines) + "\n")
    return root, masks


def test_stage2_absolute_rle_decodes_to_the_same_masks(tmp_path):
    root, masks = _stage2_tree(tmp_path / "siim", _kaggle_rle)
    table, summary = load_dataset("siim-acr", root)
    assert summary.n_skipped == 0 and "stage_2_train.csv: absolute RLE" in summary.notes
    pos = table[table["Pneumothorax"] == 1.0].iloc[0]
    decoded = [decode_mask(entry, (40, 32)) for entry in pos["masks"]]
    assert all(np.array_equal(d, m) for d, m in zip(decoded, masks)) and len(decoded) == len(masks) == 2
    assert [m["rle"] for m in pos["masks"]] == [rle_encode(m) for m in masks]   # kept as relative


def test_relative_rle_in_the_stage2_file_fails_loudly(tmp_path):
    root, _ = _stage2_tree(tmp_path / "siim", rle_encode)
    table, summary = load_dataset("siim-acr", root)
    assert summary.skipped == {"bad mask": 1} and len(table) == 1
    assert "before run 1 ends" in summary.examples["bad mask"][0]


def test_absolute_rle_in_train_rle_fails_loudly(tmp_path):
    root, _ = make_siim_tree(tmp_path / "siim")
    text = (root / "train-rle.csv").read_text()
    for line in text.splitlines()[2:]:
        run = line.split(", ")[1]
        text = text.replace(run, _kaggle_rle(rle_decode(run, 32, 40)))
    (root / "train-rle.csv").write_text(text)
    _, summary = load_dataset("siim-acr", root)
    assert summary.skipped == {"bad mask": 1} and "past the end" in summary.examples["bad mask"][0]


def test_each_convention_decodes_its_own_and_refuses_the_other():
    mask = _component()
    relative, absolute = rle_encode(mask), _kaggle_rle(mask)
    assert relative.split()[0] == "130" and absolute.split()[0] == "131"
    assert np.array_equal(rle_decode(relative, 32, 40, "relative"), mask)
    assert np.array_equal(rle_decode(absolute, 32, 40, "absolute"), mask)
    with pytest.raises(ValueError, match=r"RLE \(absolute\): run 2 starts at pixel 29, before run 1 ends"):
        rle_decode(relative, 32, 40, "absolute")
    with pytest.raises(ValueError, match=r"RLE \(relative\): run \d ends at pixel \d+, past the end of a 32x40"):
        rle_decode(absolute, 32, 40, "relative")
    with pytest.raises(ValueError, match="numbered from 1"):
        rle_decode("0 5", 32, 40, "absolute")


# ------------------------------------------------------------------ 5. the display pipeline, by hand
def _dataset(pixels: np.ndarray, *, photometric: str = "MONOCHROME2", bits_stored: int | None = 12,
             bits_allocated: int = 16, signed: bool = False, **elements) -> pydicom.Dataset:
    """An in-memory single-frame radiograph; ``bits_stored=None`` leaves BitsStored out."""
    from pydicom.dataset import Dataset, FileMetaDataset

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = uid.ExplicitVRLittleEndian
    ds.Rows, ds.Columns = pixels.shape[:2]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated, ds.PixelRepresentation = bits_allocated, int(signed)
    if bits_stored is not None:
        ds.BitsStored, ds.HighBit = bits_stored, bits_stored - 1
    else:
        ds.HighBit = bits_allocated - 1
    kind = {(8, False): np.uint8, (16, False): np.uint16, (16, True): np.int16}[(bits_allocated, signed)]
    ds.PixelData = pixels.astype(kind).tobytes()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for keyword, value in elements.items():
            setattr(ds, keyword, value)
    return ds


def _float(ds, **kwargs) -> np.ndarray:
    from support.data.dicom import dicom_to_float

    out = dicom_to_float(ds, "x.dcm", **kwargs)
    assert out.dtype == np.float32 and out.shape == (ds.Rows, ds.Columns)
    return out.astype(np.float64)


STORED = np.array([[0, 1, 1024], [2047, 3071, 4095]])


@pytest.mark.parametrize("bits", [8, 10, 12, 16])
def test_unsigned_values_are_divided_by_the_largest_stored_value(bits):
    top = 2 ** bits - 1
    px = np.array([[0, 1], [top // 2, top]])
    allocated = 8 if bits == 8 else 16
    np.testing.assert_allclose(_float(_dataset(px, bits_stored=bits, bits_allocated=allocated)),
                               [[0, 1 / top], [(top // 2) / top, 1]], atol=1e-7)


def test_without_bits_stored_the_allocated_bits_decide():
    from support.data.dicom import _modality_range, _stored_range

    ds = _dataset(np.zeros((2, 2)), bits_stored=None, bits_allocated=16)
    assert _stored_range(ds, "x.dcm") == _modality_range(ds, "x.dcm") == (0.0, 65535.0)
    ds = _dataset(np.zeros((2, 2)), bits_stored=None, bits_allocated=8)
    assert _stored_range(ds, "x.dcm") == (0.0, 255.0)
    ds.BitsAllocated = 16
    ds.PixelRepresentation = 1
    assert _stored_range(ds, "x.dcm") == (-32768.0, 32767.0)
    del ds.BitsAllocated, ds.PixelRepresentation   # neither: 8 bits, unsigned
    assert _stored_range(ds, "x.dcm") == (0.0, 255.0)


def test_signed_values_span_their_twos_complement_range():
    px = np.array([[-2048, -1], [0, 2047]])
    np.testing.assert_allclose(_float(_dataset(px, signed=True)),
                               [[0, 2047 / 4095], [2048 / 4095, 1]], atol=1e-7)
    from support.data.dicom import _stored_range
    assert _stored_range(_dataset(px, signed=True), "x.dcm") == (-2048.0, 2047.0)
    assert _stored_range(_dataset(px, signed=True, bits_stored=16), "x.dcm") == (-32768.0, 32767.0)
    assert _stored_range(_dataset(np.abs(px)), "x.dcm") == (0.0, 4095.0)


def test_monochrome1_is_inverted_so_bone_is_bright():
    np.testing.assert_allclose(_float(_dataset(STORED, photometric="MONOCHROME1")), 1 - STORED / 4095, atol=1e-7)
    np.testing.assert_allclose(_float(_dataset(STORED)), STORED / 4095, atol=1e-7)


@pytest.mark.parametrize("shape", ["inverse", " INVERSE "])
def test_presentation_lut_shape_is_read_without_case_or_padding(shape):
    ds = _dataset(STORED, PresentationLUTShape=shape)
    np.testing.assert_allclose(_float(ds), 1 - STORED / 4095, atol=1e-7)
    ds = _dataset(STORED, PresentationLUTShape="")
    np.testing.assert_allclose(_float(ds), STORED / 4095, atol=1e-7)


def test_rescale_maps_stored_values_and_their_range_alike():
    px = np.array([[0, 100], [2000, 4095]])
    # slope 2, intercept -10: values 2p - 10 over the range [-10, 8180], so p / 4095 again
    np.testing.assert_allclose(_float(_dataset(px, RescaleSlope=2, RescaleIntercept=-10)), px / 4095, atol=1e-7)
    # a negative slope reverses the range: 4095 - p over [0, 4095]
    np.testing.assert_allclose(_float(_dataset(px, RescaleSlope=-1, RescaleIntercept=4095)), 1 - px / 4095,
                               atol=1e-7)
    from support.data.dicom import _modality_range
    assert _modality_range(_dataset(px, RescaleSlope=2, RescaleIntercept=-10), "x.dcm") == (-10.0, 8180.0)
    assert _modality_range(_dataset(px, RescaleSlope=-1, RescaleIntercept=4095), "x.dcm") == (0.0, 4095.0)
    assert _modality_range(_dataset(px, signed=True, RescaleSlope=0.5, RescaleIntercept=100),
                           "x.dcm") == (100 - 1024.0, 100 + 1023.5)


def test_rescale_needs_both_slope_and_intercept():
    from support.data.dicom import _modality_range

    px = np.array([[0, 100], [2000, 4095]])
    for elements in ({"RescaleSlope": 2}, {"RescaleIntercept": -10}):
        assert _modality_range(_dataset(px, **elements), "x.dcm") == (0.0, 4095.0)
        np.testing.assert_allclose(_float(_dataset(px, **elements)), px / 4095, atol=1e-7)


def test_modality_lut_sequence_sets_the_range_by_its_depth():
    from pydicom.dataset import Dataset

    from support.data.dicom import _modality_range

    item = Dataset()
    item.add_new(0x00283002, "US", [4, 0, 16])              # LUTDescriptor: 4 entries of 16 bits
    item.add_new(0x00283006, "US", [0, 6553, 32768, 65535])  # LUTData
    item.ModalityLUTType = "US"
    ds = _dataset(np.array([[0, 1], [2, 3]]), ModalityLUTSequence=[item])
    assert _modality_range(ds, "x.dcm") == (0.0, 65535.0)
    np.testing.assert_allclose(_float(ds), [[0, 6553 / 65535], [32768 / 65535, 1]], atol=1e-7)


def _window(x, centre, width):
    """DICOM PS3.3 C.11.2.1.2.1, linear: the window's output as a share of its output range."""
    return np.clip((np.asarray(x, float) - (centre - 0.5)) / (width - 1) + 0.5, 0, 1)


def test_window_maps_centre_to_mid_grey_and_clips_outside():
    ds = _dataset(STORED, WindowCenter=2048, WindowWidth=2048)
    np.testing.assert_allclose(_float(ds), _window(STORED, 2048, 2048), atol=1e-6)
    assert _float(ds)[0, 2] == 0.0 and _float(ds)[1, 1] == 1.0            # the window's own edges
    np.testing.assert_allclose(_float(ds, apply_voi=False), STORED / 4095, atol=1e-7)
    inverted = _dataset(STORED, photometric="MONOCHROME1", WindowCenter=2048, WindowWidth=2048)
    np.testing.assert_allclose(_float(inverted), 1 - _window(STORED, 2048, 2048), atol=1e-6)


def test_window_applies_to_rescaled_values():
    # values 2p - 10; a window centred at 2000 of width 1001 on them
    ds = _dataset(STORED, RescaleSlope=2, RescaleIntercept=-10, WindowCenter=2000, WindowWidth=1001)
    np.testing.assert_allclose(_float(ds), _window(2 * STORED - 10, 2000, 1001), atol=1e-6)
    ds = _dataset(np.array([[700, 1005], [1100, 1300]]), RescaleSlope=2, RescaleIntercept=-10,
                  WindowCenter=2000, WindowWidth=1001)
    np.testing.assert_allclose(_float(ds), _window([[1390, 2000], [2190, 2590]], 2000, 1001), atol=1e-6)


def test_half_a_window_is_no_window():
    for elements in ({"WindowCenter": 2048}, {"WindowWidth": 2048}):
        np.testing.assert_allclose(_float(_dataset(STORED, **elements)), STORED / 4095, atol=1e-7)


def test_voi_lut_output_is_normalised_by_the_lut_range():
    from pydicom.dataset import Dataset

    item = Dataset()
    item.add_new(0x00283002, "US", [3, 0, 16])          # LUTDescriptor: 3 entries from 0
    item.add_new(0x00283006, "US", [1000, 3000, 5000])  # LUTData
    ds = _dataset(np.array([[0, 1], [2, 9]]), VOILUTSequence=[item])
    np.testing.assert_allclose(_float(ds), [[0, 0.5], [1, 1]], atol=1e-7)
    np.testing.assert_allclose(_float(ds, apply_voi=False), np.array([[0, 1], [2, 9]]) / 4095, atol=1e-7)
    # the LUT wins over a window given beside it
    ds.WindowCenter, ds.WindowWidth = 1, 2
    np.testing.assert_allclose(_float(ds), [[0, 0.5], [1, 1]], atol=1e-7)


def test_an_empty_value_range_is_refused():
    ds = _dataset(STORED, RescaleSlope=0, RescaleIntercept=5)
    with pytest.raises(DicomError, match=r"x\.dcm: empty value range \[5\.0, 5\.0\] after the LUT steps"):
        _float(ds)


@pytest.mark.parametrize("frames", [2, "3"])
def test_multi_frame_is_refused(frames):
    ds = _dataset(STORED, NumberOfFrames=frames)
    with pytest.raises(DicomError, match=r"x\.dcm: \d+ frames; expected a single radiograph"):
        _float(ds)


def test_one_frame_declared_is_a_radiograph():
    np.testing.assert_allclose(_float(_dataset(STORED, NumberOfFrames=1)), STORED / 4095, atol=1e-7)


def test_colour_capture_is_read_as_luminance():
    from support.data.dicom import dicom_to_float

    rgb = np.array([[[255, 0, 0], [0, 255, 0]], [[0, 0, 255], [255, 255, 255]]], np.uint8)
    ds = _dataset(np.zeros((2, 2)), bits_stored=8, bits_allocated=8, photometric="RGB")
    ds.SamplesPerPixel, ds.PlanarConfiguration = 3, 0
    ds.PixelData = rgb.tobytes()
    out = dicom_to_float(ds, "x.dcm")
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, [[0.299, 0.587], [0.114, 1.0]], atol=1e-6)


@pytest.mark.parametrize("photometric", ["PALETTE COLOR"])
def test_other_photometric_interpretations_are_refused(photometric):
    with pytest.raises(DicomError, match=rf"x\.dcm: PhotometricInterpretation '{photometric}'; "
                                         r"expected MONOCHROME1/2"):
        _float(_dataset(STORED, photometric=photometric))


def test_window_on_a_negative_rescale_keeps_high_values_bright():
    """A window over the whole modality range changes nothing, whatever the sign of the slope."""
    px = np.array([[0, 1000], [3000, 4095]])
    plain = _float(_dataset(px, RescaleSlope=-1, RescaleIntercept=4095))
    np.testing.assert_allclose(plain, 1 - px / 4095, atol=1e-7)
    windowed = _float(_dataset(px, RescaleSlope=-1, RescaleIntercept=4095, WindowCenter=2048, WindowWidth=4096))
    np.testing.assert_allclose(windowed, _window(4095 - px, 2048, 4096), atol=1e-6)
    np.testing.assert_allclose(windowed, plain, atol=2e-4)
    # values 100 - 2p; the window [-5000, -3000]: p = 0 and 1000 lie above it (white), 3000 and 4095 below
    ds = _dataset(px, RescaleSlope=-2, RescaleIntercept=100, WindowCenter=-4000, WindowWidth=2001)
    np.testing.assert_allclose(_float(ds), [[1, 1], [0, 0]], atol=1e-7)
    ds = _dataset(np.array([[2000, 2050]]), RescaleSlope=-2, RescaleIntercept=100, WindowCenter=-4000,
                  WindowWidth=2001)
    np.testing.assert_allclose(_float(ds), _window([[-3900, -4000]], -4000, 2001), atol=1e-6)


def _set(ds, keyword: str, vr: str, value):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds.add_new(pydicom.datadict.tag_for_keyword(keyword), vr, value)
    return ds


@pytest.mark.parametrize("keyword, vr, value, lo, hi", [
    ("BitsStored", "US", 33, 1, 32), ("BitsStored", "US", 0, 1, 32),
    ("BitsAllocated", "US", 65, 1, 64), ("PixelRepresentation", "US", 2, 0, 1),
])
def test_stored_range_refuses_header_integers_out_of_bounds(keyword, vr, value, lo, hi):
    from support.data.dicom import _modality_range, _stored_range

    ds = _set(_dataset(STORED), keyword, vr, value)
    tag = pydicom.tag.Tag(pydicom.datadict.tag_for_keyword(keyword))
    message = rf"x\.dcm: {keyword} \({tag.group:04X},{tag.element:04X}\) is {value}; expected an integer in {lo}\.\.{hi}"
    with pytest.raises(DicomError, match=message):
        _stored_range(ds, "x.dcm")
    with pytest.raises(DicomError, match=message):
        _modality_range(ds, "x.dcm")


def test_stored_range_at_the_bounds_of_the_header_integers():
    from support.data.dicom import _stored_range

    assert _stored_range(_set(_dataset(STORED), "BitsStored", "US", 1), "x.dcm") == (0.0, 1.0)
    assert _stored_range(_set(_dataset(STORED), "BitsStored", "US", 32), "x.dcm") == (0.0, 2.0 ** 32 - 1)
    ds = _dataset(STORED, bits_stored=None)
    assert _stored_range(_set(ds, "BitsAllocated", "US", 1), "x.dcm") == (0.0, 1.0)
    assert _stored_range(_set(ds, "BitsAllocated", "US", 64), "x.dcm") == (0.0, 2.0 ** 64 - 1)


@pytest.mark.parametrize("keyword", ["RescaleSlope", "RescaleIntercept", "WindowCenter", "WindowWidth"])
def test_non_finite_rescale_or_window_names_the_file_given(keyword):
    ds = _set(_dataset(STORED, RescaleSlope=1, RescaleIntercept=0, WindowCenter=2048, WindowWidth=2048),
              keyword, "DS", "inf")
    with pytest.raises(DicomError, match=rf"^x\.dcm: {keyword} \(0028,10..\) is .*; expected finite numbers"):
        _float(ds)
    if keyword.startswith("Rescale"):
        from support.data.dicom import _modality_range
        with pytest.raises(DicomError, match=rf"^x\.dcm: {keyword} "):
            _modality_range(ds, "x.dcm")


def test_dataset_without_a_path_is_named_as_such():
    from support.data.dicom import dicom_to_float

    with pytest.raises(DicomError, match=r"^<dataset>: 2 frames; expected a single radiograph"):
        dicom_to_float(_dataset(STORED, NumberOfFrames=2))


@pytest.mark.parametrize("value", ["2.5", "0", str(2 ** 31)])
def test_number_of_frames_must_be_a_whole_positive_count(value):
    ds = _set(_dataset(STORED), "NumberOfFrames", "IS" if "." not in value else "DS", value)
    with pytest.raises(DicomError, match=r"^x\.dcm: NumberOfFrames \(0028,0008\) is .*; "
                                         r"expected an integer in 1\.\.2147483647$"):
        _float(ds)


def test_transfer_syntax_without_decoder_names_the_file_given():
    ds = _dataset(STORED)
    ds.file_meta.TransferSyntaxUID = uid.MPEG4HP41
    with pytest.raises(DicomError, match=r"^x\.dcm: transfer syntax MPEG-4 AVC/H\.264 High Profile"):
        _float(ds)


def test_print_lut_shape_names_the_file_given():
    with pytest.raises(DicomError, match=r"^x\.dcm: PresentationLUTShape \(2050,0020\) is 'LIN OD'"):
        _float(_dataset(STORED, PresentationLUTShape="LIN OD"))


def test_ybr_colour_capture_is_converted_before_its_luminance():
    from support.data.dicom import dicom_to_float

    # Y, Cb, Cr: the luminance of a YCbCr pixel is its Y, whatever its chroma
    ybr = np.array([[[128, 100, 150], [200, 140, 110]], [[60, 128, 128], [128, 128, 128]]], np.uint8)
    ds = _dataset(np.zeros((2, 2)), bits_stored=8, bits_allocated=8, photometric="YBR_FULL")
    ds.SamplesPerPixel, ds.PlanarConfiguration = 3, 0
    ds.PixelData = ybr.tobytes()
    np.testing.assert_allclose(dicom_to_float(ds, "x.dcm"), ybr[..., 0] / 255, atol=1.5 / 255)


def test_sixteen_bit_colour_is_divided_by_its_own_range():
    from support.data.dicom import dicom_to_float

    rgb = np.array([[[65535, 0, 0], [0, 0, 65535]], [[32768, 32768, 32768], [65535, 65535, 65535]]], np.uint16)
    ds = _dataset(np.zeros((2, 2)), bits_stored=16, photometric="RGB")
    ds.SamplesPerPixel, ds.PlanarConfiguration = 3, 0
    ds.PixelData = rgb.tobytes()
    np.testing.assert_allclose(dicom_to_float(ds, "x.dcm"), [[0.299, 0.114], [32768 / 65535, 1.0]], atol=1e-6)


@pytest.mark.filterwarnings("ignore:Applying a VOI LUT on a float input")   # the rescaled values are whole
def test_window_reflection_is_only_for_a_window_on_a_negative_rescale():
    from pydicom.dataset import Dataset

    # a positive slope below one: no reflection
    ds = _dataset(STORED, RescaleSlope=0.5, RescaleIntercept=0, WindowCenter=1024, WindowWidth=1024)
    np.testing.assert_allclose(_float(ds), _window(STORED / 2, 1024, 1024), atol=1e-6)
    # a negative slope without an intercept is no rescale: the window is on the stored values
    ds = _dataset(STORED, RescaleSlope=-1, WindowCenter=2048, WindowWidth=2048)
    np.testing.assert_allclose(_float(ds), _window(STORED, 2048, 2048), atol=1e-6)
    # a VOI LUT indexed by the (reversed) rescaled values: its output as it stands
    item = Dataset()
    item.add_new(0x00283002, "US", [4, 0, 16])
    item.add_new(0x00283006, "US", [0, 1000, 2000, 3000])
    ds = _dataset(np.array([[0, 1], [2, 3]]), RescaleSlope=-1, RescaleIntercept=3, VOILUTSequence=[item])
    np.testing.assert_allclose(_float(ds), [[1, 2 / 3], [1 / 3, 0]], atol=1e-7)
