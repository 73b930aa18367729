"""The pieces every training loop here shares (the DDPM stage and the LoRA stage).

An accelerate set-up with gradient accumulation, the checkpoint to resume from, the per-epoch
data order of a distributed sampler (a resumed run skips what was already seen), one guarded
update (all ranks agree the loss is finite before any gradient reaches the weights), and a
meter for loss and throughput that leaves side work (validation, samples, checkpoints) out.

Determinism: every random draw of a loop (data order, timesteps, noise) is a function of the
seed, the micro-batch index and the rank (:func:`step_generator`), not of a generator's running
state, so a run resumed from a checkpoint repeats exactly the draws of an uninterrupted run.
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path
from typing import Iterable

import numpy as np
import torch

from support.diffusion.checkpoints import latest_checkpoint, list_checkpoints


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN/inf loss or gradient; nothing was written after it."""


def resolve_mixed_precision(setting: str, cpu: bool = False) -> str:
    """accelerate's ``mixed_precision`` for a config value; ``auto`` follows ``support.devices``."""
    if setting != "auto":
        return setting
    if cpu or not torch.cuda.is_available():
        return "no"
    from support.devices import mixed_precision_name, pick_dtype
    return mixed_precision_name(pick_dtype("cuda"))


def make_accelerator(mixed_precision: str, cpu: bool, accumulation_steps: int):
    """An ``Accelerator`` that accumulates ``accumulation_steps`` micro-batches per update; the
    loop decides when an epoch ends, not the data loader."""
    from accelerate import Accelerator
    from accelerate.utils import GradientAccumulationPlugin

    return Accelerator(
        mixed_precision=resolve_mixed_precision(mixed_precision, cpu),
        gradient_accumulation_plugin=GradientAccumulationPlugin(num_steps=accumulation_steps,
                                                                sync_with_dataloader=False),
        cpu=cpu,
    )


def step_generator(seed: int, micro_step: int, rank: int, device) -> torch.Generator:
    """The generator of one micro-batch: a pure function of (seed, micro-batch index, rank)."""
    state = np.random.SeedSequence([int(seed), int(micro_step), int(rank)]).generate_state(1, np.uint64)[0]
    return torch.Generator(device=device).manual_seed(int(state) & ((1 << 63) - 1))


def checkpoint_to_resume(resume: str | None, checkpoint_root: str | os.PathLike) -> Path | None:
    """``train.resume``: "latest" (the newest complete checkpoint, if any), a folder, or None."""
    if resume == "latest":
        return latest_checkpoint(checkpoint_root)
    if resume:
        path = Path(resume)
        if not path.is_dir():
            raise FileNotFoundError(f"train.resume: checkpoint folder {path} not found")
        return path
    return None


def latest_good(checkpoint_root: str | os.PathLike) -> str:
    """The newest checkpoint, for error messages."""
    found = list_checkpoints(checkpoint_root)
    return str(found[-1]) if found else "none written yet"


def epoch_sampler(dataset, world: int, rank: int, seed: int, batch_size: int):
    """(sampler, full batches per epoch per process): every rank sees its own shard in an order
    drawn from ``seed`` and the epoch; incomplete batches are dropped."""
    from torch.utils.data.distributed import DistributedSampler

    sampler = DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=True, seed=seed, drop_last=True)
    batches = len(sampler) // batch_size
    if batches == 0:
        raise ValueError(f"training set: {len(dataset)} images give no full batch of {batch_size} "
                         f"per process over {world} process(es)")
    return sampler, batches


def epoch_indices(sampler, epoch: int, skip_batches: int, batch_size: int) -> list[int]:
    """This rank's indices for ``epoch``, without the first ``skip_batches`` batches (a resumed
    run starts mid-epoch where the checkpoint was written)."""
    sampler.set_epoch(epoch)
    return list(sampler)[skip_batches * batch_size:]


def guarded_update(accelerator, loss: torch.Tensor, parameters: Iterable[torch.nn.Parameter], optimizer,
                   max_grad_norm: float, *, step: int, micro: int, checkpoint_root: str | os.PathLike) -> float:
    """Backward and optimizer step of one micro-batch (inside ``accelerator.accumulate``).

    One small collective per micro-batch carries the loss for logging and a vote on finiteness,
    so every rank stops together before bad gradients reach the weights. Returns the loss summed
    over ranks. Raises :class:`NonFiniteLossError` on a non-finite loss, or on a non-finite
    gradient norm unless fp16's grad scaler is in charge (it skips such steps by design).
    """
    rank, world = accelerator.process_index, accelerator.num_processes
    stats = torch.stack([loss.detach().float(), (~torch.isfinite(loss.detach())).float()])
    if world > 1:
        stats = accelerator.reduce(stats, reduction="sum")
    if stats[1] > 0:
        raise NonFiniteLossError(
            f"non-finite loss ({float(loss.detach())} on rank {rank}) in update {step + 1}, micro-batch {micro}; "
            f"the update was not applied and nothing was written; last good checkpoint: "
            f"{latest_good(checkpoint_root)}")
    accelerator.backward(loss)
    if accelerator.sync_gradients:
        grad_norm = accelerator.clip_grad_norm_(parameters, max_grad_norm)
        if accelerator.scaler is None and not torch.isfinite(torch.as_tensor(grad_norm)):
            raise NonFiniteLossError(f"non-finite gradient norm in update {step + 1}; the update was not applied; "
                                     f"last good checkpoint: {latest_good(checkpoint_root)}")
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return float(stats[0])


class UpdateMeter:
    """Mean loss and updates/s over a logging window; :meth:`pause`/:meth:`resume` around side
    work (validation, samples, checkpoints) keep it out of the speed."""

    def __init__(self) -> None:
        self.loss, self.updates, self.seconds = 0.0, 0, 0.0
        self.tick = time.perf_counter()

    def add(self, loss: float) -> None:
        self.loss += loss
        self.updates += 1

    def pause(self) -> None:
        self.seconds += time.perf_counter() - self.tick

    def resume(self) -> None:
        self.tick = time.perf_counter()

    def flush(self) -> tuple[float, float]:
        """(mean loss, updates/s) of the window so far; starts the next window."""
        self.pause()
        result = (self.loss / max(self.updates, 1), self.updates / max(self.seconds, 1e-9))
        self.loss, self.updates, self.seconds = 0.0, 0, 0.0
        self.resume()
        return result


def free_port() -> int:
    """An unused local TCP port for the processes' rendezvous (others may be running jobs too)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
