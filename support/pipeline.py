"""Run the numbered notebooks in order with papermill: ``python -m support.pipeline``.

Each run gets its own directory ``outputs/runs/<run-id>/`` holding the executed notebooks, their
HTML renders, a ``manifest.json`` (profile, parameters, code version, packages, timings) and an
``index.html`` that links everything with the headline metrics the notebooks wrote.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import datetime as dt
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

import yaml

from support.io import read_json, write_json_atomic, write_text_atomic
from support.runs import DEFAULT_RUNS_ROOT, IN_REPOSITORY, REPO_ROOT, RunPaths, create_run_dir, new_run_id

NOTEBOOK_RE = re.compile(r"^(\d{2})_[A-Za-z0-9_]+\.ipynb$")
PROFILES = ("test", "quick", "study", "full")
INJECTED = ("run_dir", "seed", "profile", "allow_stand_ins")  # set by the runner, never by a profile file
PROFILE_KEYS = {"seed", "description", "allow_stand_ins", "notebooks"}
OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
               "PYDEVD_DISABLE_FILE_VALIDATION": "1"}
REPORTED_PACKAGES = ("torch", "torchvision", "diffusers", "transformers", "peft", "accelerate",
                     "torchmetrics", "lightly", "segment-anything", "numpy", "pandas", "scikit-learn",
                     "scipy", "papermill", "nbconvert", "pydicom", "opencv-python-headless", "safetensors")
KERNEL_NAME = "synthcxr-pipeline"
# What a parameter accepts, by the type its annotation or default declares.
ACCEPTED_TYPES = {"int": (int,), "float": (int, float), "bool": (bool,), "str": (str,), "list": (list,),
                  "dict": (dict,)}


class PipelineError(RuntimeError):
    """A problem found before or while running; the message says what and where."""


@dataclasses.dataclass
class Notebook:
    name: str                 # e.g. "02_ddpm"
    path: Path
    declared: dict[str, dict]  # papermill's view of the parameters cell

    @property
    def number(self) -> str:
        return self.name[:2]


# --------------------------------------------------------------------------- discovery

def discover(notebooks_dir: Path) -> list[Notebook]:
    import papermill

    notebooks_dir = Path(notebooks_dir)
    if not notebooks_dir.is_dir():
        raise PipelineError(f"{notebooks_dir}: notebooks directory not found; the runner executes the notebooks "
                            f"of a clone of the repository: give its notebooks/ with --notebooks-dir")
    found = []
    for path in sorted(notebooks_dir.glob("*.ipynb")):
        if not NOTEBOOK_RE.match(path.name):
            continue
        try:
            declared = papermill.inspect_notebook(str(path))
        except Exception as exc:  # malformed JSON or no parameters cell
            raise PipelineError(f"{path}: cannot read its parameters cell ({exc})") from None
        if not _has_parameters_cell(path):
            raise PipelineError(f"{path}: no cell tagged 'parameters'")
        found.append(Notebook(path.stem, path, declared))
    numbers = [nb.number for nb in found]
    dup = sorted({n for n in numbers if numbers.count(n) > 1})
    if dup:
        raise PipelineError(f"{notebooks_dir}: several notebooks share the number(s) {dup}")
    return found


def _has_parameters_cell(path: Path) -> bool:
    nb = json.loads(path.read_text(encoding="utf-8"))
    return sum("parameters" in c.get("metadata", {}).get("tags", []) for c in nb.get("cells", [])) == 1


def select(notebooks: list[Notebook], only: str | None = None, start: str | None = None) -> list[Notebook]:
    """``only``: comma-separated numbers or names; ``start``: the first number or name to run."""
    def matches(nb: Notebook, key: str) -> bool:
        key = key.strip()
        return nb.name == key or nb.number == key.zfill(2)

    chosen = notebooks
    if only:
        keys = [k for k in only.split(",") if k.strip()]
        for key in keys:
            if not any(matches(nb, key) for nb in notebooks):
                raise PipelineError(f"--only {key}: no such notebook; have {[nb.name for nb in notebooks]}")
        chosen = [nb for nb in chosen if any(matches(nb, k) for k in keys)]
    if start:
        idx = [i for i, nb in enumerate(chosen) if matches(nb, start)]
        if not idx:
            raise PipelineError(f"--from {start}: no such notebook among {[nb.name for nb in chosen]}")
        chosen = chosen[idx[0]:]
    return chosen


# --------------------------------------------------------------------------- profiles

def load_profile(params_dir: Path, profile: str) -> tuple[Path, dict]:
    path = Path(params_dir) / f"{profile}.yaml"
    if not path.exists():
        raise PipelineError(f"{path}: profile file not found (profiles: {', '.join(PROFILES)})")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise PipelineError(f"{path}: not valid YAML ({exc})") from None
    if not isinstance(data, dict):
        raise PipelineError(f"{path}: expected a mapping with keys {sorted(PROFILE_KEYS)}")
    unknown = sorted(set(data) - PROFILE_KEYS)
    if unknown:
        raise PipelineError(f"{path}: unknown top-level key(s) {unknown}; expected {sorted(PROFILE_KEYS)}")
    notebooks = data.get("notebooks") or {}
    if not isinstance(notebooks, dict) or not all(isinstance(v, dict) or v is None for v in notebooks.values()):
        raise PipelineError(f"{path}: 'notebooks' must map notebook names to parameter mappings")
    seed = data.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise PipelineError(f"{path}: 'seed' must be an integer, got {seed!r}")
    allow = data.get("allow_stand_ins", False)
    if not isinstance(allow, bool):
        raise PipelineError(f"{path}: 'allow_stand_ins' must be true or false, got {allow!r}")
    return path, {"seed": seed, "description": data.get("description", ""), "allow_stand_ins": allow,
                  "notebooks": {k: dict(v or {}) for k, v in notebooks.items()}}


def declared_type(info: dict) -> str | None:
    """The key of ``ACCEPTED_TYPES`` that papermill's view of one parameter declares: its annotation
    if it names one, else its default's type; None (anything goes) for a None default, or a default
    that is no literal (``Path(...)``) or of another type (a tuple)."""
    if info["default"] == "None":
        return None
    annotation = info["inferred_type_name"].split("[")[0].lower()  # "List[int]" -> "list"
    if annotation in ACCEPTED_TYPES:
        return annotation
    try:
        name = type(ast.literal_eval(info["default"])).__name__
    except (ValueError, SyntaxError):
        return None
    return name if name in ACCEPTED_TYPES else None


def accepts(expected: str | None, value) -> bool:
    if expected is None:
        return True
    if isinstance(value, bool) and expected != "bool":  # isinstance(True, int) holds; a flag is no count
        return False
    return isinstance(value, ACCEPTED_TYPES[expected])


def check_parameters(source: str, name: str, params: dict, by_name: dict[str, Notebook]) -> None:
    """Refuse a notebook that does not exist, a parameter it does not declare or that the runner sets,
    and a value of another type than the declared one; ``source`` (a file, an option) opens the message."""
    if name not in by_name:
        raise PipelineError(f"{source}: names notebook '{name}', which does not exist "
                            f"(notebooks: {sorted(by_name)})")
    nb = by_name[name]
    for key, value in params.items():
        if key in INJECTED:
            raise PipelineError(f"{source}: notebook '{name}': parameter '{key}' is set by the runner, "
                                f"never by a profile or --set")
        if key not in nb.declared:
            raise PipelineError(f"{source}: notebook '{name}' does not declare parameter '{key}' "
                                f"(declared: {sorted(nb.declared)})")
        expected = declared_type(nb.declared[key])
        if not accepts(expected, value):
            hint = "; quote it to pass text" if expected == "str" else ""
            raise PipelineError(f"{source}: {name}.{key} must be {expected} (its default in {nb.path.name} "
                                f"is {nb.declared[key]['default']}), got {value!r} ({type(value).__name__}){hint}")


def validate(profile_path: Path | str, profile: dict, notebooks: list[Notebook],
             selected: list[Notebook]) -> None:
    """Refuse, before anything runs, any parameter a notebook does not declare or of another type."""
    by_name = {nb.name: nb for nb in notebooks}
    for name, params in profile["notebooks"].items():
        check_parameters(str(profile_path), name, params, by_name)
    for nb in selected:
        if "run_dir" not in nb.declared:
            raise PipelineError(f"{nb.path}: the parameters cell must declare run_dir")


def parameters_for(nb: Notebook, profile_name: str, profile: dict, run_dir: Path) -> dict:
    params = dict(profile["notebooks"].get(nb.name, {}))
    params["run_dir"] = str(run_dir)
    if "seed" in nb.declared:
        params["seed"] = profile["seed"]
    if "profile" in nb.declared:
        params["profile"] = profile_name
    if "allow_stand_ins" in nb.declared:
        params["allow_stand_ins"] = profile["allow_stand_ins"]
    return params


PAPERMILL_DIR = "papermill"


def papermill_files(notebooks_dir: Path, params_dir: Path) -> dict[Path, str]:
    """For each profile and notebook, the file ``papermill -f`` reads: the profile's values for that
    notebook and what the runner sets (seed, profile, allow_stand_ins), all but ``run_dir``."""
    files = {}
    notebooks = discover(notebooks_dir)
    for name in (p for p in PROFILES if (Path(params_dir) / f"{p}.yaml").exists()):
        path, profile = load_profile(params_dir, name)
        for nb in notebooks:
            params = parameters_for(nb, name, profile, Path("."))
            del params["run_dir"]
            head = (f"# papermill parameters of {nb.name} under the '{name}' profile, written from {path.name} by\n"
                    f"#   python -m support.pipeline --write-papermill-params\n"
                    f"# papermill notebooks/{nb.path.name} OUT.ipynb -f THIS_FILE -p run_dir outputs/runs/RUN\n")
            files[Path(params_dir) / PAPERMILL_DIR / name / f"{nb.name}.yaml"] = \
                head + yaml.safe_dump(params, sort_keys=False, allow_unicode=True)
    return files


def effective_parameters(nb: Notebook, params: dict) -> dict:
    """``params`` over the defaults of ``nb``'s parameters cell (those that are literals)."""
    values = {}
    for key, info in nb.declared.items():
        try:
            values[key] = ast.literal_eval(info["default"])
        except (ValueError, SyntaxError):
            pass
    return {**values, **params}


