"""DINO's parts against their definitions, without a training run: the loss is DINO's centred,
sharpened cross-entropy at the configured temperatures (and lightly's DINOLoss), the teacher is a
momentum copy of the student on a cosine schedule and receives no gradient, and a uniform
collapse is judged on the last tenth of the losses within a relative tolerance of ln K."""

import json
import math
import types

import pytest
import torch
import torch.nn.functional as F

from support.ssl.config import dino_config
from support.ssl.train import DINOTask, dino_loss, uniform_collapse

torch.set_num_threads(1)

# temperatures and momenta that all differ from lightly's defaults, so that each must be passed on
LOSS = {"warmup_teacher_temp": 0.02, "teacher_temp": 0.07, "warmup_teacher_temp_epochs": 3,
        "student_temp": 0.2, "center_momentum": 0.5}
CONFIG = dino_config("test", {"loss": LOSS, "head": {"prototypes": 8},
                              "train": {"momentum_start": 0.9, "momentum_end": 0.99, "seed": 7}})


class Images(torch.utils.data.Dataset):
    def __init__(self, n=6, size=32):
        self.images = torch.rand(n, 1, size, size, generator=torch.Generator().manual_seed(0))

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return {"image": self.images[i]}


def written_out_dino(teacher, student, center, teacher_temp, student_temp):
    """DINO's loss: the teacher's centred, sharpened softmax against the student's log-softmax,
    averaged over the pairs of different views and the batch."""
    terms = []
    for t, tv in enumerate(teacher):
        p = F.softmax((tv - center) / teacher_temp, dim=-1)
        for s, sv in enumerate(student):
            if s != t:
                terms.append(-(p * F.log_softmax(sv / student_temp, dim=-1)).sum(-1).mean())
    return torch.stack(terms).mean()


def task_on_cpu(tmp_path=None, max_steps=11, source="discs"):
    task = DINOTask(CONFIG, Images(), source=source)
    task.ctx = types.SimpleNamespace(device=torch.device("cpu"), max_steps=max_steps, output_dir=tmp_path)
    task.models = [task.setup().models[0]]
    return task


def test_the_loss_is_dinos_at_the_configured_temperatures():
    from lightly.loss import DINOLoss

    g = torch.Generator().manual_seed(1)
    criterion = dino_loss(CONFIG)
    lightly = DINOLoss(output_dim=8, warmup_teacher_temp=0.02, teacher_temp=0.07, warmup_teacher_temp_epochs=3,
                       student_temp=0.2, center_momentum=0.5)
    center = torch.zeros(8)
    # the teacher temperature warms up linearly from 0.02 to 0.07 over epochs 0..2, then stays
    for epoch, teacher_temp in ((0, 0.02), (1, 0.045), (2, 0.07), (5, 0.07)):
        teacher = [torch.randn(3, 8, generator=g) for _ in range(2)]
        student = [torch.randn(3, 8, generator=g) for _ in range(4)]
        expected = written_out_dino(teacher, student, center, teacher_temp, 0.2)
        loss = criterion(teacher, student, epoch=epoch)
        torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(loss, lightly(teacher, student, epoch=epoch), rtol=1e-6, atol=1e-7)
        # the centre: an EMA (momentum 0.5) of the teacher's batch means
        center = 0.5 * center + 0.5 * torch.cat(teacher).mean(0)
        torch.testing.assert_close(criterion.center.reshape(-1), center, rtol=1e-6, atol=1e-7)


def test_the_teacher_momentum_is_a_cosine_from_start_to_end():
    task = task_on_cpu(max_steps=11)
    assert task.teacher_momentum(1) == pytest.approx(0.9, abs=1e-12)       # the first update
    assert task.teacher_momentum(11) == pytest.approx(0.99, abs=1e-12)     # the last update
    for step in (2, 4, 6, 9):
        expected = 0.99 - (0.99 - 0.9) * (math.cos(math.pi * (step - 1) / 10) + 1) / 2
        assert task.teacher_momentum(step) == pytest.approx(expected, abs=1e-12)
    assert task.teacher_momentum(6) == pytest.approx((0.9 + 0.99) / 2, abs=1e-12)


def test_the_teacher_starts_as_the_student_and_moves_toward_it_by_the_scheduled_momentum():
    task = task_on_cpu(max_steps=11)
    student, teacher = task.student.state_dict(), task.teacher.state_dict()
    assert student.keys() == teacher.keys() and all(torch.equal(student[k], teacher[k]) for k in student)
    assert all(not p.requires_grad for p in task.teacher.parameters())
    assert any(p.requires_grad for p in task.student.parameters())
    g = torch.Generator().manual_seed(2)
    for step, m in ((1, 0.9), (11, 0.99), (6, 0.945)):
        with torch.no_grad():
            for p in task.student.parameters():
                p.add_(torch.randn(p.shape, generator=g))
        before = {n: p.detach().clone() for n, p in task.teacher.named_parameters()}
        task.after_update(step)
        for (name, t), s in zip(task.teacher.named_parameters(), task.student.parameters()):
            torch.testing.assert_close(t, m * before[name] + (1 - m) * s, rtol=0, atol=1e-6, msg=name)
        assert not torch.equal(next(task.teacher.parameters()), next(task.student.parameters()))


