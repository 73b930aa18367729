"""Config as data: one base for every training loop, one profile lookup.

A system's config is a dataclass of parts (``unet``, ``noise``, ``train``, ...); its ``train``
part extends :class:`LoopConfig`, where the fields the trainer reads are declared once. Every
config checks itself through :class:`support.params.Checked` (the one validation style): a failed
check names the field, the value expected and the value given, so a typo in a profile fails
before hours of training.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass
from typing import Any, Iterable, Literal, Mapping, TypeVar

from support.params import Check, Checked, ParameterError, from_mapping, to_dict

C = TypeVar("C")


@dataclass
class LoopConfig(Checked):
    """The fields the trainer (:func:`support.core.trainer.fit`) reads; a system's ``train`` part
    extends it with its method's own fields."""

    max_steps: int | None = 1000            # optimizer updates; None: ``epochs`` passes over the data
    epochs: int | None = None               # used when max_steps is None
    batch_size: int = 8                     # per process and micro-batch
    gradient_accumulation_steps: int = 1
    optimizer: Literal["adam", "adamw"] = "adam"
    learning_rate: float = 1e-4
    adam_betas: tuple[float, float] = (0.9, 0.999)
    adam_epsilon: float = 1e-8
    weight_decay: float = 0.0
    lr_schedule: Literal["constant", "constant_with_warmup", "linear", "cosine"] = "constant"
    lr_warmup_steps: int = 0
    max_grad_norm: float = 1.0
    mixed_precision: Literal["auto", "no", "fp16", "bf16"] = "auto"   # auto: bf16/fp16 on CUDA, fp32 on CPU
    cpu: bool = False                       # force the CPU even where CUDA is present
    compile: bool = False                   # torch.compile the trained modules
    channels_last: bool = False             # channels-last memory format for the trained modules
    fused_optimizer: bool = False           # Adam/AdamW's fused kernel (one kernel for all parameters)
    sdpa: bool = True                       # fused scaled-dot-product attention kernels; False: the math backend
    seed: int = 0
    num_workers: int = 0
    pin_memory: bool = True                 # page-locked batches for faster host-to-GPU copies (CUDA only)
    log_every: int = 10
    validate_every: int = 0                 # updates between validations; 0: at the end only
    validate_every_epochs: int = 0          # or at the end of every n-th epoch
    sample_every: int = 0                   # updates between preview samples; 0: at the end only
    sample_every_epochs: int = 0            # or at the end of every n-th epoch
    checkpoint_every: int = 1000
    checkpoints_total_limit: int | None = 3
    resume: str | None = "latest"           # "latest", a checkpoint folder, or None to start afresh
    trackers: tuple[str, ...] = ()          # accelerate trackers besides history.json, e.g. ["tensorboard"]

    # Fields that change what a resumed run computes; a resume with other values is refused.
    RESUME_FIELDS = ("batch_size", "gradient_accumulation_steps", "optimizer", "learning_rate", "adam_betas",
                     "adam_epsilon", "weight_decay", "lr_schedule", "lr_warmup_steps", "max_grad_norm", "seed")

    def checks(self) -> Iterable[Check]:
        yield (self.max_steps is None or self.max_steps > 0), "max_steps", "a positive number of updates, or null"
        yield (self.epochs is None or self.epochs > 0), "epochs", "a positive number of epochs, or null"
        yield (self.max_steps is not None or self.epochs is not None), "max_steps", "set when epochs is null"
        yield self.batch_size > 0, "batch_size", "a positive batch size"
        yield self.gradient_accumulation_steps > 0, "gradient_accumulation_steps", "at least 1"
        yield self.learning_rate > 0, "learning_rate", "a positive learning rate"
        yield all(0 <= b < 1 for b in self.adam_betas), "adam_betas", "two values in [0, 1)"
        yield self.adam_epsilon > 0, "adam_epsilon", "positive"
        yield self.weight_decay >= 0, "weight_decay", "non-negative"
        yield self.lr_warmup_steps >= 0, "lr_warmup_steps", "0 or more"
        yield self.max_grad_norm > 0, "max_grad_norm", "a positive norm"
        yield self.num_workers >= 0, "num_workers", "0 or more"
        yield self.log_every > 0, "log_every", "at least 1"
        for name in ("validate_every", "validate_every_epochs", "sample_every", "sample_every_epochs"):
            yield getattr(self, name) >= 0, name, "0 (off) or more"
        yield self.checkpoint_every > 0, "checkpoint_every", "at least 1"
        yield (self.checkpoints_total_limit is None or self.checkpoints_total_limit >= 1,
               "checkpoints_total_limit", "at least 1, or null to keep all")
        yield set(self.trackers) <= {"tensorboard"}, "trackers", "a list of known trackers: tensorboard"


# --------------------------------------------------------------------------------- profiles
def merge_overrides(base: dict, overrides: Mapping[str, Any], opaque: tuple[str, ...] = ()) -> dict:
    """``base`` with nested ``overrides`` applied; keys in ``opaque`` are replaced whole, not merged."""
    out = copy.deepcopy(base)
    for key, value in overrides.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict) and key not in opaque:
            out[key] = merge_overrides(out[key], value, opaque)
        else:
            out[key] = value
    return out


def preset(table: Mapping[str, C], profile: str, what: str) -> C:
    """The named profile of ``table``; an unknown name is an error listing the known ones."""
    if profile not in table:
        raise ParameterError(f"{what} profile {profile!r}: expected one of {sorted(table)}")
    return table[profile]


def configure(table: Mapping[str, C], profile: str, overrides: Mapping[str, Any] | None, what: str,
              source: str | None = None, opaque: tuple[str, ...] = ()) -> C:
    """Profile ``profile`` of ``table`` with (nested) ``overrides`` applied, typed and validated."""
    base = preset(table, profile, what)
    merged = merge_overrides(to_dict(base), overrides or {}, opaque)
    config = from_mapping(type(base), merged, source=source or f"{what} parameters")
    return config.validate() if isinstance(config, Checked) else config


def profile_reader(table: Mapping[str, C], what: str, opaque: tuple[str, ...] = ()):
    """``read(profile="quick", overrides=None, source=None)``: :func:`configure` over ``table``."""
    def read(profile: str = "quick", overrides: Mapping[str, Any] | None = None, source: str | None = None) -> C:
        return configure(table, profile, overrides, what, source, opaque)

    read.__doc__ = (f"The named {what} profile (one of {sorted(table)}) with nested ``overrides`` applied, "
                    f"typed and checked; ``source`` names where the overrides came from in errors.")
    return read


def config_dict(config: Any) -> dict:
    """JSON-ready form of a config dataclass (manifests, checkpoints, ``config.json``)."""
    if not dataclasses.is_dataclass(config):
        raise TypeError(f"expected a config dataclass, got {type(config).__name__}")
    return to_dict(config)
