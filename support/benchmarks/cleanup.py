"""Throughput and quality of text removal per backend, against the original's flow.

``python -m support.benchmarks.cleanup [--patients 30] [--size 256] [--backends telea,repaint,sd] [--out r.json]``

On the project's phantom (``support.phantom``: burned-in laterality markers, view words, dates
and times with known masks and clean twins) or, with ``--data synthetic``, on the simpler set of
:mod:`support.cleanup.synthetic`, it measures per inpainting backend:

- quality: detection recall/precision (and per detector), text-pixel recall of the removal
  mask, PSNR/SSIM inside the text mask against the clean twin before and after;
- ``batched``: images/s of :class:`support.cleanup.Cleaner` on arrays, models loaded once,
  with seconds per image of each stage;
- ``dataset``: images/s end to end of :func:`support.cleanup.clean_dataset` on the set written
  in the MIMIC-CXR-JPG layout (JPEG decode, cleanup, JPEG encode, masks, records), model
  loading included;
- ``naive``: the original's flow, every model loaded again for each image (one image at a time).

SD and RePaint need weights (``--sd-path``, ``--ddpm-path``); without them, small randomly
initialised models of the same architectures stand in, so the numbers time the code path
(loading, batching, resizing) but their quality columns mean nothing and are marked so.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

FULL_STEPS = {"sd_steps": 50, "sd_resolution": 512, "repaint_steps": 250, "jump_length": 10, "jump_n_sample": 10}
TINY_STEPS = {"sd_steps": 10, "sd_resolution": 128, "repaint_steps": 20, "jump_length": 5, "jump_n_sample": 2}


def _config(backend: str, args, paths: dict[str, str]):
    from support.cleanup import CleanupConfig, DetectConfig, InpaintConfig, MaskConfig

    inpaint: dict[str, Any] = {"backend": backend, "device": args.device}
    if backend == "sd":
        inpaint.update(sd_path=paths["sd"], sd_steps=args.sd_steps, sd_resolution=args.sd_resolution)
    if backend == "repaint":
        inpaint.update(ddpm_path=paths["ddpm"], repaint_steps=args.repaint_steps, jump_length=args.jump_length,
                       jump_n_sample=args.jump_n_sample)
    mask = MaskConfig(device=args.device)
    if args.sam_checkpoint:
        mask = dataclasses.replace(mask, sam_checkpoint=args.sam_checkpoint, sam_kind=args.sam_kind)
    return CleanupConfig(detect=DetectConfig(onnx_threads=args.threads, device=args.device), mask=mask,
                         inpaint=InpaintConfig(**inpaint), batch_size=args.batch_size, seed=args.seed)


def run(args) -> dict[str, Any]:
    import torch

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="cleanup-bench-") as tmp:
        return _run(args, Path(tmp))


def _run(args, tmp: Path) -> dict[str, Any]:
    from support.cleanup import Cleaner, clean_dataset, evaluate_cleanup, load_text_truth
    from support.cleanup.synthetic import synthetic_text_images, write_text_dataset
    from support.cleanup.tiny_models import write_tiny_ddpm, write_tiny_sd_inpaint

    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    paths, tiny = {}, {}
    for name, given, writer in (("sd", args.sd_path, write_tiny_sd_inpaint), ("ddpm", args.ddpm_path, write_tiny_ddpm)):
        backend = "sd" if name == "sd" else "repaint"
        if backend not in backends:
            continue
        tiny[backend] = not given
        paths[name] = str(given) if given else str(writer(tmp / f"tiny-{name}"))
    for key, published in FULL_STEPS.items():    # settings not given: the published ones, smaller on tiny models
        if getattr(args, key) is None:
            setattr(args, key, TINY_STEPS[key] if tiny.get("sd" if key.startswith("sd") else "repaint") else published)

    src = tmp / "source"
    if args.data == "phantom":
        from support.phantom import PhantomConfig, generate_phantom

        generate_phantom(src, PhantomConfig(n_patients=args.patients, image_size=args.size, seed=args.seed,
                                            text_share=args.text_share), workers=1, progress=False)
    else:
        write_text_dataset(src, synthetic_text_images(args.images, args.size, seed=args.seed), seed=args.seed)
    truth = load_text_truth(src)
    arrays = truth.images

    result: dict[str, Any] = {"data": args.data, "images": len(arrays),
                              "images_with_text": sum(bool(m.any()) for m in truth.text_masks), "size": args.size,
                              "threads": args.threads, "batch_size": args.batch_size, "backends": {}}
    for backend in backends:
        cfg = _config(backend, args, paths)
        cleaner = Cleaner(cfg)
        cleaner.clean(arrays[0])          # warm-up: first-call allocations and kernel selection
        table = evaluate_cleanup(arrays, truth.text_masks, truth.clean_images, truth.items, {backend: cleaner},
                                 progress=False)
        row = table.iloc[0].to_dict()
        stage_s = {k[2:]: v for k, v in row.items() if k.startswith("s_") and not math.isnan(v)}

        start = time.perf_counter()
        fresh = Cleaner(cfg)              # end to end: loading, reading, cleaning, writing
        summary = clean_dataset(src, tmp / f"cleaned-{backend}", cleaner=fresh, progress=False)
        e2e = time.perf_counter() - start

        n_naive = min(args.naive_images, len(arrays))
        start = time.perf_counter()
        for image in arrays[:n_naive]:
            Cleaner(cfg).clean(image)     # their flow: every model loaded again for every image
        naive = time.perf_counter() - start

        result["backends"][backend] = {
            "tiny_random_weights": bool(tiny.get(backend, False)),
            "quality": {k: row[k] for k in ("det_recall", "det_precision", "recall_dbnet", "precision_dbnet",
                                            "recall_marker", "precision_marker", "pixel_recall", "mask_iou",
                                            "psnr_before", "psnr_after", "psnr_gain", "ssim_before", "ssim_after",
                                            "false_alarm_images", "outside_changed_pixels")},
            "images_per_s": {"batched": row["images_per_s"],
                             "dataset_end_to_end": (summary["cleaned"] + summary["unchanged"]) / e2e,
                             "naive_reload_per_image": n_naive / naive if naive > 0 else math.inf},
            "load_s": row["load_s"],
            "seconds_per_image": {**stage_s, "read": summary["seconds_per_image"].get("read", 0.0),
                                  "write": summary["seconds_per_image"].get("write", 0.0)},
            "settings": {k: v for k, v in dataclasses.asdict(cfg.inpaint).items()
                         if k in ("backend", "sd_steps", "sd_resolution", "guidance_scale", "repaint_steps",
                                  "jump_length", "jump_n_sample")},
        }
    return result


# ------------------------------------------------------------------------------------ suite
SUITE_SIZES = {"toy": dict(images=2, size=64), "default": dict(images=4, size=256),
               "gpu": dict(images=16, size=512)}


def clean_one(config_json: Path, image: Path, out: Path) -> None:
    """The original's flow for one image, in its own process: load every model, clean, write."""
    import numpy as np

    from support.cleanup import Cleaner
    from support.cleanup.config import cleanup_config
    from support.io import read_json

    cleaner = Cleaner(cleanup_config(read_json(config_json), source=str(config_json)))
    result = cleaner.clean(np.load(image))
    with open(out, "wb") as fh:
        np.save(fh, result.image)


