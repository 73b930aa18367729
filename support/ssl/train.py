"""DINO (Caron et al., 2021) as a task of the shared trainer: I-SynMed's self-supervised step.

A student (ViT + lightly's ``DINOProjectionHead``) sees every crop; a teacher, the student's
momentum average (lightly's ``update_momentum`` on a cosine schedule from 0.996 to 1), sees the
two global crops; lightly's ``DINOLoss`` (centred, sharpened teacher) makes the student's
distributions match the teacher's across views. The prototypes (the head's last layer) stay
fixed in the first epoch (lightly's ``cancel_last_layer_gradients``). What downstream tasks use is
the teacher's backbone, exported as an encoder of :mod:`support.downstream`.

From a notebook: :func:`launch_dino`; from a shell:
``accelerate launch -m support.ssl.train --config job.yaml``. Both run :func:`train_dino`.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from pathlib import Path
from typing import Any, Callable

import torch

from support.core import trainer
from support.downstream.encoders import save_encoder_folder
from support.params import from_mapping, read_yaml_mapping
from support.ssl.config import DINOConfig, dino_config
from support.ssl.data import MultiCropImages

ENCODER_DIR = "encoder"           # the run's exported teacher backbone (support.downstream's encoder folder)


class Student(torch.nn.Module):
    """Backbone and projection head: crops -> prototype scores."""

    def __init__(self, backbone: torch.nn.Module, head: torch.nn.Module):
        super().__init__()
        self.backbone, self.head = backbone, head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone.features(x))


def start_backbone(config: DINOConfig) -> torch.nn.Module:
    """The ViT DINO starts from: built from ``config.backbone``, from ``config.init_weights`` when given."""
    from support.downstream import build_encoder
    from support.downstream.backbones import load_vit_weights

    backbone = build_encoder("vit", config.backbone)
    if config.init_weights:
        load_vit_weights(backbone, config.init_weights)
    return backbone


def dino_network(config: DINOConfig) -> Student:
    """The starting backbone under lightly's ``DINOProjectionHead`` (prototypes frozen for
    ``head.freeze_last_layer_epochs``)."""
    from lightly.models.modules import DINOProjectionHead

    backbone, head = start_backbone(config), config.head
    return Student(backbone, DINOProjectionHead(backbone.feature_dim, head.hidden_dim, head.bottleneck_dim,
                                                head.prototypes, batch_norm=head.batch_norm,
                                                norm_last_layer=head.norm_last_layer,
                                                freeze_last_layer=head.freeze_last_layer_epochs))


def dino_loss(config: DINOConfig):
    """lightly's ``DINOLoss`` with the config's temperatures and centre momentum."""
    from lightly.loss import DINOLoss

    c = config.loss
    return DINOLoss(output_dim=config.head.prototypes, warmup_teacher_temp=c.warmup_teacher_temp,
                    teacher_temp=c.teacher_temp, warmup_teacher_temp_epochs=c.warmup_teacher_temp_epochs,
                    student_temp=c.student_temp, center_momentum=c.center_momentum)


def collate_views(items: list[list[torch.Tensor]]) -> list[torch.Tensor]:
    """Items of views -> one batch per view."""
    return [torch.stack(views) for views in zip(*items)]


class DINOTask(trainer.Task):
    """Self-distillation with no labels on ``images`` (items with an ``"image"`` in [0, 1])."""

    name = "dino"
    collate_fn = staticmethod(collate_views)

    def __init__(self, config: DINOConfig, images, source: str = "images"):
        self.config, self.source = config, source
        self.train_set = MultiCropImages(images, config.crops, seed=config.train.seed, name=source)

    def setup(self) -> trainer.Parts:
        from lightly.models.utils import deactivate_requires_grad

        self.student = dino_network(self.config)
        self.teacher = dino_network(self.config)   # a second build: the head's weight norm refuses a deep copy
        self.teacher.load_state_dict(self.student.state_dict())
        deactivate_requires_grad(self.teacher)
        self.teacher.to(self.ctx.device)
        self.criterion = dino_loss(self.config).to(self.ctx.device)
        return trainer.Parts(models=[self.student])

    def loss(self, batch: list[torch.Tensor], step: trainer.Step) -> torch.Tensor:
        views = [v.to(self.ctx.device, non_blocking=True) for v in batch]
        with torch.no_grad():
            teacher_out = [self.teacher(v) for v in views[:2]]   # the teacher sees the global crops
        student_out = [self.models[0](v) for v in views]
        return self.criterion(teacher_out, student_out, epoch=step.epoch)

    def before_optimizer_step(self, step: trainer.Step) -> None:
        self.student.head.cancel_last_layer_gradients(current_epoch=step.epoch)

    def teacher_momentum(self, step: int) -> float:
        """The momentum of update ``step`` (1 to max_steps): cosine from ``momentum_start`` at the
        first to ``momentum_end`` at the last (lightly's ``cosine_schedule`` counts from 0)."""
        from lightly.utils.scheduler import cosine_schedule

        t = self.config.train
        return cosine_schedule(step - 1, self.ctx.max_steps, t.momentum_start, t.momentum_end)

    def after_update(self, step: int) -> None:
        from lightly.models.utils import update_momentum

        update_momentum(self.student, self.teacher, m=self.teacher_momentum(step))

    def state_dict(self):
        files = {"student.safetensors": self.student.state_dict(), "teacher.safetensors": self.teacher.state_dict(),
                 "loss.safetensors": self.criterion.state_dict()}
        return files, {}

    def load_state_dict(self, files, meta) -> None:
        self.student.load_state_dict(files["student.safetensors"])
        self.teacher.load_state_dict(files["teacher.safetensors"])
        self.criterion.load_state_dict(files["loss.safetensors"])

    def describe(self) -> dict[str, Any]:
        return {"source": self.source, "n_images": len(self.train_set),
                "backbone_parameters": sum(p.numel() for p in self.student.backbone.parameters())}

    def export(self) -> None:
        save_encoder_folder(self.teacher.backbone, "vit", self.config.backbone, self.ctx.output_dir / ENCODER_DIR,
                            {"source": self.source, "method": "dino"})


def train_dino(config: DINOConfig, images, output_dir: str | os.PathLike, source: str = "images",
               on_update: Callable[[int, torch.nn.Module], None] | None = None, progress: bool = True) -> dict:
    """Pretrain ``config`` on ``images`` (items with an ``"image"`` in [0, 1]); return the history.

    Writes what the trainer writes (checkpoints with student, teacher and loss centre;
    ``history.json``) and ``encoder/`` (the teacher's backbone, :func:`load_encoder_folder`).
    """
    return trainer.fit(DINOTask(config, images, source), config, output_dir, on_update, progress)


def launch_dino(config: DINOConfig, images, output_dir: str | os.PathLike, source: str = "images",
                num_processes: int = 1, port: int | None = None) -> dict:
    """:func:`train_dino` from a notebook on ``num_processes`` processes (``notebook_launcher``)."""
    return trainer.launch(DINOTask(config, images, source), config, output_dir, num_processes, port)


def uniform_collapse(losses, prototypes: int, tolerance: float = 0.01) -> bool:
    """Whether a run ended in DINO's uniform collapse: the centred teacher spreads evenly over the
    prototypes and the student matches it, so the loss sits at ln(prototypes) and the backbone has
    stopped telling images apart. Judged on the mean of the last tenth of the updates."""
    import math

    losses = [float(v) for v in losses]
    if not losses:
        return False
    tail = losses[-max(1, len(losses) // 10):]
    return abs(sum(tail) / len(tail) - math.log(prototypes)) <= tolerance * math.log(prototypes)


# ------------------------------------------------------------------------------------ CLI
@dataclasses.dataclass
class DINOJob:
    """A DINO job as one YAML file: images (a MIMIC-CXR-JPG-layout root), profile + overrides, output."""

    output_dir: Path
    data: Path
    profile: str = "quick"
    split: str | None = "train"
    backbone: dict = dataclasses.field(default_factory=dict)
    head: dict = dataclasses.field(default_factory=dict)
    crops: dict = dataclasses.field(default_factory=dict)
    loss: dict = dataclasses.field(default_factory=dict)
    train: dict = dataclasses.field(default_factory=dict)
    init_weights: str = ""          # a local timm ViT checkpoint to start from


def main(argv: list[str] | None = None) -> int:
    from accelerate import PartialState

    from support.data.adapters import load_dataset
    from support.data.datasets import ImageDataset
    from support.data.schema import FRONTAL_VIEWS

    parser = argparse.ArgumentParser(prog="accelerate launch -m support.ssl.train",
                                     description="DINO pretraining on the frontal images of a MIMIC-CXR-JPG-layout root.")
    parser.add_argument("--config", required=True, help="job YAML: output_dir, data, profile, split, backbone/head/"
                                                        "crops/loss/train, init_weights")
    args = parser.parse_args(argv)
    path = Path(args.config)
    job = from_mapping(DINOJob, read_yaml_mapping(path), source=str(path))
    config = dino_config(job.profile, {k: getattr(job, k) for k in ("backbone", "head", "crops", "loss", "train",
                                                                     "init_weights")}, source=str(path))
    records, _ = load_dataset("mimic-cxr-jpg", job.data)
    chosen = records[records["view"].isin(FRONTAL_VIEWS) & ((records["split"] == job.split) if job.split else True)]
    images = ImageDataset(chosen.reset_index(drop=True), size=config.crops.global_size, value_range=(0.0, 1.0))
    history = train_dino(config, images, job.output_dir, source=str(job.data))
    if PartialState().is_main_process:
        print(f"done: {history['step'][-1] if history['step'] else 0} updates on {len(images)} images; encoder in "
              f"{Path(job.output_dir) / ENCODER_DIR}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