def check_published(profile_name: str, profile: dict, selected: list[Notebook]) -> list:
    """Refuse a run whose profile asks for the published systems while a part of them is missing or
    wrong (:mod:`support.published`); otherwise apply the stand-ins and return them."""
    from support import published

    effective = {nb.name: effective_parameters(nb, profile["notebooks"].get(nb.name, {})) for nb in selected}
    stand_ins, problems = published.check(effective, [nb.name for nb in selected], profile["allow_stand_ins"])
    if problems:
        raise PipelineError(published.refusal(problems, profile_name))
    changed = {nb: dict(profile["notebooks"].get(nb, {})) for nb in {p.notebook for p in stand_ins}}
    published.apply_stand_ins(changed, stand_ins)
    profile["notebooks"].update(changed)
    return stand_ins


def apply_overrides(profile: dict, overrides: list[str], notebooks: list[Notebook]) -> None:
    """``--set 02_ddpm.max_steps=200``: the value is read as YAML (numbers, lists, booleans) and
    checked against the notebook's parameters cell like a profile's values."""
    by_name = {nb.name: nb for nb in notebooks}
    for item in overrides or []:
        key, sep, raw = item.partition("=")
        nb, dot, param = key.partition(".")
        if not sep or not dot or not nb or not param:
            raise PipelineError(f"--set {item!r}: expected NOTEBOOK.PARAM=VALUE")
        value = read_yaml_value(f"--set {item!r}", raw)
        check_parameters(f"--set {item!r}", nb, {param: value}, by_name)
        profile["notebooks"].setdefault(nb, {})[param] = value


