"""Stage 5: joint generation. Two modalities are denoised together, each model attending to the
other's *environment token*, with the three trained backbones frozen.

- An environment encoder per modality maps its noisy latent and the timestep to one pooled,
  L2-normalised token of the shared space (:class:`ImageEnvironment`, :class:`ReportEnvironment`).
- Joint cross-attention layers are added beside every cross-attention of the backbones (UNet
  ``attn2`` processors; a second attention in each report block). Their output projection starts at
  zero, so before training the joint model is exactly the independent one.
- The loss of a batch (one pair drawn per micro-batch, the third modality the condition):
  the mean epsilon-MSE of the two outputs + ``contrastive_weight`` x the symmetric InfoNCE between
  their environment tokens at temperature ``temperature`` (the original had neither a temperature
  nor a correct second direction).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from support.core import trainer
from support.core.config import LoopConfig
from support.core.schedules import diffusion_loss, make_noise_scheduler
from support.params import Checked
from support.xgem.config import DiffusionConfig, JointConfig, XGeMConfig
from support.xgem.contrastive import symmetric_infonce
from support.xgem.diffusion import ReportDenoiser, load_denoiser, noise_config, predict_noise
from support.xgem.encoded import EncodedStudies
from support.xgem.multiprompt import KIND

PAIRS = (("frontal", "lateral"), ("frontal", "report"), ("lateral", "report"))
WEIGHTS = "joint.safetensors"
DENOISER_DIRS = {m: Path(m) / "denoiser" for m in ("frontal", "lateral", "report")}


def condition_of(pair: tuple[str, str]) -> str:
    """The modality a jointly generated pair is conditioned on (the third one)."""
    return next(m for m in ("frontal", "lateral", "report") if m not in pair)


# ------------------------------------------------------------------------------ environment encoders
class ImageEnvironment(nn.Module):
    """(noisy image latent, t) -> one unit vector: convolutions with the timestep added, pooled."""

    def __init__(self, latent_channels: int, width: int, embed_dim: int):
        from diffusers.models.embeddings import TimestepEmbedding, Timesteps

        super().__init__()
        self.time_proj = Timesteps(width, flip_sin_to_cos=True, downscale_freq_shift=0)
        self.time_embed = TimestepEmbedding(width, width)
        self.conv_in = nn.Conv2d(latent_channels, width, 3, padding=1)
        self.body = nn.Sequential(nn.GroupNorm(8, width), nn.SiLU(), nn.Conv2d(width, width, 3, stride=2, padding=1),
                                  nn.GroupNorm(8, width), nn.SiLU(), nn.Conv2d(width, width, 3, padding=1))
        self.proj = nn.Linear(width, embed_dim)

    def forward(self, latent: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        temb = self.time_embed(self.time_proj(t).to(latent.dtype))
        h = self.conv_in(latent) + temb[:, :, None, None]
        return F.normalize(self.proj(self.body(h).mean(dim=(2, 3))), dim=-1)


class ReportEnvironment(nn.Module):
    """(noisy report latent, t) -> one unit vector."""

    def __init__(self, latent_dim: int, width: int, embed_dim: int):
        from diffusers.models.embeddings import TimestepEmbedding, Timesteps

        super().__init__()
        self.time_proj = Timesteps(width, flip_sin_to_cos=True, downscale_freq_shift=0)
        self.time_embed = TimestepEmbedding(width, width)
        self.proj_in = nn.Linear(latent_dim, width)
        self.body = nn.Sequential(nn.SiLU(), nn.Linear(width, width), nn.SiLU(), nn.Linear(width, embed_dim))

    def forward(self, latent: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        h = self.proj_in(latent) + self.time_embed(self.time_proj(t).to(latent.dtype))
        return F.normalize(self.body(h), dim=-1)


# ------------------------------------------------------------------------------ joint cross-attention
class JointAttention(nn.Module):
    """Multi-head attention from a block's features (B, N, C) to environment tokens (B, K, E); the
    output projection starts at zero."""

    def __init__(self, dim: int, env_dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.norm = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, dim, bias=False)
        self.to_k = nn.Linear(env_dim, dim, bias=False)
        self.to_v = nn.Linear(env_dim, dim, bias=False)
        self.to_out = nn.Linear(dim, dim)
        nn.init.zeros_(self.to_out.weight)
        nn.init.zeros_(self.to_out.bias)

    def forward(self, x: torch.Tensor, environment: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        h = self.heads
        q = self.to_q(self.norm(x)).view(b, n, h, c // h).transpose(1, 2)
        k = self.to_k(environment.to(x.dtype)).view(b, -1, h, c // h).transpose(1, 2)
        v = self.to_v(environment.to(x.dtype)).view(b, -1, h, c // h).transpose(1, 2)
        out = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, c)
        return self.to_out(out)


class _PlainProcessor:
    """diffusers' attention, taking (and ignoring) the ``environment`` keyword."""

    def __init__(self):
        from diffusers.models.attention_processor import AttnProcessor2_0

        self.base = AttnProcessor2_0()

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None,
                 environment=None):
        return self.base(attn, hidden_states, encoder_hidden_states, attention_mask, temb)


