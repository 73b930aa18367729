"""The ``full`` profile at a few steps: ``python -m support.dry_run [--run-id ID] [--only 00,02]``.

Every network of ``full`` is built at its published size and configuration, the weights and data
that are not here replaced by their stand-ins (``--allow-stand-ins``), and every stage cut to a few
updates, images and samples. A change that breaks ``full`` shows here in minutes on a CPU
instead of hours into a GPU job. The cuts are :data:`FEW`, passed to the runner as ``--set``
values; nothing else differs from ``full``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

FEW_STEPS = 2
FEW: dict[str, dict] = {
    "00_data": {"n_patients": 60, "workers": 2},
    "01_lora_t2i": {
        "max_steps": FEW_STEPS, "sampling_steps": FEW_STEPS, "encoder_epochs": 1,
        "finding_mix": {"Pleural Effusion": 1, "No Finding": 1},
        "t2i_overrides": {"base": {"vae_training": {"max_steps": FEW_STEPS, "batch_size": 2},
                                   "ldm_training": {"max_steps": FEW_STEPS, "batch_size": 2}},
                          "train": {"batch_size": 1, "validation_steps": FEW_STEPS,
                                    "validation_prompts": ["view_position = PA. modality = CR. Lungs are clear."]}}},
    "02_ddpm": {"max_steps": FEW_STEPS, "n_quality": 4, "quality_steps": FEW_STEPS,
                "ddpm_overrides": {"train": {"batch_size": 1, "gradient_accumulation_steps": 1, "val_batch_size": 1,
                                             "val_max_batches": 1, "sample_grid_size": 1,
                                             "sample_grid_steps": FEW_STEPS}}},
    "03_xgem": {"stage_steps": {stage: FEW_STEPS for stage in ("image_vae", "report_vae", "contrastive", "frontal",
                                                                 "lateral", "report", "joint")},
                "eval_studies": 5, "batch_size": 5, "encoder_epochs": 1,
                "xgem_overrides": {"generate": {"steps": FEW_STEPS},
                                   "loops": {stage: {"batch_size": 2} for stage in (
                                       "image_vae", "report_vae", "contrastive", "frontal", "lateral", "report",
                                       "joint")}}},
    "04_sampling": {"sampler": "ddim", "steps": FEW_STEPS, "num_samples": 12, "batch_size": 4,
                    "compare": [["ddim", FEW_STEPS]], "n_compare": 2, "t2i_num_prompts": 12, "t2i_steps": FEW_STEPS},
    "05_cleanup": {"repaint_steps": FEW_STEPS, "max_eval_images": 12},
    "06_evaluation": {"encoder_epochs": 1, "kid_subset_size": 4, "utility_fractions": [1.0], "utility_min_steps": 2},
    "07_ssl_dino": {"pretrain_steps": FEW_STEPS, "head_epochs": 1, "fractions": [1.0], "protocols": ["linear"],
                    "tasks": ["pneumonia"], "dino_overrides": {"train": {"batch_size": 4}}},
    "08_cmcgns_pretrain": {"stage1_steps": FEW_STEPS, "stage2_steps": 1,
                           "cmcgns_overrides": {"train": {"batch_size": 4}}},
    "09_cmcgns_downstream": {"head_epochs": 1, "encoder_epochs": 1, "fractions": [1.0], "n_boot": 10,
                             "tasks": ["chexpert5", "covidx"]},
}


def overrides(few: dict[str, dict] = FEW) -> list[str]:
    """``NOTEBOOK.PARAM=VALUE`` strings (the value as one-line YAML) for the runner's ``--set``."""
    return [f"{nb}.{key}={yaml.safe_dump(value, default_flow_style=True, width=10 ** 6).strip()}"
            for nb, params in few.items() for key, value in params.items()]


def main(argv: list[str] | None = None) -> int:
    from support import pipeline
    from support.runs import DEFAULT_RUNS_ROOT, REPO_ROOT

    ap = argparse.ArgumentParser(prog="python -m support.dry_run", description=__doc__.splitlines()[0])
    ap.add_argument("--run-id", help="name of the run directory (default: date-time-full)")
    ap.add_argument("--only", help="comma-separated notebook numbers, e.g. 00,02")
    ap.add_argument("--runs-root", type=Path, default=DEFAULT_RUNS_ROOT)
    args = ap.parse_args(argv)
    notebooks = REPO_ROOT / "notebooks"
    try:
        pipeline.run("full", notebooks, notebooks / "params", args.runs_root, run_id=args.run_id, only=args.only,
                     overrides=overrides(), allow_stand_ins=True)
    except (pipeline.PipelineError, OSError, ValueError) as exc:
        print(f"\n{exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