def read_yaml_value(source: str, raw: str):
    try:
        return yaml.safe_load(raw)
    except yaml.YAMLError as exc:
        where = f"{exc.context}: " if getattr(exc, "context", None) else ""
        raise PipelineError(f"{source}: the value {raw!r} is not valid YAML "
                            f"({where}{getattr(exc, 'problem', None) or exc})") from None


# --------------------------------------------------------------------------- manifest

def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).astimezone().isoformat(timespec="seconds")


def git_state(repo: Path = REPO_ROOT) -> dict:
    def git(*args):
        return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, timeout=20)
    try:
        head = git("rev-parse", "HEAD")
        if head.returncode != 0:
            return {"commit": None, "dirty": None}
        dirty = git("status", "--porcelain", "--untracked-files=no")
        return {"commit": head.stdout.strip(), "dirty": bool(dirty.stdout.strip())}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


def package_versions() -> dict:
    out = {}
    for name in REPORTED_PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def platform_info() -> dict:
    info = {"python": platform.python_version(), "platform": platform.platform(),
            "machine": platform.machine(), "cpu_count": os.cpu_count()}
    try:
        import torch
        info["cuda"] = torch.cuda.is_available()
        info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        info["torch_threads"] = torch.get_num_threads()
    except Exception as exc:  # the manifest must not stop a run; say why the field is empty
        info["cuda"] = f"unknown ({exc})"
    return info