class JointAttnProcessor(_PlainProcessor, nn.Module):
    """The UNet's cross-attention to its context token, plus :class:`JointAttention` to the other
    modality's environment token when one is given."""

    def __init__(self, dim: int, env_dim: int, heads: int):
        nn.Module.__init__(self)
        _PlainProcessor.__init__(self)
        self.joint = JointAttention(dim, env_dim, heads)

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None,
                 environment=None):
        out = self.base(attn, hidden_states, encoder_hidden_states, attention_mask, temb)
        if environment is None:
            return out
        return out + self.joint(hidden_states, environment)


def add_joint_attention(model: nn.Module, env_dim: int) -> nn.ModuleList:
    """Joint cross-attention beside every cross-attention of ``model``; returns the new layers."""
    layers = nn.ModuleList()
    if isinstance(model, ReportDenoiser):
        for block in model.blocks:
            block.joint = JointAttention(block.attn.embed_dim, env_dim, block.attn.num_heads)
            layers.append(block.joint)
        return layers
    from diffusers.models.attention_processor import Attention

    processors = {}
    for name, module in model.named_modules():
        if isinstance(module, Attention):
            if name.endswith("attn2"):
                processor = JointAttnProcessor(module.to_q.in_features, env_dim, module.heads)
                layers.append(processor.joint)
            else:
                processor = _PlainProcessor()
            processors[f"{name}.processor"] = processor
    model.set_attn_processor(processors)
    return layers


# ------------------------------------------------------------------------------ the joint model
class JointModel(nn.Module):
    """The three frozen backbones with their environment encoders and joint layers."""

    def __init__(self, backbones: dict[str, nn.Module], latent_channels: int, report_dim: int, embed_dim: int,
                 width: int):
        super().__init__()
        self.backbones = nn.ModuleDict(backbones)
        for p in self.backbones.parameters():
            p.requires_grad_(False)
        self.environment = nn.ModuleDict({
            m: ReportEnvironment(report_dim, width, embed_dim) if KIND[m] == "text"
            else ImageEnvironment(latent_channels, width, embed_dim) for m in backbones})
        self.joint = nn.ModuleDict({m: add_joint_attention(b, embed_dim) for m, b in backbones.items()})

    def trained_state(self) -> dict[str, torch.Tensor]:
        """What stage 5 learns (the backbones are stage 4's)."""
        state = self.state_dict()
        return {k: v for k, v in state.items() if k.startswith(("environment.", "joint."))}

    def load_trained_state(self, state: dict[str, torch.Tensor], where: str) -> None:
        expected = {k: tuple(v.shape) for k, v in self.trained_state().items()}
        missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
        shapes = [f"{k} {tuple(state[k].shape)} (model: {expected[k]})" for k in sorted(set(expected) & set(state))
                  if tuple(state[k].shape) != expected[k]]
        if missing or unexpected or shapes:
            raise ValueError(f"{where}: joint weights do not match this model: missing {missing[:5]}, "
                             f"unexpected {unexpected[:5]}, other shapes {shapes[:3]}")
        self.load_state_dict({**self.state_dict(), **state})

    def pair_noise(self, pair: tuple[str, str], noisy: dict[str, torch.Tensor], t: torch.Tensor,
                   context: torch.Tensor) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """epsilon of both modalities of ``pair``, each attending to the other's environment token;
        returns (predictions, environment tokens)."""
        tokens = {m: self.environment[m](noisy[m], t) for m in pair}
        a, b = pair
        preds = {a: predict_noise(self.backbones[a], noisy[a], t, context, tokens[b][:, None]),
                 b: predict_noise(self.backbones[b], noisy[b], t, context, tokens[a][:, None])}
        return preds, tokens


def load_backbones(stage_root: str | os.PathLike) -> dict[str, nn.Module]:
    """Stage 4's three models from ``stage_root/<modality>/denoiser``."""
    root = Path(stage_root)
    return {m: load_denoiser(root / d) for m, d in DENOISER_DIRS.items()}


def build_joint_model(config: XGeMConfig, backbones: dict[str, nn.Module], report_dim: int) -> JointModel:
    return JointModel(backbones, config.image_vae.latent_channels, report_dim, config.contrastive.embed_dim,
                      config.joint.env_width)


def save_joint(model: JointModel, folder: str | os.PathLike) -> Path:
    from support.io import save_state_dict

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_state_dict(model.trained_state(), folder / WEIGHTS)
    return folder / WEIGHTS


def load_joint(config: XGeMConfig, stage_root: str | os.PathLike, joint_folder: str | os.PathLike,
               report_dim: int) -> JointModel:
    from support.io import load_state_dict

    model = build_joint_model(config, load_backbones(stage_root), report_dim)
    path = Path(joint_folder) / WEIGHTS
    model.load_trained_state(load_state_dict(path), str(path))
    return model


