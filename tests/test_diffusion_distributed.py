"""Two CPU processes (gloo): synchronised training, rank-0-only writes, sharded sampling.

Each case runs in a fresh interpreter, as a notebook kernel or a shell would: the notebook path
through ``launch_training`` (accelerate.notebook_launcher), the shell path through
``accelerate launch -m support.diffusion.sampling``.
"""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from support.diffusion.train import free_port

torch.set_num_threads(1)

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
       "CUDA_VISIBLE_DEVICES": ""}

TRAIN_SCRIPT = textwrap.dedent('''
    import hashlib, json, os, sys
    import torch
    import support.diffusion.train as train
    from support.diffusion.config import ddpm_config
    from support.diffusion.data import SyntheticDiscs

    out, port = sys.argv[1], int(sys.argv[2])

    def rank():
        import torch.distributed as dist
        return dist.get_rank() if dist.is_initialized() else 0

    def record(step, model):
        digest = hashlib.sha256()
        for _, p in model.named_parameters():
            digest.update(p.detach().cpu().numpy().tobytes())
        with open(os.path.join(out, f"weights-rank{rank()}.jsonl"), "a") as fh:
            fh.write(json.dumps({"step": step, "sha256": digest.hexdigest()}) + "\\n")

    saving = train.save_checkpoint
    def counting_save(*args, **kwargs):
        with open(os.path.join(out, f"saves-rank{rank()}.txt"), "a") as fh:
            fh.write("save\\n")
        return saving(*args, **kwargs)
    train.save_checkpoint = counting_save   # the forked processes inherit the counting wrapper

    config = ddpm_config("test", {"train": {"max_steps": 4, "checkpoint_every": 2, "sample_grid_steps": 2}})
    history = train.launch_training(config, SyntheticDiscs(24, 16), os.path.join(out, "run"),
                                    SyntheticDiscs(8, 16, seed=1), num_processes=2, port=port, on_update=record)
    print("HISTORY", json.dumps(history))
''')


def test_two_process_training_keeps_ranks_in_step_and_writes_from_rank0(tmp_path):
    script = tmp_path / "train2.py"
    script.write_text(TRAIN_SCRIPT)
    proc = subprocess.run([sys.executable, str(script), str(tmp_path), str(free_port())], env=ENV,
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    ranks = [[json.loads(line) for line in (tmp_path / f"weights-rank{r}.jsonl").read_text().splitlines()]
             for r in (0, 1)]
    assert [e["step"] for e in ranks[0]] == [1, 2, 3, 4] == [e["step"] for e in ranks[1]]
    assert [e["sha256"] for e in ranks[0]] == [e["sha256"] for e in ranks[1]]   # gradients all-reduced
    assert len({e["sha256"] for e in ranks[0]}) == 4                              # and the weights moved

    assert (tmp_path / "saves-rank0.txt").read_text().count("save") == 2          # updates 2 and 4
    assert not (tmp_path / "saves-rank1.txt").exists()
    run = tmp_path / "run"
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["checkpoint-00000002", "checkpoint-00000004"]
    state = json.loads((run / "checkpoints" / "checkpoint-00000004" / "state.json").read_text())
    assert state["world_size"] == 2 and len(state["rng"]) == 2                     # both ranks' RNG states
    history = json.loads(proc.stdout.split("HISTORY", 1)[1])
    assert history == json.loads((run / "history.json").read_text())
    assert history["step"][-1] == 4 and history["val_step"] == [4]
    assert (run / "pipeline" / "model_index.json").is_file()


@pytest.fixture
def tiny_pipeline(tmp_path):
    from support.diffusion.config import ddpm_config
    from support.diffusion.model import build_unet
    from support.diffusion.schedules import make_noise_scheduler
    from support.diffusion.train import save_pipeline

    cfg = ddpm_config("test")
    torch.manual_seed(0)
    return save_pipeline(build_unet(cfg.unet), make_noise_scheduler(cfg.noise), tmp_path / "pipeline")


def test_sharded_sampling_writes_exactly_n_distinct_samples(tmp_path, tiny_pipeline):
    import io

    import pandas as pd
    from PIL import Image

    from support.data.writer import encode_jpeg
    from support.diffusion.sampling import load_pipeline, make_sampler, sample_images, to_uint8

    root = tmp_path / "synthetic"
    config = tmp_path / "sample.yaml"
    config.write_text(f"pipeline: {tiny_pipeline}\noutput_root: {root}\nprofile: test\n"
                      f"num_samples: 5\nbatch_size: 2\nbase_seed: 100\nsteps: 4\n")
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "--cpu", "--main_process_port", str(free_port()),
           "-m", "support.diffusion.sampling", "--config", str(config)]
    proc = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    files = sorted(root.glob("files/p*/p*/s*/*.jpg"))
    assert len(files) == 5 and len({f.name for f in files}) == 5
    meta = pd.read_csv(root / "mimic-cxr-2.0.0-metadata.csv", dtype=str)
    prov = pd.read_csv(root / "provenance.csv", dtype=str)
    assert len(meta) == 5 and set(meta["dicom_id"]) == {f.stem for f in files}
    assert sorted(prov["seed"].astype(int)) == [100, 101, 102, 103, 104]
    assert set(prov["sampler"]) == {"ddim"} and set(prov["steps"]) == {"4"}
    assert list(prov.columns) == ["dicom_id", "generator", "checkpoint_sha256", "sampler", "steps", "seed"]

    # Every file is the image its seed gives when regenerated alone in this process.
    pipe = load_pipeline(tiny_pipeline, device="cpu", dtype="fp32")
    by_id = dict(zip(prov["dicom_id"], prov["seed"].astype(int)))
    for f in files:
        alone = to_uint8(sample_images(pipe.unet, make_sampler("ddim", pipe.scheduler.config), [by_id[f.stem]], 4))
        written = np.asarray(Image.open(f), dtype=np.int16)
        expected = np.asarray(Image.open(io.BytesIO(encode_jpeg(alone[0]))), dtype=np.int16)
        assert np.abs(written - expected).max() <= 1, f.name
