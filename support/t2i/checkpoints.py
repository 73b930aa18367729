"""Resumable LoRA training state: adapter weights only, optimizer, LR schedule, grad scaler, RNGs.

A checkpoint folder ``checkpoint-<step>`` holds the adapters twice: in peft's naming
(``lora.safetensors``, restored exactly on resume) and in diffusers' format
(``pytorch_lora_weights.safetensors``, so ``pipeline.load_lora_weights(checkpoint)`` works on
any checkpoint). The base model is never copied. Listing, retention and RNG capture are the DDPM
stage's (:mod:`support.diffusion.checkpoints`); like there, the folder is assembled hidden and
renamed into place, ``state.json`` written last.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

from support.diffusion.checkpoints import (  # noqa: F401  (re-exported for callers of this module)
    STATE_JSON,
    checkpoint_step,
    latest_checkpoint,
    list_checkpoints,
    prune_checkpoints,
    restore_training_state,
    rng_state,
    write_training_state,
)
from support.io import atomic_directory, load_state_dict, read_json, save_state_dict, write_json_atomic
from support.t2i.lora import load_peft_state_dicts, peft_state_dicts, save_lora_weights

FORMAT = "support.t2i.lora-checkpoint/1"
PEFT_WEIGHTS = "lora.safetensors"


def save_lora_checkpoint(root: str | os.PathLike, step: int, *, unet, text_encoder, with_text_encoder: bool,
                         optimizer, lr_scheduler, scaler=None, rng_states: Sequence[tuple[dict, dict]] = (),
                         extra: dict[str, Any] | None = None) -> Path:
    """Write ``root/checkpoint-<step>`` atomically and return it (unwrapped models)."""
    final = Path(root) / f"checkpoint-{int(step):08d}"
    with atomic_directory(final) as tmp:
        save_state_dict(peft_state_dicts(unet, text_encoder, with_text_encoder), tmp / PEFT_WEIGHTS)
        save_lora_weights(tmp, unet, text_encoder, with_text_encoder)
        write_json_atomic(tmp / STATE_JSON, {
            "format": FORMAT, "step": int(step),
            **write_training_state(tmp, optimizer, lr_scheduler, scaler, rng_states), **(extra or {})})
    return final


def checkpoint_state(path: str | os.PathLike) -> dict[str, Any]:
    """The ``state.json`` of a complete LoRA checkpoint (step, config, history, ...)."""
    path = Path(path)
    if not (path / STATE_JSON).is_file():
        raise FileNotFoundError(f"{path}: not a complete checkpoint ({STATE_JSON} missing)")
    state = read_json(path / STATE_JSON)
    if state.get("format") != FORMAT:
        raise ValueError(f"{path / STATE_JSON}: format {state.get('format')!r}, expected {FORMAT!r} "
                         f"(a LoRA training checkpoint)")
    return state


def load_lora_checkpoint(path: str | os.PathLike, *, unet, text_encoder, optimizer, lr_scheduler, scaler=None,
                         rank: int | None = None) -> dict[str, Any]:
    """Restore what :func:`save_lora_checkpoint` wrote, in place; return its ``state.json``.

    ``rank`` selects which process's RNG states to restore (None leaves the RNGs alone).
    """
    path = Path(path)
    state = checkpoint_state(path)
    load_peft_state_dicts(load_state_dict(path / PEFT_WEIGHTS), unet, text_encoder, where=str(path / PEFT_WEIGHTS))
    restore_training_state(path, state, optimizer, lr_scheduler, scaler, rank)
    return state
