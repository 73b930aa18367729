"""T2I-LoRA on two CPU processes (gloo): adapters stay in step and only rank 0 writes; sampling
shards the plan so that every row is written once. Each case runs in a fresh interpreter, as a
notebook kernel (``launch_lora_training``) or a shell (``accelerate launch``) would."""

import json
import os
import subprocess
import sys
import textwrap

import pandas as pd
import pytest
import torch

from support.diffusion.train import free_port
from support.t2i.base_model import build_small_pipeline, save_pipeline
from support.t2i.captions import train_caption_tokenizer
from support.t2i.config import DEFAULT_VALIDATION_PROMPTS, t2i_config
from support.t2i.data import SyntheticCaptioned

torch.set_num_threads(1)
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
       "CUDA_VISIBLE_DEVICES": ""}

TRAIN_SCRIPT = textwrap.dedent('''
    import hashlib, json, os, sys
    import torch
    import support.t2i.train as train
    from support.t2i.config import t2i_config
    from support.t2i.data import SyntheticCaptioned

    base, out, port = sys.argv[1], sys.argv[2], int(sys.argv[3])

    def rank():
        import torch.distributed as dist
        return dist.get_rank() if dist.is_initialized() else 0

    def record(step, unet):
        digest = hashlib.sha256()
        for _, p in sorted((n, p) for n, p in unet.named_parameters() if p.requires_grad):
            digest.update(p.detach().cpu().numpy().tobytes())
        with open(os.path.join(out, f"lora-rank{rank()}.jsonl"), "a") as fh:
            fh.write(json.dumps({"step": step, "sha256": digest.hexdigest()}) + "\\n")

    config = t2i_config("test", {"train": {"max_steps": 3, "checkpoint_every": 2}})
    history = train.launch_lora_training(config, base, SyntheticCaptioned(8, 32), os.path.join(out, "run"),
                                         num_processes=2, port=port, on_update=record)
    print("HISTORY", json.dumps(history))
''')


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    data = SyntheticCaptioned(8, 32)
    tokenizer = train_caption_tokenizer(data.captions + list(DEFAULT_VALIDATION_PROMPTS), 640, 77)
    return save_pipeline(build_small_pipeline(t2i_config("test").base, tokenizer), tmp_path_factory.mktemp("b") / "p")


def test_two_process_lora_training_keeps_ranks_in_step_and_writes_from_rank0(base, tmp_path):
    script = tmp_path / "train2.py"
    script.write_text(TRAIN_SCRIPT)
    proc = subprocess.run([sys.executable, str(script), str(base), str(tmp_path), str(free_port())], env=ENV,
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ranks = [[json.loads(line) for line in (tmp_path / f"lora-rank{r}.jsonl").read_text().splitlines()]
             for r in (0, 1)]
    assert [e["step"] for e in ranks[0]] == [1, 2, 3] == [e["step"] for e in ranks[1]]
    assert [e["sha256"] for e in ranks[0]] == [e["sha256"] for e in ranks[1]]   # gradients all-reduced
    assert len({e["sha256"] for e in ranks[0]}) == 3                              # and the adapters moved
    run = tmp_path / "run"
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["checkpoint-00000002", "checkpoint-00000003"]
    state = json.loads((run / "checkpoints" / "checkpoint-00000003" / "state.json").read_text())
    assert state["world_size"] == 2 and len(state["rng"]) == 2
    history = json.loads(proc.stdout.split("HISTORY", 1)[1])
    assert history == json.loads((run / "history.json").read_text())
    assert history["images_per_s"][-1] == pytest.approx(2 * 2 * history["steps_per_s"][-1])   # 2 ranks x batch 2
    assert (run / "lora" / "pytorch_lora_weights.safetensors").is_file()


def test_sharded_sampling_writes_every_plan_row_once(base, tmp_path):
    from support.t2i.sampling import plan_for_findings
    from support.t2i.config import PromptConfig

    root = tmp_path / "synthetic"
    config = tmp_path / "sample.yaml"
    config.write_text(f"base_model: {base}\noutput_root: {root}\nprofile: test\n"
                      "sampling: {steps: 2, batch_size: 2, base_seed: 100}\n"
                      "prompts: {source: findings, finding_mix: {Pleural Effusion: 3, No Finding: 2}}\n")
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "--cpu", "--main_process_port", str(free_port()),
           "-m", "support.t2i.sampling", "--config", str(config)]
    proc = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    files = sorted(root.glob("files/p*/p*/s*/*.jpg"))
    assert len(files) == 5 and len({f.name for f in files}) == 5
    prov = pd.read_csv(root / "provenance.csv", dtype=str, keep_default_na=False)
    assert sorted(prov["seed"].astype(int)) == [100, 101, 102, 103, 104]
    plan = plan_for_findings(PromptConfig(source="findings", finding_mix={"Pleural Effusion": 3, "No Finding": 2}))
    by_seed = prov.set_index(prov["seed"].astype(int))
    assert [by_seed.loc[100 + i, "requested"] for i in range(5)] == list(plan["requested"])
    labels = pd.read_csv(root / "mimic-cxr-2.0.0-chexpert.csv", dtype={"study_id": str})
    assert labels["Pleural Effusion"].sum() == 3 and labels["No Finding"].sum() == 2
