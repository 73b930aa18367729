"""The notebook runner: parameter injection, refusal of unknown parameters, failure report,
no overwrite, resume, selection and the run directory it leaves."""

import json
from pathlib import Path

import pytest
import yaml

from support import pipeline
from support.io import read_json
from support.pipeline import PipelineError

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


def run(nbdir: Path, runs: Path, **kw) -> Path:
    return pipeline.run("test", nbdir, nbdir / "params", runs, **kw)


def test_injects_profile_parameters_and_writes_run_directory(fixture_notebooks, tmp_path, capsys):
    runs = tmp_path / "runs"
    root = run(fixture_notebooks, runs, run_id="r1")
    assert root == (runs / "r1").resolve()

    seen = read_json(root / "metrics" / "first.json")
    assert seen["greeting"] == "from-profile" and seen["n_items"] == 5 and seen["seed"] == 7
    assert seen["HF_HUB_OFFLINE"] == "1" and seen["TRANSFORMERS_OFFLINE"] == "1"
    assert Path(seen["cwd"]) == fixture_notebooks  # same working directory as in JupyterLab
    assert read_json(root / "metrics" / "second.json") == {"product": 15.0}

    manifest = read_json(root / "manifest.json")
    assert manifest["profile"] == "test" and manifest["status"] == "ok"
    assert manifest["seeds"]["profile"] == 7
    assert manifest["parameters"]["00_first"]["run_dir"] == str(root)
    assert manifest["packages"]["torch"] and manifest["platform"]["python"]
    assert set(manifest["git"]) == {"commit", "dirty"}
    for entry in manifest["notebooks"]:
        assert entry["status"] == "ok" and entry["duration_s"] > 0 and entry["start"] and entry["end"]
        assert (root / entry["output"]).exists() and (root / entry["html"]).exists()

    index = (root / "index.html").read_text()
    for name in ("00_first", "01_second"):
        assert f'href="html/{name}.html"' in index and f'href="notebooks/{name}.ipynb"' in index
    assert 'href="metrics/first.json"' in index and 'href="metrics/second.json"' in index   # linked, not dumped
    out = capsys.readouterr().out
    assert "[1/2] 00_first" in out and "[2/2] 01_second" in out and "elapsed" in out


def test_unknown_parameter_is_refused_before_anything_runs(fixture_notebooks, tmp_path):
    prof = fixture_notebooks / "params" / "test.yaml"
    data = yaml.safe_load(prof.read_text())
    data["notebooks"]["01_second"]["learning_rate"] = 0.1
    prof.write_text(yaml.safe_dump(data))
    with pytest.raises(PipelineError) as err:
        run(fixture_notebooks, tmp_path / "runs", run_id="r")
    msg = str(err.value)
    assert str(prof) in msg and "01_second" in msg and "learning_rate" in msg
    assert not (tmp_path / "runs" / "r").exists()


def test_profile_naming_missing_notebook_or_injected_parameter_is_refused(fixture_notebooks, tmp_path):
    prof = fixture_notebooks / "params" / "test.yaml"
    prof.write_text(yaml.safe_dump({"notebooks": {"07_nothing": {"a": 1}}}))
    with pytest.raises(PipelineError, match="07_nothing"):
        run(fixture_notebooks, tmp_path / "runs")
    prof.write_text(yaml.safe_dump({"notebooks": {"00_first": {"run_dir": "/elsewhere"}}}))
    with pytest.raises(PipelineError, match="run_dir"):
        run(fixture_notebooks, tmp_path / "runs")


