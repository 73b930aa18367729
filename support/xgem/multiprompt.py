"""Multi-Prompt training: which condition each latent diffusion model sees, drawn per study.

Every model has two condition sources, the two other modalities:

| model    | source a | source b | a's type | b's type |
|----------|----------|----------|----------|----------|
| frontal  | lateral  | report   | image    | text     |
| lateral  | frontal  | report   | image    | text     |
| report   | frontal  | lateral  | image    | image    |

A condition is a weighting ``(w_a, w_b)`` of the two sources' context vectors, normalised after
mixing: ``(1, 0)`` is source a, ``(0, 1)`` source b, ``(1/2, 1/2)`` their normalised average. With
both sources present the three are drawn in equal shares; with one, that one (an image model of
a study without the other view uses the report; the report model of a study without a lateral
uses the frontal). Condition dropout (10%) replaces a condition by the *empty* embedding of its
type: the same weighting of the sources' empty embeddings. At inference several conditions are
combined the same way, with the weights as a parameter, and the unconditional branch of
classifier-free guidance is the same weighting of the empties.

Single-prompt training (the ablation) always uses source b for the image models (the report)
and source a for the report model (the frontal).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

SOURCES = {"frontal": ("lateral", "report"), "lateral": ("frontal", "report"), "report": ("frontal", "lateral")}
KIND = {"frontal": "image", "lateral": "image", "report": "text"}
CHOICES = ("a", "b", "average")


def sources(target: str) -> tuple[str, str]:
    """The two condition sources of the model of ``target``."""
    if target not in SOURCES:
        raise ValueError(f"modality {target!r}: expected one of {list(SOURCES)}")
    return SOURCES[target]


def draw_choices(has_a: torch.Tensor, has_b: torch.Tensor, generator: torch.Generator,
                 multi_prompt: bool = True, single: str = "b") -> torch.Tensor:
    """Per study, the index into :data:`CHOICES` (0: a, 1: b, 2: average), drawn with ``generator``.

    Both sources present: uniform over the three (multi-prompt) or ``single``; one present: that
    one. A study with neither, or without ``single`` in single-prompt training, is an error (the
    dataset leaves such studies out)."""
    has_a, has_b = has_a.bool().cpu(), has_b.bool().cpu()
    if multi_prompt:
        if not (has_a | has_b).all():
            raise ValueError(f"{int((~(has_a | has_b)).sum())} studies have neither condition source")
        uniform = torch.randint(0, 3, has_a.shape, generator=generator, device=generator.device).cpu()
        return torch.where(has_a & has_b, uniform, torch.where(has_a, 0, 1))
    present = has_a if single == "a" else has_b
    if not present.all():
        raise ValueError(f"single-prompt training needs source {single} in every study; "
                         f"{int((~present).sum())} lack it")
    return torch.full(has_a.shape, 0 if single == "a" else 1, dtype=torch.long)


def choice_weights(choices: torch.Tensor) -> torch.Tensor:
    """(B, 2) weights of sources a and b for :func:`draw_choices`' indices."""
    table = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5]])
    return table[choices.long().cpu()]


def mix(weights: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The normalised weighted average of two batches of context vectors (B, E) or (E,)."""
    w = weights.to(a)
    mixed = w[..., :1] * a + w[..., 1:2] * b
    return F.normalize(mixed, dim=-1)


def multi_prompt_condition(target: str, emb_a: torch.Tensor, emb_b: torch.Tensor, has_a: torch.Tensor,
                           has_b: torch.Tensor, empty: dict[str, torch.Tensor], generator: torch.Generator,
                           dropout: float = 0.1, multi_prompt: bool = True) -> tuple[torch.Tensor, dict]:
    """The (B, E) context vectors of one training batch of the model of ``target``.

    ``emb_a``/``emb_b`` are the sources' context vectors (rows of absent sources are ignored);
    ``empty`` maps ``"image"`` and ``"text"`` to the empty embedding of each type (E,). Returns the
    conditions and what was drawn (``choices``, ``dropped``) for logging and tests."""
    a, b = sources(target)
    single = "b" if KIND[target] == "image" else "a"
    choices = draw_choices(has_a, has_b, generator, multi_prompt, single)
    weights = choice_weights(choices).to(emb_a.device)
    dropped = (torch.rand(choices.shape, generator=generator, device=generator.device) < dropout).cpu()
    conditions = mix(weights, emb_a, emb_b)
    empties = mix(weights, empty[KIND[a]].expand_as(emb_a), empty[KIND[b]].expand_as(emb_b))
    conditions = torch.where(dropped.to(conditions.device)[:, None], empties, conditions)
    return conditions, {"choices": choices, "dropped": dropped}


def combine(target: str, given: dict[str, torch.Tensor], empty: dict[str, torch.Tensor],
            weights: dict[str, float] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Inference: the condition from the ``given`` modalities' context vectors (B, E) and its
    unconditional counterpart, each the normalised weighted average (equal weights by default)."""
    names = list(given)
    if not names:
        raise ValueError(f"generating {target}: no condition given")
    if target in names:
        raise ValueError(f"generating {target}: it cannot also be a condition")
    weights = weights or {}
    unknown = [n for n in weights if n not in names]
    if unknown:
        raise ValueError(f"condition weights {unknown}: not among the conditions {names}")
    w = torch.tensor([float(weights.get(n, 1.0)) for n in names])
    if (w < 0).any() or w.sum() <= 0:
        raise ValueError(f"condition weights {dict(zip(names, w.tolist()))}: expected non-negative, not all zero")
    w = w / w.sum()
    first = given[names[0]]
    cond = sum(wi * given[n] for wi, n in zip(w.tolist(), names))
    uncond = sum(wi * empty[KIND[n]].to(first).expand_as(first) for wi, n in zip(w.tolist(), names))
    return F.normalize(cond, dim=-1), F.normalize(uncond, dim=-1)
