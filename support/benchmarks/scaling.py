"""Scaling across processes: DDPM training and sharded DDPM sampling on 1 and 2 processes.

Each setting runs in a fresh interpreter (one torch thread per process, gloo on the CPU, NCCL on
CUDA with one GPU per process; with fewer GPUs than processes, CPU processes), as a shell user would start it: training through
``launch_training`` (accelerate's ``notebook_launcher``), sampling through ``accelerate launch -m
support.benchmarks.scaling sample`` (the shared sample writer: seeds sharded, each sample written
once). The rate is the run's own: training images/s of every process together after the warm-up
updates (the trainer's meter), sampling images/s of the writer loop (model loading left out).
Efficiency = rate on n processes / (n x rate on 1).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

SIZES = {"toy": dict(profile="test", resolution=16, batch=4, updates=3, warmup=1, samples=8, steps=3, sample_batch=2),
         "default": dict(profile="test", resolution=32, batch=16, updates=12, warmup=3, samples=64, steps=25,
                         sample_batch=16),
         "gpu": dict(profile="full", resolution=256, batch=8, updates=20, warmup=5, samples=256, steps=25,
                     sample_batch=32)}
PROCESSES = (1, 2)


def _env(cuda: bool) -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    if not cuda:
        env["CUDA_VISIBLE_DEVICES"] = ""
    return env


def _run(cmd: list[str], env: dict[str, str]) -> str:
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    return proc.stdout


def train_worker(size: str, processes: int, out: Path) -> None:
    """One training run on ``processes`` processes; the history lands in ``out/history.json``."""
    import torch

    from support.core.trainer import free_port
    from support.ddpm.config import ddpm_config
    from support.ddpm.data import SyntheticDiscs
    from support.ddpm.train import launch_training

    s = SIZES[size]
    total = s["warmup"] + s["updates"]
    cpu = not torch.cuda.is_available()
    config = ddpm_config(s["profile"], {"unet": {"sample_size": s["resolution"]}, "train": {
        "max_steps": total, "batch_size": s["batch"], "gradient_accumulation_steps": 1, "log_every": 1,
        "checkpoint_every": total, "validate_every": 0, "sample_grid_size": 1, "sample_grid_steps": 1,
        "resume": None, "cpu": cpu}})
    data = SyntheticDiscs(s["batch"] * processes * total, s["resolution"])
    launch_training(config, data, out, num_processes=processes, port=free_port())


def sample_worker(pipeline: Path, root: Path, size: str, summary: Path) -> None:
    """Sharded sampling of the size's sample count (run under ``accelerate launch``)."""
    from accelerate import PartialState

    from support.ddpm.config import sampling_config
    from support.ddpm.sampling import sample_to_dataset
    from support.io import write_json_atomic

    s = SIZES[size]
    cfg = sampling_config("test", {"num_samples": s["samples"], "batch_size": s["sample_batch"], "steps": s["steps"],
                                   "sampler": "dpmsolver++", "device": "auto", "dtype": "auto"})
    result = sample_to_dataset(pipeline, root, cfg, progress=False)
    if PartialState().is_main_process:
        write_json_atomic(summary, result)


def run_scaling(size: str, progress: bool = True) -> list[dict[str, Any]]:
    """The scaling rows: what, processes, rate, unit, efficiency."""
    import torch

    cuda = torch.cuda.device_count() >= max(PROCESSES)    # one GPU per process; else CPU processes (gloo)
    size = "gpu" if size == "default" and cuda else size
    s = SIZES[size]
    env = _env(cuda)
    backend = "NCCL" if cuda else "gloo, CPU"
    me = [sys.executable, "-m", "support.benchmarks.scaling"]
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="scaling-") as tmp:
        tmp = Path(tmp)
        for n in PROCESSES:
            out = tmp / f"train-{n}"
            _run([*me, "train", "--size", size, "--processes", str(n), "--out", str(out)], env)
            history = json.loads((out / "history.json").read_text())
            rate = statistics.median(history["images_per_s"][s["warmup"]:])
            rows.append({"what": f"DDPM training, {s['resolution']} px, batch {s['batch']} per process ({backend})",
                         "processes": n, "rate": rate, "unit": "images/s"})
        pipeline = tmp / "train-1" / "pipeline"
        for n in PROCESSES:
            summary = tmp / f"sample-{n}.json"
            launch = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(n),
                      "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
            if n > 1:   # accelerate's torchrun launcher; without GPUs the processes form a gloo group
                from support.core.trainer import free_port

                launch += ["--multi_gpu", "--main_process_port", str(free_port())]
            _run([*launch, "-m", "support.benchmarks.scaling", "sample", "--size", size, "--pipeline", str(pipeline),
                  "--root", str(tmp / f"samples-{n}"), "--summary", str(summary)], env)
            result = json.loads(summary.read_text())
            if result["generated"] != s["samples"] or result["processes"] != n:
                raise RuntimeError(f"sharded sampling on {n} processes: {result}")
            rows.append({"what": f"DDPM sampling, DPM-Solver++ {s['steps']} steps, batch {s['sample_batch']} ({backend})",
                         "processes": n, "rate": result["images_per_s"], "unit": "images/s"})
    for row in rows:
        one = next(r["rate"] for r in rows if r["what"] == row["what"] and r["processes"] == 1)
        row["efficiency"] = row["rate"] / (row["processes"] * one)
        if progress:
            print(f"  scaling  {row['what']:52s} x{row['processes']}  {row['rate']:8.2f} {row['unit']}  "
                  f"efficiency {row['efficiency']:.2f}", flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m support.benchmarks.scaling", description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="command")
    ap.add_argument("--size", default="default", choices=tuple(SIZES))
    train = sub.add_parser("train", help="one training run (a worker of the suite)")
    train.add_argument("--size", default="toy", choices=tuple(SIZES))
    train.add_argument("--processes", type=int, required=True)
    train.add_argument("--out", type=Path, required=True)
    sample = sub.add_parser("sample", help="sharded sampling (a worker, under accelerate launch)")
    sample.add_argument("--size", default="toy", choices=tuple(SIZES))
    sample.add_argument("--pipeline", type=Path, required=True)
    sample.add_argument("--root", type=Path, required=True)
    sample.add_argument("--summary", type=Path, required=True)
    args = ap.parse_args(argv)
    if args.command == "train":
        train_worker(args.size, args.processes, args.out)
    elif args.command == "sample":
        sample_worker(args.pipeline, args.root, args.size, args.summary)
    else:
        for row in run_scaling(args.size):
            print(json.dumps(row))
    return 0


if __name__ == "__main__":
    sys.exit(main())
