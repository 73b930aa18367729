"""The cleanup app's handlers, called directly: open, detect, erase the chosen regions only, files
and record, boxes drawn by hand, bad input as messages, the whole-folder cleaner, the command."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from support.cleanup import Cleaner, CleanupConfig, DetectConfig
from support.cleanup.app import CleanupApp
from support.cleanup.interactive import (
    InputError, InteractiveCleanup, draw_regions, list_folder, manual_box, open_image, preview, region_label,
)
from support.cleanup.pixels import read_pixels

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def core(tmp_path_factory):
    return InteractiveCleanup(out_dir=tmp_path_factory.mktemp("app-out"))


@pytest.fixture(scope="module")
def ui(core):
    return CleanupApp(core)


@pytest.fixture(scope="module")
def opened(core, text_phantom):
    _, images = text_phantom
    dicom, png, text = images[0]
    image = open_image(png)
    return image, core.detect(image), text


def _state():
    return {"image": None, "boxes": [], "corner": None, "folder": None, "listing": {}}


def test_an_upload_is_read_with_its_own_pixels_and_both_detectors_report(opened, text_phantom):
    image, boxes, _ = opened
    assert image.pixels.dtype == np.uint8 and image.pixels.shape == (256, 256)
    assert np.array_equal(image.pixels, np.asarray(Image.open(text_phantom[1][0][1])))
    assert image.read_as == "8-bit grayscale PNG" and image.note == ""
    assert {b.source for b in boxes} == {"dbnet", "marker"}
    assert [b.source for b in boxes] == sorted((b.source for b in boxes), key=["dbnet", "marker"].index)
    label = region_label(0, boxes[0])
    assert label.startswith("1 · DBNet text ") and f"{boxes[0].score:.2f}" in label


def test_erasing_chosen_regions_changes_only_their_mask_and_writes_the_files(core, opened):
    image, boxes, _ = opened
    chosen = [i for i, b in enumerate(boxes) if b.source == "dbnet"][:1]
    done = core.erase(image, boxes, chosen, "telea")
    result = done.result
    assert result.backend == "telea" and result.changed
    assert np.array_equal(result.image[~result.mask], image.pixels[~result.mask])
    assert (result.image[result.mask] != image.pixels[result.mask]).mean() > 0.3
    box = boxes[chosen[0]]
    assert result.mask[int(box.y0):int(box.y1), int(box.x0):int(box.x1)].all()
    # a region not chosen, away from the chosen one, is left as it was
    far = [b for i, b in enumerate(boxes) if i not in chosen and (b.y0 > box.y1 + 20 or b.y1 < box.y0 - 20)]
    assert far, "the phantom image should have text in two places"
    for b in far:
        assert not result.mask[int(b.y0):int(b.y1), int(b.x0):int(b.x1)].any()
    # the files: the cleaned pixels and mask bit for bit, a record of what was erased and kept
    assert np.array_equal(read_pixels(done.files["image"]), result.image)
    assert np.array_equal(read_pixels(done.files["mask"]) == 255, result.mask)
    record = json.loads(done.files["record"].read_text())
    assert [r["region"] for r in record["erased"]] == [chosen[0] + 1]
    assert record["erased"][0]["source"] == "dbnet" and record["erased"][0]["score"] == round(box.score, 4)
    assert len(record["kept"]) == len(boxes) - 1
    assert record["mask_pixels"] == int(result.mask.sum()) and record["backend"] == "telea"
    assert record["config"]["inpaint"]["backend"] == "telea"


def test_erasing_every_region_is_the_batch_cleaners_result(core, opened):
    image, boxes, text = opened
    done = core.erase(image, boxes, range(len(boxes)))
    batch = Cleaner(CleanupConfig()).clean(image.pixels)
    assert np.array_equal(done.result.mask, batch.mask) and np.array_equal(done.result.image, batch.image)
    changed = done.result.image != image.pixels
    assert changed[text].mean() > 0.9 and not changed[~done.result.mask].any()


def test_a_box_drawn_by_hand_is_erased_alone(core, opened):
    image, boxes, _ = opened
    box = manual_box((120, 140), (100, 125), image.pixels.shape)     # corners in any order
    assert (box.x0, box.y0, box.x1, box.y1, box.source) == (100, 125, 121, 141, "manual")
    assert manual_box((-5, 300), (10, 250), image.pixels.shape).y1 == 256   # clipped to the image
    done = core.erase(image, [*boxes, box], [len(boxes)])
    ys, xs = np.nonzero(done.result.mask)
    # its polygon filled as a marker's (corner pixels included), grown by grow_px (4) and dilated
    # twice by a 5x5 square (4 more); nothing else
    assert (xs.min(), ys.min(), xs.max(), ys.max()) == (100 - 8, 125 - 8, 121 + 8, 141 + 8)
    assert done.record["erased"][0]["source"] == "manual"


def test_the_page_handlers_open_tick_draw_and_erase(ui, text_phantom):
    png = text_phantom[1][0][1]
    state, view, regions, table, before, after, files, status = ui.open_upload(str(png), _state())
    n = len(state["boxes"])
    assert view.shape == (256, 256, 3) and len(regions.choices) == n == len(table) and regions.value == []
    assert status.startswith("**Opened**") and f"{n} region(s)" in status and "8-bit grayscale PNG" in status
    thick = ui.redraw([0], state)
    assert (thick != view).any()          # the ticked region is drawn thicker
    state, *_ , message = ui.click(state, [0], (10, 10))
    assert state["corner"] == (10, 10) and message.startswith("**Corner**")
    state, view, regions, table, message = ui.click(state, [0], (30, 20))
    assert len(state["boxes"]) == n + 1 and regions.value == [0, n] and table[-1][1] == "drawn box"
    before, after, files, message = ui.erase(state, regions.value, "telea")
    assert message.startswith("**Erased**: 2 region(s)") and [f.rsplit("-", 1)[-1] for f in files] == \
        ["cleaned.png", "mask.png", "erased.json"]
    assert np.array_equal(before, state["image"].pixels) and (after != before).any()
    state, view, regions, table = ui.clear_drawn(state, [0, n])
    assert len(state["boxes"]) == n and regions.value == [0]


def test_bad_uploads_come_back_as_messages(ui, tmp_path, monkeypatch):
    text = tmp_path / "notes.txt"
    text.write_text("not an image")
    *_, status = ui.open_upload(str(text), _state())
    assert status == "**Cannot open this file**: notes.txt: not an image Pillow can identify"
    truncated = tmp_path / "cut.png"
    Image.fromarray(np.full((64, 64), 9, np.uint8)).save(truncated)
    truncated.write_bytes(truncated.read_bytes()[:60])
    state, view, *_, status = ui.open_upload(str(truncated), _state())
    assert status.startswith("**Cannot open this file**: cut.png: ") and view is None and state["image"] is None
    # the loaders' pixel bound, read from the header before decoding
    from support.data import images
    monkeypatch.setattr(images, "MAX_PIXELS", 100 * 100)
    Image.fromarray(np.zeros((101, 100), np.uint8)).save(tmp_path / "big.png")
    *_, status = ui.open_upload(str(tmp_path / "big.png"), _state())
    assert "big.png: 100x101 pixels, more than MAX\\_PIXELS=10000" in status
    from test_integrity_formats import _png_header
    bomb = _png_header(tmp_path / "bomb.png", 30000, 30000)      # a few bytes declaring 900 megapixels
    *_, status = ui.open_upload(str(bomb), _state())
    assert status.startswith("**Cannot open this file**: bomb.png: ") and "decompression bomb" in status
    *_, status = ui.open_upload(None, _state())
    assert "no file uploaded" in status
    # nothing to erase, nothing ticked, a backend not given
    assert ui.erase(_state(), [], "telea")[-1] == "**No image**: open an image first"
    with pytest.raises(InputError, match="no region is ticked"):
        ui.core.erase(open_image(_write(tmp_path / "a.png", np.zeros((32, 32), np.uint8))), [], [])
    with pytest.raises(InputError, match=r"backend 'sd' is not available here; expected one of \['telea'\]"):
        ui.core.cleaner("sd")


def _write(path, array):
    Image.fromarray(array).save(path)
    return path


def test_sixteen_bit_png_is_cleaned_in_its_own_bits(ui, opened, tmp_path):
    image8, boxes, _ = opened
    deep = image8.pixels.astype(np.uint16) * 200 + 1000       # a 16-bit film that does not span 0..65535
    png = tmp_path / "deep.png"
    Image.fromarray(deep).save(png)           # mode I;16
    state, *_, status = ui.open_upload(str(png), _state())
    image = state["image"]
    assert image.pixels.dtype == np.uint16 and np.array_equal(image.pixels, deep)
    assert "16-bit grayscale PNG" in status and "cleaned and saved in its own 16 bits" in image.note
    assert len(state["boxes"]) == len(boxes)     # stretched to 8 bits, the detectors see the same film
    done = ui.core.erase(image, state["boxes"], range(len(state["boxes"])))
    saved = read_pixels(done.files["image"])
    assert saved.dtype == np.uint16 and np.array_equal(saved, done.result.image)
    assert np.array_equal(saved[~done.result.mask], deep[~done.result.mask])
    assert np.array_equal(preview(image.pixels), image8.pixels)   # the preview undoes the stretch exactly


def test_a_dicom_is_read_for_display_and_its_header_stays_behind(ui, tmp_path):
    from test_adapters import IDENTIFIERS, write_dicom

    from support.cleanup.synthetic import synthetic_text_images

    item = synthetic_text_images(1, 256, seed=9, p_no_text=0.0)[0]
    dcm = write_dicom(tmp_path / "film.dcm", item.image.astype(np.uint16) * 16, bits_stored=12,
                      photometric="MONOCHROME1")
    state, view, *_, status = ui.open_upload(str(dcm), _state())
    image = state["image"]
    assert image.pixels.dtype == np.uint16 and image.read_as == "DICOM (display values, 16 bit)"
    assert "MONOCHROME1 inverted" in image.note and "DICOM 256x256, 12-bit stored" in image.note
    # MONOCHROME1: low values are white, so the burned-in (bright) text comes out dark
    assert image.pixels[item.text_mask].mean() < image.pixels[~item.text_mask].mean()
    done = ui.core.erase(image, state["boxes"] + [manual_box((0, 0), (40, 40), image.pixels.shape)],
                         [len(state["boxes"])])
    written = b"".join(p.read_bytes() for p in done.files.values())
    assert not any(ident.encode() in written for ident in IDENTIFIERS)


def test_a_non_image_named_dcm_is_refused_with_a_message(ui, tmp_path):
    fake = tmp_path / "scan.dcm"
    fake.write_bytes(b"\0" * 300)
    *_, status = ui.open_upload(str(fake), _state())
    assert status.startswith("**Cannot open this file**: scan.dcm")
    assert str(tmp_path) not in status         # the upload's temp folder is not shown


def test_regions_are_drawn_in_their_detectors_colours_and_ticked_ones_thicker():
    from support.cleanup.detect import TextBox

    def box(x0, y0, x1, y1, source):
        return TextBox(x0, y0, x1, y1, 0.9, source, np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], np.float32))

    gray = np.full((200, 200), 40, np.uint8)
    boxes = [box(20, 30, 60, 50, "dbnet"), box(100, 120, 140, 160, "marker"), box(150, 20, 190, 60, "manual")]
    drawn = draw_regions(gray, boxes, [1])
    assert drawn.shape == (200, 200, 3) and np.array_equal(gray, np.full((200, 200), 40))   # input untouched
    assert tuple(drawn[49, 40]) == (255, 140, 0) and tuple(drawn[40, 20]) == (255, 140, 0)   # DBNet orange
    assert tuple(drawn[159, 120]) == (0, 200, 255)                                            # marker blue
    cyan = lambda im: (im == (0, 200, 255)).all(axis=2).sum()
    assert cyan(drawn) > 1.5 * cyan(draw_regions(gray, boxes, []))                              # ticked: thicker
    assert tuple(drawn[58, 170]) == (40, 40, 40) and tuple(drawn[59, 170]) == (255, 0, 200)   # drawn box: 1 px
    assert tuple(drawn[100, 100]) == (40, 40, 40)


def test_folders_list_their_images_and_the_whole_folder_is_cleaned(core, ui, text_phantom, tmp_path):
    root, images = text_phantom
    listing = list_folder(root)
    assert len(listing) == len(images) and all(p.suffix == ".jpg" for p in listing.values())
    plain = list_folder(root.parent)                 # any folder: its image files, below it too
    assert {p.name for p in plain.values()} >= {p.name for _, p, _ in images}
    with pytest.raises(InputError, match="not a folder"):
        list_folder(tmp_path / "missing")
    state, picked, status = ui.list_images(None, str(root), _state())
    assert len(picked.choices) == len(images) and state["folder"] == str(root)
    out = ui.open_listed(picked.choices[0][0], state)
    assert out[-1].startswith("**Opened**")
    summary, status = ui.apply_to_folder(state, str(tmp_path / "cleaned"), "telea")
    assert summary["cleaned"] == len(images) and summary["skipped"] == 0, status
    assert (tmp_path / "cleaned" / "cleanup" / "records.csv").is_file()
    summary, status = ui.apply_to_folder({**state, "folder": str(root.parent)}, str(tmp_path / "c2"), "telea")
    assert summary is None and "needs a dataset in the MIMIC-CXR-JPG layout" in status


def test_backends_share_the_detector_and_load_once(tmp_path, opened):
    from support.cleanup.config import cleanup_config
    from support.cleanup.tiny_models import write_tiny_ddpm

    ddpm = write_tiny_ddpm(tmp_path / "ddpm", sample_size=32)
    config = cleanup_config({"inpaint": {"repaint_steps": 4, "jump_length": 2, "jump_n_sample": 1}})
    core = InteractiveCleanup(config, ddpm_path=ddpm, out_dir=tmp_path / "out")
    assert core.backends == ["telea", "repaint"]
    repaint = core.cleaner("repaint")
    assert repaint is core.cleaner("repaint") and repaint.detector is core.base.detector
    image, boxes, _ = opened
    done = core.erase(image, boxes, [0], "repaint")
    assert done.result.backend == "repaint" and done.record["config"]["inpaint"]["repaint_steps"] == 4
    assert np.array_equal(done.result.image[~done.result.mask], image.pixels[~done.result.mask])
    with pytest.raises(ValueError, match="its detect settings differ"):
        Cleaner(CleanupConfig(detect=DetectConfig(markers=False)), share=core.base)
    with pytest.raises(FileNotFoundError, match="not a diffusers pipeline folder"):
        InteractiveCleanup(sd_path=tmp_path, out_dir=tmp_path / "out")


def test_the_command_is_reachable_and_checks_its_options(capsys):
    from support import cli

    assert cli.main(["cleanup-app", "--port", "0"]) == 2
    assert "--port 0: expected 1..65535" in capsys.readouterr().err
    with pytest.raises(SystemExit) as stop:
        cli.main(["cleanup-app", "--help"])
    assert stop.value.code == 0 and "--run" in capsys.readouterr().out
    assert cli.main(["cleanup-app", "--run", "/nonexistent/run", "--port", "7999"]) == 1
    assert "--run /nonexistent/run: not a folder" in capsys.readouterr().err
