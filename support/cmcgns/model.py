"""CM-CGNS's network: an image side and a report side meeting in one embedding space.

- Image: any dense encoder of :mod:`support.downstream` (ResNet-50 in ``full``); its last-stage
  map gives local tokens, flattened *spatially* (``flatten(2).transpose(1, 2)``: token ``r * w + c``
  is the cell at row r, column c), and a global embedding by attention pooling over them.
- Report: a BERT; token features -> sentence embeddings (the mean of each sentence's tokens) ->
  an attention-pooled report embedding.
- Cross-modal attention: each sentence attends to the patches (image-attended sentences, the
  report loss's candidates) and each patch to the sentences (text-to-image features, the local
  image loss's and CM-MIR's input).
- CM-MIR's decoder: masked patch tokens + text-to-image features -> convolutions and upsampling
  -> an image in the target's value range.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


def spatial_tokens(feature_map: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, H*W, C) in row-major spatial order (not a reshape, which would mix
    channels into positions)."""
    return feature_map.flatten(2).transpose(1, 2)


def token_map(tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """The inverse of :func:`spatial_tokens`: (B, H*W, C) -> (B, C, H, W)."""
    return tokens.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], height, width)


class AttentionPool(nn.Module):
    """Multi-head attention of one query (the tokens' mean plus a learned offset) over the tokens
    and that mean, as CLIP's attention pooling, without position embeddings (any grid size)."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.query = nn.Parameter(torch.zeros(1, 1, dim))
        self.attention = nn.MultiheadAttention(dim, heads, batch_first=True)

    def forward(self, tokens: torch.Tensor, padding: torch.Tensor | None = None) -> torch.Tensor:
        """``tokens`` (B, N, C), ``padding`` (B, N) True where a token is absent -> (B, C)."""
        if padding is None:
            mean = tokens.mean(1, keepdim=True)
        else:
            keep = (~padding).unsqueeze(-1).to(tokens.dtype)
            mean = (tokens * keep).sum(1, keepdim=True) / keep.sum(1, keepdim=True).clamp(min=1)
            padding = torch.cat([torch.zeros_like(padding[:, :1]), padding], dim=1)
        keys = torch.cat([mean, tokens], dim=1)
        return self.attention(mean + self.query, keys, keys, key_padding_mask=padding, need_weights=False)[0][:, 0]


def sentence_means(token_features: torch.Tensor, sentence_index: torch.Tensor, sentences: int
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Each sentence's embedding as the mean of its tokens' features.

    ``token_features`` (B, L, D); ``sentence_index`` (B, L): the sentence of each token, -1 for
    special and padding tokens. Returns (B, S, D) and the mask (B, S) of sentences present."""
    member = F.one_hot(sentence_index.clamp(min=0), sentences).to(token_features.dtype)
    member = member * (sentence_index >= 0).unsqueeze(-1).to(token_features.dtype)     # (B, L, S)
    counts = member.sum(1)                                                               # (B, S)
    means = member.transpose(1, 2) @ token_features / counts.clamp(min=1).unsqueeze(-1)
    return means, counts > 0


