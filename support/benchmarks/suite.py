"""Every stage against its peer in one run: one table (JSON, CSV, a figure) and the table printed.

``synthcxr bench [--size toy|default] [--stages ddpm,lora,...] [--out outputs/bench]``
(``python -m support.benchmarks.suite``)

Each stage module gives its rows as :class:`~support.benchmarks.runner.Case` objects
(``suite_cases(size, device)``): ours and the peer doing the same work at the same size.
:func:`~support.benchmarks.runner.measure` runs them interleaved (ours, peer, ours, peer, ...),
warm-up dropped, and reports the median rate with its interquartile range, the ratio ours / peer
with the range of the per-round ratios, and peak memory (CPU RSS growth; CUDA max allocated). Then
the speed switches of the training loop, each on against off (:mod:`support.benchmarks.switches`),
and the scaling rows (:mod:`support.benchmarks.scaling`): training and sharded sampling on 1 and 2
processes, with the efficiency. Every run writes into a new folder ``<out>/<UTC time>/``
(``bench.json``, ``bench.csv``, ``scaling.csv``, ``bench.png``); no run overwrites another's.

Sizes: ``toy`` (seconds per stage, for the test), ``default`` (the README's figures: small
networks on the CPU, at most about 15 minutes on 2 cores), and on CUDA ``default`` picks the
published sizes where a stage has them (DDPM at I-SynMed's 256 px, LoRA on SD 2.1-base at 512 px).
The peers that are not project dependencies install apart (``make bench-deps``); a missing peer
is an error naming that command.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import pandas as pd
import torch

STAGES = ("ddpm", "lora", "cleanup", "dino", "cmcgns", "xgem", "switches")
SIZES = ("toy", "default")
ROUNDS = {"toy": (2, 1), "default": (3, 1)}          # (measured rounds, warm-up rounds dropped)
COLUMNS = ("stage", "task", "batch", "unit", "ours_rate", "ours_q1", "ours_q3", "peer_rate", "peer_q1", "peer_q3",
           "ratio", "ratio_min", "ratio_max", "ours_peak_rss_mib", "peer_peak_rss_mib", "peer", "rounds")


def new_run_folder(root: str | os.PathLike) -> Path:
    """``root/<UTC time>/``, created here; a name taken by another run gets a suffix."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    for n in range(1000):
        folder = root / (stamp if n == 0 else f"{stamp}-{n}")
        try:
            folder.mkdir()
            return folder
        except FileExistsError:
            continue
    raise FileExistsError(f"{root}: 1000 runs named {stamp}*; clean it up")


def stage_size(size: str, device: torch.device) -> str:
    """The stage modules' size name: ``gpu`` for ``default`` on CUDA."""
    return "gpu" if size == "default" and device.type == "cuda" else size


def run_cases(stages: Sequence[str], size: str, device: torch.device, rounds: int, warmup: int,
              progress: bool = True) -> list[dict[str, Any]]:
    """Every stage's rows, measured; a stage's models are freed before the next one is built."""
    from support.benchmarks.runner import measure

    rows = []
    for stage in stages:
        tick = time.perf_counter()
        cases = importlib.import_module(f"support.benchmarks.{stage}").suite_cases(stage_size(size, device), device)
        for case in cases:
            try:
                row = measure(case, rounds, warmup, device)
            finally:
                if case.close is not None:
                    case.close()
            rows.append(row)
            if progress:
                print(f"  {row['stage']:8s} {row['task']:34s} batch {row['batch'] or '-':>3}  "
                      f"ratio {row['ratio']:7.2f}  [{row['ratio_min']:.2f}, {row['ratio_max']:.2f}]", flush=True)
        del cases
        if progress:
            print(f"{stage}: {time.perf_counter() - tick:.0f} s", flush=True)
    return rows


def format_table(table: pd.DataFrame) -> str:
    """The table as printed: rates as median [q1, q3], the ratio with its per-round range; rows
    measured in fewer rounds than the others are starred."""
    max_rounds = int(table["rounds"].max())
    def spread(side: str):
        return table.apply(lambda r: f"{r[f'{side}_rate']:.3g} [{r[f'{side}_q1']:.3g}, {r[f'{side}_q3']:.3g}]",
                           axis=1)

    shown = pd.DataFrame({
        "stage": table["stage"], "task": table["task"], "batch": table["batch"].map(
            lambda b: "-" if pd.isna(b) else str(int(b))), "unit": table["unit"],
        "ours": spread("ours"), "peer": spread("peer"),
        "ours/peer": table.apply(lambda r: f"{r['ratio']:.2f} [{r['ratio_min']:.2f}, {r['ratio_max']:.2f}]", axis=1),
        "RSS MiB ours/peer": table.apply(lambda r: f"{r['ours_peak_rss_mib']:.0f}/{r['peer_peak_rss_mib']:.0f}",
                                         axis=1),
        # fewer rounds than the suite's (the costliest rows): their spread rests on that many pairs
        "rounds": table["rounds"].map(lambda n: f"{int(n)}" + ("*" if int(n) < max_rounds else "")),
        "peer is": table["peer"]})
    if "ours_cuda_peak_mib" in table:
        shown.insert(8, "CUDA MiB ours/peer", table.apply(
            lambda r: f"{r['ours_cuda_peak_mib']:.0f}/{r['peer_cuda_peak_mib']:.0f}", axis=1))
    if "ours_mfu" in table:
        shown.insert(8, "MFU ours", table["ours_mfu"].map(lambda v: "-" if pd.isna(v) else f"{v:.1%}"))
    text = shown.to_string(index=False)
    few = int((table["rounds"] < max_rounds).sum())
    if few:
        text += f"\n* {few} rows measured in fewer than {max_rounds} rounds (the costliest): fewer pairs behind their range"
    return text


