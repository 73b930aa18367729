"""What a run's ``index.html`` shows of each notebook: a few numbers, each with its unit and what it
means, and a caption for each figure. Everything else stays in ``metrics/<notebook>.json`` and
the CSVs beside it, which the page links.

A headline names a dotted key of the notebook's metrics file, or a pattern (``*``) that matches
one key per set, method or source; ``{1}``, ``{2}`` in its label are the pattern's matched parts.
"""

from __future__ import annotations

import fnmatch
import math
import re
from dataclasses import dataclass
from typing import Any, Iterable, Iterator


@dataclass(frozen=True)
class Headline:
    key: str            # dotted key or fnmatch pattern in the flattened metrics
    label: str          # what it is; {1}, {2}... are the pattern's matched parts
    unit: str           # "" for a plain number
    meaning: str        # one line: how to read it


H = Headline
HEADLINES: dict[str, list[Headline]] = {
    "00_data": [
        H("n_subjects", "patients", "", "patients in the dataset"),
        H("n_images", "images", "", "images read, every view"),
        H("n_skipped", "records skipped", "", "bad records skipped and counted (listed in the dataset summary)"),
    ],
    "01_lora_t2i": [
        H("auroc.*:Pleural Effusion", "requested effusion found, {1}", "AUROC",
          "the reference classifier ranks prompted-for effusion above the rest; real test images are the ceiling"),
        H("auroc.*:Cardiomegaly", "requested cardiomegaly found, {1}", "AUROC", "as above, for cardiomegaly"),
        H("fd_to_target.*", "distance to the real target images, {1}", "FD", "lower is closer to the target's look"),
        H("fd_cut_by_lora", "domain gap cut by LoRA", "share", "1 - FD(base+LoRA) / FD(base)"),
        H("trainable_share_unet", "LoRA's share of the UNet", "share", "weights LoRA trains over the UNet's"),
        H("images_per_s", "LoRA training speed", "images/s", ""),
    ],
    "02_ddpm": [
        H("updates", "training updates", "", ""),
        H("pixel_fd_trained", "trained model vs held-out images", "pixel FD", "16x16-pixel Fréchet distance; lower is closer"),
        H("pixel_fd_untrained", "untrained network vs held-out images", "pixel FD", "the floor a trained model must beat"),
        H("pixel_fd_by_update.*", "EMA samples at update {1}", "pixel FD", "quality against training updates"),
        H("train_images_per_s", "training speed", "images/s", ""),
    ],
    "03_xgem": [
        H("checks.image_vae_psnr_db", "image autoencoder reconstruction", "dB PSNR", "held-out images"),
        H("checks.report_vae_bleu1", "report autoencoder reconstruction", "BLEU-1", "held-out reports"),
        H("multi_minus_single.*|fd.difference", "Multi-Prompt minus single-prompt, {1}", "FD",
          "negative: Multi-Prompt training's outputs are closer to real"),
        H("conditioning_effect.*|auroc - unmatched.difference", "the condition steers {1}", "AUROC",
          "findings AUROC against the own study's truth minus another study's"),
    ],
    "04_sampling": [
        H("pixel_fd.*", "DDPM samples, {1}", "pixel FD", "sampler@steps against held-out images"),
        H("dpm25_speedup_vs_ddpm", "DPM-Solver++ 25 steps vs ancestral", "x faster", ""),
        H("t2i_images_per_s", "T2I-LoRA sampling", "images/s", ""),
        H("xgem_sets.*.generated", "XGeM set {1}", "studies", "studies generated"),
    ],
    "05_cleanup": [
        H("telea.pixel_recall", "burned-in text removed", "share of text pixels", "against the phantom's truth"),
        H("telea.psnr_gain", "closer to the text-free truth", "dB PSNR", "after minus before"),
        H("telea.outside_changed_pixels", "pixels changed outside the masks", "share", "anatomy left alone: 0"),
        H("cleaned_images.cleaned", "images cleaned", "", "of the dataset; the rest had no text found"),
    ],
    "06_evaluation": [
        H("*.fd", "{1}: distance to real", "FD", "reference-encoder space; the real validate split is the control"),
        H("*.turing_auroc", "{1}: told from real", "AUROC", "a classifier's real-vs-synthetic AUROC; 0.5 = indistinguishable"),
        H("*.cond_auroc_mean", "{1}: requested findings found", "AUROC", "mean over findings"),
    ],
    "07_ssl_dino": [
        H("headline.*|*|*|1", "DINO on {1}, {2} ({3}), all labels", "AUROC", "downstream probe on frozen features"),
    ],
    "08_cmcgns_pretrain": [
        H("final_loss.*|*", "{1} pretraining on {2}: final loss", "", ""),
    ],
    "09_cmcgns_downstream": [
        H("gain_over_global.*|*|*|*", "CM-CGNS minus global-only, {2}, {3}, label fraction {4}", "AUROC",
          "the cluster-guided negatives' gain; a positive value supports the claim"),
    ],
}
MAX_ROWS = 12