def new_manifest(profile_name: str, profile_path: Path, profile: dict, selected: list[Notebook],
                 paths: RunPaths) -> dict:
    return {
        "run_id": paths.root.name,
        "profile": profile_name,
        "profile_file": str(profile_path),
        "created": _now(),
        "git": git_state(),
        "packages": package_versions(),
        "platform": platform_info(),
        "seeds": {"profile": profile["seed"]},
        "allow_stand_ins": profile["allow_stand_ins"],
        "stand_ins": [],
        "parameters": {nb.name: parameters_for(nb, profile_name, profile, paths.root) for nb in selected},
        "notebooks": [{"name": nb.name, "source": str(nb.path), "status": "pending", "start": None,
                       "end": None, "duration_s": None} for nb in selected],
        "dataset_fingerprint": None,
        "status": "pending",
    }


# --------------------------------------------------------------------------- execution

class _KernelSpec:
    """A kernelspec for the interpreter running the pipeline, so notebooks use this very env."""

    def __enter__(self) -> str:
        self.dir = Path(tempfile.mkdtemp(prefix="synthcxr-kernel-"))
        spec = self.dir / "kernels" / KERNEL_NAME
        spec.mkdir(parents=True)
        (spec / "kernel.json").write_text(json.dumps({
            "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
            "display_name": "Python (pipeline)", "language": "python"}))
        self.old = os.environ.get("JUPYTER_PATH")
        os.environ["JUPYTER_PATH"] = os.pathsep.join(filter(None, [str(self.dir), self.old]))
        return KERNEL_NAME

    def __exit__(self, *exc):
        if self.old is None:
            os.environ.pop("JUPYTER_PATH", None)
        else:
            os.environ["JUPYTER_PATH"] = self.old
        shutil.rmtree(self.dir, ignore_errors=True)


def render_html(ipynb: Path, html: Path) -> None:
    import nbformat
    from nbconvert import HTMLExporter

    body, _ = HTMLExporter().from_notebook_node(nbformat.read(str(ipynb), as_version=4))
    from support.io import write_text_atomic
    write_text_atomic(html, body)


def _fmt_elapsed(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600:d}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def describe_failure(nb_name: str, exc: BaseException, output: Path) -> str:
    """The notebook, the failing cell's first lines and the exception, as a short block of text."""
    from papermill.exceptions import PapermillExecutionError

    lines = [f"FAILED: notebook {nb_name}"]
    if isinstance(exc, PapermillExecutionError):
        src = [ln for ln in (exc.source or "").splitlines()]
        lines.append(f"  cell {exc.cell_index} (execution count {exc.exec_count}):")
        lines += [f"    | {ln}" for ln in src[:6]]
        if len(src) > 6:
            lines.append(f"    | ... ({len(src) - 6} more lines)")
        lines.append(f"  {exc.ename}: {exc.evalue}")
    else:
        lines.append(f"  {type(exc).__name__}: {exc}")
    if output.exists():
        lines.append(f"  executed notebook with the full traceback: {output}")
    return "\n".join(lines)


