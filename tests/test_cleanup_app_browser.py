"""The cleanup app as a person uses it: a real Chromium, driven by Selenium, against the served page.

Upload a file that is not an image (a message, the server stays up), then a phantom radiograph
with burned-in text; tick every detected region, erase, download the cleaned image and its mask,
and check that the text pixels changed and no pixel outside the mask did. Needs Debian's ``chromium`` and ``chromium-driver`` (``.ci/run`` installs them when it can);
skipped, saying so, where they are missing.
"""

import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from support.benchmarks.cleanup_app import chrome, free_port, upload_and_erase

pytestmark = pytest.mark.browser

WAIT_S = 240          # a loaded 2-core machine: page, detection and inpainting each well within this


def _launch(out_dir: Path):
    """The app on a free local port; a port taken between the probe and the bind is tried again."""
    from support.cleanup.app import launch

    for attempt in range(3):
        port = free_port()
        try:
            return launch(port=port, out_dir=out_dir, quiet=True), port
        except OSError:
            if attempt == 2:
                raise


def _downloaded(folder: Path, name: str) -> Path:
    """The file once Chromium has finished writing it (no .crdownload beside it)."""
    deadline = time.monotonic() + WAIT_S
    path = folder / name
    while time.monotonic() < deadline:
        if path.is_file() and not any(folder.glob("*.crdownload")):
            return path
        time.sleep(0.2)
    raise AssertionError(f"{name} was not downloaded into {folder}: {os.listdir(folder)}")


def test_upload_tick_every_region_erase_and_download(text_phantom, tmp_path):
    if not (shutil.which("chromium") or shutil.which("chromium-browser")) or not shutil.which("chromedriver"):
        pytest.skip("no browser: Debian's chromium and chromium-driver are not installed "
                    "(.ci/run installs them as root or with passwordless sudo)")
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    _, images = text_phantom
    dicom, png, text = images[0]
    original = np.asarray(Image.open(png))
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    notes = tmp_path / "notes.txt"
    notes.write_text("not an image")
    page, port = _launch(tmp_path / "app")
    driver = None
    try:
        driver = chrome(downloads, tmp_path / "profile")
        # a file that is not an image: a message naming it on the page, and the server keeps serving
        url = f"http://127.0.0.1:{port}/"
        driver.get(url)
        wait = WebDriverWait(driver, WAIT_S)
        wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "#upload input[type=file]")).send_keys(str(notes))
        wait.until(lambda d: "Cannot open this file" in d.find_element(By.ID, "status").text)
        assert driver.find_element(By.ID, "status").text == \
            "Cannot open this file: notes.txt: not an image Pillow can identify"
        done = upload_and_erase(driver, url, png, WAIT_S)
        assert done["names"] == [f"{dicom}-cleaned.png", f"{dicom}-mask.png", f"{dicom}-erased.json"]
        status = driver.find_element(By.ID, "status").text
        assert f"Erased: {done['regions']} region(s) of {png.name}" in status
        for link in done["links"]:
            link.click()
        cleaned = np.asarray(Image.open(_downloaded(downloads, done["names"][0])))
        mask = np.asarray(Image.open(_downloaded(downloads, done["names"][1]))) == 255
        assert _downloaded(downloads, done["names"][2]).stat().st_size > 0
    finally:
        if driver is not None:
            driver.quit()
        page.close()
    assert done["regions"] >= 2
    assert cleaned.shape == original.shape and cleaned.dtype == original.dtype
    assert np.array_equal(cleaned[~mask], original[~mask])        # nothing outside the mask changed
    assert (cleaned != original)[text].mean() > 0.9                # the burned-in text did
