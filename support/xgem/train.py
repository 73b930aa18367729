"""XGeM's five stages in order, each in its own folder under one model folder, and the trained
system loaded back for generation.

``root/tokenizer``     the reports' tokenizer (no local model folders)
``root/image_vae``     stage 1 (``vae/``: the autoencoder)
``root/report_vae``    stage 2 (Optimus)
``root/contrastive``   stage 3 (the two towers)
``root/encoded``       the training studies in the frozen spaces (with their fingerprint)
``root/frontal``, ``root/lateral``, ``root/report``   stage 4 (``denoiser/``)
``root/joint``         stage 5 (``joint.safetensors``)

Each stage resumes from its own checkpoints; a finished stage is not trained again. Stages 1-3
train on the train split, and stages 4-5 on its studies as the frozen spaces see them.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

import pandas as pd
import torch

from support.xgem.config import XGeMConfig
from support.xgem.data import Studies
from support.xgem.encoded import EncodedStudies, Spaces, encode_studies

STAGES = ("image_vae", "report_vae", "contrastive", "frontal", "lateral", "report", "joint")
ENCODED_DIR = "encoded"
SETTINGS_JSON = "xgem.json"         # the profile and overrides the folder's models were trained with


def write_settings(root: str | os.PathLike, settings: dict) -> Path:
    """Keep ``{"profile", "overrides"}`` beside the weights, so sampling rebuilds the same config."""
    from support.io import write_json_atomic

    path = Path(root) / SETTINGS_JSON
    write_json_atomic(path, dict(settings))
    return path


def model_config(root: str | os.PathLike, profile: str | None = None) -> XGeMConfig:
    """The config a model folder was trained with (its ``xgem.json``), else ``profile``'s preset
    (no ``profile``: an error naming the file)."""
    from support.io import read_json
    from support.xgem.config import xgem_config

    path = Path(root) / SETTINGS_JSON
    if not path.is_file():
        if profile is None:
            raise FileNotFoundError(f"{path}: no XGeM settings; train the model with notebook 03")
        return xgem_config(profile)
    settings = read_json(path)
    return xgem_config(settings["profile"], settings.get("overrides") or {}, source=str(path))


def _files(root: Path, config: XGeMConfig) -> dict[str, Path]:
    """The weight files that define the frozen spaces."""
    from support.xgem.image_vae import image_vae_folder

    vae = image_vae_folder(config, root / "image_vae")
    return {"image_vae": vae / "diffusion_pytorch_model.safetensors",
            "report_vae": root / "report_vae" / "model.safetensors",
            "contrastive": root / "contrastive" / "model.safetensors"}


def spaces_fingerprint(root: str | os.PathLike, config: XGeMConfig) -> dict[str, str]:
    from support.io import sha256_file

    files = _files(Path(root), config)
    missing = [str(p) for p in files.values() if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"XGeM: the frozen spaces are not trained yet; missing {missing} "
                                "(train stages image_vae, report_vae and contrastive first)")
    return {name: sha256_file(path) for name, path in files.items()}


def weight_hashes(root: str | os.PathLike, config: XGeMConfig, joint: bool) -> dict[str, str]:
    """SHA-256 of every weight file generation reads: the three frozen spaces, the three denoisers
    and, when sampling jointly, the joint stage."""
    from support.io import sha256_file
    from support.xgem.diffusion import REPORT_WEIGHTS
    from support.xgem.joint import DENOISER_DIRS, WEIGHTS

    root = Path(root)
    hashes = dict(spaces_fingerprint(root, config))
    for m, folder in DENOISER_DIRS.items():
        hashes[m] = sha256_file(root / folder / (REPORT_WEIGHTS if m == "report" else
                                                 "diffusion_pytorch_model.safetensors"))
    if joint:
        hashes["joint"] = sha256_file(root / "joint" / WEIGHTS)
    return hashes


def load_spaces(root: str | os.PathLike, config: XGeMConfig, device: str | torch.device = "cpu"):
    """(codec, optimus, report tokenizers, contrastive model) of a model folder, in eval mode on ``device``."""
    from support.xgem.contrastive import load_contrastive
    from support.xgem.image_vae import image_vae_folder, load_image_vae
    from support.xgem.report_vae import load_report_vae

    root = Path(root)
    codec = load_image_vae(image_vae_folder(config, root / "image_vae"))
    codec.vae.to(device)
    optimus, tokenizers = load_report_vae(root / "report_vae")
    contrastive, _ = load_contrastive(root / "contrastive")
    return codec, optimus.to(device).eval(), tokenizers, contrastive.to(device).eval()


def frozen_spaces(root: str | os.PathLike, config: XGeMConfig, device: str | torch.device = "cpu") -> Spaces:
    """Stages 1-3 as the functions the diffusion stages need (:class:`~support.xgem.encoded.Spaces`)."""
    codec, optimus, tokenizers, contrastive = load_spaces(root, config, device)

    def encode_report(texts):
        batch = tokenizers.batch(list(texts), optimus.config.max_tokens)
        mean, logvar = optimus.encode(batch["enc_ids"].to(device), batch["enc_mask"].to(device))
        return mean, (0.5 * logvar).exp()

    empty = {"image": contrastive.empty_image_embedding(), "text": contrastive.empty_report_embedding()}
    return Spaces(encode_image=codec.encode, encode_report=encode_report, embed_image=contrastive.embed_images,
                  embed_report=contrastive.embed_texts, empty=empty, fingerprint=spaces_fingerprint(root, config))


def encoded_studies(config: XGeMConfig, studies: Studies, root: str | os.PathLike, batch_size: int = 32,
                    progress: bool = True) -> EncodedStudies:
    """The training studies in the frozen spaces: read from ``root/encoded`` when the spaces there are
    these ones, else computed and written."""
    root = Path(root)
    folder = root / ENCODED_DIR
    fingerprint = spaces_fingerprint(root, config)
    if (folder / "encoded.json").is_file():
        kept = EncodedStudies.load(folder)
        if kept.fingerprint == fingerprint and len(kept) == len(studies):
            return kept
    with torch.no_grad():
        encoded = encode_studies(studies, frozen_spaces(root, config), batch_size, progress)
    encoded.save(folder)
    return encoded


def train_xgem(config: XGeMConfig, records: pd.DataFrame, root: str | os.PathLike, stages: Iterable[str] = STAGES,
               num_processes: int = 1, progress: bool = True, spaces_root: str | os.PathLike | None = None
               ) -> dict[str, dict]:
    """Train the asked ``stages`` (in XGeM's order) into ``root``; returns each stage's history. Each
    resumes from its newest checkpoint (a finished stage only reloads and exports). ``spaces_root``:
    another model folder whose stages 1-3 (and encoded studies) the diffusion stages here build on
    (an ablation that retrains only stage 4)."""
    from support.xgem.contrastive import train_contrastive
    from support.xgem.diffusion import train_denoiser
    from support.xgem.image_vae import train_image_vae
    from support.xgem.joint import train_joint
    from support.xgem.report_vae import train_report_vae

    config = config.validate()
    stages = list(stages)
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        raise ValueError(f"XGeM stages {unknown}: expected some of {list(STAGES)}")
    root = Path(root)
    spaces = Path(spaces_root) if spaces_root is not None else root
    if spaces != root and any(s in stages for s in STAGES[:3]):
        raise ValueError(f"XGeM: stages 1-3 train in {root} itself; with spaces_root only stages 4-5 can run")
    if "split" not in records.columns:
        raise ValueError("XGeM: the record table has no 'split' column; build it with support.data.adapters")
    size = config.image_vae.size
    train_records = records[records["split"] == "train"]
    histories: dict[str, dict] = {}
    runs = {"image_vae": lambda out: train_image_vae(config, records, out, num_processes, progress),
            "report_vae": lambda out: train_report_vae(config, Studies(train_records, size), out, num_processes,
                                                       progress),
            "contrastive": lambda out: train_contrastive(config, Studies(records, size), out, num_processes, progress)}
    for stage in (s for s in STAGES[:3] if s in stages):
        histories[stage] = runs[stage](root / stage)
    later = [s for s in STAGES[3:] if s in stages]
    if later:
        encoded = encoded_studies(config, Studies(train_records, size), spaces, progress=progress)
        for stage in later:
            out = root / stage
            histories[stage] = train_joint(config, encoded, root, out, num_processes, progress) if stage == "joint" \
                else train_denoiser(config, stage, encoded, out, num_processes, progress)
    return histories


def load_xgem(config: XGeMConfig, root: str | os.PathLike, device: str | torch.device = "cpu", joint: bool = True,
              spaces_root: str | os.PathLike | None = None):
    """The trained system (:class:`~support.xgem.generate.XGeMModels`) from ``root`` (stages 1-3 from
    ``spaces_root`` when given); the joint stage's weights when present and ``joint``, else the
    independent backbones only."""
    from support.core.schedules import make_noise_scheduler
    from support.xgem.diffusion import noise_config
    from support.xgem.generate import XGeMModels
    from support.xgem.joint import WEIGHTS, load_backbones, load_joint

    root = Path(root)
    codec, optimus, _, contrastive = load_spaces(spaces_root or root, config, device)
    report_dim = int(optimus.config.latent_dim)
    joint_model = None
    if joint and (root / "joint" / WEIGHTS).is_file():
        joint_model = load_joint(config, root, root / "joint", report_dim).to(device).eval()
        backbones = dict(joint_model.backbones.items())
    else:
        backbones = {m: b.to(device).eval() for m, b in load_backbones(root).items()}
    with torch.no_grad():
        empty = {"image": contrastive.empty_image_embedding(), "text": contrastive.empty_report_embedding()}
    scheduler = make_noise_scheduler(noise_config(config.diffusion))
    return XGeMModels(config=config, codec=codec, optimus=optimus, contrastive=contrastive, backbones=backbones,
                      joint=joint_model, scheduler_config=dict(scheduler.config), empty=empty)
