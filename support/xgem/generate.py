"""Any-to-any generation: the 12 directions of XGeM from one function (:func:`generate`).

A direction is written ``INPUTS->OUTPUTS`` in the letters F (frontal), L (lateral) and T (report),
e.g. ``F->L``, ``F+L->T``, ``T->F+L``. The inputs become context vectors of the shared space
(images through the vision tower, reports through the text tower); several are combined by a
normalised weighted average, and classifier-free guidance contrasts the result with the same
weighting of the empty embeddings of their types (:func:`~support.xgem.multiprompt.combine`).
Each output's latent is sampled with DDIM (steps, guidance scale and eta are parameters); two
outputs are sampled jointly (each model attending to the other's environment token at every
step) when the joint stage is loaded, or independently on request. Image latents are decoded by
the image autoencoder, report latents by Optimus (greedy).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import nn

from support.xgem.multiprompt import combine

LETTERS = {"F": "frontal", "L": "lateral", "T": "report"}
NAMES = {v: k for k, v in LETTERS.items()}
DIRECTIONS = ("F->L", "F->T", "L->F", "L->T", "T->F", "T->L",
              "F+L->T", "F+T->L", "L+T->F", "T->F+L", "F->L+T", "L->F+T")


def parse_direction(direction: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """``"F+L->T"`` -> (("frontal", "lateral"), ("report",)): the inputs, then the outputs."""
    try:
        left, right = direction.replace(" ", "").split("->")
        inputs = tuple(LETTERS[c] for c in left.split("+"))
        outputs = tuple(LETTERS[c] for c in right.split("+"))
    except (ValueError, KeyError):
        raise ValueError(f"direction {direction!r}: expected INPUTS->OUTPUTS over F, L, T, e.g. 'F->L' or "
                         f"'T->F+L'; the 12 directions: {list(DIRECTIONS)}") from None
    if set(inputs) & set(outputs) or len(set(inputs)) != len(inputs) or len(set(outputs)) != len(outputs):
        raise ValueError(f"direction {direction!r}: a modality appears twice")
    return inputs, outputs


def direction_name(inputs: Sequence[str], outputs: Sequence[str]) -> str:
    return "+".join(NAMES[m] for m in inputs) + "->" + "+".join(NAMES[m] for m in outputs)


@dataclass
class XGeMModels:
    """Every trained part, ready to sample (:func:`support.xgem.train.load_xgem` builds it)."""

    config: Any                                   # XGeMConfig
    codec: Any                                    # support.xgem.image_vae.ImageCodec
    optimus: nn.Module                            # support.xgem.report_vae.Optimus
    contrastive: nn.Module                        # support.xgem.contrastive.ContrastiveModel
    backbones: dict[str, nn.Module]               # stage 4's denoisers
    joint: nn.Module | None                       # stage 5's JointModel (over the same backbones), or None
    scheduler_config: dict[str, Any]
    empty: dict[str, torch.Tensor]                # "image" / "text": the empty embeddings

    @property
    def device(self) -> torch.device:
        return self.contrastive.device

    def latent_shape(self, modality: str) -> tuple[int, ...]:
        if modality == "report":
            return (int(self.optimus.config.latent_dim),)
        c = self.config.image_vae
        return (c.latent_channels, c.latent_size, c.latent_size)

    @torch.no_grad()
    def context(self, modality: str, values) -> torch.Tensor:
        """(B, E) context vectors of images (B, 1, S, S) in [-1, 1] or of report texts."""
        if modality == "report":
            if isinstance(values, str) or not all(isinstance(v, str) for v in values):
                raise TypeError("report conditions: expected a list of report texts")
            return self.contrastive.embed_texts(list(values))
        if not torch.is_tensor(values) or values.dim() != 4 or values.shape[1] != 1:
            raise TypeError(f"{modality} conditions: expected images (B, 1, S, S) in [-1, 1], "
                            f"got {getattr(values, 'shape', type(values).__name__)}")
        return self.contrastive.embed_images(values)


def _batch_size(given: dict[str, Any]) -> int:
    sizes = {m: len(v) for m, v in given.items()}
    if len(set(sizes.values())) != 1:
        raise ValueError(f"conditions of different batch sizes: {sizes}")
    return next(iter(sizes.values()))


def _noise(model: nn.Module, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor,
           environment: torch.Tensor | None) -> torch.Tensor:
    from support.xgem.diffusion import predict_noise

    return predict_noise(model, x, t.expand(x.shape[0]), context, environment)


def _guided(model: nn.Module, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor, uncond: torch.Tensor,
            scale: float, environment: torch.Tensor | None = None) -> torch.Tensor:
    """Classifier-free guidance: eps_u + scale * (eps_c - eps_u), both branches in one batch."""
    if scale == 1.0:
        return _noise(model, x, t, cond, environment)
    env = None if environment is None else torch.cat([environment, environment])
    eps_u, eps_c = _noise(model, torch.cat([x, x]), t, torch.cat([uncond, cond]), env).chunk(2)
    return eps_u + scale * (eps_c - eps_u)


@torch.no_grad()
def sample_latents(models: XGeMModels, outputs: Sequence[str], cond: dict[str, torch.Tensor],
                   uncond: dict[str, torch.Tensor], generator: torch.Generator | list[torch.Generator], steps: int,
                   guidance: float, eta: float, joint: bool, progress: bool = False) -> dict[str, torch.Tensor]:
    """DDIM over the latents of ``outputs`` (one: alone; two: jointly when ``joint``); ``generator``
    one for the batch, or one per study (a study then draws what a batch of it alone would)."""
    from tqdm.auto import tqdm

    from support.core.schedules import make_sampler

    device = models.device
    n = next(iter(cond.values())).shape[0]
    if isinstance(generator, list):     # one per study: its draws do not depend on the rest of the batch
        drawn = [[torch.randn((1, *models.latent_shape(m)), generator=g) for m in outputs] for g in generator]
        x = {m: torch.cat([d[k] for d in drawn]).to(device) for k, m in enumerate(outputs)}
    else:
        x = {m: torch.randn((n, *models.latent_shape(m)), generator=generator, device=generator.device).to(device)
             for m in outputs}
    schedulers = {m: make_sampler("ddim", models.scheduler_config) for m in outputs}
    for s in schedulers.values():
        s.set_timesteps(steps)
    timesteps = schedulers[outputs[0]].timesteps
    for t in tqdm(timesteps, desc="DDIM", unit="step", leave=False, disable=None if progress else True):
        t_batch = t.to(device).expand(n)
        if joint and len(outputs) == 2:
            tokens = {m: models.joint.environment[m](x[m], t_batch) for m in outputs}
            a, b = outputs
            env = {a: tokens[b][:, None], b: tokens[a][:, None]}
        else:
            env = {m: None for m in outputs}
        eps = {m: _guided(models.backbones[m], x[m], t.to(device), cond[m], uncond[m], guidance, env[m])
               for m in outputs}
        x = {m: schedulers[m].step(eps[m], t, x[m], eta=eta, generator=generator).prev_sample for m in outputs}
    return x


@torch.no_grad()
def generate(models: XGeMModels, direction: str, given: dict[str, Any], seed: int | Sequence[int] = 0,
             steps: int | None = None,
             guidance: float | None = None, eta: float | None = None, weights: dict[str, float] | None = None,
             joint: bool = True, progress: bool = False) -> dict[str, Any]:
    """Generate the outputs of ``direction`` from ``given`` (modality name -> images (B, 1, S, S) in
    [-1, 1] or a list of report texts). Returns images (B, 1, S, S) in [-1, 1] for F and L and a list
    of texts for T, plus ``latents``. ``seed``: one for the batch, or one per study (each study's output
    then equals a batch of it alone). ``steps``/``guidance``/``eta`` default to ``config.generate``;
    ``weights`` weigh several conditions (equal by default); ``joint`` False samples two outputs
    independently (the ablation)."""
    inputs, outputs = parse_direction(direction)
    missing = [m for m in inputs if m not in given or given[m] is None]
    if missing:
        raise ValueError(f"direction {direction}: missing input(s) {missing} (given: {sorted(given)})")
    extra = [m for m in given if m not in inputs]
    if extra:
        raise ValueError(f"direction {direction}: {extra} given but not an input of it")
    together = joint and len(outputs) == 2
    if together and models.joint is None:
        raise ValueError(f"direction {direction}: joint generation needs the joint stage's weights; "
                         "train stage 5 or pass joint=False")
    g = models.config.generate
    steps, guidance, eta = steps or g.steps, g.guidance_scale if guidance is None else guidance, \
        g.eta if eta is None else eta
    n = _batch_size(given)
    if not isinstance(seed, int) and len(seed) != n:
        raise ValueError(f"direction {direction}: {len(seed)} seeds for {n} studies")
    contexts = {m: models.context(m, given[m]) for m in inputs}
    cond, uncond = {}, {}
    for m in outputs:
        cond[m], uncond[m] = combine(m, contexts, {k: v.to(models.device) for k, v in models.empty.items()}, weights)
    generator = torch.Generator(device="cpu").manual_seed(int(seed)) if isinstance(seed, int) else \
        [torch.Generator(device="cpu").manual_seed(int(s)) for s in seed]
    latents = sample_latents(models, outputs, cond, uncond, generator, steps, guidance, eta, together, progress)
    result: dict[str, Any] = {"direction": direction_name(inputs, outputs), "latents": latents,
                              "joint": together}
    for m, z in latents.items():
        result[m] = models.optimus.decode(z, g.report_max_tokens) if m == "report" else models.codec.decode(z).cpu()
    return result