def process_per_image(config_json: Path, images: list[Path], out: Path):
    """Peak RSS (MiB) of the largest child: one ``python -m support.benchmarks.cleanup --one``
    per image, each loading every model again."""
    import os
    import subprocess

    peak = 0.0
    for path in images:
        cmd = [sys.executable, "-m", "support.benchmarks.cleanup", "--one", str(config_json), str(path),
               str(out / path.name)]
        child = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        _, status, usage = os.wait4(child.pid, 0)
        child.returncode = os.waitstatus_to_exitcode(status)
        err = child.stderr.read().decode(errors="replace")
        child.stderr.close()
        if child.returncode:
            raise RuntimeError(f"{' '.join(cmd)} exited {child.returncode}: {err[-2000:]}")
        peak = max(peak, usage.ru_maxrss / 1024)        # KiB on Linux
    return peak


def suite_cases(size: str, device) -> list:
    """The suite's cleanup row: the batched cleaner (models loaded once per call) against the
    original's flow, one process per image loading every model (Telea inpainting, the default)."""
    import numpy as np

    from support.benchmarks.runner import Case, Work
    from support.cleanup import Cleaner, CleanupConfig
    from support.cleanup.synthetic import synthetic_text_images
    from support.core.config import config_dict
    from support.io import write_json_atomic

    s = SUITE_SIZES[size]
    config = CleanupConfig()
    images = [t.image for t in synthetic_text_images(s["images"], s["size"], seed=0, p_no_text=0.0)]
    tmp = Path(tempfile.mkdtemp(prefix="cleanup-suite-"))
    config_json = tmp / "config.json"
    write_json_atomic(config_json, config_dict(config))
    paths = []
    for i, image in enumerate(images):
        paths.append(tmp / f"image-{i}.npy")
        np.save(paths[-1], image)
    (tmp / "out").mkdir()

    def ours():
        Cleaner(config).clean_all(images, progress=False)
        return Work(len(images))

    def peer():
        return Work(len(images), peak_rss_mib=process_per_image(config_json, paths, tmp / "out"))

    return [Case("cleanup", f"text removal ({config.inpaint.backend}), {s['size']} px", "images/s", ours, peer,
                 "one process per image reloading every model", batch=len(images),
                 # ours warms up by loading the models once; the peer is cold by design (a fresh process per image)
                 warm_ours=lambda: Cleaner(config).clean(images[0]), warm_peer=lambda: None,
                 notes="peer RSS: the largest child's peak; ours: growth in this process",
                 close=lambda: shutil.rmtree(tmp))]


