"""Running code as a shell user would, on several CPU processes: ``accelerate launch -m ...``."""

import os
import subprocess
import sys

from support.core.trainer import free_port

# gloo on CPU, one thread a process, nothing from a hub
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
       "CUDA_VISIBLE_DEVICES": ""}


def accelerate_launch(module: str, config, processes: int = 2) -> subprocess.CompletedProcess:
    """``accelerate launch -m module --config config`` on ``processes`` CPU processes; fails the
    test with the end of the output when it does not exit cleanly."""
    # "--multi_gpu" is accelerate's torchrun launcher; with no GPU the processes form a gloo group
    # ("--cpu" would start one process only)
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes),
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_port", str(free_port()), "-m", module, "--config", str(config)]
    proc = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc
