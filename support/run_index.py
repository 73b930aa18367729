"""``index.html`` of a run: the notebooks with status, time and links, and the headline metrics."""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any, Iterator

from support.io import write_text_atomic
from support.runs import RunPaths

MAX_METRICS_PER_FILE = 24


def flatten_scalars(obj: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """Numbers, strings and booleans of a nested metrics mapping, keyed by dotted paths."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from flatten_scalars(v, f"{prefix}.{k}" if prefix else str(k))
    elif isinstance(obj, (int, float, str, bool)) or obj is None:
        yield prefix, obj


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def headline_metrics(metrics_dir: Path) -> list[tuple[str, list[tuple[str, Any]]]]:
    out = []
    for path in sorted(Path(metrics_dir).glob("*.json")):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            out.append((path.name, [("error", f"unreadable: {exc}")]))
            continue
        if isinstance(data, dict):
            data = {k: v for k, v in data.items() if k != "stand_ins"}     # the page's banner lists them
        items = list(flatten_scalars(data))
        if len(items) > MAX_METRICS_PER_FILE:
            items = items[:MAX_METRICS_PER_FILE] + [("…", f"{len(items) - MAX_METRICS_PER_FILE} more in {path.name}")]
        out.append((path.name, items))
    return out


def write_index(paths: RunPaths, manifest: dict) -> Path:
    e = html.escape
    rows = []
    for i, nb in enumerate(manifest["notebooks"], 1):
        links = []
        for key, label in (("html", "rendered"), ("output", "notebook"), ("log", "log")):
            rel = nb.get(key)
            if rel and (paths.root / rel).exists():
                links.append(f'<a href="{e(rel)}">{label}</a>')
        dur = f"{nb['duration_s']:.1f} s" if nb.get("duration_s") is not None else ""
        err = f'<div class="err">{e(nb["error"])}</div>' if nb.get("error") else ""
        rows.append(f"<tr class='{e(nb['status'])}'><td>{i}</td><td>{e(nb['name'])}</td>"
                    f"<td>{e(nb['status'])}{err}</td><td>{dur}</td><td>{' · '.join(links)}</td></tr>")
    metric_blocks = []
    for name, items in headline_metrics(paths.metrics):
        trs = "".join(f"<tr><td>{e(k)}</td><td>{e(_fmt(v))}</td></tr>" for k, v in items)
        metric_blocks.append(f"<h3>{e(name)}</h3><table class='metrics'>{trs}</table>")
    git = manifest.get("git", {})
    commit = (git.get("commit") or "unknown")[:12] + (" (uncommitted changes)" if git.get("dirty") else "")
    figures = sorted(p.relative_to(paths.root) for p in paths.figures.glob("*.png")) if paths.figures.exists() else []
    fig_html = "".join(f'<a href="{e(str(p))}"><img src="{e(str(p))}" alt="{e(p.name)}"></a>' for p in figures)
    stand_ins = "".join(f"<li><b>{e(p['parameter'])}</b>: {e(p['stand_in'])} in place of {e(p['published'])}</li>"
                        for p in manifest.get("stand_ins") or [])
    if stand_ins:
        stand_ins = (f"<div class='stand-ins'><b>Stand-ins:</b> this run does not reproduce the published "
                     f"systems in full.<ul>{stand_ins}</ul></div>")
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Run {e(manifest['run_id'])}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; max-width: 70em; }}
table {{ border-collapse: collapse; margin-bottom: 1em; }}
td, th {{ border: 1px solid #ccc; padding: 0.3em 0.7em; text-align: left; vertical-align: top; }}
tr.ok td:nth-child(3) {{ color: #176117; }} tr.failed td:nth-child(3), .err {{ color: #a11; }}
tr.pending td, tr.running td {{ color: #777; }}
.figs img {{ max-height: 180px; margin: 0.3em; border: 1px solid #ddd; }}
.stand-ins {{ background: #fff4d6; border: 1px solid #e0b84c; padding: 0.5em 1em; }}
</style></head><body>
<h1>Run {e(manifest['run_id'])}</h1>
<p>Profile <b>{e(manifest['profile'])}</b> · status <b>{e(manifest.get('status', ''))}</b> ·
created {e(manifest['created'])} · code {e(commit)} · <a href="manifest.json">manifest.json</a></p>
{stand_ins}
<h2>Notebooks</h2>
<table><tr><th>#</th><th>notebook</th><th>status</th><th>time</th><th>links</th></tr>
{''.join(rows)}</table>
<h2>Headline metrics</h2>
{''.join(metric_blocks) or '<p>No notebook has written metrics/*.json yet.</p>'}
<h2>Figures</h2><div class="figs">{fig_html or '<p>None yet.</p>'}</div>
</body></html>
"""
    write_text_atomic(paths.index, page)
    return paths.index