def test_failure_stops_reports_cell_and_resume_continues(fixture_notebooks, tmp_path, capsys):
    flag = tmp_path / "please-fail"
    flag.write_text("x")
    runs = tmp_path / "runs"
    code = pipeline.main(["--profile", "test", "--notebooks-dir", str(fixture_notebooks),
                          "--runs-root", str(runs), "--run-id", "bad",
                          "--set", f"01_second.fail_if_exists={flag}"])
    assert code == 1
    err = capsys.readouterr().err
    assert "FAILED: notebook 01_second" in err
    assert "if fail_if_exists and Path(fail_if_exists).exists():" in err  # the failing cell's lines
    assert "ValueError: boom: failure requested by the test" in err
    assert "--resume" in err
    root = runs / "bad"
    manifest = read_json(root / "manifest.json")
    assert [e["status"] for e in manifest["notebooks"]] == ["ok", "failed"]
    assert manifest["status"] == "failed"
    assert (root / "html" / "01_second.html").exists()  # the failed notebook is rendered too

    flag.unlink()
    # what a resume would ignore is refused, naming it, and the run is left as it was
    for extra in (["--set", "01_second.fail_if_exists="], ["--only", "01"], ["--profile", "test"], ["--run-id", "x"]):
        assert pipeline.main(["--resume", str(root), "--notebooks-dir", str(fixture_notebooks), *extra]) == 1
        assert f"{extra[0]} would be ignored" in capsys.readouterr().err
    assert [e["status"] for e in read_json(root / "manifest.json")["notebooks"]] == ["ok", "failed"]
    assert pipeline.main(["--resume", str(root), "--notebooks-dir", str(fixture_notebooks)]) == 0
    manifest = read_json(root / "manifest.json")
    assert [e["status"] for e in manifest["notebooks"]] == ["ok", "ok"] and manifest["status"] == "ok"
    assert (root / "count_00.txt").read_text().count("ran") == 1  # 00 was not run again
    assert read_json(root / "metrics" / "second.json") == {"product": 15.0}


def test_console_names_each_log_without_kernel_warnings(fixture_notebooks, tmp_path, capfd):
    runs = tmp_path / "runs"
    assert pipeline.main(["--profile", "test", "--notebooks-dir", str(fixture_notebooks), "--runs-root", str(runs),
                          "--run-id", "r"]) == 0
    out, err = capfd.readouterr()              # the kernels' own stderr included (file descriptors)
    assert f"(log: {runs / 'r' / 'logs' / '00_first.log'})" in out
    assert "without encryption" not in out + err and "IPKernelApp" not in out + err


def test_papermill_parameter_files_run_the_profile(fixture_notebooks, tmp_path):
    import papermill

    params = fixture_notebooks / "params"
    files = pipeline.papermill_files(fixture_notebooks, params)
    first = params / "papermill" / "test" / "00_first.yaml"
    assert set(files) == {first, params / "papermill" / "test" / "01_second.yaml"}
    assert pipeline.main(["--write-papermill-params", "--notebooks-dir", str(fixture_notebooks)]) == 0
    values = yaml.safe_load(first.read_text())
    assert values == {"greeting": "from-profile", "n_items": 5, "seed": 7}       # no notebooks=, no description=
    run = tmp_path / "run"
    with pipeline._KernelSpec() as kernel:           # this interpreter, as the runner's kernels
        papermill.execute_notebook(str(fixture_notebooks / "00_first.ipynb"), str(tmp_path / "out.ipynb"),
                                   parameters={**values, "run_dir": str(run)}, cwd=str(fixture_notebooks),
                                   kernel_name=kernel, progress_bar=False)
    seen = json.loads((run / "metrics" / "first.json").read_text())
    assert (seen["greeting"], seen["n_items"], seen["seed"]) == ("from-profile", 5, 7)


def test_committed_papermill_files_match_the_profiles():
    files = pipeline.papermill_files(NOTEBOOKS, NOTEBOOKS / "params")
    stale = [str(p) for p, text in files.items() if not p.exists() or p.read_text() != text]
    assert not stale, f"run `python -m support.pipeline --write-papermill-params`: stale {stale}"
    assert len(files) == len(pipeline.PROFILES) * len(pipeline.discover(NOTEBOOKS))