# Figure captions by file stem; a stem that starts with a key (06_privacy_<set>) takes its caption.
CAPTIONS = {
    "00_annotations": "The phantom's boxes and masks over their images",
    "00_pairs": "Image-report pairs as the dataset holds them",
    "00_prevalence": "Finding prevalence per split",
    "00_text": "Burned-in text and markers the cleanup must remove",
    "01_domains": "The base model's source domain beside the target domain",
    "01_finding_auroc": "Requested-finding AUROC: base, base+LoRA, full fine-tune, real ceiling",
    "01_finding_rates": "How often each requested finding is found",
    "01_lora_loss": "LoRA training loss",
    "01_same_seeds": "The same prompts and seeds through each model",
    "02_loss": "DDPM training and validation loss; EMA samples' quality against updates",
    "02_samples": "DDPM EMA samples",
    "03_directions": "XGeM's directions on held-out studies",
    "04_quality_vs_steps": "Sample quality against denoising steps, per sampler",
    "04_sampler_grids": "The same seeds through each sampler",
    "04_t2i_lora_samples": "T2I-LoRA samples for a finding mix",
    "05_before_after": "Cleanup: before, mask, after",
    "06_precision_recall": "Precision and recall of each synthetic set",
    "06_privacy": "Nearest real training image of the closest synthetic ones (privacy audit)",
    "08_losses": "CM-CGNS pretraining losses",
    "09_downstream": "Downstream results per encoder, task and label fraction",
}


IDENTITY = ("direction", "measure", "stage", "method", "set", "source")


def flatten(obj: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """Dotted keys of nested mappings; a table (a list of records) is keyed by each record's
    identity fields joined with "|" (``multi_minus_single.F->L|fd.difference``)."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from flatten(v, f"{prefix}.{k}" if prefix else str(k))
    elif isinstance(obj, list) and obj and all(isinstance(r, dict) for r in obj):
        for i, record in enumerate(obj):
            name = "|".join(str(record[f]) for f in IDENTITY if isinstance(record.get(f), str)) or str(i)
            yield from flatten({k: v for k, v in record.items() if k not in IDENTITY}, f"{prefix}.{name}")
    else:
        yield prefix, obj


def _parts(pattern: str, key: str) -> list[str]:
    regex = "^" + "".join("(.*?)" if c == "*" else re.escape(c) for c in pattern) + "$"
    m = re.match(regex, key)
    return list(m.groups()) if m else []


def fmt(value: Any) -> str:
    """A headline value: "too few samples" where a guard left it empty (NaN or null)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "too few samples"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1000 else f"{value:,.0f}"
    return str(value)


def headline_rows(notebook: str, metrics: dict) -> tuple[list[tuple[str, str, str, str]], int]:
    """``([(label, value, unit, meaning), ...], rows left out)`` of a notebook's metrics."""
    flat = dict(flatten(metrics))
    rows = []
    for h in HEADLINES.get(notebook, []):
        keys = [k for k in flat if fnmatch.fnmatchcase(k, h.key)] if "*" in h.key else ([h.key] if h.key in flat else [])
        for key in keys:
            value = flat[key]
            if isinstance(value, (dict, list, str)):      # a number (or a guarded null) only
                continue
            label = h.label.format("", *_parts(h.key, key)) if "*" in h.key else h.label
            rows.append((label, fmt(value), h.unit, h.meaning))
    return rows[:MAX_ROWS], max(len(rows) - MAX_ROWS, 0)


def caption(stem: str) -> str:
    if stem in CAPTIONS:
        return CAPTIONS[stem]
    for key in sorted(CAPTIONS, key=len, reverse=True):
        if stem.startswith(key + "_"):
            return f"{CAPTIONS[key]}: {stem[len(key) + 1:]}"
    return stem.split("_", 1)[-1].replace("_", " ")


def curated_keys() -> Iterable[str]:
    for headlines in HEADLINES.values():
        yield from (h.key for h in headlines)