def execute(nb: Notebook, output: Path, parameters: dict, kernel: str, log: Path) -> None:
    """Execute ``nb`` into ``output`` with papermill. papermill rewrites its output file in place
    after every cell, which a full disk leaves half-written; so it writes a file beside ``output``,
    which :func:`publish_notebook` moves into place only whole."""
    import papermill

    partial = output.with_name(f".{output.stem}.partial.ipynb")
    try:
        with open(log, "w", encoding="utf-8") as log_fh:
            papermill.execute_notebook(
                str(nb.path), str(partial), parameters=parameters, kernel_name=kernel,
                cwd=str(nb.path.parent), progress_bar=sys.stderr.isatty(),
                stdout_file=log_fh, stderr_file=log_fh, start_timeout=120,
                # the kernel listens on localhost only; its start-up warning about unencrypted TCP
                # repeated once per notebook hid the runner's own lines (errors still show)
                extra_arguments=["--IPKernelApp.log_level=ERROR"])
    finally:
        publish_notebook(partial, output)


def publish_notebook(partial: Path, output: Path) -> None:
    """Rename ``partial`` to ``output`` if it holds a whole notebook (a rename needs no free space);
    remove it if its last write was cut short."""
    try:
        whole = partial.exists() and bool(json.loads(partial.read_text(encoding="utf-8")))
    except ValueError:  # JSON or UTF-8 cut short
        whole = False
    if whole:
        coalesce_progress(partial)
        os.replace(partial, output)
    else:
        partial.unlink(missing_ok=True)


def coalesce_progress(path: Path) -> None:
    """Merge each cell's consecutive stream outputs and keep only what a terminal would show after
    carriage returns (nbconvert's ``CoalesceStreamsPreprocessor``): a progress bar's hundreds of
    updates become its final line, in the stored notebook and its HTML alike."""
    import nbformat
    from nbconvert.preprocessors import CoalesceStreamsPreprocessor

    nb = nbformat.read(str(path), as_version=4)
    nb, _ = CoalesceStreamsPreprocessor().preprocess(nb, {})
    staged = path.with_name(path.name + ".coalesced")
    nbformat.write(nb, str(staged))
    os.replace(staged, path)


def _metrics_of(paths: RunPaths, notebook: str) -> dict:
    path = paths.metrics / f"{notebook}.json"
    metrics = read_json(path) if path.exists() else {}
    return metrics if isinstance(metrics, dict) else {}


def record_outcome(paths: RunPaths, manifest: dict, entry: dict) -> list[str]:
    """Render the executed notebook, then update the manifest and the index. Returns what could not
    be written instead of raising, so that a full or read-only disk never hides the run's report."""
    from support.model_card import write_model_cards
    from support.run_index import write_index

    output, html = paths.root / entry["output"], paths.root / entry["html"]
    if output.exists():
        try:
            render_html(output, html)
        except Exception as exc:  # the run's result stands; say the render failed
            entry["html_error"] = f"{type(exc).__name__}: {exc}"
    fingerprint = paths.data / "fingerprint.json"
    if fingerprint.exists():
        try:
            manifest["dataset_fingerprint"] = read_json(fingerprint)
        except (OSError, ValueError) as exc:  # a notebook's file, maybe cut short by the same disk
            manifest["dataset_fingerprint"] = {"error": str(exc)}
    unwritten = []
    for metrics in sorted(paths.metrics.glob("*.json")) if manifest.get("stand_ins") else []:
        try:                    # every number of the run stands on them
            written = read_json(metrics)
            if isinstance(written, dict) and written.get("stand_ins") != manifest["stand_ins"]:
                write_json_atomic(metrics, {**written, "stand_ins": manifest["stand_ins"]})
        except (OSError, ValueError) as exc:
            unwritten.append(f"  could not list the stand-ins in {metrics}: {exc}")
    if entry["status"] == "ok":
        try:
            write_model_cards(paths.models, entry["name"], manifest, _metrics_of(paths, entry["name"]))
        except (OSError, ValueError) as exc:
            unwritten.append(f"  could not write the model cards of {entry['name']} in {paths.models}: {exc}")
    for path, write in ((paths.manifest, lambda: write_json_atomic(paths.manifest, manifest)),
                        (paths.index, lambda: write_index(paths, manifest))):
        try:
            write()
        except OSError as exc:
            unwritten.append(f"  could not update {path}: {exc}")
    return unwritten


