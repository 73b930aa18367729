"""``synthcxr``: one command for the runner, the generators and the benchmarks.

    synthcxr run --profile quick               the pipeline runner (= python -m support.pipeline)
    synthcxr list [--profile P]                notebooks, parameters, types, each profile's values
    synthcxr sample ddpm --model RUN/models/ddpm --n 1000 --out DIR
    synthcxr sample t2i --model RUN --prompt "..." | --findings "Pleural Effusion=16,No Finding=16" --out DIR
    synthcxr sample xgem --model RUN/models/xgem --direction "T->F+L" --report "..." --out DIR
    synthcxr export --set RUN/samples/ddpm-dpmsolver++-25 --out DIR   a Hugging Face imagefolder
    synthcxr bench [all] [--size toy|default]  every stage against its peer: one table (JSON, CSV, figure)
    synthcxr bench STAGE [args]                a stage's benchmark against its peer
    synthcxr cleanup-app [--run RUN] [--port P]   text removal by hand in a browser (127.0.0.1)

Each generator writes a MIMIC-CXR-JPG-layout dataset with its provenance columns, as 04 does.
``python -m support.pipeline`` and the other modules' own commands keep working.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

BENCH_STAGES = ("ddpm", "lora", "cleanup", "dino", "cmcgns", "xgem", "phantom")


def _model_folder(path: Path, *names: str) -> Path:
    """``path`` itself, or the first of ``names`` under it that exists (a run folder or a model folder)."""
    for name in names:
        if (path / name).is_dir():
            return path / name
    return path


def _ddpm_pipeline(model: Path) -> Path:
    """The DDPMPipeline folder of ``model``: a run folder, its ``models/ddpm`` or the pipeline itself."""
    folder = _model_folder(_model_folder(model, "models/ddpm"), "pipeline")
    if not (folder / "model_index.json").is_file():
        raise FileNotFoundError(f"--model {model}: no DDPMPipeline folder (model_index.json) there, "
                                f"in models/ddpm/pipeline or in pipeline/")
    return folder


def _t2i_parts(model: Path, lora: Path | None) -> tuple[Path, Path | None]:
    """(base pipeline folder, LoRA folder) of a run folder, or a base folder with ``--lora``."""
    base = _model_folder(_model_folder(model, "models/t2i-base"), "pipeline")
    if not (base / "model_index.json").is_file():
        raise FileNotFoundError(f"--model {model}: no Stable Diffusion folder (model_index.json) there, "
                                f"in models/t2i-base/pipeline or in pipeline/")
    if lora is None and (model / "models" / "t2i-lora" / "lora").is_dir():
        lora = model / "models" / "t2i-lora" / "lora"
    return base, lora


def _finding_mix(text: str) -> dict[str, int]:
    """``"Pleural Effusion=16,No Finding=16"`` -> ``{"Pleural Effusion": 16, "No Finding": 16}``."""
    mix = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, sep, count = part.rpartition("=")
        if not sep or not name.strip() or not count.strip().isdigit():
            raise ValueError(f"--findings {text!r}: expected FINDING=COUNT[,FINDING=COUNT...], got {part!r}")
        mix[name.strip()] = int(count)
    return mix


def _sampling_overrides(args) -> dict:
    """The sampling options given on the command line, over the profile's preset."""
    given = {"sampler": args.sampler, "steps": args.steps, "batch_size": args.batch_size}
    return {"base_seed": args.seed, **{k: v for k, v in given.items() if v}}


def sample_ddpm(args) -> dict:
    from support.ddpm.config import sampling_config
    from support.ddpm.sampling import sample_to_dataset

    cfg = sampling_config(args.profile, {"num_samples": args.n, **_sampling_overrides(args)},
                          source="synthcxr sample ddpm")
    return sample_to_dataset(_ddpm_pipeline(args.model), args.out, cfg)