def plot(table: pd.DataFrame, scaling: pd.DataFrame | None):
    """Ratio ours / peer per row (log scale, per-round range as error bars); scaling efficiency."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import seaborn as sns

    labels = [f"{r.stage}: {r.task}" + (f" (b={int(r.batch)})" if not pd.isna(r.batch) else "")
              for r in table.itertuples()]
    panels = 2 if scaling is not None and len(scaling) else 1
    fig, axes = plt.subplots(1, panels, figsize=(7 * panels, 0.32 * len(table) + 1.5), squeeze=False)
    ax = axes[0, 0]
    colors = sns.color_palette("tab10", n_colors=table["stage"].nunique())
    color_of = dict(zip(table["stage"].unique(), colors))
    y = range(len(table))
    ax.barh(list(y), table["ratio"], color=[color_of[s] for s in table["stage"]],
            xerr=[table["ratio"] - table["ratio_min"], table["ratio_max"] - table["ratio"]], capsize=2)
    ax.set_yticks(list(y), labels, fontsize=7)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.axvline(1.0, color="black", lw=0.8)
    ax.set_xlabel("throughput ours / peer (median; bars: per-round range)")
    if panels == 2:
        sns.barplot(scaling, x="what", y="efficiency", hue="processes", ax=axes[0, 1])
        axes[0, 1].axhline(1.0, color="black", lw=0.8)
        axes[0, 1].set(title="scaling: rate / (processes x rate on 1)", xlabel="")
        axes[0, 1].tick_params(axis="x", labelsize=7, rotation=15)
    fig.tight_layout()
    return fig


def environment(device: torch.device) -> dict[str, Any]:
    out = {"device": str(device), "torch": torch.__version__, "python": platform.python_version(),
           "machine": platform.machine(), "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
           "load_average_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None}
    if device.type == "cuda":
        out["gpu"] = torch.cuda.get_device_name(device)
    return out


def write_outputs(folder: Path, table: pd.DataFrame, scaling: pd.DataFrame | None, meta: dict[str, Any]) -> None:
    from support.io import write_json_atomic, write_text_atomic

    def records(frame: pd.DataFrame) -> list[dict[str, Any]]:     # a stage's own columns are null elsewhere
        return frame.astype(object).where(frame.notna(), None).to_dict("records")

    write_json_atomic(folder / "bench.json", {**meta, "rows": records(table),
                                               "scaling": None if scaling is None else records(scaling)})
    write_text_atomic(folder / "bench.csv", table.to_csv(index=False))
    if scaling is not None:
        write_text_atomic(folder / "scaling.csv", scaling.to_csv(index=False))
    fig = plot(table, scaling)
    tmp = folder / ".bench.png.tmp"
    fig.savefig(tmp, dpi=120, format="png")
    os.replace(tmp, folder / "bench.png")
    import matplotlib.pyplot as plt

    plt.close(fig)


def run_suite(size: str = "default", stages: Sequence[str] = STAGES, device: str = "auto",
              out: str | os.PathLike = "outputs/bench", scaling: bool = True, threads: int | None = None,
              progress: bool = True) -> tuple[pd.DataFrame, pd.DataFrame | None, Path]:
    """Measure every stage against its peer (and the scaling rows); write and return the tables
    and the run's folder."""
    from support.devices import pick_device

    if size not in SIZES:
        raise ValueError(f"--size {size!r}: expected one of {', '.join(SIZES)}")
    unknown = sorted(set(stages) - set(STAGES))
    if unknown:
        raise ValueError(f"--stages: unknown {unknown}; expected a subset of {', '.join(STAGES)}")
    if threads:
        torch.set_num_threads(threads)
    dev = pick_device(device)
    folder = new_run_folder(out)
    rounds, warmup = ROUNDS[size]
    started = dt.datetime.now(dt.timezone.utc)
    tick = time.perf_counter()
    meta = {"size": size, "stages": list(stages), "rounds": rounds, "warmup_rounds": warmup,
            "started_utc": started.isoformat(timespec="seconds"), **environment(dev)}
    table = pd.DataFrame(run_cases(stages, size, dev, rounds, warmup, progress))
    table = table[[*COLUMNS, *(c for c in table.columns if c not in COLUMNS)]]
    scale = None
    if scaling:
        from support.benchmarks.scaling import run_scaling

        scale = pd.DataFrame(run_scaling(size, progress=progress))
    meta["seconds"] = time.perf_counter() - tick
    write_outputs(folder, table, scale, meta)
    return table, scale, folder


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="synthcxr bench", description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="default", choices=SIZES, help="toy: seconds (the test); default: the figures")
    ap.add_argument("--stages", default=",".join(STAGES), help=f"comma-separated subset of {','.join(STAGES)}")
    ap.add_argument("--no-scaling", action="store_true", help="skip the 1 vs 2 process rows")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's own)")
    ap.add_argument("--out", type=Path, default=Path("outputs/bench"), help="runs go into OUT/<UTC time>/")
    args = ap.parse_args(argv)
    os.environ.setdefault("TQDM_DISABLE", "1")    # the peers' progress bars; the suite prints its rows
    stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    table, scale, folder = run_suite(args.size, stages, args.device, args.out, not args.no_scaling, args.threads)
    print()
    print(format_table(table))
    if scale is not None:
        print()
        print(scale.to_string(index=False, float_format=lambda v: f"{v:.3g}"))
    print(f"\n{folder}: bench.json, bench.csv, bench.png" + (", scaling.csv" if scale is not None else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