class CrossAttention(nn.Module):
    """Single-head scaled dot-product attention between sentences and patches, both directions."""

    def __init__(self, dim: int):
        super().__init__()
        self.q, self.k, self.v = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.scale = dim ** -0.5

    def attend(self, queries: torch.Tensor, keys: torch.Tensor, absent: torch.Tensor | None = None) -> torch.Tensor:
        weights = self.q(queries) @ self.k(keys).transpose(1, 2) * self.scale
        if absent is not None:
            weights = weights.masked_fill(absent.unsqueeze(1), float("-inf"))
        return weights.softmax(-1) @ self.v(keys)

    def forward(self, sentences: torch.Tensor, present: torch.Tensor, patches: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """(image-attended sentences (B, S, D), text-to-image patch features (B, P, D))."""
        return self.attend(sentences, patches), self.attend(patches, sentences, ~present)


def predictor(dim: int) -> nn.Module:
    """SimSiam's bottleneck predictor, D -> D/2 -> D (768 -> 384 -> 768)."""
    return nn.Sequential(nn.Linear(dim, dim // 2), nn.ReLU(inplace=True), nn.Linear(dim // 2, dim))


class MIRDecoder(nn.Module):
    """CM-MIR: masked patch tokens and text-to-image features (B, P, D) on an (h, w) grid -> an
    image (B, 1, h * stride, w * stride) whose values lie in ``value_range``, as the target's do
    (a sigmoid scaled to the range, not an unbounded output against a bounded target)."""

    def __init__(self, dim: int, stride: int, width: int = 64, value_range: tuple[float, float] = (0.0, 1.0)):
        super().__init__()
        if stride < 1 or stride & (stride - 1):
            raise ValueError(f"MIR decoder: stride {stride}, expected a power of two")
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.low, self.high = map(float, value_range)
        layers, channels = [nn.Conv2d(2 * dim, width, 1)], width
        for _ in range(int(math.log2(stride))):
            out = max(channels // 2, 8)
            layers += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(channels, out, 3, padding=1),
                       nn.BatchNorm2d(out), nn.ReLU(inplace=True)]
            channels = out
        layers.append(nn.Conv2d(channels, 1, 3, padding=1))
        self.body = nn.Sequential(*layers)

    def forward(self, patches: torch.Tensor, text_to_image: torch.Tensor, masked: torch.Tensor,
                grid: tuple[int, int]) -> torch.Tensor:
        """``masked`` (B, P) True where a patch token is hidden (replaced by the mask token)."""
        tokens = torch.where(masked.unsqueeze(-1), self.mask_token.to(patches.dtype), patches)
        x = token_map(torch.cat([tokens, text_to_image], dim=-1), *grid)
        return self.low + (self.high - self.low) * torch.sigmoid(self.body(x))


# ------------------------------------------------------------------------------------ the whole
def report_encoder(text, vocab_size: int) -> nn.Module:
    """A BERT: a local folder's (``text.model_path``, e.g. Bio_ClinicalBERT), or a small one built
    from ``text``'s sizes for a tokenizer of ``vocab_size``."""
    from transformers import AutoModel, BertConfig, BertModel

    if text.model_path:
        return AutoModel.from_pretrained(text.model_path, local_files_only=True, add_pooling_layer=False)
    return BertModel(BertConfig(vocab_size=vocab_size, hidden_size=text.hidden_size, num_hidden_layers=text.layers,
                                num_attention_heads=text.heads, intermediate_size=text.intermediate_size,
                                max_position_embeddings=max(text.max_tokens, 64)), add_pooling_layer=False)


class CMCGNS(nn.Module):
    """Both encoders, their projections, the cross-modal parts and the k-means state; ``forward``
    gives CM-CGNS's losses for a batch (those of ``config.loss.method``)."""

    def __init__(self, config, vocab_size: int):
        super().__init__()
        from support.cmcgns.losses import LogitScale, SentenceClusters
        from support.downstream import build_encoder
        from support.downstream.encoders import check_encoder, load_encoder_weights

        self.config = config
        c, d = config.loss, config.loss.embed_dim
        self.image_encoder = build_encoder(config.image.encoder, config.image.encoder_config)
        check_encoder(self.image_encoder, dense=True, where=f"CM-CGNS image encoder {config.image.encoder!r}")
        if config.image.init_weights:
            load_encoder_weights(self.image_encoder, config.image.init_weights)
        channels, self.stride = self.image_encoder.feature_channels[-1], self.image_encoder.feature_strides[-1]
        self.text_encoder = report_encoder(config.text, vocab_size)
        width = self.text_encoder.config.hidden_size
        self.image_pool = AttentionPool(channels, c.pool_heads if channels % c.pool_heads == 0 else 1)
        self.global_image = nn.Linear(channels, d)
        self.local_image = nn.Linear(channels, d)
        self.local_text = nn.Linear(width, d)
        self.sentence_pool = AttentionPool(d, c.pool_heads)
        self.global_text = nn.Linear(d, d)
        self.global_scale = LogitScale(c.temperature)
        if c.local:
            self.cross = CrossAttention(d)
            self.predictor = predictor(d)
            self.report_scale = LogitScale(c.temperature)
        if c.clustered:
            self.clusters = SentenceClusters(c.clusters, d, c.cluster_momentum)
        if c.reconstructs:
            self.decoder = MIRDecoder(d, self.stride, c.decoder_width)

    def idle_parts(self, stage: int) -> list[nn.Module]:
        """Parts no loss of ``stage`` reaches (frozen then, so that distributed training does not wait
        for their gradients): the decoder before stage 2, local projections in ``global``."""
        idle = []
        if self.config.loss.reconstructs and stage < 2:
            idle.append(self.decoder)
        if not self.config.loss.local:
            idle.append(self.local_image)
        return idle

    # ---------------------------------------------------------------- encoders
    def encode_image(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, tuple[int, int]]:
        """(global (B, D), local tokens (B, P, D), or None in ``global`` where no loss reads them, grid (h, w))."""
        last = self.image_encoder.feature_maps(image)[-1]
        tokens = spatial_tokens(last)
        local = self.local_image(tokens) if self.config.loss.local else None
        return self.global_image(self.image_pool(tokens)), local, tuple(last.shape[-2:])

    def encode_report(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, sentence_index: torch.Tensor
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(report (B, D), sentences (B, S, D), sentence present (B, S))."""
        hidden = self.text_encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        sentences, present = sentence_means(self.local_text(hidden), sentence_index,
                                            max(int(sentence_index.max()) + 1, 1))
        report = self.global_text(self.sentence_pool(sentences, ~present))
        return report, sentences, present

    # ---------------------------------------------------------------- the method
    def forward(self, batch: dict[str, torch.Tensor], generator: torch.Generator | None = None,
                stage: int = 1, cluster: bool = True) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        from support.cmcgns.losses import (cluster_guided_infonce, global_infonce, reconstruction_l1, simsiam)

        c = self.config.loss
        image = batch["image"]
        image_global, patches, grid = self.encode_image(image)
        report, sentences, present = self.encode_report(batch["input_ids"], batch["attention_mask"],
                                                        batch["sentence_index"])
        parts = {"global": global_infonce(image_global, report, self.global_scale())}
        if c.local:
            attended, text_to_image = self.cross(sentences, present, patches)
            parts["local_image"] = simsiam(patches, text_to_image, self.predictor)
            z1, z2 = sentences[present], attended[present]           # every sentence of the batch
            clusters = None
            if c.clustered and cluster:
                self.clusters.update(z2)                             # k-means on image-conditioned sentences
                clusters = self.clusters
            parts["local_report"], stats = cluster_guided_infonce(z1, z2, self.report_scale(), clusters)
            if c.clustered:      # logged every update (0 until the clusters start): a fixed set of parts
                parts["false_negatives"] = torch.tensor(stats["false_negatives"], device=image.device)
            if c.reconstructs and stage == 2:
                b, p = patches.shape[:2]
                masked = torch.rand(b, p, generator=generator, device="cpu").to(patches.device) < c.mask_ratio
                rebuilt = self.decoder(patches, text_to_image, masked, grid)
                parts["mir"] = reconstruction_l1(rebuilt, F.interpolate(image, size=rebuilt.shape[-2:]), c.mir_weight)
        loss = sum(v for k, v in parts.items() if k != "false_negatives")
        return loss, {k: v.detach() for k, v in parts.items()}
