"""The run directory: one folder per pipeline run, laid out the same way by every notebook."""

from __future__ import annotations

import dataclasses
import datetime as _dt
import os
import re
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
# In a clone (an editable install) runs go under the repository; installed as a library, the
# package has no repository around it, so runs go under the working directory.
IN_REPOSITORY = (REPO_ROOT / "notebooks").is_dir()
DEFAULT_RUNS_ROOT = (REPO_ROOT if IN_REPOSITORY else Path.cwd()) / "outputs" / "runs"
SUBDIRS = ("data", "models", "samples", "figures", "metrics", "notebooks", "html")
RUN_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


@dataclasses.dataclass(frozen=True)
class RunPaths:
    """Where each kind of output of a run lives."""

    root: Path

    @property
    def data(self) -> Path: return self.root / "data"
    @property
    def models(self) -> Path: return self.root / "models"
    @property
    def samples(self) -> Path: return self.root / "samples"
    @property
    def figures(self) -> Path: return self.root / "figures"
    @property
    def metrics(self) -> Path: return self.root / "metrics"
    @property
    def notebooks(self) -> Path: return self.root / "notebooks"
    @property
    def html(self) -> Path: return self.root / "html"
    @property
    def manifest(self) -> Path: return self.root / "manifest.json"
    @property
    def index(self) -> Path: return self.root / "index.html"

    def ensure(self) -> "RunPaths":
        for name in SUBDIRS:
            (self.root / name).mkdir(parents=True, exist_ok=True)
        return self


def run_paths(run_dir: str | os.PathLike) -> RunPaths:
    """The paths of an existing or new run directory, created if missing (what notebooks call)."""
    return RunPaths(Path(run_dir).expanduser().resolve()).ensure()


def new_run_id(profile: str, now: _dt.datetime | None = None) -> str:
    now = now or _dt.datetime.now()
    return f"{now:%Y%m%d-%H%M%S}-{profile}"


def check_run_id(run_id: str) -> str:
    """A run id names one folder inside the runs root: a separator or ``..`` would reach outside it."""
    if not RUN_ID_RE.fullmatch(run_id) or ".." in run_id:
        raise ValueError(f"--run-id {run_id!r}: expected a folder name of letters, digits, '.', '_' "
                         f"and '-' that starts with a letter or digit, without '..'")
    return run_id


def create_run_dir(runs_root: str | os.PathLike, run_id: str) -> RunPaths:
    """Create ``runs_root/run_id``; an existing run is never reused or overwritten."""
    root = Path(runs_root).expanduser().resolve() / check_run_id(run_id)
    root.parent.mkdir(parents=True, exist_ok=True)
    try:
        root.mkdir()
    except FileExistsError:
        raise FileExistsError(f"{root}: run directory already exists; choose another --run-id "
                              f"or continue it with: python -m support.pipeline --resume {root}") from None
    return RunPaths(root).ensure()
