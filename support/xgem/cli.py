"""XGeM's 12 directions from the command line.

    python -m support.xgem.cli --list
    python -m support.xgem.cli generate --model DIR --direction "T->F+L" --report "text" --out OUT
    python -m support.xgem.cli generate --model DIR --direction "F+L->T" \\
        --frontal f1.png --lateral l1.png --frontal f2.png --lateral l2.png --out OUT \\
        --seed 0 --steps 50 --guidance 7.5 --eta 0 --weights frontal=1,lateral=2

Each input flag may be repeated: the k-th values of every input form study k of one batch.
Images are read as the training data is (:class:`support.xgem.data.Studies`: zero-padded to a
square of the config's size, in [-1, 1]); reports are normalised as the training reports are.
``--independent`` samples two outputs without the joint stage (the ablation).

OUT receives ``NNN_frontal.png``, ``NNN_lateral.png`` (8-bit) and ``NNN_report.txt`` per study,
numbered after the studies already there, and ``generation.json`` (``generation-1.json``, ... when
taken) with the direction, the settings, the inputs, the files written and the SHA-256 of every
weight file used. No existing file is overwritten.

The config is rebuilt from the model folder's ``xgem.json`` (``{"profile", "overrides"}``, written
by notebook 03); without it, ``--profile`` names the profile the folder was trained with.
``--set KEY=VALUE`` (dotted key, YAML value, e.g. ``generate.report_max_tokens=64``) overrides
either. Usage errors (a missing input, an unreadable image, a bad setting) print one line and
exit with status 2.
"""

from __future__ import annotations

import argparse
import datetime as dt
import re
import sys
from pathlib import Path
from typing import Any, Sequence

from support.xgem.generate import DIRECTIONS, LETTERS, NAMES, parse_direction

CONFIG_FILE = "xgem.json"
RECORD = "generation"
FLAGS = {"frontal": "--frontal IMAGE", "lateral": "--lateral IMAGE", "report": "--report TEXT or --report-file FILE"}
_STUDY_FILE = re.compile(r"^(\d+)_(frontal|lateral|report)\.(png|txt)$")


class UsageError(ValueError):
    """A problem with what was asked (printed as one line, exit status 2)."""


