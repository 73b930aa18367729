"""Library messages that say nothing to a researcher, silenced where they are made.

Each filter drops one known, harmless message and lets every other message of the same logger
through: diffusers' notice that a model with *no* float32-only modules is cast by ``to()``,
its notice that a LoRA file holds no text-encoder weights (ours never do: only the UNet is
adapted), and tqdm's fallback notice when a notebook kernel has no ipywidgets (the text bar it
falls back to is the one we want).
"""

from __future__ import annotations

import logging
import warnings

_DROPPED = {
    "diffusers.models.modeling_utils": ("that should be kept in float32: [].",),
    "diffusers.loaders.lora_base": ("No LoRA keys associated to CLIPTextModel",),
    "diffusers.loaders.peft": ("No LoRA keys associated to CLIPTextModel",),
}


class _Drop(logging.Filter):
    def __init__(self, fragments: tuple[str, ...]):
        super().__init__()
        self.fragments = fragments

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(f in message for f in self.fragments)


def install() -> None:
    """Add the filters once (idempotent)."""
    for name, fragments in _DROPPED.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, _Drop) for f in logger.filters):
            logger.addFilter(_Drop(fragments))
    warnings.filterwarnings("ignore", message="IProgress not found")
