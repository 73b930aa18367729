"""Resumable training state: model, EMA, optimizer, LR schedule, grad scaler, RNG states, step.

Everything tensor-valued is safetensors and everything else JSON, so a checkpoint is loaded
without unpickling anything. A checkpoint is assembled in a hidden folder and renamed into place
(``checkpoint-<step>``) in one step, so a crash never leaves a half-written checkpoint that a
resume would pick up.
"""

from __future__ import annotations

import os
import random
import re
import shutil
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from support.io import atomic_directory, load_state_dict, read_json, save_state_dict, write_json_atomic

CHECKPOINT_RE = re.compile(r"checkpoint-(\d+)")
STATE_JSON = "state.json"   # written last: its presence marks a complete checkpoint
FORMAT = "support.diffusion.checkpoint/1"


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


# ------------------------------------------------------------------------------------ listing
def checkpoint_step(path: str | os.PathLike) -> int:
    m = CHECKPOINT_RE.fullmatch(Path(path).name)
    if not m:
        raise ValueError(f"{path}: not a checkpoint folder (expected a name like checkpoint-00001000)")
    return int(m.group(1))


def list_checkpoints(root: str | os.PathLike) -> list[Path]:
    """Complete checkpoints under ``root``, oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir()
             if p.is_dir() and CHECKPOINT_RE.fullmatch(p.name) and (p / STATE_JSON).is_file()]
    return sorted(found, key=checkpoint_step)


def latest_checkpoint(root: str | os.PathLike) -> Path | None:
    found = list_checkpoints(root)
    return found[-1] if found else None


def prune_checkpoints(root: str | os.PathLike, keep: int | None) -> list[Path]:
    """Delete all but the newest ``keep`` complete checkpoints; return what was deleted."""
    if keep is None:
        return []
    found = list_checkpoints(root)
    doomed = found[:-keep] if keep > 0 else found
    for path in doomed:
        shutil.rmtree(path)
    return doomed


# ------------------------------------------------------------------------------------ save/load
def write_training_state(folder: Path, optimizer, lr_scheduler, scaler=None,
                         rng_states: Sequence[tuple[dict, dict]] = ()) -> dict[str, Any]:
    """Write the optimizer's tensors and every rank's RNG tensors into ``folder``; return the
    JSON part of the training state (optimizer layout, LR schedule, grad scaler, RNG metadata)
    for the checkpoint's ``state.json``. Shared by the DDPM and LoRA checkpoints."""
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


def save_checkpoint(root: str | os.PathLike, step: int, *, model: torch.nn.Module, ema, optimizer,
                    lr_scheduler, scaler=None, rng_states: Sequence[tuple[dict, dict]] = (),
                    extra: dict[str, Any] | None = None) -> Path:
    """Write ``root/checkpoint-<step>`` atomically and return it.

    ``model`` is the unwrapped network; ``ema`` a diffusers ``EMAModel`` over its parameters (saved
    under the parameter names, so ``ema.safetensors`` loads straight into the network);
    ``rng_states`` one :func:`rng_state` result per process, in rank order.
    """
    final = Path(root) / f"checkpoint-{int(step):08d}"
    with atomic_directory(final) as tmp:
        names = [n for n, _ in model.named_parameters()]
        save_state_dict(model.state_dict(), tmp / "model.safetensors")
        ema_state = ema.state_dict()
        shadow = ema_state.pop("shadow_params")
        if len(shadow) != len(names):
            raise ValueError(f"EMA holds {len(shadow)} tensors but the model has {len(names)} parameters")
        save_state_dict(dict(zip(names, shadow)), tmp / "ema.safetensors")
        state = {
            "format": FORMAT,
            "step": int(step),
            "ema": ema_state,
            **write_training_state(tmp, optimizer, lr_scheduler, scaler, rng_states),
            **(extra or {}),
        }
        write_json_atomic(tmp / STATE_JSON, state)
    return final


def load_checkpoint(path: str | os.PathLike, *, model: torch.nn.Module, ema, optimizer, lr_scheduler,
                    scaler=None, rank: int | None = None, device: str | torch.device = "cpu") -> dict[str, Any]:
    """Restore a checkpoint written by :func:`save_checkpoint` in place; return its ``state.json``.

    ``rank`` selects which process's RNG states to restore (None: leave the RNGs alone). A rank
    absent from the checkpoint (more processes than when it was saved) keeps its own RNG state.
    """
    path = Path(path)
    if not (path / STATE_JSON).is_file():
        raise FileNotFoundError(f"{path}: not a complete checkpoint ({STATE_JSON} missing)")
    state = read_json(path / STATE_JSON)
    if state.get("format") != FORMAT:
        raise ValueError(f"{path / STATE_JSON}: format {state.get('format')!r}, expected {FORMAT!r}")

    weights = load_state_dict(path / "model.safetensors")
    own = model.state_dict()
    mismatched = sorted(set(own) ^ set(weights))
    mismatched += [k for k in own if k in weights and own[k].shape != weights[k].shape]
    if mismatched:
        raise ValueError(f"{path / 'model.safetensors'}: does not match the model (differing tensors "
                         f"{mismatched[:5]}); was it trained with another UNet configuration?")
    model.load_state_dict(weights)

    shadow = load_state_dict(path / "ema.safetensors")
    names = [n for n, _ in model.named_parameters()]
    if set(shadow) != set(names):
        raise ValueError(f"{path / 'ema.safetensors'}: parameter names do not match the model")
    ema.load_state_dict({**state["ema"], "shadow_params": [shadow[n].to(device) for n in names]})
    restore_training_state(path, state, optimizer, lr_scheduler, scaler, rank)
    return state
