"""The measurement shared by every stage: one case, ours and its peer, interleaved in one process.

A :class:`Case` holds two callables doing the same work, ours and the peer's. Each call returns a
:class:`Work`: how many items it processed and, when the callable timed its own measured part
(a trainer's per-update meter, which leaves set-up out), those seconds; otherwise the call's wall
time counts. :func:`measure` runs ours, peer, ours, peer, ... so load from other processes hits
both alike, drops the warm-up rounds (first-call allocations, kernel choice), and reports the
median rate of each side with its interquartile range, the ratio ours / peer with the range of the
per-round ratios, and the peak memory of each call: CPU RSS growth over the call (sampled from
``/proc/self/statm`` by a thread, or the child's peak for work done in a subprocess) and, on CUDA,
``torch.cuda.max_memory_allocated``.
"""

from __future__ import annotations

import gc
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch

PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
MIB = 2 ** 20


@dataclass
class Work:
    """What one call did: ``items`` processed; ``seconds`` when it timed its measured part itself;
    ``peak_rss_mib`` when the work ran in a child process (its own peak RSS)."""

    items: float
    seconds: float | None = None
    peak_rss_mib: float | None = None


@dataclass
class Case:
    """One row of the table: ours and the peer doing the same ``task`` at the same size."""

    stage: str
    task: str
    unit: str                                   # e.g. "images/s"
    ours: Callable[[], Work]
    peer: Callable[[], Work]
    peer_name: str
    batch: int | None = None
    warm_ours: Callable[[], Any] | None = None   # a cheap call that warms up in place of a dropped round
    warm_peer: Callable[[], Any] | None = None
    flops_per_item: float | None = None          # training FLOPs per item, for MFU on CUDA
    rounds: int | None = None                    # fewer rounds than the suite's for the costliest rows
    notes: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    close: Callable[[], Any] | None = None       # frees what the case holds (temporary folders)


def current_rss() -> int:
    """Resident set size of this process in bytes (Linux: /proc/self/statm; elsewhere psutil)."""
    try:
        with open("/proc/self/statm", "rb") as fh:
            return int(fh.read().split()[1]) * PAGE
    except FileNotFoundError:
        import psutil

        return psutil.Process().memory_info().rss


class PeakRSS:
    """The highest RSS seen while the block runs, sampled every ``interval`` seconds by a thread."""

    def __init__(self, interval: float = 0.002):
        self.interval, self.peak, self.start = interval, 0, 0
        self._stop = threading.Event()

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, current_rss())
            self._stop.wait(self.interval)

    def __enter__(self) -> "PeakRSS":
        self.start = self.peak = current_rss()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, current_rss())

    @property
    def growth_mib(self) -> float:
        return (self.peak - self.start) / MIB


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_call(fn: Callable[[], Work], device: torch.device) -> dict[str, float]:
    """One call of ``fn``: its rate (items per measured second) and its peak memory."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    _sync(device)
    with PeakRSS() as rss:
        start = time.perf_counter()
        work = fn()
        _sync(device)
        wall = time.perf_counter() - start
    if not isinstance(work, Work):
        raise TypeError(f"a benchmark callable returned {type(work).__name__}; expected Work(items, seconds)")
    seconds = work.seconds if work.seconds is not None else wall
    if not (seconds > 0 and work.items > 0):
        raise ValueError(f"a benchmark call measured {work.items} items in {seconds} s; both must be positive")
    out = {"rate": work.items / seconds, "seconds": seconds, "wall_s": wall,
           "peak_rss_mib": work.peak_rss_mib if work.peak_rss_mib is not None else rss.growth_mib}
    if device.type == "cuda":
        out["cuda_peak_mib"] = torch.cuda.max_memory_allocated(device) / MIB
    return out


def _quartiles(values: list[float]) -> tuple[float, float, float]:
    q1, med, q3 = np.percentile(values, [25, 50, 75])
    return float(q1), float(med), float(q3)


def measure(case: Case, rounds: int = 3, warmup: int = 1, device: torch.device | str = "cpu") -> dict[str, Any]:
    """Ours and the peer alternately for ``warmup + rounds`` rounds, warm-up dropped; one table row.

    With ``warm_ours``/``warm_peer`` each side is warmed by that cheap call instead, and every
    round counts (a no-op where the callables drop their own warm-up updates, as the trainer's
    meter does). ``case.rounds`` caps the rounds for rows too costly for the suite's count.
    """
    if rounds < 1 or warmup < 0:
        raise ValueError(f"rounds {rounds} (at least 1) and warmup {warmup} (0 or more)")
    device = torch.device(device)
    rounds = min(rounds, case.rounds or rounds)
    if case.warm_ours is not None or case.warm_peer is not None:
        for warm in (case.warm_ours, case.warm_peer):
            if warm is not None:
                warm()
        warmup = 0
    calls: dict[str, list[dict[str, float]]] = {"ours": [], "peer": []}
    for i in range(warmup + rounds):
        for side, fn in (("ours", case.ours), ("peer", case.peer)):
            call = timed_call(fn, device)
            if i >= warmup:
                calls[side].append(call)
    row: dict[str, Any] = {"stage": case.stage, "task": case.task, "batch": case.batch, "unit": case.unit,
                           "peer": case.peer_name, "rounds": rounds}
    for side, kept in calls.items():
        q1, med, q3 = _quartiles([c["rate"] for c in kept])
        row.update({f"{side}_rate": med, f"{side}_q1": q1, f"{side}_q3": q3,
                    f"{side}_peak_rss_mib": max(c["peak_rss_mib"] for c in kept)})
        if device.type == "cuda":
            row[f"{side}_cuda_peak_mib"] = max(c["cuda_peak_mib"] for c in kept)
    paired = [o["rate"] / p["rate"] for o, p in zip(calls["ours"], calls["peer"])]
    row.update({"ratio": row["ours_rate"] / row["peer_rate"], "ratio_min": min(paired), "ratio_max": max(paired)})
    if case.flops_per_item is not None and device.type == "cuda":
        from support.benchmarks.gpu import mfu

        row["ours_mfu"] = mfu(case.flops_per_item * row["ours_rate"], device)
        row["peer_mfu"] = mfu(case.flops_per_item * row["peer_rate"], device)
    row["notes"] = case.notes
    row.update(case.extra)
    return row

