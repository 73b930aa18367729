"""The studies in XGeM's frozen spaces, computed once for the diffusion stages.

For every study: the posterior (mean, std) of its frontal and lateral latents (image autoencoder,
scaled) and of its report latent (Optimus), and the context vector of each modality (contrastive
towers); absent modalities hold zeros and are flagged. Each training step then draws a latent from
the stored posterior, as encoding on the fly would, without running the frozen encoders again.
Kept on disk (safetensors + JSON) with the fingerprint of the spaces that made it, so a resumed
stage reuses it and a stage on other spaces refuses it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch.utils.data import DataLoader, Dataset

from support.xgem.multiprompt import sources

TENSORS = "encoded.safetensors"
META = "encoded.json"
MODALITIES = ("frontal", "lateral", "report")

Encode = Callable[[Any], tuple[torch.Tensor, torch.Tensor]]      # batch -> (mean, std)
Embed = Callable[[Any], torch.Tensor]                            # batch -> (B, E) unit vectors


@dataclass
class Spaces:
    """The frozen encoders as functions of a batch of images (B, 1, S, S) in [-1, 1] or report texts."""

    encode_image: Encode
    encode_report: Encode
    embed_image: Embed
    embed_report: Embed
    empty: dict[str, torch.Tensor]                  # "image" and "text": the empty embedding of each type
    fingerprint: dict[str, str] = field(default_factory=dict)   # what made them (weights' hashes)


@dataclass
class EncodedStudies:
    tensors: dict[str, torch.Tensor]
    study_ids: list[str]
    empty: dict[str, torch.Tensor]
    fingerprint: dict[str, str]

    def __len__(self) -> int:
        return len(self.study_ids)

    @property
    def report_dim(self) -> int:
        return int(self.tensors["report_mean"].shape[1])

    def present(self, modality: str) -> torch.Tensor:
        return torch.ones(len(self), dtype=torch.bool) if modality == "frontal" else self.tensors[f"has_{modality}"]

    def save(self, folder: str | os.PathLike) -> Path:
        from support.io import save_state_dict, write_json_atomic

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        tensors = {**self.tensors, **{f"empty_{k}": v for k, v in self.empty.items()}}
        save_state_dict(tensors, folder / TENSORS)
        write_json_atomic(folder / META, {"study_ids": self.study_ids, "fingerprint": self.fingerprint})
        return folder

    @classmethod
    def load(cls, folder: str | os.PathLike) -> "EncodedStudies":
        from support.io import load_state_dict

        folder = Path(folder)
        from support.io import read_json
        meta = read_json(folder / META)
        tensors = load_state_dict(folder / TENSORS)
        empty = {k[len("empty_"):]: tensors.pop(k) for k in list(tensors) if k.startswith("empty_")}
        return cls(tensors, list(meta["study_ids"]), empty, dict(meta["fingerprint"]))


@torch.no_grad()
def encode_studies(studies: Dataset, spaces: Spaces, batch_size: int = 16, progress: bool = True) -> EncodedStudies:
    """Every study of ``studies`` (:class:`~support.xgem.data.Studies`) through ``spaces``."""
    from tqdm.auto import tqdm

    parts: dict[str, list[torch.Tensor]] = {}
    ids: list[str] = []
    loader = DataLoader(studies, batch_size=batch_size, shuffle=False, collate_fn=list)
    for items in tqdm(loader, desc="encoding studies", unit="batch", disable=None if progress else True):
        frontal = torch.stack([it["frontal"] for it in items])
        lateral = torch.stack([it["lateral"] for it in items])
        has_lateral = torch.tensor([bool(it["has_lateral"]) for it in items])
        has_report = torch.tensor([bool(it["report"]) for it in items])
        texts = [it["report"] for it in items]
        out = {"has_lateral": has_lateral, "has_report": has_report}
        out["frontal_mean"], out["frontal_std"] = spaces.encode_image(frontal)
        out["lateral_mean"], out["lateral_std"] = _where(has_lateral, spaces.encode_image, lateral)
        out["frontal_context"] = spaces.embed_image(frontal)
        out["lateral_context"] = _where(has_lateral, lambda x: (spaces.embed_image(x),), lateral)[0]
        report = _where(has_report, spaces.encode_report, texts)
        out["report_mean"], out["report_std"] = report
        out["report_context"] = _where(has_report, lambda rows: (spaces.embed_report(rows),), texts)[0]
        for k, v in out.items():
            parts.setdefault(k, []).append(v.detach().float().cpu() if v.is_floating_point() else v.cpu())
        ids += [str(it["study_id"]) for it in items]
    if not ids:
        raise ValueError("XGeM: no study to encode")
    tensors = {k: torch.cat(v) for k, v in parts.items()}
    return EncodedStudies(tensors, ids, {k: v.detach().float().cpu() for k, v in spaces.empty.items()},
                          dict(spaces.fingerprint))


def _where(present: torch.Tensor, fn: Callable, batch) -> tuple[torch.Tensor, ...]:
    """``fn`` on the present rows of ``batch`` (a tensor or a list); zeros in the absent rows."""
    rows = torch.nonzero(present).flatten().tolist()
    if not rows:
        probe = fn(batch[:1] if isinstance(batch, torch.Tensor) else batch[:1])
        return tuple(torch.zeros((len(present), *p.shape[1:]), dtype=p.dtype) for p in probe)
    sub = batch[rows] if isinstance(batch, torch.Tensor) else [batch[i] for i in rows]
    results = fn(sub)
    full = []
    for r in results:
        r = r.detach().cpu()
        z = torch.zeros((len(present), *r.shape[1:]), dtype=r.dtype)
        z[rows] = r
        full.append(z)
    return tuple(full)


class ModalityRows(Dataset):
    """The studies that can train the model of ``target``, as items of its target posterior and its
    two condition sources (:func:`~support.xgem.multiprompt.sources`). Left out and counted: the
    target absent, or no source present (single-prompt: the one source it uses absent)."""

    def __init__(self, encoded: EncodedStudies, target: str, multi_prompt: bool = True):
        self.encoded, self.target = encoded, target
        self.a, self.b = sources(target)
        has_t, has_a, has_b = encoded.present(target), encoded.present(self.a), encoded.present(self.b)
        single = has_b if target != "report" else has_a
        usable = has_t & ((has_a | has_b) if multi_prompt else single)
        self.rows = torch.nonzero(usable).flatten().tolist()
        self.left_out = {f"no {target}": int((~has_t).sum()),
                         "no condition source" if multi_prompt else "no single-prompt source":
                             int((has_t & ~usable).sum())}
        self.with_both = int((usable & has_a & has_b).sum())

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        r, t = self.rows[i], self.encoded.tensors
        return {"mean": t[f"{self.target}_mean"][r], "std": t[f"{self.target}_std"][r],
                "context_a": t[f"{self.a}_context"][r], "context_b": t[f"{self.b}_context"][r],
                "has_a": self.encoded.present(self.a)[r], "has_b": self.encoded.present(self.b)[r],
                "index": torch.tensor(i)}