def _print(result: dict[str, Any]) -> None:
    print(f"text removal on {result['images']} {result['data']} images ({result['images_with_text']} with text) "
          f"at {result['size']} px, {result['threads']} thread(s), batches of {result['batch_size']}")
    print(f"\n{'backend':10s} {'batched':>9s} {'dataset':>9s} {'naive':>9s} {'speed-up':>9s}   images/s "
          f"(dataset: end to end with JPEG I/O and loading; naive: models reloaded per image)")
    for name, r in result["backends"].items():
        ips = r["images_per_s"]
        note = "  (tiny random weights: timing only)" if r["tiny_random_weights"] else ""
        print(f"{name:10s} {ips['batched']:9.2f} {ips['dataset_end_to_end']:9.2f} {ips['naive_reload_per_image']:9.2f} "
              f"{ips['dataset_end_to_end'] / ips['naive_reload_per_image']:8.1f}x{note}")
    stages = sorted({s for r in result["backends"].values() for s in r["seconds_per_image"]},
                    key=lambda s: ("dbnet", "markers", "segment", "dilate", "inpaint", "composite", "read",
                                   "write").index(s) if s in ("dbnet", "markers", "segment", "dilate", "inpaint",
                                                              "composite", "read", "write") else 99)
    print(f"\n{'ms/image':10s} " + " ".join(f"{s:>9s}" for s in stages))
    for name, r in result["backends"].items():
        print(f"{name:10s} " + " ".join(f"{1000 * r['seconds_per_image'].get(s, 0.0):9.2f}" for s in stages))
    keys = ("det_recall", "det_precision", "recall_dbnet", "recall_marker", "pixel_recall", "mask_iou",
            "psnr_before", "psnr_after", "psnr_gain", "ssim_before", "ssim_after", "outside_changed_pixels")
    print(f"\n{'quality':10s} " + " ".join(f"{k:>13s}" for k in keys))
    for name, r in result["backends"].items():
        print(f"{name:10s} " + " ".join(f"{float(r['quality'][k]):13.3f}" for k in keys)
              + ("  (meaningless: random weights)" if r["tiny_random_weights"] else ""))


def main(argv: list[str] | None = None) -> int:
    from support.io import write_json_atomic

    parser = argparse.ArgumentParser(prog="python -m support.benchmarks.cleanup", description=__doc__.split("\n")[0])
    parser.add_argument("--data", default="phantom", choices=("phantom", "synthetic"),
                        help="the project's phantom (support.phantom) or the simpler synthetic set")
    parser.add_argument("--patients", type=int, default=30, help="phantom patients (about 3 images each)")
    parser.add_argument("--text-share", type=float, default=0.6, help="phantom images with burned-in text")
    parser.add_argument("--images", type=int, default=96, help="synthetic images")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--backends", default="telea,repaint,sd", help="comma-separated: telea, repaint, sd")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--naive-images", type=int, default=8, help="images run through the reload-per-image flow")
    parser.add_argument("--threads", type=int, default=1, help="torch and onnxruntime threads")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--sd-path", default=None, help="StableDiffusionInpaintPipeline folder")
    parser.add_argument("--ddpm-path", default=None, help="DDPMPipeline folder of the DDPM stage")
    parser.add_argument("--sam-checkpoint", default=None)
    parser.add_argument("--sam-kind", default="vit_h", choices=("vit_b", "vit_l", "vit_h"))
    for key, published in FULL_STEPS.items():
        parser.add_argument(f"--{key.replace('_', '-')}", type=int, default=None,
                            help=f"default {published} ({TINY_STEPS[key]} on tiny weights)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="also write the result as JSON here")
    parser.add_argument("--one", nargs=3, type=Path, metavar=("CONFIG", "IMAGE", "OUT"),
                        help="clean one .npy image with a fresh cleaner (the suite's peer, one process per image)")
    args = parser.parse_args(argv)
    if args.one:
        clean_one(*args.one)
        return 0
    result = run(args)
    _print(result)
    if args.out:
        write_json_atomic(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
