"""XGeM speed: training items/s per stage, and generated studies/s per direction against two peers.

``python -m support.benchmarks.xgem [--patients 60] [--updates 6] [--steps 20] [--batch 4] [--repeats 3]``

Everything runs on a phantom generated in a temporary folder, with the ``quick`` profile's models
and batch sizes; only the number of updates is cut.

Training: each stage in XGeM's order (:func:`support.xgem.train.train_xgem`, one stage per call),
its rate the shared trainer's own per-update timing (loading and fitting the batch, forward,
backward, the guarded optimizer step), warm-up updates dropped, median kept: images/s for the
image autoencoder (both views), studies/s for the others. Encoding the training studies into the
frozen spaces, done once between stages 3 and 4, is timed as its own line. The stages have no
outside peer here; what they show is where the training time goes.

Generation: :func:`support.xgem.generate.generate` per direction, from held-out studies (their
context vectors, DDIM, decoding), studies/s. Two peers, measured in the same loop, alternating
with the measured setting, so load from other processes hits all alike:

- guidance 1 beside the config's guidance (7.5): classifier-free guidance runs the conditional
  and unconditional branches as one doubled batch; the ratio says what guidance costs over one
  branch (2 when the denoiser's time grows linearly with the batch, less when batching pays);
- independent beside joint sampling, for the three two-output directions: the joint stage adds
  two environment encoders and cross-attention to each other's token at every step; the ratio is
  its price over two independent samplers (the paper's ablation).

On the CPU one torch thread is the default: at these sizes more threads gain little, and on a
machine shared with other processes their spinning made generation tens of times slower.

Models trained for a few updates decode reports to the token limit (``generate.report_max_tokens``)
rather than stopping at an end token, so the report directions' figures are lower bounds.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

import torch

STAGE_UNITS = {"image_vae": "images/s"}        # every other stage trains on studies
ENCODE_BATCH = 32


def phantom_records(folder: Path, patients: int, size: int, seed: int = 0):
    """The record table of a freshly generated phantom (no burned-in text: it changes nothing here)."""
    from support.data.adapters import load_dataset
    from support.phantom import PhantomConfig, generate_phantom

    generate_phantom(folder, PhantomConfig(n_patients=patients, image_size=size, seed=seed, text_share=0.0),
                     workers=1, progress=False)
    return load_dataset("mimic-cxr-jpg", folder)[0]


def bench_config(profile: str, updates: int, warmup: int, cpu: bool):
    """The profile with every stage cut to ``warmup + updates`` updates, each logged."""
    from support.xgem.config import xgem_config
    from support.xgem.train import STAGES

    total = warmup + updates
    loop = {"max_steps": total, "epochs": None, "log_every": 1, "checkpoint_every": total,
            "checkpoints_total_limit": 1, "cpu": cpu}
    return xgem_config(profile, {"loops": {stage: loop for stage in STAGES}})


def train_rates(config, records, root: Path, warmup: int) -> dict[str, dict[str, Any]]:
    """Per stage: the median items/s after ``warmup`` updates, the batch size and the wall time
    (setup and export included); ``encoding``: studies/s into the frozen spaces."""
    from tqdm.auto import tqdm

    from support.xgem.data import Studies
    from support.xgem.train import STAGES, encoded_studies, train_xgem

    rates: dict[str, dict[str, Any]] = {}
    for stage in tqdm(STAGES, desc="training", unit="stage", leave=False):
        if stage == "frontal":                # the encoding, timed apart from the stages it feeds
            train = Studies(records[records["split"] == "train"], config.image_vae.size)
            tick = time.perf_counter()
            encoded_studies(config, train, root, batch_size=ENCODE_BATCH, progress=False)
            seconds = time.perf_counter() - tick
            rates["encoding"] = {"rate": len(train) / seconds, "unit": "studies/s", "batch": ENCODE_BATCH,
                                 "seconds": seconds}
        tick = time.perf_counter()
        history = train_xgem(config, records, root, stages=[stage], progress=False)[stage]
        rates[stage] = {"rate": statistics.median(history["images_per_s"][warmup:]),
                        "unit": STAGE_UNITS.get(stage, "studies/s"), "batch": getattr(config.loops, stage).batch_size,
                        "seconds": time.perf_counter() - tick}
    return rates


def held_out_inputs(config, records, batch: int) -> dict[str, Any]:
    """``batch`` held-out studies with both views and a report (repeated when there are fewer)."""
    from support.xgem.data import Studies

    studies = Studies(records[records["split"] != "train"], config.image_vae.size)
    keep = [i for i in range(len(studies)) if studies.has_lateral.iat[i] and studies.has_report.iat[i]]
    if not keep:
        raise ValueError("the phantom has no held-out study with a lateral view and a report; raise --patients")
    items = [studies[keep[k % len(keep)]] for k in range(batch)]
    return {"frontal": torch.stack([it["frontal"] for it in items]),
            "lateral": torch.stack([it["lateral"] for it in items]),
            "report": [it["report"] for it in items]}


def variants(direction: str, guidance: float) -> dict[str, dict[str, Any]]:
    """The measured setting and its peers for one direction (module docstring)."""
    from support.xgem.generate import parse_direction

    out = {"measured": {"guidance": guidance, "joint": True}, "guidance 1": {"guidance": 1.0, "joint": True}}
    if len(parse_direction(direction)[1]) == 2:
        out["independent"] = {"guidance": guidance, "joint": False}
    return out


def generation_rates(models, inputs: dict[str, Any], directions: Sequence[str], steps: int, repeats: int,
                     ) -> dict[str, dict[str, list[float]]]:
    """Studies/s of every direction and variant, ``repeats`` alternating rounds (one untimed call first)."""
    from tqdm.auto import tqdm

    from support.xgem.generate import generate, parse_direction

    guidance = models.config.generate.guidance_scale
    plan = [(d, name, kw) for d in directions for name, kw in variants(d, guidance).items()]
    n = len(inputs["report"])
    device = models.device

    def once(direction: str, kw: dict[str, Any]) -> float:
        given = {m: inputs[m] for m in parse_direction(direction)[0]}
        given = {m: v if m == "report" else v.to(device) for m, v in given.items()}
        tick = time.perf_counter()
        generate(models, direction, given, seed=0, steps=steps, **kw)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return n / (time.perf_counter() - tick)

    once(directions[0], plan[0][2])           # first-call allocations out of the figures
    runs: dict[str, dict[str, list[float]]] = {d: {} for d in directions}
    with tqdm(total=repeats * len(plan), desc="generation", unit="run", leave=False) as bar:
        for _ in range(repeats):
            for direction, name, kw in plan:
                runs[direction].setdefault(name, []).append(once(direction, kw))
                bar.update(1)
    return runs


SUITE_SIZES = {"toy": dict(profile="test", patients=20, batch=2, steps=3, directions=("T->F+L",)),
               "default": dict(profile="quick", patients=40, batch=4, steps=None,
                               directions=("T->F+L", "F->L+T", "L->F+T")),
               "gpu": dict(profile="quick", patients=60, batch=16, steps=None,
                           directions=("T->F+L", "F->L+T", "L->F+T"))}


def suite_cases(size: str, device) -> list:
    """The suite's XGeM rows: the two-output directions generated jointly (ours) against each output
    from its own single-direction sampler, per study. The models are trained for a couple of updates
    per stage on a phantom (speed does not depend on the weights)."""
    import shutil

    from support.benchmarks.runner import Case, Work
    from support.xgem.generate import generate, parse_direction
    from support.xgem.train import load_xgem, train_xgem

    s = SUITE_SIZES[size]
    dev = torch.device(device)
    config = bench_config(s["profile"], 1, 1, dev.type == "cpu")
    tmp = Path(tempfile.mkdtemp(prefix="xgem-suite-"))
    records = phantom_records(tmp / "phantom", s["patients"], max(32, config.image_vae.size))
    train_xgem(config, records, tmp / "model", progress=False)
    models = load_xgem(config, tmp / "model", dev)
    inputs = held_out_inputs(config, records, s["batch"])
    steps = s["steps"] or config.generate.steps
    cases = []
    for direction in s["directions"]:
        given = {m: inputs[m] if m == "report" else inputs[m].to(dev) for m in parse_direction(direction)[0]}

        def call(joint: bool, given=given, direction=direction, steps=steps):
            generate(models, direction, given, seed=0, steps=steps, joint=joint)
            return Work(s["batch"])

        cases.append(Case("XGeM", f"generate {direction}, {steps} DDIM steps", "studies/s",
                          lambda call=call: call(True), lambda call=call: call(False),
                          "single-direction samplers, one per output", batch=s["batch"],
                          rounds=2 if size == "default" else None))
    cases[-1].close = lambda: shutil.rmtree(tmp)
    return cases


def run(profile: str = "quick", patients: int = 60, updates: int = 6, warmup: int = 2, steps: int | None = None,
        batch: int = 4, repeats: int = 3, directions: Sequence[str] | None = None, device: str = "auto",
        threads: int | None = None) -> dict[str, Any]:
    """Train every stage briefly and generate every direction; return a JSON-ready result."""
    from support.devices import pick_device
    from support.xgem.generate import DIRECTIONS, direction_name, parse_direction
    from support.xgem.train import load_xgem

    dev = pick_device(device)
    if threads or dev.type == "cpu":
        torch.set_num_threads(threads or 1)
    directions = [direction_name(*parse_direction(d)) for d in (directions or DIRECTIONS)]
    config = bench_config(profile, updates, warmup, dev.type == "cpu")
    steps = steps or config.generate.steps
    with tempfile.TemporaryDirectory(prefix="xgem-bench-") as tmp:
        records = phantom_records(Path(tmp) / "phantom", patients, max(32, config.image_vae.size))
        training = train_rates(config, records, Path(tmp) / "model", warmup)
        models = load_xgem(config, Path(tmp) / "model", dev)
        runs = generation_rates(models, held_out_inputs(config, records, batch), directions, steps, repeats)
    generation = {d: {name: statistics.median(r) for name, r in by.items()} for d, by in runs.items()}
    return {"profile": profile, "device": str(dev), "threads": torch.get_num_threads(), "torch": torch.__version__,
            "machine": platform.machine(), "patients": patients, "studies": int(records["study_id"].nunique()),
            "image_size": config.image_vae.size, "updates_timed": updates, "warmup": warmup, "training": training,
            "steps": steps, "guidance": config.generate.guidance_scale, "batch": batch, "repeats": repeats,
            "report_max_tokens": config.generate.report_max_tokens, "generation_studies_per_s": generation,
            "generation_runs": runs}


def report(result: dict[str, Any]) -> str:
    """The figures as printed."""
    lines = [f"XGeM, {result['profile']} profile at {result['image_size']} px, phantom of {result['studies']} studies, "
             f"{result['device']} ({result['threads']} threads)",
             f"training: median of {result['updates_timed']} timed updates after {result['warmup']} (wall: with "
             "setup and export)"]
    for stage, r in result["training"].items():
        lines.append(f"  {stage:12s} batch {r['batch']:3d}  {r['rate']:8.1f} {r['unit']:10s} "
                     f"wall {r['seconds']:6.1f} s")
    g = result["guidance"]
    lines.append(f"generation: batch {result['batch']}, {result['steps']} DDIM steps, guidance {g:g}, reports up to "
                 f"{result['report_max_tokens']} tokens, median of {result['repeats']} (studies/s)")
    lines.append(f"  {'direction':9s} {'measured':>9s} {'guid. 1':>9s} {'ratio':>6s} {'indep.':>9s} {'ratio':>6s}")
    for direction, r in result["generation_studies_per_s"].items():
        line = f"  {direction:9s} {r['measured']:9.2f} {r['guidance 1']:9.2f} {r['guidance 1'] / r['measured']:6.2f}"
        if "independent" in r:
            line += f" {r['independent']:9.2f} {r['independent'] / r['measured']:6.2f}"
        lines.append(line)
    lines.append("  ratio: the peer's rate over the measured one (guidance's cost; the joint stage's cost)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m support.benchmarks.xgem", description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="quick", help="XGeM profile: test, quick, study or full (sizes)")
    parser.add_argument("--patients", type=int, default=60, help="phantom patients (about 2 studies each)")
    parser.add_argument("--updates", type=int, default=6, help="timed updates per training stage")
    parser.add_argument("--warmup", type=int, default=2, help="untimed updates first")
    parser.add_argument("--steps", type=int, default=None, help="DDIM steps (default: the profile's)")
    parser.add_argument("--batch", type=int, default=4, help="studies generated per call")
    parser.add_argument("--repeats", type=int, default=3, help="alternating generation rounds (median kept)")
    parser.add_argument("--directions", nargs="+", default=None, help="a subset of the 12 (default: all)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (default on the CPU: 1; these small models gain little from more, and "
                             "a loaded machine's spinning threads slow them many times)")
    parser.add_argument("--out", type=Path, default=None, help="also write the result as JSON here")
    args = parser.parse_args(argv)
    result = run(args.profile, args.patients, args.updates, args.warmup, args.steps, args.batch, args.repeats,
                 args.directions, args.device, args.threads)
    print(report(result))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
