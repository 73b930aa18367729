"""Phantom throughput: studies per second with 1 worker and with a process pool, and where the
time goes (anatomy, projection, writing).

    python -m support.benchmarks.phantom --patients 60 --size 256 --workers 1 2

Both runs write the same dataset (same seed) into temporary folders; the benchmark also checks
that they are byte-identical.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import tempfile
import time
from pathlib import Path

from support.phantom import PhantomConfig, generate_phantom


def tree_digest(root: Path) -> str:
    """SHA-256 over every file's relative path and bytes, in sorted order."""
    h = hashlib.sha256()
    for path in sorted(p for p in Path(root).rglob("*") if p.is_file()):
        h.update(str(path.relative_to(root)).encode("utf-8"))
        h.update(path.read_bytes())
    return h.hexdigest()


def run(patients: int, size: int, workers: list[int], seed: int = 0) -> list[dict]:
    """Generate the same dataset once per worker count; returns one summary per run."""
    results = []
    with tempfile.TemporaryDirectory(prefix="phantom-bench-") as tmp:
        for w in workers:
            config = PhantomConfig(n_patients=patients, image_size=size, seed=seed)
            root = Path(tmp) / f"workers-{w}"
            cpu0 = time.process_time()
            summary = generate_phantom(root, config, workers=w, progress=False)
            summary["main_cpu_seconds"] = time.process_time() - cpu0
            summary["digest"] = tree_digest(root)
            results.append(summary)
    return results


def report(results: list[dict]) -> str:
    lines = []
    for r in results:
        n = max(r["rendered_studies"], 1)
        st = r["stage_seconds"]
        worker_total = st["anatomy"] + st["projection"] + st["report"] + st["writing"]
        lines.append(
            f"workers={r['workers']}: {r['studies']} studies ({r['images']} images, {r['image_size'] if 'image_size' in r else ''}"
            .rstrip(", ") + f") in {r['seconds']:.1f} s -> {r['studies_per_second']:.2f} studies/s")
        lines.append(
            "  per study (worker time): "
            f"anatomy {1e3 * st['anatomy'] / n:.0f} ms, projection {1e3 * st['projection'] / n:.0f} ms, "
            f"report {1e3 * st['report'] / n:.0f} ms, writing {1e3 * (st['writing'] + st['recording']) / n:.0f} ms "
            f"(of which main-process recording {1e3 * st['recording'] / n:.0f} ms); "
            f"worker CPU {1e3 * r.get('cpu_seconds', 0.0) / n:.0f} ms/study")
        share = {k: 100 * v / max(worker_total + st["recording"], 1e-9) for k, v in st.items()}
        lines.append("  split: " + ", ".join(f"{k} {v:.0f}%" for k, v in share.items()))
    digests = {r["digest"] for r in results}
    lines.append("identical output across worker counts: " + ("yes" if len(digests) == 1 else "NO"))
    lines.append(f"cores visible: {os.cpu_count()}, load average: {os.getloadavg()[0]:.2f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--patients", type=int, default=60)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    print(report(run(args.patients, args.size, args.workers, args.seed)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
