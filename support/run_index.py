"""``index.html`` of a run: the notebooks with status, time and links, and the headline metrics."""

from __future__ import annotations

import html
import json
import os
from pathlib import Path

from support.headlines import caption, headline_rows
from support.io import write_text_atomic
from support.runs import RunPaths


def metric_blocks(paths: RunPaths) -> list[str]:
    """Per metrics file: its curated headlines (number, unit, meaning) and links to the whole file
    and the notebook's CSVs."""
    e = html.escape
    blocks = []
    for path in sorted(Path(paths.metrics).glob("*.json")):
        rel = path.relative_to(paths.root)
        csvs = sorted(p.relative_to(paths.root) for p in paths.metrics.glob(f"{path.stem}*.csv"))
        links = " · ".join(f'<a href="{e(str(p))}">{e(p.name)}</a>' for p in [rel, *csvs])
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            blocks.append(f"<h3>{e(path.stem)}</h3><p class='err'>unreadable: {e(str(exc))}</p>")
            continue
        rows, more = headline_rows(path.stem, data if isinstance(data, dict) else {})
        trs = "".join(f"<tr><td>{e(label)}</td><td class='v'>{e(value)}</td><td>{e(unit)}</td>"
                      f"<td class='m'>{e(meaning)}</td></tr>" for label, value, unit, meaning in rows)
        table = (f"<table class='metrics'><tr><th>what</th><th>value</th><th>unit</th><th>how to read it</th></tr>"
                 f"{trs}</table>") if rows else ""
        tail = f"{more} more headline rows and every other figure in " if more else "Every figure in "
        blocks.append(f"<h3>{e(path.stem)}</h3>{table}<p class='links'>{tail}{links}</p>")
    return blocks


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
    blocks = metric_blocks(paths) if paths.metrics.exists() else []
    git = manifest.get("git", {})
    commit = (git.get("commit") or "unknown")[:12] + (" (uncommitted changes)" if git.get("dirty") else "")
    figures = sorted(p.relative_to(paths.root) for p in paths.figures.glob("*.png")) if paths.figures.exists() else []
    fig_html = "".join(f'<figure><a href="{e(str(p))}"><img src="{e(str(p))}" alt="{e(caption(p.stem))}"></a>'
                       f'<figcaption>{e(p.stem[:2])} · {e(caption(p.stem))}</figcaption></figure>' for p in figures)
    parent = manifest.get("parent")
    parent_html = ""
    if parent:
        rel = os.path.relpath(Path(parent["path"]) / "index.html", paths.root)
        parent_html = (f"<p>Started from run <a href=\"{e(rel)}\">{e(parent['run_id'])}</a>: its data, models, "
                       f"samples and metrics, with the notebooks below run again.</p>")
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
.figs {{ display: flex; flex-wrap: wrap; gap: 0.6em; }}
figure {{ margin: 0; max-width: 22em; }} figure img {{ max-height: 180px; max-width: 100%; border: 1px solid #ddd; }}
figcaption {{ font-size: 0.85em; color: #444; }} td.v {{ text-align: right; font-variant-numeric: tabular-nums; }}
td.m, p.links {{ color: #555; font-size: 0.9em; }}
.stand-ins {{ background: #fff4d6; border: 1px solid #e0b84c; padding: 0.5em 1em; }}
</style></head><body>
<h1>Run {e(manifest['run_id'])}</h1>
<p>Profile <b>{e(manifest['profile'])}</b> · status <b>{e(manifest.get('status', ''))}</b> ·
created {e(manifest['created'])} · code {e(commit)} · <a href="manifest.json">manifest.json</a></p>
{parent_html}{stand_ins}
<h2>Notebooks</h2>
<table><tr><th>#</th><th>notebook</th><th>status</th><th>time</th><th>links</th></tr>
{''.join(rows)}</table>
<h2>Headline metrics</h2>
{''.join(blocks) or '<p>No notebook has written metrics/*.json yet.</p>'}
<h2>Figures</h2><div class="figs">{fig_html or '<p>None yet.</p>'}</div>
</body></html>
"""
    write_text_atomic(paths.index, page)
    return paths.index
