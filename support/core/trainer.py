"""The training loop of every system: ``fit(task, config, output_dir)``.

A system supplies a small :class:`Task` (build the models, the loss of a batch, validation,
preview samples, export) and a config whose ``train`` part is a :class:`LoopConfig`. The
trainer owns everything else:

- the accelerate set-up (bf16/fp16 on CUDA, gradient accumulation) and the speed switches of
  :class:`LoopConfig` (``torch.compile``, channels-last, fused Adam/AdamW, the attention kernels,
  data-loader workers, pinned memory), launched in a notebook (:func:`launch`, ``notebook_launcher``)
  or from a shell (``accelerate launch -m support.<system>.train``) with the same function;
- the data order (a seeded distributed sampler; a resumed run skips what it has seen) and one
  generator per micro-batch, a pure function of (seed, micro-batch, rank), so a run resumed from
  a checkpoint repeats exactly the draws of an uninterrupted one;
- guarded updates: every rank agrees the loss is finite before any gradient reaches the weights;
- the validation, preview-sample and checkpoint cadence, checkpoints with checksums and retention,
  and the resume choice (the newest checkpoint that verifies);
- the history (``history.json`` always, accelerate's trackers such as TensorBoard when asked) and
  a throughput meter that leaves side work out of the speed.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import socket
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import numpy as np
import torch

from support.core import checkpoints
from support.core.config import LoopConfig, config_dict
from support.io import read_json, write_json_atomic
from support.params import ParameterError

HISTORY_JSON = "history.json"
CONFIG_JSON = "config.json"
CHECKPOINT_DIR = "checkpoints"
SAMPLES_DIR = "samples"


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN/inf loss, gradient or weight; nothing was written after it."""


# ------------------------------------------------------------------------------------ the task
@dataclasses.dataclass
class Parts:
    """What a task trains: ``models`` are prepared by accelerate, accumulated over and put in train
    mode; ``params`` (default: every parameter of ``models`` that requires grad) are optimized."""

    models: list[torch.nn.Module]
    params: list | None = None


@dataclasses.dataclass
class Context:
    """What the trainer tells a task about the run."""

    accelerator: Any
    config: Any                      # the system's config (its ``train`` part is ``loop``)
    loop: LoopConfig
    output_dir: Path
    max_steps: int = 0               # the run's optimizer updates (known once the data is)

    @property
    def device(self) -> torch.device:
        return self.accelerator.device

    @property
    def rank(self) -> int:
        return self.accelerator.process_index

    @property
    def world(self) -> int:
        return self.accelerator.num_processes

    @property
    def is_main(self) -> bool:
        return self.accelerator.is_main_process

    @property
    def weight_dtype(self) -> torch.dtype:
        """The compute dtype of frozen parts under mixed precision."""
        return {"fp16": torch.float16, "bf16": torch.bfloat16}.get(self.accelerator.mixed_precision, torch.float32)

    def autocast(self):
        return self.accelerator.autocast()

    def reduce_sum(self, values: Iterable[float]) -> list[float]:
        """Sum ``values`` over the processes (float64)."""
        totals = torch.tensor(list(values), dtype=torch.float64, device=self.device)
        if self.world > 1:
            totals = self.accelerator.reduce(totals, reduction="sum")
        return totals.tolist()


@dataclasses.dataclass
class Step:
    """One micro-batch: its generator (all its random draws), its index, the updates done so far."""

    generator: torch.Generator
    micro: int
    step: int
    epoch: int