# What a run made that a child run starts from; its manifest, index, executed notebooks and logs
# describe the parent's own executions and stay with it.
INHERITED = ("data", "models", "samples", "metrics", "figures")
LINK_MIN_BYTES = 1 << 20


def inherit(parent: RunPaths, child: RunPaths) -> int:
    """Give ``child`` the parent's outputs without ever writing into the parent: files of 1 MiB or
    more are hard-linked (every writer here replaces a file atomically, which gives the child its
    own copy), smaller ones copied (a notebook may append to those). Returns the files taken."""
    taken = 0
    for sub in INHERITED:
        src_root = parent.root / sub
        for src in sorted(src_root.rglob("*")) if src_root.is_dir() else []:
            dst = child.root / sub / src.relative_to(src_root)
            if src.is_symlink():
                dst.symlink_to(os.readlink(src))
            elif src.is_dir():
                dst.mkdir(parents=True, exist_ok=True)
            else:
                dst.parent.mkdir(parents=True, exist_ok=True)
                try:
                    if src.stat().st_size < LINK_MIN_BYTES:
                        raise OSError("small: copied")
                    os.link(src, dst)
                except OSError:
                    shutil.copy2(src, dst)
                taken += 1
    return taken


def run(profile_name: str, notebooks_dir: Path, params_dir: Path, runs_root: Path,
        run_id: str | None = None, only: str | None = None, start: str | None = None,
        resume: Path | None = None, overrides: list[str] | None = None,
        allow_stand_ins: bool | None = None, out=None, parent: Path | None = None) -> Path:
    """Run the selected notebooks; returns the run directory. Raises ``PipelineError`` on failure.
    ``allow_stand_ins`` (None: the profile's ``allow_stand_ins``) lets the small stand-ins run where a
    published part's local weights or data are not given. ``parent``: a finished run the new one
    starts from (its data, models, samples, metrics, figures), never written into."""
    out = out or sys.stdout
    notebooks = discover(notebooks_dir)
    if parent is not None and resume is not None:
        raise PipelineError("--parent starts a new run from another; --resume continues one: give one of them")
    parent_paths = None
    if parent is not None:
        parent_paths = RunPaths(Path(parent).expanduser().resolve())
        if not parent_paths.manifest.is_file():
            raise PipelineError(f"--parent {parent}: no manifest.json there; not a run directory")
    if resume is not None:
        # a resumed run keeps the parameters its manifest recorded: anything else would be ignored
        ignored = [flag for flag, value in (("--set", overrides), ("--only", only), ("--from", start),
                                            ("--run-id", run_id), ("--allow-stand-ins", allow_stand_ins))
                   if value not in (None, [], "")]
        if ignored:
            raise PipelineError(f"--resume {resume}: a resumed run keeps the parameters its manifest recorded, "
                                f"so {', '.join(ignored)} would be ignored; start a new run (--run-id NEW) "
                                f"to change them")
        paths = RunPaths(Path(resume).expanduser().resolve())
        if not paths.manifest.exists():
            raise PipelineError(f"{paths.manifest}: no manifest; not a run directory to resume")
        manifest = read_json(paths.manifest)
        profile_name = manifest["profile"]
        by_name = {nb.name: nb for nb in notebooks}
        missing = [e["name"] for e in manifest["notebooks"] if e["name"] not in by_name]
        if missing:
            raise PipelineError(f"{paths.manifest}: notebooks {missing} of this run no longer exist")
        selected = [by_name[e["name"]] for e in manifest["notebooks"]]
        profile = {"seed": manifest["seeds"]["profile"], "notebooks": {
            nb: {k: v for k, v in p.items() if k not in INJECTED} for nb, p in manifest["parameters"].items()}}
        validate(manifest["profile_file"], profile, notebooks, selected)
        todo = [i for i, e in enumerate(manifest["notebooks"]) if e["status"] != "ok"]
        if not todo:
            print(f"{paths.root}: every notebook already ran; nothing to resume", file=out)
            return paths.root
        first = todo[0]
        print(f"Resuming {paths.root.name} from {manifest['notebooks'][first]['name']}", file=out)
    else:
        if profile_name not in PROFILES:
            raise PipelineError(f"--profile {profile_name}: expected one of {PROFILES}")
        profile_path, profile = load_profile(params_dir, profile_name)
        apply_overrides(profile, overrides or [], notebooks)
        if allow_stand_ins is not None:
            profile["allow_stand_ins"] = allow_stand_ins
        selected = select(notebooks, only, start)
        if not selected:
            raise PipelineError(f"{notebooks_dir}: no notebooks to run")
        validate(profile_path, profile, notebooks, selected)
        stand_ins = check_published(profile_name, profile, selected)
        paths = create_run_dir(runs_root, run_id or new_run_id(profile_name))
        manifest = new_manifest(profile_name, profile_path, profile, selected, paths)
        manifest["stand_ins"] = [part.describe() for part in stand_ins]
        if parent_paths is not None:
            taken = inherit(parent_paths, paths)
            manifest["parent"] = {"run_id": parent_paths.root.name, "path": str(parent_paths.root)}
            print(f"Starting from run {parent_paths.root.name}: {taken} files taken (never written back)", file=out)
        write_json_atomic(paths.manifest, manifest)
        first = 0
        print(f"Run {paths.root}  (profile {profile_name}, {len(selected)} notebooks)", file=out)
        for part in manifest["stand_ins"]:
            print(f"  stand-in: {part['parameter']} is empty; {part['stand_in']} runs in place of "
                  f"{part['published']}", file=out)

    os.environ.update(OFFLINE_ENV)
    (paths.root / "logs").mkdir(exist_ok=True)
    total = len(selected)
    t_run = time.monotonic()
    manifest["status"] = "running"
    failure: str | None = None
    with _KernelSpec() as kernel:
        for i in range(first, total):
            nb, entry = selected[i], manifest["notebooks"][i]
            output = paths.notebooks / nb.path.name
            html = paths.html / f"{nb.name}.html"
            log = paths.root / "logs" / f"{nb.name}.log"
            entry.update(status="running", start=_now(), end=None, duration_s=None, error=None,
                         output=str(output.relative_to(paths.root)), html=str(html.relative_to(paths.root)),
                         log=str(log.relative_to(paths.root)))
            print(f"[{i + 1}/{total}] {nb.name} ...  (log: {log})", file=out, flush=True)
            t0 = time.monotonic()
            try:
                write_json_atomic(paths.manifest, manifest)
                execute(nb, output, manifest["parameters"][nb.name], kernel, log)
                entry["status"] = "ok"
            except KeyboardInterrupt:
                entry["status"] = "interrupted"
                failure = f"interrupted during {nb.name}"
            except Exception as exc:
                entry["status"] = "failed"
                entry["error"] = f"{type(exc).__name__}: {getattr(exc, 'evalue', exc)}"
                failure = describe_failure(nb.name, exc, output)
            dur = time.monotonic() - t0
            entry.update(end=_now(), duration_s=round(dur, 2))
            manifest["status"] = "failed" if failure else ("running" if i + 1 < total else "ok")
            unwritten = record_outcome(paths, manifest, entry)
            print(f"      {entry['status']} in {dur:.1f} s  (elapsed {_fmt_elapsed(time.monotonic() - t_run)})",
                  file=out, flush=True)
            if failure or unwritten:
                report = failure or f"FAILED: notebook {nb.name} ran, but its outcome could not be recorded"
                raise PipelineError("\n".join([report, *unwritten, "Continue after fixing it with:",
                                               f"  python -m support.pipeline --resume {paths.root}"]))
    print(f"Done: {paths.index}", file=out)
    return paths.root


