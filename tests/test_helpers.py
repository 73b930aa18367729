"""Shared helpers: atomic writes, safetensors, seeding, device/dtype choice, typed parameters."""

import dataclasses
import os
import stat
from pathlib import Path
from typing import Literal

import numpy as np
import pytest
import torch

from support import devices, io, params, seeding
from support.runs import create_run_dir, run_paths


def test_atomic_write_keeps_old_file_when_the_write_fails(tmp_path):
    target = tmp_path / "a.json"
    io.write_json_atomic(target, {"v": 1})
    with pytest.raises(RuntimeError):
        with io.atomic_write(target) as fh:
            fh.write('{"v": 2, "trunc')
            raise RuntimeError("killed mid-write")
    assert io.read_json(target) == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]  # no temp file left behind


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_atomic_writes_honour_the_umask(tmp_path, umask):
    old = os.umask(umask)
    try:
        io.write_json_atomic(tmp_path / "m.json", {"v": 1})
        io.write_bytes_atomic(tmp_path / "b.bin", b"x", durable=False)
        with io.atomic_directory(tmp_path / "folder") as tmp:
            io.write_text_atomic(tmp / "f.txt", "x")
    finally:
        os.umask(old)
    for path in ("m.json", "b.bin", "folder/f.txt"):       # what open() would have made, not mkstemp's 0600
        assert stat.S_IMODE((tmp_path / path).stat().st_mode) == 0o666 & ~umask, path
    assert stat.S_IMODE((tmp_path / "folder").stat().st_mode) == 0o777 & ~umask
    assert io.current_umask() == old


def test_json_in_a_run_folder_keeps_run_paths_relative_and_survives_a_move(tmp_path):
    import json
    import shutil

    run = create_run_dir(tmp_path / "runs", "r")
    io.write_json_atomic(run.metrics / "m.json", {"model": run.models / "ddpm", "root": str(run.root),
                                                  "given": "/data/mimic", "view": "PA", "nested": [str(run.data)]})
    raw = json.loads((run.metrics / "m.json").read_text())
    assert raw == {"model": "run:models/ddpm", "root": "run:.", "given": "/data/mimic", "view": "PA",
                   "nested": ["run:data"]}
    moved = tmp_path / "elsewhere"
    shutil.move(str(run.root), moved)
    back = io.read_json(moved / "metrics" / "m.json")
    assert back["model"] == str(moved / "models" / "ddpm") and back["root"] == str(moved)
    assert back["given"] == "/data/mimic" and back["nested"] == [str(moved / "data")]
    io.write_json_atomic(tmp_path / "loose.json", {"p": str(tmp_path / "x")})      # outside a run: as given
    assert json.loads((tmp_path / "loose.json").read_text())["p"] == str(tmp_path / "x")


def test_json_handles_numpy_and_paths(tmp_path):
    io.write_json_atomic(tmp_path / "m.json", {"a": np.float32(0.5), "b": np.arange(3), "p": Path("/x")})
    assert io.read_json(tmp_path / "m.json") == {"a": 0.5, "b": [0, 1, 2], "p": "/x"}


def test_read_json_errors_name_the_file(tmp_path):
    (tmp_path / "bad.json").write_text("{nope")
    with pytest.raises(ValueError, match="bad.json"):
        io.read_json(tmp_path / "bad.json")


def test_safetensors_round_trip_with_shared_storage(tmp_path):
    w = torch.randn(4, 3)
    state = {"w": w, "w_view": w[:2], "b": torch.arange(5)}
    path = io.save_state_dict(state, tmp_path / "m.safetensors", metadata={"step": 3})
    back = io.load_state_dict(path)
    assert torch.equal(back["w"], w) and torch.equal(back["w_view"], w[:2]) and torch.equal(back["b"], state["b"])
    from safetensors import safe_open
    with safe_open(str(path), "pt") as fh:
        assert fh.metadata() == {"step": "3"}