class Task:
    """What a system supplies to :func:`fit`; override what the method needs.

    ``train_set`` is a map-style Dataset; ``collate_fn`` its batching (None: torch's default).
    ``self.ctx`` (a :class:`Context`) is set before :meth:`setup`, ``self.models`` (the prepared
    modules of :class:`Parts`, in order) after it.
    """

    name = "train"
    train_set: Any = None
    collate_fn: Callable | None = None
    ctx: Context
    models: list[torch.nn.Module]

    def setup(self) -> Parts:
        """Build the models (the same initial weights on every rank: the RNG is seeded first)."""
        raise NotImplementedError

    def loss(self, batch: Any, step: Step) -> torch.Tensor | tuple[torch.Tensor, Mapping[str, torch.Tensor]]:
        """The loss of one micro-batch, optionally with named parts (logged, not optimized)."""
        raise NotImplementedError

    def before_optimizer_step(self, step: Step) -> None:
        """Between the clipped gradients and the optimizer step of an update, on every rank (a method
        that edits gradients, e.g. DINO's last layer frozen in the first epoch)."""

    def after_update(self, step: int) -> None:
        """After each optimizer update, on every rank (EMA, momentum teachers)."""

    def validate(self, step: int) -> Mapping[str, float] | None:
        """Validation metrics (on every rank; sum over ranks with ``ctx.reduce_sum``), or None."""
        return None

    def preview(self, step: int, epoch: int) -> str | None:
        """Write preview samples under ``ctx.output_dir / "samples"`` (main process); return the path."""
        return None

    def state_dict(self) -> tuple[dict[str, dict[str, torch.Tensor]], dict[str, Any]]:
        """(safetensors files, JSON) of the task's part of a checkpoint: by default every trained
        model's weights, ``model.safetensors``, ``model1.safetensors``, ..."""
        files = {f"model{i or ''}.safetensors": self.ctx.accelerator.unwrap_model(m).state_dict()
                 for i, m in enumerate(self.models)}
        return files, {}

    def load_state_dict(self, files: dict[str, dict[str, torch.Tensor]], meta: dict[str, Any]) -> None:
        for i, m in enumerate(self.models):
            self.ctx.accelerator.unwrap_model(m).load_state_dict(files[f"model{i or ''}.safetensors"])

    def write_checkpoint_files(self, folder: Path) -> None:
        """Extra files of a checkpoint in another format (e.g. diffusers LoRA weights)."""

    def resume_key(self) -> dict[str, Any]:
        """What must be equal for a checkpoint to be resumed: by default every config part but ``train``."""
        config = self.ctx.config
        if isinstance(config, LoopConfig) or not dataclasses.is_dataclass(config):
            return {}
        return {f.name: config_dict(getattr(config, f.name)) for f in dataclasses.fields(config)
                if f.name != "train" and dataclasses.is_dataclass(getattr(config, f.name))}

    def describe(self) -> dict[str, Any]:
        """Facts merged into the history (trainable parameters, caption statistics, ...)."""
        return {}

    def export(self) -> None:
        """Write the trained model in its library's format (main process, after training)."""


# ------------------------------------------------------------------------------------ machinery
def resolve_mixed_precision(setting: str, cpu: bool = False) -> str:
    """accelerate's ``mixed_precision`` for a config value; ``auto`` follows ``support.devices``.
    fp16 (with loss scaling) needs a CUDA device: elsewhere the loop runs in fp32 and says so."""
    if setting == "fp16" and (cpu or not torch.cuda.is_available()):
        warnings.warn("mixed_precision fp16 needs a CUDA device; this run trains in fp32", stacklevel=2)
        return "no"
    if setting != "auto":
        return setting
    if cpu or not torch.cuda.is_available():
        return "no"
    from support.devices import mixed_precision_name, pick_dtype
    return mixed_precision_name(pick_dtype("cuda"))