def list_notebooks(notebooks_dir: Path, params_dir: Path, profile_name: str | None = None, out=None) -> None:
    """Each notebook's parameters: name, the type a value must have, the default, and the value each
    profile sets (``profile_name``: that profile only)."""
    out = out or sys.stdout
    notebooks = discover(notebooks_dir)
    names = [profile_name] if profile_name else [p for p in PROFILES if (Path(params_dir) / f"{p}.yaml").exists()]
    profiles = {p: load_profile(params_dir, p)[1]["notebooks"] for p in names
                if (Path(params_dir) / f"{p}.yaml").exists()}
    print(f"{len(notebooks)} notebooks in {notebooks_dir}; a profile's value follows its name where it sets one "
          f"(profiles: {', '.join(profiles) or 'none'})", file=out)
    for nb in notebooks:
        print(f"\n{nb.name}", file=out)
        for name, info in nb.declared.items():
            set_by = "".join(f"  {p}={params[nb.name][name]!r}" for p, params in profiles.items()
                             if name in params.get(nb.name, {}))
            note = f"  # {info['help']}" if info.get("help") else ""
            print(f"  {name:<24} {declared_type(info) or 'any':<6} = {info.get('default')}{set_by}{note}", file=out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m support.pipeline", description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default=None, help="test, quick, study or full (default: quick)")
    ap.add_argument("--only", help="comma-separated notebook numbers or names, e.g. 00,02")
    ap.add_argument("--from", dest="start", help="first notebook to run, e.g. 04")
    ap.add_argument("--run-id", help="name of the run directory (default: date-time-profile)")
    ap.add_argument("--resume", type=Path, metavar="RUN_DIR", help="continue a run from its first unfinished notebook")
    ap.add_argument("--parent", type=Path, metavar="RUN_DIR",
                    help="start a new run from a finished one's outputs (with --from/--only and --set); "
                         "the parent is never written into")
    ap.add_argument("--list", action="store_true", help="list the notebooks and their parameters, then exit")
    ap.add_argument("--write-papermill-params", action="store_true",
                    help="write <params-dir>/papermill/<profile>/<notebook>.yaml for papermill -f, then exit")
    ap.add_argument("--set", dest="overrides", action="append", metavar="NB.PARAM=VALUE",
                    help="override one parameter of the profile (repeatable)")
    ap.add_argument("--allow-stand-ins", action="store_true", default=None,
                    help="full: run the small stand-ins where published weights or data are not given")
    ap.add_argument("--notebooks-dir", type=Path, default=REPO_ROOT / "notebooks" if IN_REPOSITORY else Path("notebooks"),
                    help="the notebooks to run (default: the repository's, or ./notebooks when installed as a library)")
    ap.add_argument("--params-dir", type=Path, default=None, help="default: <notebooks-dir>/params")
    ap.add_argument("--runs-root", type=Path, default=DEFAULT_RUNS_ROOT)
    args = ap.parse_args(argv)
    params_dir = args.params_dir or args.notebooks_dir / "params"
    try:
        if args.write_papermill_params:
            for path, text in papermill_files(args.notebooks_dir, params_dir).items():
                write_text_atomic(path, text)
            print(f"wrote {params_dir / PAPERMILL_DIR}/<profile>/<notebook>.yaml")
            return 0
        if args.list:
            list_notebooks(args.notebooks_dir, params_dir, args.profile)
            return 0
        if args.resume is not None and args.profile is not None:
            raise PipelineError(f"--resume {args.resume}: a resumed run keeps the profile its manifest recorded, "
                                f"so --profile would be ignored")
        profile = args.profile
        if profile is None and args.parent is not None and (args.parent / "manifest.json").is_file():
            profile = read_json(args.parent / "manifest.json")["profile"]      # the parent's, unless given
        run(profile or "quick", args.notebooks_dir, params_dir, args.runs_root, run_id=args.run_id,
            only=args.only, start=args.start, resume=args.resume, overrides=args.overrides,
            allow_stand_ins=args.allow_stand_ins, parent=args.parent)
    except (PipelineError, OSError, ValueError) as exc:  # errors that name the file or option at fault
        print(f"\n{exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
