"""Time from upload to cleaned image in the cleanup app, per image size.

``python -m support.benchmarks.cleanup_app [--sizes 256,1024] [--repeats 5] [--browser] [--out r.json]``

On phantom radiographs with burned-in text (one per size, stored as lossless PNG) it times:

- ``handler``: what the app does for one image, models already loaded: read the upload, detect
  (DBNet + markers), erase every detected region (mask, Telea, composite) and write the cleaned
  image, mask and record; and its two halves, ``open_detect`` and ``erase``;
- ``browser`` (``--browser``, needs Debian's chromium and chromium-driver): the same through the
  served page in a headless Chromium, from handing the file to the upload field until the
  download links of the cleaned image show, every region ticked by clicks in between (each tick
  redraws the region view); and its parts, upload -> regions listed, erase click -> downloads.

Model loading is reported once (``load_s``); each figure is the median of ``--repeats`` runs.
"""

from __future__ import annotations

import argparse
import shutil
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any


def phantom_pngs(folder: Path, sizes: list[int], seed: int = 1) -> dict[int, Path]:
    """One phantom image with burned-in text per size, as a lossless PNG in ``folder``."""
    from PIL import Image

    from support.cleanup.pixels import read_pixels
    from support.data.adapters import load_dataset
    from support.phantom import PhantomConfig, generate_phantom

    out = {}
    for size in sizes:
        root = folder / f"phantom-{size}"
        generate_phantom(root, PhantomConfig(n_patients=1, studies_per_patient=(1, 1), image_size=size, seed=seed,
                                             text_share=1.0, lateral_share=0.0), workers=1, progress=False)
        records, _ = load_dataset("mimic-cxr-jpg", root, reports=False)
        out[size] = folder / f"phantom-{size}.png"
        Image.fromarray(read_pixels(records["path"].iloc[0])).save(out[size])
    return out


def chrome(downloads: Path, profile: Path):
    """Headless Debian Chromium under Selenium, downloading into ``downloads`` without asking."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    binary = next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)
    driver_path = shutil.which("chromedriver")
    if binary is None or driver_path is None:
        raise FileNotFoundError("no browser: install Debian's chromium and chromium-driver")
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    # get() returns at once and the waits below poll for the page: on a busy machine a full load of
    # the app's scripts can outlast the driver's 120 s per-command limit
    options.page_load_strategy = "none"
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1400,1500", f"--user-data-dir={profile}"):
        options.add_argument(arg)
    options.add_experimental_option("prefs", {"download.default_directory": str(downloads),
                                              "download.prompt_for_download": False})
    return webdriver.Chrome(service=Service(driver_path), options=options)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def upload_and_erase(driver, url: str, png: Path, timeout: float = 240.0) -> dict[str, Any]:
    """Open the page, upload ``png``, tick every region, erase; seconds from the upload to the
    regions listed and to the cleaned image's download link, and the links' file names."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(driver, timeout)
    driver.get(url)
    field = wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "#upload input[type=file]"))
    start = time.perf_counter()
    field.send_keys(str(png))
    boxes = wait.until(lambda d: d.find_elements(
        By.CSS_SELECTOR, "#regions [data-testid=checkbox-group] input[type=checkbox]"))
    detected = time.perf_counter() - start
    for box in boxes:
        box.click()
    wait.until(lambda d: all(b.is_selected() for b in boxes))
    ticked = time.perf_counter()
    driver.find_element(By.ID, "erase").click()
    links = wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#downloads a[download]"))
    end = time.perf_counter()
    return {"detected_s": detected, "erased_s": end - ticked, "cleaned_s": end - start, "regions": len(boxes),
            "links": links, "names": [a.get_attribute("download") for a in links]}


def run(args) -> dict[str, Any]:
    from support.cleanup.interactive import InteractiveCleanup, open_image

    sizes = [int(s) for s in args.sizes.split(",")]
    with tempfile.TemporaryDirectory(prefix="cleanup-app-bench-") as tmp:
        tmp = Path(tmp)
        pngs = phantom_pngs(tmp, sizes)
        start = time.perf_counter()
        core = InteractiveCleanup(out_dir=tmp / "out")
        result: dict[str, Any] = {"load_s": time.perf_counter() - start, "repeats": args.repeats, "sizes": {}}
        for size, png in pngs.items():
            rows = []
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                image = open_image(png)
                boxes = core.detect(image)
                t1 = time.perf_counter()
                core.erase(image, boxes, range(len(boxes)))
                t2 = time.perf_counter()
                rows.append((t1 - t0, t2 - t1, t2 - t0, len(boxes)))
            result["sizes"][size] = {"regions": rows[0][3],
                                     "open_detect_s": statistics.median(r[0] for r in rows),
                                     "erase_s": statistics.median(r[1] for r in rows),
                                     "handler_s": statistics.median(r[2] for r in rows)}
        if args.browser:
            from support.cleanup.app import build

            page = build(core)
            port = free_port()
            page.queue(default_concurrency_limit=1)
            page.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True,
                        allowed_paths=[str(core.out_dir)], ssr_mode=False)
            driver = chrome(tmp / "downloads", tmp / "profile")
            try:
                for size, png in pngs.items():
                    runs = [upload_and_erase(driver, f"http://127.0.0.1:{port}/", png) for _ in range(args.repeats)]
                    result["sizes"][size].update(
                        {f"browser_{k}": statistics.median(r[k] for r in runs)
                         for k in ("detected_s", "erased_s", "cleaned_s")})
            finally:
                driver.quit()
                page.close()
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m support.benchmarks.cleanup_app", description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="256,1024", help="phantom image sides, comma-separated")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--browser", action="store_true", help="also through the page in headless Chromium")
    ap.add_argument("--out", type=Path, help="write the figures as JSON")
    args = ap.parse_args(argv)
    result = run(args)
    print(f"models loaded in {result['load_s']:.2f} s (once per app); medians of {args.repeats} runs:")
    for size, row in result["sizes"].items():
        line = (f"  {size:>5} px, {row['regions']} regions: upload -> cleaned {row['handler_s']:.3f} s "
                f"(open + detect {row['open_detect_s']:.3f} s, erase + files {row['erase_s']:.3f} s)")
        if "browser_cleaned_s" in row:
            line += (f"; in the browser {row['browser_cleaned_s']:.2f} s (upload -> regions listed "
                     f"{row['browser_detected_s']:.2f} s, erase click -> downloads shown {row['browser_erased_s']:.2f} s, "
                     f"the rest ticking each region)")
        print(line)
    if args.out:
        from support.io import write_json_atomic

        write_json_atomic(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
