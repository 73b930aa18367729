"""The shared trainer on a toy task: resume equality, NaN stop, retention, cadence, trackers,
checkpoint corruption (truncated, flipped bytes, zero bytes -> named, set aside, earlier one used)."""

import json
import os
import warnings
from pathlib import Path

import pytest
import torch

from sabotage import Sabotaged
from support.core import checkpoints, trainer
from support.core.config import LoopConfig
from support.io import load_state_dict
from support.params import ParameterError

torch.set_num_threads(1)


class Points(torch.utils.data.Dataset):
    """y = x . w + 0.5 with a fixed w: a linear model can learn it."""

    def __init__(self, n: int = 24, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, 4, generator=g)
        self.y = self.x @ torch.tensor([1.0, -2.0, 0.5, 3.0]) + 0.5

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return {"x": self.x[i], "y": self.y[i]}


class Regression(trainer.Task):
    """A toy method: a linear layer, noise on the inputs drawn from the micro-batch generator."""

    name = "toy"

    def __init__(self, train_set, val_set=None, width: int = 4):
        self.train_set, self.val_set, self.width = train_set, val_set, width
        self.previews = []

    def setup(self):
        self.net = torch.nn.Linear(self.width, 1)
        return trainer.Parts(models=[self.net])

    def loss(self, batch, step):
        x = batch["x"] + 0.01 * torch.randn(batch["x"].shape, generator=step.generator)
        err = self.models[0](x).squeeze(1) - batch["y"]
        return err.pow(2).mean(), {"abs": err.abs().mean()}

    def validate(self, step):
        if self.val_set is None:
            return None
        with torch.no_grad():
            err = self.net(self.val_set.x).squeeze(1) - self.val_set.y
        return {"val_mse": float(err.pow(2).mean())}

    def preview(self, step, epoch):
        self.previews.append((step, epoch))
        return f"preview-{step}"


def loop(**overrides) -> LoopConfig:
    base = dict(max_steps=8, batch_size=4, gradient_accumulation_steps=2, learning_rate=0.05, cpu=True,
                mixed_precision="no", log_every=2, checkpoint_every=2, checkpoints_total_limit=3, validate_every=4)
    return LoopConfig(**{**base, **overrides})


def names(out: Path) -> list[str]:
    return sorted(p.name for p in (out / "checkpoints").iterdir())


def weights(out: Path, step: int) -> dict:
    return load_state_dict(out / "checkpoints" / f"checkpoint-{step:08d}" / "model.safetensors")


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("toy_full")
    history = trainer.fit(Regression(Points(), Points(8, seed=1)), loop(), out, progress=False)
    return out, history


def test_history_cadence_and_retention(uninterrupted):
    out, history = uninterrupted
    assert history["step"] == [2, 4, 6, 8] and history["loss"][-1] < history["loss"][0]    # it learns
    assert len(history["loss/abs"]) == 4 and all(v > 0 for v in history["loss/abs"])      # named parts logged
    assert history["val_step"] == [4, 8] and len(history["val_mse"]) == 2
    assert history["updates_per_epoch"] == 3 and history["epoch"] == [0, 1, 1, 2]         # 6 batches an epoch, 2 a step
    assert names(out) == ["checkpoint-00000004", "checkpoint-00000006", "checkpoint-00000008"]   # newest 3 kept
    assert json.loads((out / "history.json").read_text()) == history
    assert json.loads((out / "config.json").read_text())["max_steps"] == 8
    state = checkpoints.verify_checkpoint(out / "checkpoints" / "checkpoint-00000008")
    assert set(state["files"]) == {"model.safetensors", "optimizer.safetensors", "rng.safetensors"}
    assert state["resume_key"]["train.learning_rate"] == 0.05


def test_resume_after_crash_is_bit_identical(uninterrupted, tmp_path):
    out_a, history_a = uninterrupted
    # each update reads 8 items (2 micro-batches of 4); read 1 is the trainer's look at item 0
    with pytest.raises(RuntimeError, match="simulated crash"):
        trainer.fit(Regression(Sabotaged(Points(), after=8 * 5 + 3, mode="crash", key="x"), Points(8, seed=1)),
                    loop(), tmp_path, progress=False)
    assert names(tmp_path)[-1] == "checkpoint-00000004"
    history_b = trainer.fit(Regression(Points(), Points(8, seed=1)), loop(), tmp_path, progress=False)
    assert history_b["loss"] == history_a["loss"] and history_b["val_mse"] == history_a["val_mse"]
    a, b = weights(out_a, 8), weights(tmp_path, 8)
    assert all(torch.equal(a[k], b[k]) for k in a)
    # a resume under other optimisation settings is refused, naming them
    with pytest.raises(ParameterError, match=r"train.learning_rate"):
        trainer.fit(Regression(Points(), Points(8, seed=1)), loop(max_steps=10, learning_rate=0.1), tmp_path,
                    progress=False)