def sample_t2i(args) -> dict:
    import pandas as pd

    from support.t2i.config import prompt_config, t2i_sampling_config
    from support.t2i.sampling import build_prompt_plan, sample_to_dataset

    if bool(args.prompt) == bool(args.findings):
        raise ValueError("synthcxr sample t2i: give --prompt (repeatable) or --findings, one of the two")
    base, lora = _t2i_parts(args.model, args.lora)
    cfg = t2i_sampling_config(args.profile, _sampling_overrides(args), source="synthcxr sample t2i")
    if args.prompt:
        plan = pd.DataFrame({"prompt": list(args.prompt) * args.n})
    else:
        prompts = prompt_config(args.profile, {"source": "findings", "finding_mix": _finding_mix(args.findings),
                                               "seed": args.seed}, source="synthcxr sample t2i --findings")
        plan = build_prompt_plan(prompts)
    return sample_to_dataset(base, lora, plan, args.out, cfg)


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="synthcxr", description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n", 2)[2])
    sub = ap.add_subparsers(dest="command", required=True)
    sub.add_parser("run", help="the pipeline runner; its options follow (see synthcxr run --help)", add_help=False)
    ls = sub.add_parser("list", help="notebooks and their parameters")
    ls.add_argument("--profile", help="one profile's values only")
    sample = sub.add_parser("sample", help="a synthetic dataset from a trained generator")
    gens = sample.add_subparsers(dest="generator", required=True)
    for name, help_text in (("ddpm", "I-SynMed's DDPM (02)"), ("t2i", "the T2I base + LoRA (01)")):
        g = gens.add_parser(name, help=help_text)
        g.add_argument("--model", type=Path, required=True,
                       help="a run folder, its model folder, or the diffusers pipeline folder itself")
        g.add_argument("--out", type=Path, required=True, help="the dataset root to write (MIMIC-CXR-JPG layout)")
        g.add_argument("--n", type=int, default=16, help="samples (t2i: per --prompt)")
        g.add_argument("--seed", type=int, default=0, help="the first seed; sample i uses seed + i")
        g.add_argument("--profile", default="quick", help="the sampling preset the options start from")
        g.add_argument("--sampler", help="ddpm, ddim, dpmsolver++ (t2i: also pndm)")
        g.add_argument("--steps", type=int, help="denoising steps")
        g.add_argument("--batch-size", type=int)
        if name == "t2i":
            g.add_argument("--lora", type=Path, help="LoRA folder (default: the run's models/t2i-lora/lora)")
            g.add_argument("--prompt", action="append", default=[], help="a report text to draw (repeatable)")
            g.add_argument("--findings", help='a finding mix, e.g. "Pleural Effusion=16,No Finding=16"')
    gens.add_parser("xgem", help="XGeM's directions (03); its options follow", add_help=False)
    export = sub.add_parser("export", help="a dataset folder as a Hugging Face imagefolder (metadata.jsonl)")
    export.add_argument("--set", dest="dataset", type=Path, required=True,
                        help="a dataset folder in the MIMIC-CXR-JPG layout (a synthetic set, the phantom)")
    export.add_argument("--out", type=Path, required=True, help="the imagefolder to write (must not exist)")
    bench = sub.add_parser("bench", help="every stage against its peer (the suite), or one stage's benchmark; "
                                          "its options follow", add_help=False)
    bench.add_argument("stage", nargs="?", choices=("all", *BENCH_STAGES))
    sub.add_parser("cleanup-app", help="detect, choose and erase text in a browser; its options follow",
                   add_help=False)
    return ap


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["run"]:
        from support import pipeline
        return pipeline.main(argv[1:])
    if argv[:2] == ["sample", "xgem"]:
        from support.xgem import cli as xgem_cli
        return xgem_cli.main(["generate", *argv[2:]])
    if argv[:1] == ["bench"] and len(argv) > 1 and argv[1] in BENCH_STAGES:
        return importlib.import_module(f"support.benchmarks.{argv[1]}").main(argv[2:]) or 0
    if argv[:1] == ["bench"] and (len(argv) == 1 or argv[1] == "all" or argv[1].startswith("-")):
        from support.benchmarks import suite
        return suite.main(argv[2:] if argv[1:2] == ["all"] else argv[1:]) or 0
    if argv[:1] == ["cleanup-app"]:
        from support.cleanup import app
        return app.main(argv[1:])
    args = parser().parse_args(argv)
    if args.command == "list":
        from support import pipeline
        return pipeline.main(["--list", *(["--profile", args.profile] if args.profile else [])])
    if args.command == "export":
        from support.data.export import export_imagefolder
        try:
            counts = export_imagefolder(args.dataset, args.out)
        except (OSError, ValueError) as exc:
            print(f"\n{exc}", file=sys.stderr)
            return 1
        print(f"{args.out}: {sum(counts.values())} images ({', '.join(f'{k} {v}' for k, v in counts.items())}); "
              f'datasets.load_dataset("imagefolder", data_dir="{args.out}")')
        return 0
    try:
        summary = {"ddpm": sample_ddpm, "t2i": sample_t2i}[args.generator](args)
    except (OSError, ValueError) as exc:        # errors that name the file or option at fault
        print(f"\n{exc}", file=sys.stderr)
        return 1
    from support.core.sample_writer import print_summary

    print_summary(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