def test_load_state_dict_of_torch_file_refuses_pickled_objects(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))
    torch.save({"x": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(Exception):
        io.load_state_dict(tmp_path / "evil.pt")


def test_seed_everything_repeats_python_numpy_torch():
    import random
    seeding.seed_everything(11)
    a = (random.random(), np.random.rand(), torch.rand(1).item())
    seeding.seed_everything(11)
    assert a == (random.random(), np.random.rand(), torch.rand(1).item())
    seeding.seed_everything(12)
    assert a != (random.random(), np.random.rand(), torch.rand(1).item())


def test_device_and_dtype_choice_on_cpu():
    assert devices.pick_device("cpu").type == "cpu"
    assert devices.pick_dtype("cpu") == torch.float32
    assert devices.pick_dtype("cpu", "bf16") == torch.bfloat16
    assert devices.mixed_precision_name(torch.float16) == "fp16"
    with pytest.raises(ValueError, match="dtype"):
        devices.pick_dtype("cpu", "fp8")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA"):
            devices.pick_device("cuda")


@dataclasses.dataclass
class Inner:
    width: int = 8


@dataclasses.dataclass
class Config:
    lr: float
    steps: int = 10
    schedule: Literal["linear", "cosine"] = "linear"
    mults: tuple[int, ...] = (1, 2)
    out: Path | None = None
    inner: Inner = dataclasses.field(default_factory=Inner)


def test_params_from_mapping_coerces_and_checks():
    cfg = params.from_mapping(Config, {"lr": 1, "mults": [1, 2, 4], "out": "x/y", "inner": {"width": 4}})
    assert cfg.lr == 1.0 and isinstance(cfg.lr, float) and cfg.mults == (1, 2, 4)
    assert cfg.out == Path("x/y") and cfg.inner.width == 4
    assert params.to_dict(cfg)["out"] == "x/y"
    with pytest.raises(params.ParameterError, match=r"profile.yaml.*unknown parameter.*'stpes'"):
        params.from_mapping(Config, {"lr": 1e-3, "stpes": 3}, source="profile.yaml")
    with pytest.raises(params.ParameterError, match="Config.steps: expected an integer"):
        params.from_mapping(Config, {"lr": 1e-3, "steps": "many"})
    with pytest.raises(params.ParameterError, match="schedule"):
        params.from_mapping(Config, {"lr": 1e-3, "schedule": "sigmoidal"})
    with pytest.raises(params.ParameterError, match="missing required parameter Config.lr"):
        params.from_mapping(Config, {})


def test_params_from_namespace_picks_fields_only():
    cfg = params.from_namespace(Config, {"lr": 0.5, "run_dir": "/r", "In": [1]})
    assert cfg.lr == 0.5 and cfg.steps == 10


def test_job_yaml_errors_name_the_file(tmp_path):
    good = tmp_path / "job.yaml"
    good.write_text("pipeline: p\noutput_root: o\nsteps: 3\n")
    assert params.read_yaml_mapping(good, required=("pipeline", "output_root"))["steps"] == 3
    with pytest.raises(params.ParameterError, match=r"job.yaml: expected a mapping with 'pipeline', 'lora'.*\['lora'\]"):
        params.read_yaml_mapping(good, required=("pipeline", "lora"))
    with pytest.raises(FileNotFoundError, match="absent.yaml: config file not found"):
        params.read_yaml_mapping(tmp_path / "absent.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [1, 2\n")
    with pytest.raises(params.ParameterError, match="bad.yaml: not valid YAML"):
        params.read_yaml_mapping(bad)
    bad.write_text("- 1\n- 2\n")
    with pytest.raises(params.ParameterError, match="bad.yaml: expected a mapping at the top level"):
        params.read_yaml_mapping(bad)


def test_run_dirs(tmp_path):
    paths = create_run_dir(tmp_path, "a")
    assert paths.metrics.is_dir() and paths.models.is_dir()
    with pytest.raises(FileExistsError, match="already exists"):
        create_run_dir(tmp_path, "a")
    assert run_paths(paths.root).root == paths.root


def test_atomic_directory_swaps_whole_folders_and_leaves_nothing_on_failure(tmp_path):
    final = tmp_path / "ckpt"
    with io.atomic_directory(final) as tmp:
        (tmp / "a.txt").write_text("1")
        assert not final.exists()  # invisible until complete
    assert (final / "a.txt").read_text() == "1"
    with pytest.raises(RuntimeError):
        with io.atomic_directory(final) as tmp:
            (tmp / "a.txt").write_text("2")
            raise RuntimeError("killed mid-save")
    assert (final / "a.txt").read_text() == "1" and sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]
    with io.atomic_directory(final) as tmp:
        (tmp / "b.txt").write_text("3")
    assert sorted(p.name for p in final.iterdir()) == ["b.txt"]  # replaced whole
