"""Model cards: a ``README.md`` in every model folder a run saves, so a folder copied elsewhere
still says what it is, what it learned from, how well it did and what it may be used for.

A card names the dataset by kind and fingerprint, never by path, and carries no identifier of
the data: the runner writes it from the run's manifest and the notebook's metrics file.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping

from support.headlines import headline_rows
from support.io import write_text_atomic

CARD = "README.md"

USE = ("Synthetic-data research use only: a model trained by this toolkit for research on synthetic "
       "chest X-ray data. It is not a medical device and must not inform the care of any patient.")


def _plain(value: Any) -> Any:
    """A parameter value as a card shows it: a local path becomes "(a local path)"."""
    if isinstance(value, str) and (os.path.isabs(value) or value.startswith(("~", "../", "./"))):
        return "(a local path)"
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def model_card(name: str, notebook: str, manifest: Mapping[str, Any], metrics: Mapping[str, Any],
               has_config: bool) -> str:
    """The card's Markdown text for the model folder ``name`` that ``notebook`` saved."""
    fingerprint = manifest.get("dataset_fingerprint") or {}
    git = manifest.get("git") or {}
    params = {k: v for k, v in (manifest.get("parameters") or {}).get(notebook, {}).items() if k != "run_dir"}
    stand_ins = manifest.get("stand_ins") or []
    lines = [f"# {name}", "",
             f"Saved by notebook `{notebook}` of run `{manifest.get('run_id', '?')}` "
             f"(profile `{manifest.get('profile', '?')}`, commit `{str(git.get('commit', '?'))[:12]}`"
             f"{', uncommitted changes' if git.get('dirty') else ''}, {manifest.get('created', '?')}).", "",
             "## Trained on", ""]
    if fingerprint.get("sha256"):
        lines.append(f"- dataset kind `{fingerprint.get('kind', '?')}`, fingerprint `sha256:{fingerprint['sha256'][:16]}`")
    else:
        lines.append("- the run's dataset (no fingerprint was recorded)")
    lines += [f"- stand-in: {s}" for s in stand_ins]
    lines += ["", "## Configuration", "", "The notebook's parameters:", "", "```json",
              json.dumps(_plain(params), indent=2, sort_keys=True, default=str), "```"]
    if has_config:
        lines += ["", "The full training configuration is `config.json` beside this file."]
    rows, _ = headline_rows(notebook, metrics)         # the same curated figures as the run's index.html
    lines += ["", "## Headline metrics", ""]
    if rows:
        lines += [f"- {label}: {value} {unit}".rstrip() + (f" ({meaning})" if meaning else "")
                  for label, value, unit, meaning in rows]
        lines.append(f"\nEvery figure of the notebook is in the run's `metrics/{notebook}.json`.")
    else:
        lines.append(f"No headline figures; the notebook's numbers are in the run's `metrics/{notebook}.json`.")
    lines += ["", "## Use", "", USE, ""]
    return "\n".join(lines)


def write_model_cards(models_dir: str | os.PathLike, notebook: str, manifest: Mapping[str, Any],
                      metrics: Mapping[str, Any]) -> list[Path]:
    """A card in every folder of ``models_dir`` that has none yet (the ones ``notebook`` just
    saved); returns the cards written."""
    models_dir = Path(models_dir)
    written = []
    for folder in sorted(p for p in models_dir.iterdir() if p.is_dir() and not p.name.startswith(".")) if models_dir.is_dir() else []:
        if (folder / CARD).exists():
            continue
        text = model_card(folder.name, notebook, manifest, metrics, (folder / "config.json").is_file())
        write_text_atomic(folder / CARD, text, durable=False)
        written.append(folder / CARD)
    return written