def test_a_child_run_reruns_part_of_a_parent_with_other_parameters_and_never_writes_into_it(
        fixture_notebooks, tmp_path, monkeypatch):
    runs = tmp_path / "runs"
    parent = run(fixture_notebooks, runs, run_id="parent")
    (parent / "models" / "big.bin").write_bytes(b"x" * pipeline.LINK_MIN_BYTES)      # hard-linked, not copied
    before = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in parent.rglob("*") if p.is_file()}
    assert pipeline.main(["--parent", str(parent), "--from", "01", "--set", "01_second.scale=4.0",
                          "--notebooks-dir", str(fixture_notebooks), "--runs-root", str(runs), "--run-id", "child"]) == 0
    child = runs / "child"
    assert read_json(child / "metrics" / "second.json") == {"product": 20.0}        # 00's output from the parent
    manifest = read_json(child / "manifest.json")
    assert manifest["parent"] == {"run_id": "parent", "path": str(parent)} and manifest["profile"] == "test"
    assert [e["name"] for e in manifest["notebooks"]] == ["01_second"]
    assert manifest["parameters"]["01_second"]["scale"] == 4.0
    assert 'Started from run <a href="../parent/index.html">parent</a>' in (child / "index.html").read_text()
    assert (child / "models" / "big.bin").stat().st_ino == (parent / "models" / "big.bin").stat().st_ino
    after = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in parent.rglob("*") if p.is_file()}
    assert after == before                                                         # the parent is untouched
    assert read_json(parent / "metrics" / "second.json") == {"product": 15.0}
    with pytest.raises(PipelineError, match="not a run directory"):
        run(fixture_notebooks, runs, run_id="orphan", parent=tmp_path)


def test_existing_run_directory_is_never_overwritten(fixture_notebooks, tmp_path):
    runs = tmp_path / "runs"
    (runs / "taken").mkdir(parents=True)
    (runs / "taken" / "precious.txt").write_text("keep")
    with pytest.raises(FileExistsError, match="already exists"):
        run(fixture_notebooks, runs, run_id="taken")
    assert sorted(p.name for p in (runs / "taken").iterdir()) == ["precious.txt"]


def test_selection_only_and_from(fixture_notebooks):
    nbs = pipeline.discover(fixture_notebooks)
    assert [nb.name for nb in pipeline.select(nbs, only="01")] == ["01_second"]
    assert [nb.name for nb in pipeline.select(nbs, only="00,01_second")] == ["00_first", "01_second"]
    assert [nb.name for nb in pipeline.select(nbs, start="01")] == ["01_second"]
    with pytest.raises(PipelineError, match="--only 05"):
        pipeline.select(nbs, only="05")


def test_list_shows_parameters_types_and_each_profiles_values(fixture_notebooks, capsys):
    (fixture_notebooks / "params" / "quick.yaml").write_text(yaml.safe_dump({"notebooks": {"01_second": {"scale": 9.5}}}))
    pipeline.list_notebooks(fixture_notebooks, fixture_notebooks / "params")
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines() if line.startswith("  ")}
    assert "str" in lines["greeting"].split() and "test='from-profile'" in lines["greeting"]
    assert "int" in lines["n_items"].split() and "test=5" in lines["n_items"]
    assert "float" in lines["scale"].split() and "test=3.0" in lines["scale"] and "quick=9.5" in lines["scale"]
    assert "quick=" not in lines["greeting"] and "fail_if_exists" in lines
    pipeline.list_notebooks(fixture_notebooks, fixture_notebooks / "params", "test")    # one profile
    assert "quick=" not in capsys.readouterr().out


def test_notebook_without_parameters_cell_is_refused(fixture_notebooks):
    nb = json.loads((fixture_notebooks / "00_first.ipynb").read_text())
    for cell in nb["cells"]:
        cell["metadata"].pop("tags", None)
    (fixture_notebooks / "00_first.ipynb").write_text(json.dumps(nb))
    with pytest.raises(PipelineError, match="parameters"):
        pipeline.discover(fixture_notebooks)


def test_a_progress_bar_is_stored_as_its_last_line(tmp_path):
    import nbformat

    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell("train()")
    cell.outputs = [nbformat.v4.new_output("stream", name="stderr", text=f"\rtrain: {i}/100") for i in range(101)]
    cell.outputs += [nbformat.v4.new_output("stream", name="stderr", text="\n"),
                     nbformat.v4.new_output("stream", name="stdout", text="done\n")]
    nb.cells = [cell]
    partial, output = tmp_path / ".x.partial.ipynb", tmp_path / "x.ipynb"
    nbformat.write(nb, str(partial))
    pipeline.publish_notebook(partial, output)
    outputs = nbformat.read(str(output), as_version=4).cells[0].outputs
    assert [(o.name, o.text) for o in outputs] == [("stderr", "train: 100/100\n"), ("stdout", "done\n")]
    assert not partial.exists()
