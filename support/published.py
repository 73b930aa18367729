"""What the ``full`` profile reproduces, and what stands in when it is missing.

The published systems run on credentialed data and pretrained weights that nothing here downloads.
Each is one notebook parameter holding a local path. The runner checks them before anything runs:
a profile that asks for the published systems (``allow_stand_ins: false``, as ``full`` does) refuses
to start while one is empty, naming the parameter, the layout it expects and where to get it.
With stand-ins allowed, the small parts built in the pipeline take their place, and the manifest,
the run's index and every metrics file list them.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence


@dataclasses.dataclass(frozen=True)
class Published:
    """One published part the runs can only reproduce from a local file or folder."""

    notebook: str
    parameter: str
    what: str                       # the published part
    layout: str                     # what the path must hold
    get: str                        # where a researcher obtains it
    stand_in: str                   # what runs in its place
    folder: bool = False            # a folder (else one file)
    needs: tuple[str, ...] = ()     # names the folder must hold (any one of each "a|b" group)
    given: Callable[[Mapping], bool] | None = None     # whether the notebook's parameters supply it
    used: Callable[[Mapping], bool] | None = None      # whether they use it at all (default: always)
    without: Callable[[dict], dict] | None = None      # the notebook's parameters when its stand-in runs

    @property
    def key(self) -> str:
        return f"{self.notebook}.{self.parameter}"

    def supplied(self, params: Mapping) -> bool:
        return self.given(params) if self.given else bool(str(params.get(self.parameter) or "").strip())

    def problem(self, params: Mapping) -> str | None:
        """Why the given path cannot be this part (None: it looks right)."""
        path = Path(str(params.get(self.parameter))).expanduser()
        if not path.exists():
            return f"{path} does not exist"
        if not self.folder:
            return None if path.is_file() else f"{path} is not a file"
        if not path.is_dir():
            return f"{path} is not a folder"
        lacking = [names for names in self.needs if not any((path / n).exists() for n in names.split("|"))]
        return f"{path} lacks {', '.join(lacking)}" if lacking else None

    def describe(self) -> dict[str, str]:
        return {"parameter": self.key, "published": self.what, "stand_in": self.stand_in}


def _drop_backend(name: str) -> Callable[[dict], dict]:
    def without(params: dict) -> dict:
        if "backends" not in params:        # the notebook's default: no weights asked for
            return params
        return {**params, "backends": [b for b in params["backends"] if b != name]}
    return without


_SD_FOLDER = ("model_index.json", "unet", "vae", "scheduler")
PUBLISHED: tuple[Published, ...] = (
    Published("00_data", "dataset_root", "MIMIC-CXR-JPG (or another real dataset)",
              "the dataset's official layout, with dataset_kind naming it (e.g. mimic-cxr-jpg: files/, "
              "mimic-cxr-2.0.0-metadata.csv.gz, -split, -chexpert, and the reports)",
              "PhysioNet, after credentialing: https://physionet.org/content/mimic-cxr-jpg/",
              "the phantom, written in the MIMIC-CXR-JPG layout", folder=True,
              given=lambda p: str(p.get("dataset_kind", "phantom")) != "phantom" and bool(p.get("dataset_root"))),
    Published("01_lora_t2i", "base_model", "Stable Diffusion 2.1-base (T2I-LoRA's base)",
              "a diffusers folder: model_index.json, unet/, vae/, text_encoder/, tokenizer/, scheduler/",
              "huggingface.co/stabilityai/stable-diffusion-2-1-base, saved with save_pretrained on a connected "
              "machine", "a small text-to-image LDM pretrained on the run's data",
              folder=True, needs=(*_SD_FOLDER, "text_encoder", "tokenizer")),
    Published("03_xgem", "vae_path", "Stable Diffusion's kl-f8 VAE (XGeM's image autoencoder)",
              "a diffusers AutoencoderKL folder: config.json and diffusion_pytorch_model.safetensors (or .bin)",
              "the vae/ folder of a Stable Diffusion checkpoint, e.g. huggingface.co/stabilityai/sd-vae-ft-mse or "
              "CompVis/stable-diffusion-v1-4, saved with save_pretrained",
              "a small autoencoder trained on the run's images", folder=True,
              needs=("config.json", "diffusion_pytorch_model.safetensors|diffusion_pytorch_model.bin")),
    Published("03_xgem", "clip_path", "CLIP ViT-L/14 (XGeM's prompt encoder, fine-tuned contrastively)",
              "a transformers CLIPModel folder: config.json, the weights, and the tokenizer",
              "huggingface.co/openai/clip-vit-large-patch14, saved with save_pretrained",
              "a small CLIP (two towers) trained on the run's image-report pairs", folder=True,
              needs=("config.json", "model.safetensors|pytorch_model.bin", "tokenizer.json|vocab.json")),
    Published("03_xgem", "bert_path", "BERT (the encoder of XGeM's Optimus report autoencoder)",
              "a transformers BertModel folder: config.json, vocab.txt or tokenizer.json, and the weights",
              "huggingface.co/google-bert/bert-base-cased, saved with save_pretrained",
              "a small BERT with a tokenizer trained on the run's reports", folder=True,
              needs=("config.json", "vocab.txt|tokenizer.json", "model.safetensors|pytorch_model.bin")),
    Published("03_xgem", "gpt2_path", "GPT-2 (the decoder of XGeM's Optimus report autoencoder)",
              "a transformers GPT2LMHeadModel folder: config.json, vocab.json or tokenizer.json, and the weights",
              "huggingface.co/openai-community/gpt2, saved with save_pretrained",
              "a small GPT-2 sharing the BERT stand-in's tokenizer", folder=True,
              needs=("config.json", "vocab.json|tokenizer.json", "model.safetensors|pytorch_model.bin")),
    Published("05_cleanup", "sam_checkpoint", "Segment Anything ViT-H (text masks)",
              "the state dict file sam_vit_h_4b8939.pth",
              "github.com/facebookresearch/segment-anything (model checkpoints)",
              "the detector's grown polygons as masks"),
    Published("05_cleanup", "sd_inpaint_path", "Stable Diffusion 2 inpainting (text removal)",
              "a diffusers StableDiffusionInpaintPipeline folder: model_index.json, unet/, vae/, text_encoder/, "
              "tokenizer/, scheduler/", "huggingface.co/stabilityai/stable-diffusion-2-inpainting",
              "Telea and RePaint with the run's DDPM only (backend sd left out)",
              folder=True, needs=(*_SD_FOLDER, "text_encoder", "tokenizer"), without=_drop_backend("sd"),
              used=lambda p: "sd" in p.get("backends", ["sd"])),
    Published("06_evaluation", "inception_weights", "Inception-v3 FID weights (pytorch-fid / torchmetrics)",
              "the file pt_inception-2015-12-05-6726825d.pth",
              "github.com/mseitzer/pytorch-fid/releases (the FID Inception weights)",
              "no Inception FID: the domain feature spaces only"),
    Published("08_cmcgns_pretrain", "text_model", "Bio_ClinicalBERT (CM-CGNS's report encoder)",
              "a transformers folder: config.json, vocab.txt or tokenizer.json, and the weights",
              "huggingface.co/emilyalsentzer/Bio_ClinicalBERT, saved with save_pretrained",
              "a small BERT with a tokenizer trained on the run's reports",
              folder=True, needs=("config.json", "vocab.txt|tokenizer.json", "model.safetensors|pytorch_model.bin")),
)


def check(parameters: Mapping[str, Mapping], notebooks: Sequence[str], allow_stand_ins: bool,
          parts: Iterable[Published] | None = None) -> tuple[list[Published], list[str]]:
    """(the parts that will be stand-ins, the problems that stop the run) for the ``notebooks`` about to
    run with ``parameters`` (by notebook). A given path that is not what the part needs is always a
    problem; an empty one is a problem unless stand-ins are allowed."""
    stand_ins, problems = [], []
    for part in PUBLISHED if parts is None else parts:
        if part.notebook not in notebooks:
            continue
        params = parameters.get(part.notebook, {})
        if part.used is not None and not part.used(params):    # left out by an explicit choice, not stood in for
            continue
        if part.supplied(params):
            why = part.problem(params)
            if why:
                problems.append(f"{part.key} ({part.what}): {why}; expected {part.layout}")
        elif allow_stand_ins:
            stand_ins.append(part)
        else:
            problems.append(f"{part.key} is empty: {part.what} is not here.\n"
                            f"    expected: {part.layout}\n    get it from: {part.get}\n"
                            f"    without it: {part.stand_in}")
    return stand_ins, problems


def refusal(problems: Sequence[str], profile: str) -> str:
    return (f"profile {profile} runs the published systems, and {len(problems)} of their parts cannot be "
            "found (nothing is downloaded at run time):\n  " + "\n  ".join(problems) +
            "\nGive each with --set NOTEBOOK.PARAMETER=/local/path, or run the small stand-ins in their "
            "place with --allow-stand-ins (the run then lists them in its manifest, index and metrics).")


def apply_stand_ins(parameters: dict[str, dict], stand_ins: Iterable[Published]) -> None:
    """Change each notebook's parameters as its stand-ins need (e.g. drop a backend with no weights)."""
    for part in stand_ins:
        if part.without and part.notebook in parameters:
            parameters[part.notebook] = part.without(parameters[part.notebook])