def make_accelerator(mixed_precision: str, cpu: bool, accumulation_steps: int, trackers: Iterable[str] = (),
                     project_dir: str | os.PathLike | None = None, compile: bool = False):
    """An ``Accelerator`` that accumulates ``accumulation_steps`` micro-batches per update (the
    loop, not the data loader, decides when an epoch ends).

    accelerate keeps one precision and compile setting per process; each training run here chooses
    its own (a notebook pretrains in bf16, then fine-tunes in fp16), so the previous run's choice is
    cleared first. The process group (``PartialState``) is kept.
    """
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState
    from accelerate.utils import GradientAccumulationPlugin

    AcceleratorState._reset_state()
    cpu = cpu or not torch.cuda.is_available()   # several CPU processes form a gloo group only when told "cpu"
    return Accelerator(
        mixed_precision=resolve_mixed_precision(mixed_precision, cpu),
        gradient_accumulation_plugin=GradientAccumulationPlugin(num_steps=accumulation_steps,
                                                                sync_with_dataloader=False),
        cpu=cpu, log_with=list(trackers) or None, project_dir=str(project_dir) if project_dir else None,
        dynamo_backend="inductor" if compile else "no",
    )


def attention_backend(fused: bool):
    """The attention kernels of ``F.scaled_dot_product_attention`` (diffusers' default processor and
    the project's own attention layers call it): torch's choice of fused kernels (flash,
    memory-efficient) when ``fused``, else the unfused math backend, the reference to compare with."""
    import contextlib

    if fused:
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([SDPBackend.MATH])


def lr_factor(schedule: str, step: int, warmup: int, total: int) -> float:
    """The learning-rate multiplier after ``step`` updates: linear warm-up over ``warmup`` updates
    (except "constant"), then constant, linear decay to 0 or a half cosine to 0 at ``total``
    (the schedules of diffusers and transformers, computed the same way)."""
    if schedule == "constant":
        return 1.0
    if step < warmup:
        return float(step) / float(max(1, warmup))
    if schedule == "constant_with_warmup":
        return 1.0
    if schedule == "linear":
        return max(0.0, float(total - step) / float(max(1, total - warmup)))
    if schedule == "cosine":
        progress = float(step - warmup) / float(max(1, total - warmup))
        return max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))
    raise ValueError(f"lr_schedule {schedule!r}: expected constant, constant_with_warmup, linear or cosine")


def step_generator(seed: int, micro_step: int, rank: int, device) -> torch.Generator:
    """The generator of one micro-batch: a pure function of (seed, micro-batch index, rank)."""
    state = np.random.SeedSequence([int(seed), int(micro_step), int(rank)]).generate_state(1, np.uint64)[0]
    return torch.Generator(device=device).manual_seed(int(state) & ((1 << 63) - 1))


def checkpoint_to_resume(resume: str | None, checkpoint_root: str | os.PathLike) -> tuple[Path, dict] | None:
    """``train.resume``: "latest" (the newest checkpoint that verifies; newer corrupt ones are named
    and set aside), a checkpoint folder (which must verify), or None; with its ``state.json``."""
    if resume == "latest":
        return checkpoints.latest_checkpoint(checkpoint_root)
    if resume:
        path = Path(resume)
        if not path.is_dir():
            raise FileNotFoundError(f"train.resume: checkpoint folder {path} not found")
        return path, checkpoints.verify_checkpoint(path)
    return None


class TooFewItems(ValueError):
    """A training set smaller than one full batch per process: there is nothing to train on. A
    comparison over several sources names such a source and goes on with the others."""


def check_full_batch(n_items: int, batch_size: int, world: int) -> None:
    """Raise :class:`TooFewItems` unless ``n_items`` split over ``world`` processes (the remainder
    dropped, as the sampler does) gives each at least one batch of ``batch_size``."""
    if n_items // world < batch_size:
        raise TooFewItems(f"training set: {n_items} items give no full batch of {batch_size} "
                          f"per process over {world} process(es)")


def epoch_sampler(dataset, world: int, rank: int, seed: int, batch_size: int):
    """(sampler, full batches per epoch per process): every rank sees its own shard in an order
    drawn from ``seed`` and the epoch; incomplete batches are dropped."""
    from torch.utils.data.distributed import DistributedSampler

    check_full_batch(len(dataset), batch_size, world)
    sampler = DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=True, seed=seed, drop_last=True)
    return sampler, len(sampler) // batch_size