def test_non_finite_loss_stops_before_the_update_and_writes_nothing(tmp_path):
    with pytest.raises(trainer.NonFiniteLossError, match=r"update 4, micro-batch 6.*checkpoint-00000002"):
        trainer.fit(Regression(Sabotaged(Points(), after=8 * 3, mode="nan", key="x")), loop(), tmp_path,
                    progress=False)
    assert names(tmp_path) == ["checkpoint-00000002"] and not (tmp_path / "history.json").exists()
    assert all(torch.isfinite(v).all() for v in weights(tmp_path, 2).values())


@pytest.mark.parametrize("damage", ["truncated", "flipped", "zero"])
def test_a_corrupt_newest_checkpoint_is_named_set_aside_and_the_previous_one_resumes(uninterrupted, tmp_path, damage):
    out_a, _ = uninterrupted
    config = loop(max_steps=6)
    trainer.fit(Regression(Points(), Points(8, seed=1)), config, tmp_path, progress=False)
    victim = tmp_path / "checkpoints" / "checkpoint-00000006" / "model.safetensors"
    data = bytearray(victim.read_bytes())
    if damage == "truncated":
        data = data[:len(data) // 2]
    elif damage == "flipped":  # two bytes inside a weight: the file still parses, the values differ
        data[-3] ^= 0xFF
        data[-7] ^= 0x01
    else:
        data = bytearray()
    victim.write_bytes(bytes(data))
    (tmp_path / "checkpoints" / ".tmp-checkpoint-00000008-999").mkdir()          # a killed write's leftovers

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(Regression(Points(), Points(8, seed=1)), loop(), tmp_path, progress=False)
    said = " ".join(str(w.message) for w in caught)
    assert "checkpoint-00000006/model.safetensors" in said and "checksum mismatch" in said
    assert (tmp_path / "checkpoints" / "checkpoint-00000006.corrupt").is_dir()
    assert not (tmp_path / "checkpoints" / ".tmp-checkpoint-00000008-999").exists()
    a, b = weights(out_a, 8), weights(tmp_path, 8)     # resumed from update 4: the uninterrupted result
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_an_explicit_corrupt_checkpoint_is_an_error_naming_the_file(tmp_path):
    trainer.fit(Regression(Points()), loop(max_steps=2, validate_every=0), tmp_path, progress=False)
    folder = tmp_path / "checkpoints" / "checkpoint-00000002"
    (folder / "optimizer.safetensors").write_bytes(b"")
    with pytest.raises(checkpoints.CorruptCheckpointError, match="checkpoint-00000002/optimizer.safetensors"):
        trainer.fit(Regression(Points()), loop(max_steps=4, resume=str(folder)), tmp_path / "other", progress=False)
    state = json.loads((folder / "state.json").read_text())
    del state["files"]
    (folder / "state.json").write_text(json.dumps(state))
    with pytest.raises(checkpoints.CorruptCheckpointError, match="file checksums"):
        checkpoints.verify_checkpoint(folder)


def test_epoch_cadence_and_epochs_instead_of_steps(tmp_path):
    task = Regression(Points(12))
    history = trainer.fit(task, loop(max_steps=None, epochs=3, gradient_accumulation_steps=1, log_every=1,
                                     sample_every_epochs=2, validate_every=0), tmp_path, progress=False)
    assert history["max_steps"] == 9 and history["step"][-1] == 9      # 3 epochs of 3 batches
    assert task.previews == [(6, 1), (9, 2)]                            # end of epoch 2, and the end
    assert [s["step"] for s in history["samples"]] == [6, 9]


def test_tensorboard_tracker_logs_the_history(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    history = trainer.fit(Regression(Points(), Points(8, seed=1)), loop(trackers=("tensorboard",)), tmp_path,
                          progress=False)
    events = [p for p in (tmp_path / "toy").rglob("events.out.tfevents.*")]
    assert events
    scalars = {}
    for path in events:
        acc = EventAccumulator(str(path))
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            scalars[tag] = [e.value for e in acc.Scalars(tag)]
    assert scalars["loss"] == pytest.approx(history["loss"]) and scalars["val_mse"] == pytest.approx(history["val_mse"])


def test_channels_last_and_guards(tmp_path):
    class Conv(Regression):
        def setup(self):
            self.net = torch.nn.Conv2d(2, 4, 3)
            return trainer.Parts(models=[self.net])

        def loss(self, batch, step):
            return self.models[0](batch["x"].view(-1, 2, 2, 1).repeat(1, 1, 2, 4)).mean().pow(2)

    task = Conv(Points())
    trainer.fit(task, loop(max_steps=1, channels_last=True, validate_every=0), tmp_path, progress=False)
    assert task.net.weight.is_contiguous(memory_format=torch.channels_last)
    with pytest.raises(ValueError, match="no full batch of 32"):
        trainer.fit(Regression(Points(8)), loop(batch_size=32), tmp_path / "b", progress=False)
    with pytest.raises(ParameterError, match="max_steps must be set when epochs is null"):
        trainer.fit(Regression(Points()), loop(max_steps=None), tmp_path / "c", progress=False)


def test_runs_in_one_process_may_choose_their_own_precision(tmp_path):
    trainer.fit(Regression(Points()), loop(max_steps=2, validate_every=0), tmp_path / "fp32", progress=False)
    task = Regression(Points())
    history = trainer.fit(task, loop(max_steps=2, validate_every=0, mixed_precision="bf16"), tmp_path / "bf16",
                          progress=False)
    assert history["step"] == [2]
    # the model is handed back as built: no autocast wrapper left on its forward (it would return
    # float32 into a caller's bf16/fp16 pipeline)
    assert "_original_forward" not in task.net.__dict__ and not hasattr(task.net.forward, "__wrapped__")


def test_meter_leaves_side_work_out_of_the_speed():
    import time

    meter = trainer.UpdateMeter()
    for values in ([1.0, 4.0], [3.0, 8.0]):
        meter.add(values)
    meter.pause()
    time.sleep(0.3)                     # a checkpoint: not training time
    meter.resume()
    mean, rate = meter.flush()
    assert mean == 2.0 and meter.means == [2.0, 6.0] and rate > 20
    meter.add(5.0)
    assert meter.flush()[0] == 5.0      # a new window


def test_epoch_order_is_seeded_and_a_resume_skips_seen_batches():
    data = list(range(20))
    sampler, batches = trainer.epoch_sampler(data, world=2, rank=1, seed=3, batch_size=4)
    assert batches == 2                                                    # 10 per rank, full batches only
    first = trainer.epoch_indices(sampler, 0, 0, 4)
    assert trainer.epoch_indices(sampler, 0, 1, 4) == first[4:]
    assert trainer.epoch_indices(sampler, 1, 0, 4) != first                # a new order each epoch
    other, _ = trainer.epoch_sampler(data, world=2, rank=0, seed=3, batch_size=4)
    assert not set(trainer.epoch_indices(other, 0, 0, 4)) & set(first)    # disjoint shards


def test_step_generator_is_a_function_of_seed_step_and_rank():
    draw = lambda *key: torch.rand(3, generator=trainer.step_generator(*key, "cpu"))  # noqa: E731
    assert torch.equal(draw(1, 5, 0), draw(1, 5, 0))
    assert not torch.equal(draw(1, 5, 0), draw(1, 6, 0)) and not torch.equal(draw(1, 5, 0), draw(1, 5, 1))


@pytest.fixture
def fresh_accelerate_state():
    # accelerate keeps one state per process: leave none behind for the next test in this worker
    from accelerate.state import AcceleratorState

    yield
    AcceleratorState._reset_state(reset_partial_state=True)


def test_guarded_update_stops_before_a_non_finite_loss_touches_the_weights(tmp_path, fresh_accelerate_state):
    accelerator = trainer.make_accelerator("no", cpu=True, accumulation_steps=1)
    w = torch.nn.Parameter(torch.ones(2))
    optimizer = torch.optim.SGD([w], lr=0.1)
    with accelerator.accumulate():
        got = trainer.guarded_update(accelerator, (w * 2).sum(), [w], optimizer, 1.0, step=0, micro=0,
                                     checkpoint_root=tmp_path)
    assert got == [4.0] and not torch.equal(w.detach(), torch.ones(2))       # stepped
    before = w.detach().clone()
    with pytest.raises(trainer.NonFiniteLossError, match="update 8, micro-batch 7.*none written yet"):
        with accelerator.accumulate():
            trainer.guarded_update(accelerator, (w * float("nan")).sum(), [w], optimizer, 1.0, step=7, micro=7,
                                   checkpoint_root=tmp_path)
    assert torch.equal(w.detach(), before) and w.grad is None


def test_checkpoint_listing_ignores_unfinished_folders(tmp_path):
    for step in (3, 6, 9):
        checkpoints.write_checkpoint(tmp_path, step, lambda folder: {"note": step})
    (tmp_path / ".tmp-checkpoint-00000012-1").mkdir()          # an interrupted save is ignored
    (tmp_path / "checkpoint-00000015").mkdir()                  # so is a folder without state.json
    assert [p.name for p in checkpoints.list_checkpoints(tmp_path)] == [f"checkpoint-0000000{s}" for s in (3, 6, 9)]
    checkpoints.prune_checkpoints(tmp_path, 2)
    path, state = checkpoints.latest_checkpoint(tmp_path)
    assert path.name == "checkpoint-00000009" and state["note"] == 9 and state["step"] == 9
    assert [p.name for p in checkpoints.remove_stale(tmp_path)] == [".tmp-checkpoint-00000012-1"]
    assert os.listdir(tmp_path).count("checkpoint-00000006") == 1


def test_training_state_restores_optimizer_schedule_and_rng_streams(tmp_path):
    import random

    import numpy as np
    from diffusers.optimization import get_scheduler

    def parts(seed):
        torch.manual_seed(seed)
        model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        return model, opt, get_scheduler("cosine", opt, num_warmup_steps=2, num_training_steps=10)

    model, opt, sched = parts(0)
    for _ in range(3):
        model(torch.randn(5, 3)).pow(2).sum().backward()
        opt.step(), sched.step(), opt.zero_grad()
    torch.manual_seed(99), np.random.seed(7), random.seed(5)
    rng = [checkpoints.rng_state()]
    path = checkpoints.write_checkpoint(
        tmp_path, 3, lambda folder: checkpoints.write_training_state(folder, opt, sched, None, rng))
    expected_draws = (torch.rand(3), np.random.rand(2), random.random())

    model2, opt2, sched2 = parts(1)
    state = checkpoints.verify_checkpoint(path)
    checkpoints.restore_training_state(path, state, opt2, sched2, rank=0)
    assert sched2.get_last_lr() == sched.get_last_lr() and sched2.last_epoch == 3
    s1, s2 = opt.state_dict()["state"], opt2.state_dict()["state"]
    assert all(torch.equal(s1[k]["exp_avg_sq"], s2[k]["exp_avg_sq"]) and torch.equal(s1[k]["step"], s2[k]["step"])
               for k in s1)
    draws = (torch.rand(3), np.random.rand(2), random.random())   # RNG streams continue where they were
    assert torch.equal(draws[0], expected_draws[0]) and np.array_equal(draws[1], expected_draws[1])
    assert draws[2] == expected_draws[2]


@pytest.mark.parametrize("name", ["constant", "constant_with_warmup", "linear", "cosine"])
def test_learning_rate_schedules_are_those_of_diffusers(name):
    from diffusers.optimization import get_scheduler

    warmup, total = (0 if name == "constant" else 3), 12
    theirs = get_scheduler(name, torch.optim.SGD([torch.nn.Parameter(torch.ones(1))], lr=1.0),
                           num_warmup_steps=warmup, num_training_steps=total)
    for step in range(total + 2):
        assert trainer.lr_factor(name, step, warmup, total) == theirs.lr_lambdas[0](step), (name, step)
    with pytest.raises(ValueError, match="lr_schedule 'step'"):
        trainer.lr_factor("step", 0, 0, 1)


def test_before_optimizer_step_sees_the_gradients_of_the_update(tmp_path):
    class FrozenBias(Regression):
        def before_optimizer_step(self, step):
            if step.epoch == 0:
                self.net.bias.grad = None          # as DINO freezes its last layer in epoch 0

    task = FrozenBias(Points(12))
    biases = []
    trainer.fit(task, loop(max_steps=6, gradient_accumulation_steps=1, validate_every=0), tmp_path,
                on_update=lambda step, net: biases.append(net.bias.detach().clone()), progress=False)
    first = biases[0]   # 3 updates an epoch
    assert all(torch.equal(b, first) for b in biases[:3]) and not torch.equal(biases[-1], first)


def test_fp16_without_a_cuda_device_trains_in_fp32_and_says_so():
    from support.core.trainer import resolve_mixed_precision

    with pytest.warns(UserWarning, match="fp16 needs a CUDA device"):
        assert resolve_mixed_precision("fp16", cpu=True) == "no"
    assert resolve_mixed_precision("bf16", cpu=True) == "bf16" and resolve_mixed_precision("no") == "no"
    assert resolve_mixed_precision("auto", cpu=True) == "no"


def test_a_set_without_one_full_batch_per_process_is_refused_before_any_process_starts(tmp_path):
    trainer.check_full_batch(64, 32, 2)                 # exactly one batch each
    with pytest.raises(trainer.TooFewItems, match="63 items give no full batch of 32 per process over 2"):
        trainer.check_full_batch(63, 32, 2)
    # two processes would fork first; the refusal comes from launch itself, typed, and writes nothing
    with pytest.raises(trainer.TooFewItems):
        trainer.launch(Regression(Points(16)), loop(batch_size=9), tmp_path / "run", num_processes=2)
    assert not (tmp_path / "run").exists()


class Attention(Regression):
    """A toy task through ``scaled_dot_product_attention``; records the kernel settings and the
    autocast state its loss ran under, and the optimizer the trainer built."""

    def setup(self):
        self.net = torch.nn.Linear(self.width, self.width)
        self.seen = []
        return trainer.Parts(models=[self.net])

    def loss(self, batch, step):
        from torch.nn import functional as F

        self.seen.append({"flash": torch.backends.cuda.flash_sdp_enabled(),
                          "mem_efficient": torch.backends.cuda.mem_efficient_sdp_enabled(),
                          "autocast": torch.is_autocast_enabled("cpu"),
                          "autocast_dtype": torch.get_autocast_dtype("cpu")})
        h = self.models[0](batch["x"])[:, None, None, :]               # (B, heads 1, tokens 1, dim)
        out = F.scaled_dot_product_attention(h, h, h)[:, 0, 0].sum(1)
        return (out.float() - batch["y"]).pow(2).mean()


def test_speed_switches_reach_the_training_loop(tmp_path, monkeypatch):
    built = []
    adam = torch.optim.Adam

    def recording_adam(*args, **kwargs):
        built.append(kwargs)
        return adam(*args, **kwargs)

    monkeypatch.setattr(torch.optim, "Adam", recording_adam)
    base = dict(max_steps=2, validate_every=0)
    plain = Attention(Points())
    h_plain = trainer.fit(plain, loop(**base), tmp_path / "plain", progress=False)
    assert built[-1].get("fused") is None
    assert plain.seen[0]["flash"] and plain.seen[0]["mem_efficient"] and not plain.seen[0]["autocast"]

    math_fused = Attention(Points())
    h_math = trainer.fit(math_fused, loop(**base, sdpa=False, fused_optimizer=True), tmp_path / "math",
                         progress=False)
    assert built[-1]["fused"] is True                                    # Adam's fused kernel, on the CPU too
    assert not math_fused.seen[0]["flash"] and not math_fused.seen[0]["mem_efficient"]   # the math backend only
    assert torch.backends.cuda.flash_sdp_enabled()                       # restored after the loop
    assert h_math["loss"] == pytest.approx(h_plain["loss"], rel=1e-4)    # the same computation

    bf16 = Attention(Points())
    h_bf16 = trainer.fit(bf16, loop(**base, mixed_precision="bf16"), tmp_path / "bf16", progress=False)
    assert bf16.seen[0]["autocast"] and bf16.seen[0]["autocast_dtype"] == torch.bfloat16   # bf16 autocast on CPU
    assert h_bf16["loss"] != h_plain["loss"] and h_bf16["loss"] == pytest.approx(h_plain["loss"], rel=0.05)


def test_data_loader_workers_give_the_same_training(tmp_path):
    one = trainer.fit(Regression(Points()), loop(max_steps=2, validate_every=0), tmp_path / "w0", progress=False)
    two = trainer.fit(Regression(Points()), loop(max_steps=2, validate_every=0, num_workers=2, pin_memory=True),
                      tmp_path / "w2", progress=False)
    assert two["loss"] == pytest.approx(one["loss"], rel=1e-6)
