"""support.training: the pieces the DDPM and LoRA loops share (their loops are tested end to end
in test_diffusion_train.py and test_t2i_train.py)."""

import time

import pytest
import torch

from support import training


def test_meter_leaves_side_work_out_of_the_speed():
    meter = training.UpdateMeter()
    for loss in (1.0, 3.0):
        meter.add(loss)
    meter.pause()
    time.sleep(0.3)                     # a checkpoint: not training time
    meter.resume()
    mean, rate = meter.flush()
    assert mean == 2.0 and rate > 20    # two updates in well under 0.1 s of counted time
    meter.add(5.0)
    assert meter.flush()[0] == 5.0      # a new window


def test_resume_choices(tmp_path):
    root = tmp_path / "checkpoints"
    assert training.checkpoint_to_resume(None, root) is None
    assert training.checkpoint_to_resume("latest", root) is None            # nothing written yet
    with pytest.raises(FileNotFoundError, match="train.resume: checkpoint folder .*missing"):
        training.checkpoint_to_resume(str(tmp_path / "missing"), root)
    (tmp_path / "chosen").mkdir()
    assert training.checkpoint_to_resume(str(tmp_path / "chosen"), root) == tmp_path / "chosen"
    assert training.latest_good(root) == "none written yet"


def test_epoch_order_is_seeded_and_a_resume_skips_seen_batches():
    data = list(range(20))
    sampler, batches = training.epoch_sampler(data, world=2, rank=1, seed=3, batch_size=4)
    assert batches == 2                                                    # 10 per rank, full batches only
    first = training.epoch_indices(sampler, 0, 0, 4)
    assert training.epoch_indices(sampler, 0, 1, 4) == first[4:]
    assert training.epoch_indices(sampler, 1, 0, 4) != first                # a new order each epoch
    other, _ = training.epoch_sampler(data, world=2, rank=0, seed=3, batch_size=4)
    assert not set(training.epoch_indices(other, 0, 0, 4)) & set(first)    # disjoint shards
    with pytest.raises(ValueError, match="no full batch of 16 per process over 2"):
        training.epoch_sampler(data, world=2, rank=0, seed=3, batch_size=16)


def test_step_generator_is_a_function_of_seed_step_and_rank():
    draw = lambda *key: torch.rand(3, generator=training.step_generator(*key, "cpu"))  # noqa: E731
    assert torch.equal(draw(1, 5, 0), draw(1, 5, 0))
    assert not torch.equal(draw(1, 5, 0), draw(1, 6, 0)) and not torch.equal(draw(1, 5, 0), draw(1, 5, 1))


@pytest.fixture
def fresh_accelerate_state():
    # accelerate keeps one state per process: leave none behind for the next test in this worker
    from accelerate.state import AcceleratorState

    yield
    AcceleratorState._reset_state(reset_partial_state=True)


def test_guarded_update_stops_before_a_non_finite_loss_touches_the_weights(tmp_path, fresh_accelerate_state):
    accelerator = training.make_accelerator("no", cpu=True, accumulation_steps=1)
    w = torch.nn.Parameter(torch.ones(2))
    optimizer = torch.optim.SGD([w], lr=0.1)
    with accelerator.accumulate():
        got = training.guarded_update(accelerator, (w * 2).sum(), [w], optimizer, 1.0, step=0, micro=0,
                                      checkpoint_root=tmp_path)
    assert got == 4.0 and not torch.equal(w.detach(), torch.ones(2))       # stepped
    before = w.detach().clone()
    with pytest.raises(training.NonFiniteLossError, match="update 8, micro-batch 7.*none written yet"):
        with accelerator.accumulate():
            training.guarded_update(accelerator, (w * float("nan")).sum(), [w], optimizer, 1.0, step=7, micro=7,
                                    checkpoint_root=tmp_path)
    assert torch.equal(w.detach(), before) and w.grad is None