# ----------------------------------------------------------------------------- arguments
def _report_file(path: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise argparse.ArgumentTypeError(f"cannot read report file {path!r} ({exc.__class__.__name__}: {exc})")


def parse_weights(text: str) -> dict[str, float]:
    """``frontal=1,report=2`` (or ``F=1,T=2``) -> {"frontal": 1.0, "report": 2.0}."""
    weights = {}
    for item in filter(None, (p.strip() for p in text.split(","))):
        name, sep, value = item.partition("=")
        name = LETTERS.get(name.strip().upper(), name.strip().lower())
        if not sep or name not in NAMES:
            raise UsageError(f"--weights {text!r}: expected MODALITY=NUMBER pairs over frontal, lateral, report "
                             "(or F, L, T), e.g. frontal=1,report=2")
        try:
            weights[name] = float(value)
        except ValueError:
            raise UsageError(f"--weights {text!r}: {value!r} is not a number") from None
    return weights


def parse_sets(items: Sequence[str]) -> dict[str, Any]:
    """``["generate.steps=20", ...]`` -> nested overrides {"generate": {"steps": 20}} (values as YAML)."""
    import yaml

    from support.core.config import merge_overrides

    overrides: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key or any(not part for part in key.split(".")):
            raise UsageError(f"--set {item!r}: expected KEY=VALUE with a dotted key, e.g. generate.steps=20")
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError as exc:
            raise UsageError(f"--set {item!r}: {raw!r} is not a YAML value ({exc.__class__.__name__})") from None
        for part in reversed(key.split(".")):
            value = {part: value}
        overrides = merge_overrides(overrides, value)
    return overrides


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m support.xgem.cli", description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--list", action="store_true", help="print the 12 directions and exit")
    commands = parser.add_subparsers(dest="command")
    gen = commands.add_parser("generate", help="generate the outputs of one direction into a folder",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    gen.add_argument("--list", action="store_true", help="print the 12 directions and exit")
    gen.add_argument("--model", type=Path, help="the trained model folder (notebook 03's output)")
    gen.add_argument("--direction", help='INPUTS->OUTPUTS over F, L, T, e.g. "T->F+L" (see --list)')
    gen.add_argument("--frontal", action="append", default=[], metavar="IMAGE", help="a frontal view (repeatable)")
    gen.add_argument("--lateral", action="append", default=[], metavar="IMAGE", help="a lateral view (repeatable)")
    gen.add_argument("--report", dest="reports", action="append", default=[], metavar="TEXT",
                     help="a report text (repeatable)")
    gen.add_argument("--report-file", dest="reports", action="append", type=_report_file, metavar="FILE",
                     help="a file holding one report (repeatable; in order with --report)")
    gen.add_argument("--out", type=Path, help="the output folder (created; existing files are kept)")
    gen.add_argument("--seed", type=int, default=0, help="study k of the batch is drawn with seed + k")
    gen.add_argument("--steps", type=int, default=None, help="DDIM steps (default: the config's)")
    gen.add_argument("--guidance", type=float, default=None, help="classifier-free guidance scale (default: config)")
    gen.add_argument("--eta", type=float, default=None, help="DDIM eta in [0, 1] (default: the config's)")
    gen.add_argument("--weights", default="", help="weights of several inputs, e.g. frontal=1,report=2")
    gen.add_argument("--independent", action="store_true", help="sample two outputs without the joint stage")
    gen.add_argument("--profile", default=None, help=f"the XGeM profile, when the model folder has no {CONFIG_FILE}")
    gen.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                     help="a config override (dotted key, YAML value); repeatable")
    gen.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    gen.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def list_directions() -> str:
    """One line per direction: its letters, then in words."""
    lines = []
    for d in DIRECTIONS:
        inputs, outputs = parse_direction(d)
        lines.append(f"{d:8s}  {' + '.join(inputs)} -> {' + '.join(outputs)}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- inputs
def check_inputs(direction: str, args: argparse.Namespace) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The direction's (inputs, outputs) once the flags match it: every input given, no other, and
    the same number of each (one per study). Checked before any model is loaded."""
    inputs, outputs = parse_direction(direction)
    given = {"frontal": args.frontal, "lateral": args.lateral, "report": args.reports}
    missing = [m for m in inputs if not given[m]]
    if missing:
        raise UsageError(f"direction {direction} needs input(s) {missing}: give "
                         + "; ".join(FLAGS[m] for m in missing))
    extra = [m for m in given if given[m] and m not in inputs]
    if extra:
        raise UsageError(f"direction {direction} does not take {extra} (its inputs: {list(inputs)})")
    counts = {m: len(given[m]) for m in inputs}
    if len(set(counts.values())) != 1:
        raise UsageError(f"direction {direction}: one value of each input per study, got {counts}")
    return inputs, outputs


def read_images(paths: Sequence[str], size: int):
    """Images as the training data has them: (B, 1, size, size), zero-padded square, in [-1, 1]."""
    import numpy as np
    import torch

    from support.data.images import fit_square, read_image

    fitted = [fit_square(read_image(p), size, mode="pad") for p in paths]
    return torch.from_numpy(np.stack(fitted)[:, None].astype(np.float32)) * 2 - 1


def given_values(inputs: Sequence[str], args: argparse.Namespace, size: int) -> dict[str, Any]:
    from support.xgem.text import normalise_report

    values: dict[str, Any] = {}
    for m in inputs:
        if m == "report":
            values[m] = [normalise_report(t) for t in args.reports]
            empty = [i for i, t in enumerate(values[m]) if not t]
            if empty:
                raise UsageError(f"report(s) {empty} are empty; an empty report is the unconditional prompt")
        else:
            values[m] = read_images(getattr(args, m), size)
    return values


# ----------------------------------------------------------------------------- config and model
def model_config(model: Path, profile: str | None, sets: Sequence[str]):
    """(config, its source: profile and overrides) of a model folder: ``xgem.json`` first, else
    ``profile``; ``sets`` applied on top."""
    from support.core.config import merge_overrides
    from support.xgem.config import xgem_config

    saved = model / CONFIG_FILE
    if saved.is_file():
        try:
            from support.io import read_json
            source = read_json(saved)
            stored_profile, stored = source["profile"], source.get("overrides") or {}
        except (ValueError, KeyError, TypeError) as exc:
            raise UsageError(f"{saved}: expected {{\"profile\": ..., \"overrides\": {{...}}}} ({exc})") from None
        if profile and profile != stored_profile:
            raise UsageError(f"--profile {profile!r}: the model folder was trained with profile {stored_profile!r} "
                             f"({saved})")
        profile, where = stored_profile, str(saved)
    elif profile:
        stored, where = {}, "--profile"
    else:
        raise UsageError(f"{model} has no {CONFIG_FILE}; name the profile it was trained with (--profile quick, "
                         "plus --set KEY=VALUE for its overrides)")
    overrides = merge_overrides(stored, parse_sets(sets))
    config = xgem_config(profile, overrides, source=f"XGeM parameters ({where} and --set)")
    return config, {"profile": profile, "overrides": overrides, "from": where}


# ----------------------------------------------------------------------------- outputs
def first_free_study(out: Path) -> int:
    """The number after every study file already in ``out`` (0 in an empty folder)."""
    numbers = [int(m.group(1)) for p in out.iterdir() if (m := _STUDY_FILE.match(p.name))]
    return max(numbers, default=-1) + 1


def free_record(out: Path) -> Path:
    """``generation.json``, else ``generation-1.json``, ``generation-2.json``, ..."""
    path, k = out / f"{RECORD}.json", 0
    while path.exists():
        k += 1
        path = out / f"{RECORD}-{k}.json"
    return path


def _claim(path: Path) -> Path:
    if path.exists():                         # numbering keeps clear of existing files; this guards a race
        raise UsageError(f"{path} exists; it is not overwritten")
    return path


def write_outputs(out: Path, result: dict[str, Any], outputs: Sequence[str]) -> list[dict[str, str]]:
    """One PNG per generated view and one text per generated report, per study, numbered after
    the studies already in ``out``; returns the names written, study by study."""
    from support.data.images import png_bytes, to_uint8
    from support.io import write_bytes_atomic, write_text_atomic

    start = first_free_study(out)
    studies = []
    for i in range(len(result[outputs[0]])):
        stem = f"{start + i:03d}"
        files = {"study": stem}
        for m in outputs:
            if m == "report":
                path = _claim(out / f"{stem}_report.txt")
                write_text_atomic(path, result[m][i] + "\n")
            else:
                path = _claim(out / f"{stem}_{m}.png")
                write_bytes_atomic(path, png_bytes(to_uint8((result[m][i, 0].float() + 1) / 2).numpy()))
            files[m] = path.name
        studies.append(files)
    return studies


def _input_record(inputs: Sequence[str], args: argparse.Namespace, given: dict[str, Any]) -> dict[str, list[str]]:
    return {m: list(given[m]) if m == "report" else [str(Path(p).resolve()) for p in getattr(args, m)]
            for m in inputs}


# ----------------------------------------------------------------------------- the command
def sampling_settings(args: argparse.Namespace, config, inputs: Sequence[str]) -> dict[str, Any]:
    """Seed, steps, guidance, eta and weights: the flags, else the config's; checked as the
    config's own fields are, the weights against the direction's inputs."""
    import dataclasses

    weights = parse_weights(args.weights) if args.weights else None
    unknown = sorted(set(weights or ()) - set(inputs))
    if unknown:
        raise UsageError(f"--weights {args.weights!r}: {unknown} not among the direction's inputs {list(inputs)}")
    g = dataclasses.replace(config.generate, steps=config.generate.steps if args.steps is None else args.steps,
                            guidance_scale=config.generate.guidance_scale if args.guidance is None else args.guidance,
                            eta=config.generate.eta if args.eta is None else args.eta).validate()
    return {"seed": args.seed, "steps": g.steps, "guidance": g.guidance_scale, "eta": g.eta,
            "weights": weights}


def run_generate(args: argparse.Namespace) -> tuple[Path, list[dict[str, str]]]:
    """Generate as ``args`` ask; returns the record written and the studies' file names."""
    import torch

    from support.devices import pick_device
    from support.io import write_json_atomic
    from support.xgem.generate import generate
    from support.xgem.train import load_xgem, weight_hashes

    if args.model is None or args.direction is None or args.out is None:
        raise UsageError("generate needs --model DIR, --direction D and --out OUT (see --help)")
    inputs, outputs = check_inputs(args.direction, args)
    if not args.model.is_dir():
        raise UsageError(f"--model {args.model}: not a folder")
    if args.out.exists() and not args.out.is_dir():
        raise UsageError(f"--out {args.out}: exists and is not a folder")
    config, source = model_config(args.model, args.profile, args.sets)
    settings = sampling_settings(args, config, inputs)
    given = given_values(inputs, args, config.image_vae.size)
    try:
        device = pick_device(args.device)
    except RuntimeError as exc:
        raise UsageError(f"--device {args.device}: {exc}") from None
    models = load_xgem(config, args.model, device, joint=not args.independent)
    if len(outputs) == 2 and not args.independent and models.joint is None:
        raise UsageError(f"direction {args.direction}: joint generation needs the joint stage's weights "
                         f"({args.model / 'joint'}); train stage 5 or pass --independent")
    with torch.no_grad():
        n = len(next(iter(given.values())))
        seeds = [settings["seed"] + k for k in range(n)]      # study k: seed + k, the same alone or in a batch
        result = generate(models, args.direction, given, joint=not args.independent, progress=not args.quiet,
                          **{**settings, "seed": seeds})
    args.out.mkdir(parents=True, exist_ok=True)
    studies = write_outputs(args.out, result, outputs)
    record = {"direction": result["direction"], "inputs": _input_record(inputs, args, given),
              "outputs": list(outputs), "joint": result["joint"], "independent": args.independent, **settings,
              "report_max_tokens": config.generate.report_max_tokens, "model": str(args.model.resolve()),
              "config": source,
              "weights_sha256": weight_hashes(args.model, config, models.joint is not None),
              "device": str(device), "torch": torch.__version__,
              "created": dt.datetime.now(dt.timezone.utc).astimezone().isoformat(timespec="seconds"),
              "studies": studies}
    path = _claim(free_record(args.out))
    write_json_atomic(path, record)
    return path, studies


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (2 for a usage error, printed as one line)."""
    from support.data.images import ImageReadError
    from support.params import ParameterError

    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:                 # argparse's own errors and --help: keep their status
        return int(exc.code or 0)
    if args.list:
        print(list_directions())
        return 0
    if args.command != "generate":
        parser.print_usage(sys.stderr)
        print(f"{parser.prog}: error: give --list or the generate command", file=sys.stderr)
        return 2
    try:
        record, studies = run_generate(args)
    except (ImageReadError, ParameterError, ValueError, FileNotFoundError) as exc:  # usage errors included
        print(f"{parser.prog} generate: error: {exc}", file=sys.stderr)
        return 2
    print(f"{len(studies)} stud{'y' if len(studies) == 1 else 'ies'} ({args.direction}) written to {args.out}; "
          f"record: {record.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
