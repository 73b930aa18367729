"""Typed parameters of CM-CGNS pretraining and its profiles (``test``, ``quick``, ``full``).

``full`` is the paper's configuration (reference.md §4): ResNet-50 at 224 px; Bio_ClinicalBERT
from a local folder, 256 tokens; 768-d embeddings; k-means with K = 128; batch 64 per GPU; Adam
at 1e-5 with a cosine schedule; stage 1 for 10 epochs, stage 2 (with CM-MIR, L1 weight 10) for
20. ``quick`` and ``test`` are a small ResNet and a small BERT (its tokenizer trained on the
reports) on the same code path.

Ablations (``method``), each at the same budget, stage 1 + stage 2 updates:
- ``global``: the global image<->report InfoNCE only (ConVIRT-like);
- ``local``: + the local losses (SimSiam on patches, sentence InfoNCE, no clusters);
- ``cgns``: + cluster-guided negatives (hard negatives, false negatives masked);
- ``cmcgns``: + CM-MIR in stage 2 (the full method).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Literal

from support.core.config import LoopConfig, profile_reader
from support.params import Check, Checked

METHODS = ("global", "local", "cgns", "cmcgns")


@dataclass
class ImageConfig(Checked):
    """The image encoder: a dense encoder of :mod:`support.downstream` by registry name and config."""

    encoder: str = "resnet50"
    encoder_config: dict[str, Any] = field(default_factory=dict)
    size: int = 224
    init_weights: str = ""              # a local checkpoint of the encoder (e.g. ImageNet ResNet-50); "": random

    def checks(self) -> Iterable[Check]:
        from support.downstream.encoders import encoder_names

        yield self.encoder in encoder_names(), "encoder", f"one of {encoder_names()}"
        yield self.size >= 16, "size", "at least 16 pixels"
        yield not self.init_weights or Path(self.init_weights).is_file(), "init_weights", \
            f"an existing local weights file, or empty (got {self.init_weights!r})"


@dataclass
class TextConfig(Checked):
    """The report encoder: a local BERT folder (``model_path``, e.g. Bio_ClinicalBERT), or a small
    BERT built from these sizes with a WordPiece tokenizer trained on the training reports."""

    model_path: str = ""
    max_tokens: int = 256
    vocab_size: int = 2000              # the trained tokenizer's vocabulary (no model_path)
    hidden_size: int = 256
    layers: int = 4
    heads: int = 4
    intermediate_size: int = 1024

    def checks(self) -> Iterable[Check]:
        yield not self.model_path or Path(self.model_path).is_dir(), "model_path", \
            f"an existing local model folder (config.json, tokenizer, weights), or empty (got {self.model_path!r})"
        yield self.max_tokens >= 8, "max_tokens", "at least 8"
        yield self.vocab_size >= 100, "vocab_size", "at least 100"
        yield self.hidden_size % self.heads == 0, "hidden_size", f"a multiple of heads ({self.heads})"
        yield self.layers >= 1, "layers", "at least 1"


@dataclass
class LossConfig(Checked):
    """What is learned and how the losses are weighed."""

    method: Literal["global", "local", "cgns", "cmcgns"] = "cmcgns"
    embed_dim: int = 768
    pool_heads: int = 8                 # attention pooling of the image's global embedding
    temperature: float = 0.1            # initial temperature of both InfoNCE losses (learnable)
    clusters: int = 128                 # K of the k-means over image-conditioned sentence features
    cluster_momentum: float = 0.9       # EMA of each centroid toward its assigned features' mean
    cluster_start: int = 0              # updates before clustering starts (features of a random start mean little)
    mir_weight: float = 10.0
    mask_ratio: float = 0.5             # share of patch tokens CM-MIR hides
    decoder_width: int = 256

    def checks(self) -> Iterable[Check]:
        yield self.method in METHODS, "method", f"one of {list(METHODS)}"
        yield self.embed_dim >= 8 and self.embed_dim % 2 == 0, "embed_dim", "an even number, at least 8"
        yield self.embed_dim % self.pool_heads == 0, "pool_heads", f"a divisor of embed_dim ({self.embed_dim})"
        yield self.temperature > 0, "temperature", "positive"
        yield self.clusters >= 2, "clusters", "at least 2"
        yield 0 <= self.cluster_momentum < 1, "cluster_momentum", "in [0, 1)"
        yield self.cluster_start >= 0, "cluster_start", "0 or more"
        yield self.mir_weight >= 0, "mir_weight", "0 or more"
        yield 0 < self.mask_ratio < 1, "mask_ratio", "in (0, 1)"

    @property
    def local(self) -> bool:
        return self.method != "global"

    @property
    def clustered(self) -> bool:
        return self.method in ("cgns", "cmcgns")

    @property
    def reconstructs(self) -> bool:
        return self.method == "cmcgns"


@dataclass
class CMCGNSTrainConfig(LoopConfig):
    """The loop of stage 1 (``max_steps`` / ``epochs``) and the length of stage 2."""

    max_steps: int | None = None
    epochs: int | None = 10
    stage2_max_steps: int | None = None
    stage2_epochs: int | None = 20
    batch_size: int = 64
    optimizer: Literal["adam", "adamw"] = "adam"
    learning_rate: float = 1e-5
    lr_schedule: Literal["constant", "constant_with_warmup", "linear", "cosine"] = "cosine"
    weight_decay: float = 1e-6

    def checks(self) -> Iterable[Check]:
        yield from super().checks()
        yield self.stage2_max_steps is None or self.stage2_max_steps >= 0, "stage2_max_steps", "0 or more, or null"
        yield self.stage2_epochs is None or self.stage2_epochs >= 0, "stage2_epochs", "0 or more, or null"
        yield self.stage2_max_steps is not None or self.stage2_epochs is not None, "stage2_max_steps", \
            "set when stage2_epochs is null"

    def stage2(self) -> "CMCGNSTrainConfig":
        """The loop of stage 2 (its own length; the rest shared)."""
        import dataclasses

        return dataclasses.replace(self, max_steps=self.stage2_max_steps, epochs=self.stage2_epochs)

    @property
    def has_stage2(self) -> bool:
        return bool(self.stage2_max_steps) or (self.stage2_max_steps is None and bool(self.stage2_epochs))


@dataclass
class CMCGNSConfig(Checked):
    """CM-CGNS pretraining: image and report encoders, the losses, the two-stage loop."""

    title = "CM-CGNS parameters"

    image: ImageConfig = field(default_factory=ImageConfig)
    text: TextConfig = field(default_factory=lambda: TextConfig(model_path=""))
    loss: LossConfig = field(default_factory=LossConfig)
    train: CMCGNSTrainConfig = field(default_factory=CMCGNSTrainConfig)


# A small ResNet (timm's ResNet-18 at a quarter of the width, stride 16 so a 64 px image still
# has a 4 x 4 grid of local tokens) and a small BERT: the same code path as ``full``.
SMALL_RESNET = {"model_name": "resnet18",
                "options": {"channels": [16, 32, 64, 128], "stem_width": 16, "output_stride": 16}}

PROFILES: dict[str, CMCGNSConfig] = {
    "full": CMCGNSConfig(),
    "quick": CMCGNSConfig(
        image=ImageConfig(encoder="timm", encoder_config=SMALL_RESNET, size=64),
        text=TextConfig(max_tokens=96, vocab_size=1000, hidden_size=128, layers=2, heads=2, intermediate_size=256),
        loss=LossConfig(embed_dim=128, pool_heads=4, clusters=16, cluster_start=10, decoder_width=64),
        train=CMCGNSTrainConfig(max_steps=60, epochs=None, stage2_max_steps=30, stage2_epochs=None, batch_size=32,
                                learning_rate=5e-4, lr_schedule="constant", checkpoint_every=50,
                                checkpoints_total_limit=1, log_every=5)),
    "test": CMCGNSConfig(
        image=ImageConfig(encoder="timm", size=32,
                          encoder_config={"model_name": "resnet18", "options": {"channels": [8, 8, 16, 16],
                                                                                "stem_width": 8, "output_stride": 8}}),
        text=TextConfig(max_tokens=48, vocab_size=200, hidden_size=32, layers=1, heads=2, intermediate_size=64),
        loss=LossConfig(embed_dim=32, pool_heads=2, clusters=4, cluster_start=1, decoder_width=16),
        train=CMCGNSTrainConfig(max_steps=3, epochs=None, stage2_max_steps=2, stage2_epochs=None, batch_size=4,
                                learning_rate=1e-3, lr_schedule="constant", cpu=True, mixed_precision="no",
                                checkpoint_every=2, checkpoints_total_limit=1, log_every=1)),
}

# The study profile runs the quick sizes for longer: notebooks/params/study.yaml sets its update counts.
PROFILES["study"] = PROFILES["quick"]

cmcgns_config = profile_reader(PROFILES, "CM-CGNS", opaque=("encoder_config",))
