"""The runner against bad input and a failing disk: a run id that is a path, a ``--set`` value that
is not YAML or not of the declared type, and a disk that fills up or is read-only mid-run."""

import errno
import json
import os
from pathlib import Path

import pytest
import yaml
from papermill.iorw import LocalHandler

from support import io, pipeline
from support.pipeline import PipelineError
from support.runs import create_run_dir


def main(nbdir: Path, runs: Path, *args: str) -> int:
    return pipeline.main(["--profile", "test", "--notebooks-dir", str(nbdir), "--runs-root", str(runs), *args])


def disk_full(path) -> OSError:
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))


def files_under(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def assert_no_half_written_file(root: Path) -> None:
    for path in root.rglob("*"):
        assert ".partial" not in path.name and not path.name.endswith(".tmp"), path
        if path.suffix in (".json", ".ipynb"):
            json.loads(path.read_text(encoding="utf-8"))  # raises on a file cut short


# --------------------------------------------------------------------------- 10: run id

@pytest.mark.parametrize("run_id", ["../escaped", "nested/../../escaped", "a/b", "a\\b", "..", "{tmp}/escaped"])
def test_run_id_that_is_a_path_is_refused_before_anything_is_created(fixture_notebooks, tmp_path, capsys, run_id):
    runs = tmp_path / "deep" / "runs"
    assert main(fixture_notebooks, runs, "--run-id", run_id.format(tmp=tmp_path)) == 1
    err = capsys.readouterr().err
    assert "--run-id" in err and "letters, digits, '.', '_' and '-'" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notebooks"]  # no folder, in or out of the root


def test_create_run_dir_accepts_a_folder_name_and_refuses_a_path(tmp_path):
    assert create_run_dir(tmp_path / "runs", "v1.2_quick-3").root == (tmp_path / "runs" / "v1.2_quick-3").resolve()
    with pytest.raises(ValueError, match="--run-id '../x'"):
        create_run_dir(tmp_path / "runs", "../x")
    assert not (tmp_path / "x").exists()


# --------------------------------------------------------------------------- 11: --set values

def add_parameters(nbdir: Path, source: str) -> None:
    """Append lines to the parameters cell of 01_second (its copy for this test)."""
    path = nbdir / "01_second.ipynb"
    nb = json.loads(path.read_text())
    cell = next(c for c in nb["cells"] if "parameters" in c["metadata"].get("tags", []))
    cell["source"] = "".join(cell["source"]) + "\n" + source
    path.write_text(json.dumps(nb))


def test_set_value_that_is_not_yaml_names_the_option_and_the_problem(fixture_notebooks, tmp_path, capsys):
    assert main(fixture_notebooks, tmp_path / "runs", "--set", "01_second.scale=[1, 2") == 1
    err = capsys.readouterr().err
    assert "--set '01_second.scale=[1, 2'" in err and "not valid YAML" in err and "expected ',' or ']'" in err
    assert "Traceback" not in err and not (tmp_path / "runs").exists()


@pytest.mark.parametrize("item, expected", [
    ("00_first.n_items=five", "00_first.n_items must be int"),
    ("00_first.n_items=2.5", "00_first.n_items must be int"),
    ("00_first.n_items=true", "00_first.n_items must be int"),
    ("00_first.n_items=null", "00_first.n_items must be int"),
    ("01_second.scale=fast", "01_second.scale must be float"),
    ("00_first.greeting=3", "00_first.greeting must be str"),
    ("01_second.sizes=3", "01_second.sizes must be list"),
    ("01_second.options=[a]", "01_second.options must be dict"),
    ("01_second.limit=yes", "01_second.limit must be float"),
])
def test_set_value_of_another_type_is_refused_before_anything_runs(fixture_notebooks, tmp_path, item, expected):
    add_parameters(fixture_notebooks, "sizes = [1, 2]\noptions = {'a': 1}\nlimit: float = 1\nanything = None")
    with pytest.raises(PipelineError) as err:
        pipeline.run("test", fixture_notebooks, fixture_notebooks / "params", tmp_path / "runs", run_id="r",
                     overrides=[item])
    assert str(err.value).startswith(f"--set {item!r}: {expected}")
    assert not (tmp_path / "runs").exists()


def test_set_values_of_the_declared_type_are_accepted(fixture_notebooks):
    add_parameters(fixture_notebooks, "sizes = [1, 2]\noptions = {'a': 1}\nlimit: float = 1\nanything = None")
    profile = {"seed": 0, "notebooks": {}}
    pipeline.apply_overrides(profile, ["00_first.n_items=3", "01_second.scale=2", "01_second.limit=2.5",
                                       "01_second.sizes=[]", "01_second.options={b: 2}",
                                       "01_second.anything=[x]", "00_first.greeting='3'"],
                             pipeline.discover(fixture_notebooks))
    assert profile["notebooks"] == {"00_first": {"n_items": 3, "greeting": "3"},
                                    "01_second": {"scale": 2, "limit": 2.5, "sizes": [], "options": {"b": 2},
                                                  "anything": ["x"]}}


def test_profile_value_of_another_type_is_refused_naming_the_file(fixture_notebooks, tmp_path):
    prof = fixture_notebooks / "params" / "test.yaml"
    data = yaml.safe_load(prof.read_text())
    data["notebooks"]["00_first"]["n_items"] = "five"
    prof.write_text(yaml.safe_dump(data))
    with pytest.raises(PipelineError, match="00_first.n_items must be int") as err:
        pipeline.run("test", fixture_notebooks, fixture_notebooks / "params", tmp_path / "runs", run_id="r")
    assert str(err.value).startswith(str(prof))
    assert not (tmp_path / "runs").exists()


# --------------------------------------------------------------------------- 12: full or read-only disk

@pytest.fixture
def notebook_save_hits_full_disk(monkeypatch):
    """papermill's saves of 01_second stop half-way with ENOSPC; ``state["full"]`` turns true then."""
    state = {"full": False}
    real = LocalHandler.write

    def write(self, buf, path):
        if "01_second" not in Path(path).name:
            return real(self, buf, path)
        state["full"] = True
        Path(path).write_text(buf[: len(buf) // 2], encoding="utf-8")
        raise disk_full(path)

    monkeypatch.setattr(LocalHandler, "write", write)
    return state


def test_disk_full_while_saving_a_notebook_is_reported_and_leaves_no_half_written_file(
        fixture_notebooks, tmp_path, capsys, notebook_save_hits_full_disk):
    runs = tmp_path / "runs"
    assert main(fixture_notebooks, runs, "--run-id", "full") == 1
    err = capsys.readouterr().err
    assert "FAILED: notebook 01_second" in err and "No space left on device" in err and "--resume" in err
    root = runs / "full"
    manifest = json.loads((root / "manifest.json").read_text())
    assert manifest["status"] == "failed"
    assert [e["status"] for e in manifest["notebooks"]] == ["ok", "failed"]
    assert "No space left on device" in manifest["notebooks"][1]["error"]
    assert_no_half_written_file(root)
    assert (root / "notebooks" / "00_first.ipynb").exists() and not (root / "notebooks" / "01_second.ipynb").exists()


def test_runner_reports_the_failure_when_its_own_records_cannot_be_written(
        fixture_notebooks, tmp_path, capsys, monkeypatch, notebook_save_hits_full_disk):
    real_atomic_write = io.atomic_write

    def atomic_write(path, *args, **kwargs):
        if notebook_save_hits_full_disk["full"]:
            raise disk_full(path)
        return real_atomic_write(path, *args, **kwargs)

    monkeypatch.setattr(io, "atomic_write", atomic_write)
    runs = tmp_path / "runs"
    assert main(fixture_notebooks, runs, "--run-id", "full") == 1
    err = capsys.readouterr().err
    root = runs / "full"
    assert "FAILED: notebook 01_second" in err and "No space left on device" in err
    assert f"could not update {root / 'manifest.json'}" in err and "--resume" in err
    manifest = json.loads((root / "manifest.json").read_text())  # the last whole version
    assert [e["status"] for e in manifest["notebooks"]] == ["ok", "running"]
    assert_no_half_written_file(root)

    monkeypatch.undo()  # space freed: the run continues where it stopped
    assert pipeline.main(["--resume", str(root), "--notebooks-dir", str(fixture_notebooks)]) == 0
    manifest = json.loads((root / "manifest.json").read_text())
    assert manifest["status"] == "ok" and (root / "count_00.txt").read_text().count("ran") == 1


def test_read_only_runs_root_is_reported_without_a_traceback(fixture_notebooks, tmp_path, capsys, monkeypatch):
    runs = tmp_path / "runs"
    real_mkdir = os.mkdir

    def mkdir(path, *args, **kwargs):
        if Path(path).is_relative_to(runs):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return real_mkdir(path, *args, **kwargs)

    monkeypatch.setattr(os, "mkdir", mkdir)
    assert main(fixture_notebooks, runs, "--run-id", "r") == 1
    err = capsys.readouterr().err
    assert "Read-only file system" in err and str(runs) in err and "Traceback" not in err
