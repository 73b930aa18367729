"""Segment Anything as the mask refiner: detected boxes in, one mask per box out.

SAM's own ``sam_model_registry[kind](checkpoint=...)`` calls ``torch.load`` without
``weights_only``; here the model is built without a checkpoint and the state dict is read
safely (``weights_only=True`` for ``.pth``, or safetensors) and loaded strictly.
"""

from __future__ import annotations

import dataclasses
import os
from functools import partial
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

SAM_KINDS = ("vit_b", "vit_l", "vit_h")


@dataclasses.dataclass(frozen=True)
class SamSpec:
    """The shape of a SAM model (the published ones are the presets of :func:`sam_spec`)."""

    encoder_embed_dim: int
    encoder_depth: int
    encoder_num_heads: int
    encoder_global_attn_indexes: tuple[int, ...]
    image_size: int = 1024
    patch_size: int = 16
    window_size: int = 14
    prompt_embed_dim: int = 256
    mask_in_chans: int = 16
    decoder_depth: int = 2
    decoder_mlp_dim: int = 2048
    decoder_num_heads: int = 8
    iou_head_hidden_dim: int = 256


_PRESETS = {
    "vit_b": dict(encoder_embed_dim=768, encoder_depth=12, encoder_num_heads=12, encoder_global_attn_indexes=(2, 5, 8, 11)),
    "vit_l": dict(encoder_embed_dim=1024, encoder_depth=24, encoder_num_heads=16, encoder_global_attn_indexes=(5, 11, 17, 23)),
    "vit_h": dict(encoder_embed_dim=1280, encoder_depth=32, encoder_num_heads=16, encoder_global_attn_indexes=(7, 15, 23, 31)),
}


def sam_spec(kind: str = "vit_h", overrides: Mapping[str, Any] | None = None) -> SamSpec:
    """The preset of ``kind`` (vit_b, vit_l, vit_h) with ``overrides`` (SamSpec field names)."""
    if kind not in _PRESETS:
        raise ValueError(f"SAM kind {kind!r}: expected one of {list(SAM_KINDS)}")
    fields = {f.name for f in dataclasses.fields(SamSpec)}
    unknown = sorted(set(overrides or {}) - fields)
    if unknown:
        raise ValueError(f"SAM spec: unknown field(s) {unknown}; expected some of {sorted(fields)}")
    values = {**_PRESETS[kind], **(overrides or {})}
    values["encoder_global_attn_indexes"] = tuple(values["encoder_global_attn_indexes"])
    return SamSpec(**values)


def build_sam(spec: SamSpec):
    """A randomly initialised ``segment_anything.modeling.Sam`` of shape ``spec`` (eval mode)."""
    import torch
    from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    if spec.image_size % spec.patch_size:
        raise ValueError(f"SAM spec: image_size {spec.image_size} is not a multiple of patch_size {spec.patch_size}")
    grid = spec.image_size // spec.patch_size
    sam = Sam(
        image_encoder=ImageEncoderViT(
            depth=spec.encoder_depth, embed_dim=spec.encoder_embed_dim, img_size=spec.image_size, mlp_ratio=4,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), num_heads=spec.encoder_num_heads,
            patch_size=spec.patch_size, qkv_bias=True, use_rel_pos=True,
            global_attn_indexes=spec.encoder_global_attn_indexes, window_size=spec.window_size,
            out_chans=spec.prompt_embed_dim),
        prompt_encoder=PromptEncoder(
            embed_dim=spec.prompt_embed_dim, image_embedding_size=(grid, grid),
            input_image_size=(spec.image_size, spec.image_size), mask_in_chans=spec.mask_in_chans),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(depth=spec.decoder_depth, embedding_dim=spec.prompt_embed_dim,
                                          mlp_dim=spec.decoder_mlp_dim, num_heads=spec.decoder_num_heads),
            transformer_dim=spec.prompt_embed_dim, iou_head_depth=3, iou_head_hidden_dim=spec.iou_head_hidden_dim),
        pixel_mean=[123.675, 116.28, 103.53],
        pixel_std=[58.395, 57.12, 57.375],
    )
    return sam.eval()


def load_sam(checkpoint: str | os.PathLike, kind: str = "vit_h", spec: Mapping[str, Any] | None = None,
             device: str = "auto"):
    """SAM with the weights of ``checkpoint``: the registry's ``kind`` or a custom ``spec``.

    The state dict must match the model exactly (``strict=True``): a checkpoint of another
    kind is an error naming the first mismatching keys, not a silently half-loaded model.
    """
    from support.devices import pick_device
    from support.io import load_state_dict

    path = Path(checkpoint).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"{path}: SAM checkpoint not found (MaskConfig.sam_checkpoint)")
    if spec:
        model = build_sam(sam_spec(kind, spec))
    else:
        from segment_anything import sam_model_registry

        if kind not in SAM_KINDS:
            raise ValueError(f"SAM kind {kind!r}: expected one of {list(SAM_KINDS)}")
        model = sam_model_registry[kind](checkpoint=None)
    state = load_state_dict(path)
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]      # training checkpoints wrap the weights
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:     # same names, other shapes
        raise ValueError(f"{path}: weights do not fit a SAM {kind}"
                         f"{' of the given spec' if spec else ''}: {str(exc).splitlines()[-1].strip()}") from None
    bad = list(result.missing_keys) + list(result.unexpected_keys)
    if bad:
        raise ValueError(f"{path}: not a SAM {kind} state dict{' of the given spec' if spec else ''}; "
                         f"missing {list(result.missing_keys)[:4]}, unexpected {list(result.unexpected_keys)[:4]}")
    return model.to(pick_device(device)).eval()


class SamRefiner:
    """``SamPredictor`` with the model loaded once: per image, one mask per box prompt."""

    def __init__(self, model):
        from segment_anything import SamPredictor

        self.model = model
        self.predictor = SamPredictor(model)

    @classmethod
    def from_checkpoint(cls, checkpoint: str | os.PathLike, kind: str = "vit_h",
                        spec: Mapping[str, Any] | None = None, device: str = "auto") -> "SamRefiner":
        return cls(load_sam(checkpoint, kind, spec, device))

    def box_masks(self, image: np.ndarray, boxes: Sequence[Sequence[float]]) -> np.ndarray:
        """``image`` uint8 (H, W) or (H, W, 3); ``boxes`` (N, 4) x0, y0, x1, y1 in pixels ->
        bool (N, H, W), one mask per box (``multimask_output=False``)."""
        import torch

        arr = np.asarray(image)
        if arr.dtype != np.uint8:
            raise ValueError(f"SAM input: expected uint8 pixels, got {arr.dtype}")
        rgb = np.repeat(arr[..., None], 3, axis=2) if arr.ndim == 2 else arr
        h, w = rgb.shape[:2]
        box_array = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
        if len(box_array) == 0:
            return np.zeros((0, h, w), bool)
        self.predictor.set_image(np.ascontiguousarray(rgb), image_format="RGB")
        prompts = self.predictor.transform.apply_boxes_torch(
            torch.as_tensor(box_array, device=self.predictor.device), (h, w))
        with torch.no_grad():
            masks, _, _ = self.predictor.predict_torch(point_coords=None, point_labels=None, boxes=prompts,
                                                       multimask_output=False)
        self.predictor.reset_image()
        return masks[:, 0].cpu().numpy().astype(bool)
