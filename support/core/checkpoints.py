"""Checkpoint folders that are complete or absent, and checked before they are trusted.

A checkpoint ``checkpoint-<step>`` is assembled in a hidden folder and renamed into place in
one step. Its ``state.json`` is written last and records the SHA-256 of every other file, so
resuming verifies what it reads: a truncated, zero-byte or bit-flipped file is named, the
checkpoint is set aside (renamed ``*.corrupt``) and training resumes from the previous complete
one. Tensors are safetensors and everything else JSON: nothing is unpickled.

The training state here (optimizer, LR schedule, grad scaler, every rank's RNG states) is what
the trainer adds to a system's own files (weights, EMA, adapters).
"""

from __future__ import annotations

import os
import random
import re
import shutil
import warnings
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from support.io import atomic_directory, load_state_dict, read_json, save_state_dict, sha256_file, write_json_atomic

CHECKPOINT_RE = re.compile(r"checkpoint-(\d+)")
STATE_JSON = "state.json"      # written last: it marks a complete checkpoint and holds the checksums
FORMAT = "support.core.checkpoint/1"


class CorruptCheckpointError(ValueError):
    """A checkpoint whose files do not match the checksums recorded when it was written."""

    def __init__(self, path: Path, reason: str):
        self.path, self.reason = Path(path), reason
        super().__init__(f"{path}: {reason}")


# ------------------------------------------------------------------------------------ RNG states
def rng_state() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """This process's python, numpy and torch (CPU and CUDA) generator states as (tensors, JSON)."""
    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i in range(torch.cuda.device_count()):
            tensors[f"cuda{i}"] = torch.cuda.get_rng_state(i)
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    tensors["numpy"] = torch.from_numpy(np.asarray(keys, dtype=np.int64))
    version, internal, gauss_next = random.getstate()
    tensors["python"] = torch.tensor(internal, dtype=torch.int64)
    meta = {"numpy": [kind, int(pos), int(has_gauss), float(cached)],
            "python": [int(version), gauss_next]}
    return tensors, meta


def set_rng_state(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` captured."""
    torch.set_rng_state(tensors["torch"].to(torch.uint8))
    for key, value in tensors.items():
        if key.startswith("cuda") and torch.cuda.is_available():
            index = int(key[4:])
            if index < torch.cuda.device_count():
                torch.cuda.set_rng_state(value.to(torch.uint8), index)
    kind, pos, has_gauss, cached = meta["numpy"]
    np.random.set_state((kind, tensors["numpy"].numpy().astype(np.uint32), pos, has_gauss, cached))
    version, gauss_next = meta["python"]
    random.setstate((version, tuple(int(v) for v in tensors["python"].tolist()), gauss_next))


# ------------------------------------------------------------------------------------ optimizer
def optimizer_to_files(state: dict) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors, scalars = {}, {}
    for pid, per_param in state["state"].items():
        for key, value in per_param.items():
            if torch.is_tensor(value):
                tensors[f"{pid}.{key}"] = value
            else:
                scalars[f"{pid}.{key}"] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def optimizer_from_files(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict:
    state: dict[int, dict[str, Any]] = {}
    for name, value in list(tensors.items()) + list(meta["scalars"].items()):
        pid, key = name.split(".", 1)
        state.setdefault(int(pid), {})[key] = value
    return {"state": state, "param_groups": meta["param_groups"]}


def write_training_state(folder: Path, optimizer, lr_scheduler, scaler=None,
                         rng_states: Sequence[tuple[dict, dict]] = ()) -> dict[str, Any]:
    """Write the optimizer's tensors and every rank's RNG tensors into ``folder``; return the JSON
    part (optimizer layout, LR schedule, grad scaler, RNG metadata) for ``state.json``."""
    opt_tensors, opt_meta = optimizer_to_files(optimizer.state_dict())
    save_state_dict(opt_tensors, folder / "optimizer.safetensors")
    rng_tensors = {f"rank{r}.{k}": v for r, (t, _) in enumerate(rng_states) for k, v in t.items()}
    if rng_tensors:
        save_state_dict(rng_tensors, folder / "rng.safetensors")
    return {"optimizer": opt_meta, "lr_scheduler": lr_scheduler.state_dict(),
            "grad_scaler": scaler.state_dict() if scaler is not None else None,
            "rng": [meta for _, meta in rng_states]}


def restore_training_state(folder: Path, state: dict[str, Any], optimizer, lr_scheduler, scaler=None,
                           rank: int | None = None) -> None:
    """Undo :func:`write_training_state` in place. ``rank`` selects which process's RNG states to
    restore (None leaves the RNGs alone); a rank absent from the checkpoint keeps its own."""
    optimizer.load_state_dict(optimizer_from_files(load_state_dict(folder / "optimizer.safetensors"),
                                                    state["optimizer"]))
    lr_scheduler.load_state_dict(state["lr_scheduler"])
    if scaler is not None and state.get("grad_scaler"):
        scaler.load_state_dict(state["grad_scaler"])
    if rank is not None and rank < len(state.get("rng", [])) and (folder / "rng.safetensors").is_file():
        all_rng = load_state_dict(folder / "rng.safetensors")
        prefix = f"rank{rank}."
        set_rng_state({k[len(prefix):]: v for k, v in all_rng.items() if k.startswith(prefix)}, state["rng"][rank])


# ------------------------------------------------------------------------------------ listing
def checkpoint_step(path: str | os.PathLike) -> int:
    m = CHECKPOINT_RE.fullmatch(Path(path).name)
    if not m:
        raise ValueError(f"{path}: not a checkpoint folder (expected a name like checkpoint-00001000)")
    return int(m.group(1))


def list_checkpoints(root: str | os.PathLike) -> list[Path]:
    """Checkpoints under ``root`` whose marker was written, oldest first (not yet verified)."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir()
             if p.is_dir() and CHECKPOINT_RE.fullmatch(p.name) and (p / STATE_JSON).is_file()]
    return sorted(found, key=checkpoint_step)


def prune_checkpoints(root: str | os.PathLike, keep: int | None) -> list[Path]:
    """Delete all but the newest ``keep`` checkpoints; return what was deleted."""
    if keep is None:
        return []
    found = list_checkpoints(root)
    doomed = found[:-keep] if keep > 0 else found
    for path in doomed:
        shutil.rmtree(path)
    return doomed


def remove_stale(root: str | os.PathLike) -> list[Path]:
    """Remove the hidden folders a killed write left behind (``.tmp-*``, ``.old-*``)."""
    root = Path(root)
    if not root.is_dir():
        return []
    stale = [p for p in root.iterdir() if p.is_dir() and p.name.startswith((".tmp-checkpoint-", ".old-checkpoint-"))]
    for path in stale:
        shutil.rmtree(path, ignore_errors=True)
    return stale


# ------------------------------------------------------------------------------------ write/verify
def write_checkpoint(root: str | os.PathLike, step: int, write: Callable[[Path], dict[str, Any]]) -> Path:
    """Write ``root/checkpoint-<step>`` atomically and return it.

    ``write(folder)`` writes the checkpoint's files into ``folder`` and returns its JSON state;
    the state, with the SHA-256 of every file written, goes into ``state.json`` last.
    """
    final = Path(root) / f"checkpoint-{int(step):08d}"
    with atomic_directory(final) as tmp:
        state = dict(write(tmp))
        files = sorted(p for p in tmp.rglob("*") if p.is_file() and p.name != STATE_JSON)
        state.update(format=FORMAT, step=int(step),
                     files={p.relative_to(tmp).as_posix(): sha256_file(p) for p in files})
        write_json_atomic(tmp / STATE_JSON, state)
    return final


def verify_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """The ``state.json`` of a checkpoint whose every file matches its recorded checksum;
    :class:`CorruptCheckpointError` naming the first file that does not."""
    path = Path(path)
    marker = path / STATE_JSON
    if not marker.is_file():
        raise CorruptCheckpointError(path, f"incomplete ({STATE_JSON} missing)")
    try:
        state = read_json(marker)
    except ValueError as exc:
        raise CorruptCheckpointError(marker, f"unreadable ({exc})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT or not isinstance(state.get("files"), dict):
        got = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise CorruptCheckpointError(marker, f"format {got!r}, expected {FORMAT!r} with file checksums")
    for name, expected in state["files"].items():
        file = path / name
        if not file.is_file():
            raise CorruptCheckpointError(file, "missing")
        if sha256_file(file) != expected:
            raise CorruptCheckpointError(file, f"checksum mismatch ({file.stat().st_size} bytes): "
                                               f"truncated or altered after it was written")
    return state


def latest_checkpoint(root: str | os.PathLike, set_aside: bool = True) -> tuple[Path, dict[str, Any]] | None:
    """The newest checkpoint under ``root`` that verifies, with its ``state.json``; or None.

    Each newer one that does not is named in a warning and, with ``set_aside``, renamed
    ``checkpoint-<step>.corrupt`` so that neither a resume nor the retention count sees it again.
    """
    for path in reversed(list_checkpoints(root)):
        try:
            return path, verify_checkpoint(path)
        except CorruptCheckpointError as exc:
            aside = path.with_name(path.name + ".corrupt")
            if set_aside:
                shutil.rmtree(aside, ignore_errors=True)
                os.replace(path, aside)
            warnings.warn(f"checkpoint skipped: {exc}" + (f"; moved to {aside.name}" if set_aside else ""),
                          stacklevel=2)
    return None


def latest_good(root: str | os.PathLike) -> str:
    """The newest checkpoint written, for error messages."""
    found = list_checkpoints(root)
    return str(found[-1]) if found else "none written yet"


def load_checkpoint_files(path: str | os.PathLike, state: dict[str, Any], names: Sequence[str]) -> dict[str, dict]:
    """The safetensors files ``names`` of a verified checkpoint, loaded on the CPU."""
    path = Path(path)
    missing = [n for n in names if n not in state["files"]]
    if missing:
        raise CorruptCheckpointError(path, f"lacks file(s) {missing} that its state names")
    return {name: load_state_dict(path / name) for name in names}