def test_the_task_loss_sends_the_global_crops_to_a_teacher_that_gets_no_gradient():
    task = task_on_cpu()
    views = task.collate_fn([task.train_set[i] for i in range(3)])
    assert [tuple(v.shape) for v in views] == [(3, 1, 32, 32)] * 2 + [(3, 1, 16, 16)] * 2
    seen = {"teacher": [], "student": []}
    task.teacher.register_forward_hook(lambda m, i, o: seen["teacher"].append((i[0].shape[-1], o)))
    task.student.register_forward_hook(lambda m, i, o: seen["student"].append((i[0].shape[-1], o)))
    loss = task.loss(views, types.SimpleNamespace(epoch=1))
    assert [size for size, _ in seen["teacher"]] == [32, 32]              # the two global crops only
    assert [size for size, _ in seen["student"]] == [32, 32, 16, 16]      # every crop
    teacher_out = [o for _, o in seen["teacher"]]
    student_out = [o for _, o in seen["student"]]
    assert all(not o.requires_grad for o in teacher_out)
    # epoch 1 of the warm-up: teacher temperature 0.045, centre still zero
    expected = written_out_dino(teacher_out, student_out, torch.zeros(8), 0.045, 0.2)
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)
    loss.backward()
    assert all(p.grad is None for p in task.teacher.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in task.student.backbone.parameters())


def test_the_task_reads_its_source_and_seed_and_describes_itself():
    task = DINOTask(CONFIG, Images())
    assert task.source == "images" and task.train_set.name == "images"
    task = task_on_cpu(source="phantom")
    assert task.train_set.name == "phantom" and task.train_set.seed == 7 and len(task.train_set) == 6
    n = sum(p.numel() for p in task.student.backbone.parameters())
    assert n > 0 and task.describe() == {"source": "phantom", "n_images": 6, "backbone_parameters": n}


def test_the_export_is_the_teachers_backbone_as_a_vit_encoder(tmp_path):
    from support.downstream.encoders import load_encoder_folder

    task = task_on_cpu(tmp_path)
    with torch.no_grad():
        for p in task.teacher.parameters():
            p.add_(0.5)                                       # the teacher, not the student, is exported
    task.export()
    meta = json.loads((tmp_path / "encoder" / "encoder.json").read_text())
    assert (meta["encoder"], meta["source"], meta["method"]) == ("vit", "discs", "dino")
    encoder = load_encoder_folder(tmp_path / "encoder")
    own = task.teacher.backbone.state_dict()
    assert all(torch.equal(v, own[k]) for k, v in encoder.state_dict().items())


def test_uniform_collapse_is_judged_on_the_last_tenth():
    k = 64
    ln = math.log(k)
    assert uniform_collapse([2.0] * 18 + [ln] * 2, k)                 # only the last 2 of 20 count
    assert not uniform_collapse([ln] * 18 + [2.0] * 2, k)
    assert uniform_collapse([1.0] * 4 + [ln], k)                       # fewer than 10: the last one
    assert not uniform_collapse([ln] * 4 + [1.0], k)
    assert uniform_collapse([ln], k) and not uniform_collapse([], k)
    # the mean of the last two of 20 sits at ln K although each is 1.5 % off it
    assert uniform_collapse([2.0] * 18 + [ln * 1.015, ln * 0.985], k)
    assert not uniform_collapse([2.0] * 19 + [ln * 0.985], k)


def test_uniform_collapse_tolerance_is_relative_to_ln_k_and_inclusive():
    k = 512
    ln = math.log(k)
    assert uniform_collapse([ln * 1.009] * 10, k) and uniform_collapse([ln * 0.991] * 10, k)
    assert not uniform_collapse([ln * 1.011] * 10, k) and not uniform_collapse([ln * 0.989] * 10, k)
    assert uniform_collapse([ln * 1.05] * 10, k, tolerance=0.06)
    assert not uniform_collapse([ln * 1.05] * 10, k, tolerance=0.04)
    # exactly at the boundary (ln K / 2 away, tolerance 0.5: exact in floating point) counts as collapse
    assert abs(ln / 2 - ln) == 0.5 * ln
    assert uniform_collapse([ln / 2], k, tolerance=0.5)
    assert not uniform_collapse([ln / 2], k, tolerance=0.4999)