# ------------------------------------------------------------------------------ the stage
class JointRows(torch.utils.data.Dataset):
    """Studies with all three modalities: every pair can be generated jointly from the third."""

    def __init__(self, encoded: EncodedStudies):
        self.encoded = encoded
        full = encoded.present("lateral") & encoded.present("report")
        self.rows = torch.nonzero(full).flatten().tolist()
        self.left_out = {"no lateral or no report": int((~full).sum())}

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        r, t = self.rows[i], self.encoded.tensors
        item = {"index": torch.tensor(i)}
        for m in ("frontal", "lateral", "report"):
            item[f"{m}_mean"], item[f"{m}_std"], item[f"{m}_context"] = \
                t[f"{m}_mean"][r], t[f"{m}_std"][r], t[f"{m}_context"][r]
        return item


@dataclass
class JointStage(Checked):
    joint: JointConfig
    diffusion: DiffusionConfig
    train: LoopConfig


class JointTask(trainer.Task):
    """Environment encoders and joint cross-attention on frozen backbones."""

    name = "xgem-joint"

    def __init__(self, config: XGeMConfig, encoded: EncodedStudies, stage4_root: str | os.PathLike,
                 export_dir: str | os.PathLike):
        self.config, self.encoded = config, encoded
        self.stage4_root, self.export_dir = Path(stage4_root), Path(export_dir)
        self.rows = self.train_set = JointRows(encoded)

    def setup(self) -> trainer.Parts:
        self.scheduler = make_noise_scheduler(noise_config(self.config.diffusion))
        self.empty = {k: v.to(self.ctx.device) for k, v in self.encoded.empty.items()}
        model = build_joint_model(self.config, load_backbones(self.stage4_root), self.encoded.report_dim)
        model.backbones.eval()          # frozen: no dropout, running statistics untouched
        return trainer.Parts(models=[model], params=[p for p in model.parameters() if p.requires_grad])

    def loss(self, batch: dict[str, torch.Tensor], step: trainer.Step):
        device, g = self.ctx.device, step.generator
        batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        pair = PAIRS[int(torch.randint(0, len(PAIRS), (1,), generator=g, device=g.device))]
        n = batch["index"].shape[0]
        t = torch.randint(0, self.scheduler.config.num_train_timesteps, (n,), generator=g, device=g.device).to(device)
        noisy, noise = {}, {}
        for m in pair:
            mean, std = batch[f"{m}_mean"], batch[f"{m}_std"]
            x0 = mean + std * torch.randn(mean.shape, generator=g, device=g.device).to(device)
            noise[m] = torch.randn(mean.shape, generator=g, device=g.device).to(device)
            noisy[m] = self.scheduler.add_noise(x0, noise[m], t)
        source = condition_of(pair)
        context = batch[f"{source}_context"]
        dropped = (torch.rand(n, generator=g, device=g.device) < self.config.diffusion.condition_dropout).to(device)
        context = torch.where(dropped[:, None], self.empty[KIND[source]].expand_as(context), context)
        model = self.models[0]
        with self.ctx.autocast():
            preds, tokens = model.pair_noise(pair, noisy, t, context)
        mse = sum(diffusion_loss(preds[m], noise[m], None) for m in pair) / 2
        j = self.config.joint
        nce = symmetric_infonce(tokens[pair[0]].float(), tokens[pair[1]].float(), 1.0 / j.temperature) \
            if n >= 2 else torch.zeros((), device=device)
        return mse + j.contrastive_weight * nce, {"mse": mse.detach(), "infonce": nce.detach()}

    def state_dict(self):
        return {"joint.safetensors": self.ctx.accelerator.unwrap_model(self.models[0]).trained_state()}, {}

    def load_state_dict(self, files, meta) -> None:
        self.ctx.accelerator.unwrap_model(self.models[0]).load_trained_state(files["joint.safetensors"], "checkpoint")

    def resume_key(self) -> dict[str, Any]:
        from support.io import sha256_file

        hashes = {m: sha256_file(self.stage4_root / d / ("model.safetensors" if m == "report" else
                                                        "diffusion_pytorch_model.safetensors"))
                  for m, d in DENOISER_DIRS.items()}
        return {"joint": dataclasses.asdict(self.config.joint), "backbones": hashes, "spaces": self.encoded.fingerprint}

    def describe(self) -> dict[str, Any]:
        model = self.models[0]
        return {"n_studies": len(self.rows), "left_out": self.rows.left_out,
                "trained_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
                "frozen_parameters": sum(p.numel() for p in model.backbones.parameters())}

    def export(self) -> None:
        save_joint(self.ctx.accelerator.unwrap_model(self.models[0]), self.export_dir)


def train_joint(config: XGeMConfig, encoded: EncodedStudies, stage4_root: str | os.PathLike,
                output_dir: str | os.PathLike, num_processes: int = 1, progress: bool = True) -> dict:
    """Stage 5 in ``output_dir`` (its weights in ``output_dir/joint.safetensors``) on stage 4's
    backbones under ``stage4_root``; returns the history."""
    out = Path(output_dir)
    task = JointTask(config, encoded, stage4_root, out)
    if not len(task.rows):
        raise ValueError(f"XGeM joint stage: no study has all three modalities ({task.rows.left_out})")
    stage = JointStage(config.joint, config.diffusion, config.loops.joint)
    return trainer.launch(task, stage, out, num_processes, progress=progress)