def epoch_indices(sampler, epoch: int, skip_batches: int, batch_size: int) -> list[int]:
    """This rank's indices for ``epoch``, without the first ``skip_batches`` batches (a resumed
    run starts mid-epoch where the checkpoint was written)."""
    sampler.set_epoch(epoch)
    return list(sampler)[skip_batches * batch_size:]


def check_first_item(dataset, name: str, key: str, shape: tuple[int, ...], *, also: tuple[str, ...] = (),
                     value_range: tuple[float, float] = (-1.0, 1.0), hint: str = "") -> Mapping[str, Any]:
    """Fail before training on a dataset whose items the model cannot take: a map-style dataset,
    not empty, whose item 0 is a dict holding ``key`` (a float tensor of ``shape`` within
    ``value_range``) and the keys ``also``. Returns item 0."""
    try:
        n = len(dataset)
    except TypeError:
        raise TypeError(f"{name}: expected a map-style torch Dataset with len()") from None
    if n == 0:
        raise ValueError(f"{name}: the dataset is empty")
    item = dataset[0]
    if not isinstance(item, Mapping) or any(k not in item for k in (key, *also)):
        got = sorted(item) if isinstance(item, Mapping) else type(item).__name__
        raise TypeError(f"{name}[0]: expected a dict with {[key, *also]}, got {got}")
    x = item[key]
    if not torch.is_tensor(x) or tuple(x.shape) != tuple(shape) or not x.is_floating_point():
        got = tuple(x.shape) if hasattr(x, "shape") else type(x).__name__
        raise ValueError(f"{name}[0]['{key}']: expected a float tensor of shape {tuple(shape)} {hint}, got {got}")
    lo, hi = float(x.min()), float(x.max())
    if lo < value_range[0] - 1e-4 or hi > value_range[1] + 1e-4:
        raise ValueError(f"{name}[0]['{key}']: values span [{lo:.3f}, {hi:.3f}]; expected {list(value_range)}")
    return item


def guarded_update(accelerator, loss: torch.Tensor, parameters: Iterable[torch.nn.Parameter], optimizer,
                   max_grad_norm: float, *, step: int, micro: int, checkpoint_root: str | os.PathLike,
                   parts: Mapping[str, torch.Tensor] | None = None,
                   before_step: Callable[[], None] | None = None) -> list[float]:
    """Backward and optimizer step of one micro-batch (inside ``accelerator.accumulate``).

    One small collective per micro-batch carries the loss (and its named ``parts``) for logging
    and a vote on finiteness, so every rank stops together before bad gradients reach the
    weights. Returns [loss, *parts] summed over ranks. Raises :class:`NonFiniteLossError` on a
    non-finite loss, or on a non-finite gradient norm unless fp16's grad scaler is in charge (it
    skips such steps by design). ``before_step`` runs between the clipped gradients and the
    optimizer step of an update (a method that edits gradients, e.g. DINO's frozen last layer).
    """
    rank, world = accelerator.process_index, accelerator.num_processes
    values = [loss.detach().float()] + [torch.as_tensor(v).detach().float().to(loss.device)
                                        for v in (parts or {}).values()]
    stats = torch.stack(values + [(~torch.isfinite(loss.detach())).float()])
    if world > 1:
        stats = accelerator.reduce(stats, reduction="sum")
    if stats[-1] > 0:
        raise NonFiniteLossError(
            f"non-finite loss ({float(loss.detach())} on rank {rank}) in update {step + 1}, micro-batch {micro}; "
            f"the update was not applied and nothing was written; last good checkpoint: "
            f"{checkpoints.latest_good(checkpoint_root)}")
    accelerator.backward(loss)
    if accelerator.sync_gradients:
        grad_norm = accelerator.clip_grad_norm_(parameters, max_grad_norm)
        if accelerator.scaler is None and not torch.isfinite(torch.as_tensor(grad_norm)):
            raise NonFiniteLossError(f"non-finite gradient norm in update {step + 1}; the update was not applied; "
                                     f"last good checkpoint: {checkpoints.latest_good(checkpoint_root)}")
        if before_step is not None:
            before_step()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return [float(v) for v in stats[:-1]]


class UpdateMeter:
    """Mean loss (and parts) and updates/s over a logging window; :meth:`pause`/:meth:`resume`
    around side work (validation, samples, checkpoints) keep it out of the speed."""

    def __init__(self) -> None:
        self.sums: np.ndarray | None = None
        self.updates, self.seconds = 0, 0.0
        self.tick = time.perf_counter()

    def add(self, values: float | Iterable[float]) -> None:
        v = np.atleast_1d(np.asarray(values, dtype=np.float64))
        self.sums = v.copy() if self.sums is None else self.sums + v
        self.updates += 1

    def pause(self) -> None:
        self.seconds += time.perf_counter() - self.tick

    def resume(self) -> None:
        self.tick = time.perf_counter()

    def flush(self) -> tuple[float, float]:
        """(mean loss, updates/s) of the window so far; starts the next window (see :attr:`means`)."""
        self.pause()
        self.means = (self.sums / max(self.updates, 1)).tolist() if self.sums is not None else [0.0]
        result = (self.means[0], self.updates / max(self.seconds, 1e-9))
        self.sums, self.updates, self.seconds = None, 0, 0.0
        self.resume()
        return result


def free_port() -> int:
    """An unused local TCP port for the processes' rendezvous (others may be running jobs too)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _loop_config(config) -> LoopConfig:
    loop = config if isinstance(config, LoopConfig) else getattr(config, "train", None)
    if not isinstance(loop, LoopConfig):
        raise TypeError(f"fit: expected a LoopConfig or a config with a LoopConfig 'train' part, "
                        f"got {type(config).__name__}")
    return loop


def _plain(obj: Any) -> Any:
    """JSON round trip: tuples as lists, so a saved key compares equal to a fresh one."""
    return json.loads(json.dumps(obj, default=str))


def _flat(prefix: str, obj: Any) -> dict[str, Any]:
    if isinstance(obj, Mapping):
        out: dict[str, Any] = {}
        for k, v in obj.items():
            out.update(_flat(f"{prefix}.{k}" if prefix else str(k), v))
        return out
    return {prefix: obj}


def resume_key(task: Task, loop: LoopConfig) -> dict[str, Any]:
    """Flat ``name -> value`` of what a resumed run must share with the checkpoint."""
    key = {f"train.{f}": getattr(loop, f) for f in LoopConfig.RESUME_FIELDS}
    key.update(_flat("", task.resume_key()))
    return _plain(key)


def _new_history() -> dict[str, list]:
    return {"step": [], "epoch": [], "loss": [], "lr": [], "steps_per_s": [], "images_per_s": [],
            "val_step": [], "samples": []}


def _nonfinite(files: Mapping[str, Mapping[str, torch.Tensor]]) -> list[str]:
    return [f"{name}:{key}" for name, tensors in files.items() for key, t in tensors.items()
            if torch.is_floating_point(t) and not torch.isfinite(t).all()]


def _tracker_config(loop: LoopConfig) -> dict[str, Any]:
    """The loop's scalar settings (TensorBoard's hparams take no lists or None)."""
    return {k: v for k, v in dataclasses.asdict(loop).items() if isinstance(v, (int, float, str, bool))}


# ------------------------------------------------------------------------------------ fit
def fit(task: Task, config, output_dir: str | os.PathLike,
        on_update: Callable[[int, torch.nn.Module], None] | None = None, progress: bool = True) -> dict:
    """Train ``task`` under ``config`` (a system config with a ``train`` :class:`LoopConfig`, or
    the loop config itself); write under ``output_dir`` and return the history.

    Writes ``config.json``, ``checkpoints/checkpoint-<step>/`` (every ``checkpoint_every``
    updates and at the end; the newest ``checkpoints_total_limit`` kept), what the task's
    :meth:`~Task.preview` and :meth:`~Task.export` write, and ``history.json``; with
    ``trackers`` also their logs (``output_dir/<task name>/`` for TensorBoard). Only the main
    process writes. Resumes from the newest checkpoint that verifies when ``resume`` is "latest".
    A non-finite loss, gradient or weight raises :class:`NonFiniteLossError` before it is
    applied or saved. ``on_update(step, model)`` runs on every process after each update with the
    first trained model, unwrapped.
    """
    from accelerate.utils import broadcast_object_list, gather_object
    from torch.utils.data import DataLoader, Subset
    from tqdm.auto import tqdm

    from support.seeding import seed_everything

    if hasattr(config, "validate"):
        config = config.validate()
    loop = _loop_config(config)
    out = Path(output_dir).expanduser().resolve()
    ckpt_root = out / CHECKPOINT_DIR
    accum = loop.gradient_accumulation_steps
    accelerator = make_accelerator(loop.mixed_precision, loop.cpu, accum, loop.trackers, out, loop.compile)
    ctx = Context(accelerator=accelerator, config=config, loop=loop, output_dir=out)
    rank, world, is_main, device = ctx.rank, ctx.world, ctx.is_main, ctx.device
    task.ctx = ctx
    if task.train_set is None:
        raise ValueError(f"{task.name}: the task has no training set")

    # The same initial weights on every rank; then per-rank streams for anything else (e.g. dropout).
    seed_everything(loop.seed)
    parts = task.setup()
    seed_everything(loop.seed + 7919 * (rank + 1))
    params = parts.params if parts.params is not None else [
        p for m in parts.models for p in m.parameters() if p.requires_grad]
    if not params:
        raise ValueError(f"{task.name}: nothing to train (no parameter requires grad)")
    if loop.channels_last:
        for m in parts.models:
            m.to(memory_format=torch.channels_last)
    optimizer_cls = torch.optim.AdamW if loop.optimizer == "adamw" else torch.optim.Adam
    optimizer = optimizer_cls(params, lr=loop.learning_rate, betas=tuple(loop.adam_betas), eps=loop.adam_epsilon,
                              weight_decay=loop.weight_decay, **({"fused": True} if loop.fused_optimizer else {}))
    sampler, batches_per_epoch = epoch_sampler(task.train_set, world, rank, loop.seed, loop.batch_size)
    max_steps = ctx.max_steps = loop.max_steps or -(-loop.epochs * batches_per_epoch // accum)
    # Stepped once per update by this loop (not by accelerate, which would step it once per process).
    # "constant" with warm-up steps warms up (diffusers' own "constant" would ignore them).
    schedule = "constant_with_warmup" if loop.lr_schedule == "constant" and loop.lr_warmup_steps else loop.lr_schedule
    lr_scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(schedule, step, loop.lr_warmup_steps, max_steps))
    *prepared, optimizer = accelerator.prepare(*parts.models, optimizer)
    task.models = prepared
    primary = accelerator.unwrap_model(prepared[0])

    # Resume: the main process chooses (verifying checksums, setting corrupt checkpoints aside)
    # and tells the others.
    start_step, history = 0, _new_history()
    my_key = resume_key(task, loop)
    choice = [checkpoint_to_resume(loop.resume, ckpt_root) if is_main else None]
    if world > 1:
        choice = broadcast_object_list(choice, from_process=0)
    if choice[0] is not None:
        resume_from, state = choice[0]
        saved = state.get("resume_key", {})
        changed = sorted(k for k in set(my_key) | set(saved) if my_key.get(k) != saved.get(k))
        if changed:
            raise ParameterError(f"{resume_from}: checkpoint was trained with other {changed}; start a new "
                                 f"output_dir or set train.resume to null")
        task.load_state_dict(checkpoints.load_checkpoint_files(resume_from, state, state["task_files"]),
                             state.get("task_state", {}))
        checkpoints.restore_training_state(resume_from, state, optimizer, lr_scheduler, accelerator.scaler, rank)
        start_step, history = int(state["step"]), state["history"]
        if is_main:
            print(f"resuming from {resume_from} (update {start_step})")
    if is_main:
        out.mkdir(parents=True, exist_ok=True)
        checkpoints.remove_stale(ckpt_root)
        write_json_atomic(out / CONFIG_JSON, config_dict(config))
    history.update({"max_steps": max_steps, "updates_per_epoch": batches_per_epoch / accum, **task.describe()})
    if loop.trackers:
        accelerator.init_trackers(task.name, config=_tracker_config(loop))

    micro = start_step * accum
    epoch, skip = divmod(micro, batches_per_epoch)
    images_per_update = world * loop.batch_size * accum

    def every(n: int, count: int) -> bool:
        return bool(n) and count % n == 0

    def run_validation(step: int) -> None:
        if history["val_step"] and history["val_step"][-1] == step:
            return
        metrics = task.validate(step)
        if not metrics:
            return
        history["val_step"].append(step)
        for name, value in metrics.items():
            history.setdefault(name, []).append(float(value))
        accelerator.log(dict(metrics), step=step)

    def write_preview(step: int, epoch_index: int) -> None:
        if is_main:
            path = task.preview(step, epoch_index)
            entry = {"step": step, "epoch": epoch_index, "path": str(path)}
            if path is not None and entry not in history["samples"]:
                history["samples"].append(entry)
        accelerator.wait_for_everyone()

    def write_checkpoint(step: int) -> None:
        files, meta = task.state_dict()
        bad = _nonfinite(files)
        if bad:
            raise NonFiniteLossError(f"non-finite weights at update {step} ({bad[:3]}); "
                                     f"no checkpoint was written for this update")
        rng_states = gather_object([checkpoints.rng_state()])
        if is_main:
            def write(folder: Path) -> dict:
                from support.io import save_state_dict

                for name, tensors in files.items():
                    save_state_dict(tensors, folder / name)
                task.write_checkpoint_files(folder)
                return {"task": task.name, "task_files": sorted(files), "task_state": meta, "resume_key": my_key,
                        "config": config_dict(config), "history": history, "world_size": world,
                        **checkpoints.write_training_state(folder, optimizer, lr_scheduler, accelerator.scaler,
                                                           rng_states)}
            checkpoints.write_checkpoint(ckpt_root, step, write)
            checkpoints.prune_checkpoints(ckpt_root, loop.checkpoints_total_limit)
        accelerator.wait_for_everyone()

    bar = tqdm(total=max_steps, initial=start_step, disable=not (is_main and progress), desc=task.name, unit="update")
    step, meter, update_values = start_step, UpdateMeter(), None
    validate_due = preview_due = False
    for m in prepared:
        m.train()
    while step < max_steps:
        if hasattr(task.train_set, "set_epoch"):
            task.train_set.set_epoch(epoch)
        indices = epoch_indices(sampler, epoch, skip, loop.batch_size)
        skip = 0
        loader = DataLoader(Subset(task.train_set, indices), batch_size=loop.batch_size, shuffle=False,
                            drop_last=True, num_workers=loop.num_workers, collate_fn=task.collate_fn,
                            generator=torch.Generator().manual_seed(loop.seed + epoch),
                            pin_memory=loop.pin_memory and device.type == "cuda")
        for batch in loader:
            info = Step(generator=step_generator(loop.seed, micro, rank, device), micro=micro, step=step, epoch=epoch)
            with accelerator.accumulate(*prepared), attention_backend(loop.sdpa):
                with accelerator.autocast():
                    result = task.loss(batch, info)
                loss, named = result if isinstance(result, tuple) else (result, {})
                sums = guarded_update(accelerator, loss, params, optimizer, loop.max_grad_norm, step=step,
                                      micro=micro, checkpoint_root=ckpt_root, parts=named,
                                      before_step=lambda: task.before_optimizer_step(info))
            micro += 1
            share = np.asarray(sums) / world / accum
            update_values = share if update_values is None else update_values + share
            if micro % batches_per_epoch == 0:  # an epoch ended: its cadence acts at this update
                done_epochs = micro // batches_per_epoch
                validate_due = validate_due or every(loop.validate_every_epochs, done_epochs)
                preview_due = preview_due or every(loop.sample_every_epochs, done_epochs)
            if not accelerator.sync_gradients:
                continue
            lr_scheduler.step()
            step += 1
            task.after_update(step)
            if on_update is not None:
                on_update(step, primary)
            meter.add(update_values)
            update_values = None
            bar.update(1)
            final = step == max_steps
            if step % loop.log_every == 0 or final:
                mean_loss, rate = meter.flush()
                logged = {"loss": mean_loss, "lr": lr_scheduler.get_last_lr()[0], "steps_per_s": rate,
                          "images_per_s": rate * images_per_update}
                logged.update({f"loss/{k}": v for k, v in zip(named, meter.means[1:])})
                history["step"].append(step)
                history["epoch"].append(epoch)
                for key, value in logged.items():
                    history.setdefault(key, []).append(value)
                accelerator.log(logged, step=step)
                bar.set_postfix(loss=f"{mean_loss:.4f}", img_s=f"{rate * images_per_update:.1f}")
            validate_now = final or validate_due or every(loop.validate_every, step)
            preview_now = final or preview_due or every(loop.sample_every, step)
            checkpoint_now = final or step % loop.checkpoint_every == 0
            if validate_now or preview_now or checkpoint_now:  # kept out of the speed figures
                meter.pause()
                if validate_now:
                    run_validation(step)
                    validate_due = False
                if preview_now:
                    write_preview(step, (micro - 1) // batches_per_epoch)
                    preview_due = False
                if checkpoint_now:  # last: it carries this update's validation and previews
                    write_checkpoint(step)
                meter.resume()
            if step >= max_steps:
                break
        epoch += 1
    bar.close()
    for m in prepared:  # hand the modules back as they were built: no mixed-precision forward wrapper
        accelerator.unwrap_model(m, keep_fp32_wrapper=False)

    if is_main:
        task.export()
        write_json_atomic(out / HISTORY_JSON, history)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return history


def launch(task: Task, config, output_dir: str | os.PathLike, num_processes: int = 1, port: int | None = None,
           on_update: Callable[[int, torch.nn.Module], None] | None = None, progress: bool = True) -> dict:
    """Run :func:`fit` from a notebook on ``num_processes`` processes; return the history.

    Several processes go through ``accelerate.notebook_launcher``, which forks: no CUDA call may
    have been made in the notebook before, and the task must build its models in
    :meth:`Task.setup` (each process builds its own). One process runs in the notebook itself.
    """
    if num_processes < 1:
        raise ValueError(f"num_processes {num_processes}: expected at least 1")
    loop = _loop_config(config)
    if task.train_set is not None:   # before any process starts, so the caller gets TooFewItems itself
        check_full_batch(len(task.train_set), loop.batch_size, num_processes)
    if num_processes == 1:
        return fit(task, config, output_dir, on_update, progress)
    from accelerate import notebook_launcher

    notebook_launcher(fit, args=(task, config, str(output_dir), on_update, progress), num_processes=num_processes,
                      use_port=str(port or free_port()),
                      mixed_precision=resolve_mixed_precision(loop.mixed_precision, loop.cpu))
    return read_json(Path(output_dir) / HISTORY_JSON)
