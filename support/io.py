"""Files that are never half-written: atomic writes, JSON, and safetensors state dicts."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import threading
from pathlib import Path
from typing import IO, Any, Iterator, Mapping


_UMASK_LOCK = threading.Lock()


def current_umask() -> int:
    """The process's umask (read by setting and restoring it; the lock keeps threads from racing)."""
    with _UMASK_LOCK:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "w", durable: bool = True, **open_kwargs) -> Iterator[IO]:
    """Open a temporary file beside ``path`` and move it into place only if the block succeeds.

    Readers see either the old file or the complete new one, never a partial write, even if the
    process is killed mid-way (``os.replace`` is atomic on POSIX and Windows within one volume).
    ``durable`` also fsyncs before the rename, so the file survives a power cut; bulk writes of
    many small files that an index (itself durable) lists can skip it: it costs ~4 ms a file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode, **open_kwargs) as fh:
            # mkstemp makes the file 0600; the finished file gets the mode open() would give it, so
            # colleagues on a shared filesystem can read a run as the umask allows
            os.fchmod(fh.fileno(), 0o666 & ~current_umask())
            yield fh
            fh.flush()
            if durable:
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def atomic_directory(final: str | os.PathLike) -> Iterator[Path]:
    """Build a folder under a hidden name beside ``final``; swap it into place when the block succeeds.

    Readers never see a half-written checkpoint or model folder; a folder already at ``final``
    (the same step saved again after a resume) is replaced whole. On failure nothing changes.
    """
    final = Path(final)
    tmp = final.parent / f".tmp-{final.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        yield tmp
        if final.exists():
            old = final.parent / f".old-{final.name}-{os.getpid()}"
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old)
        else:
            os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_bytes_atomic(path: str | os.PathLike, data: bytes, durable: bool = True) -> None:
    with atomic_write(path, "wb", durable=durable) as fh:
        fh.write(data)


def write_text_atomic(path: str | os.PathLike, text: str, durable: bool = True) -> None:
    with atomic_write(path, "w", durable=durable, encoding="utf-8") as fh:
        fh.write(text)


def _json_default(obj: Any):
    # numpy scalars/arrays and paths appear in metrics; make them plain JSON.
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if isinstance(obj, (set, frozenset)):
        return sorted(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


# A run folder is self-contained: a path inside it is stored relative to it ("run:models/ddpm"),
# so a moved or unzipped run still resolves; a path outside it (an input the user gave) stays absolute.
RUN_PREFIX = "run:"
_RUN_MARKERS = ("data", "models", "metrics")


def run_root_of(path: str | os.PathLike) -> Path | None:
    """The run folder ``path`` lies in (the nearest folder above it with a ``manifest.json`` or the
    run's ``data``, ``models`` and ``metrics`` folders), or None."""
    for folder in Path(os.path.abspath(path)).parents:
        if (folder / "manifest.json").is_file() or all((folder / d).is_dir() for d in _RUN_MARKERS):
            return folder
    return None


def _portable(obj: Any, root: Path) -> Any:
    """``obj`` as plain JSON values, paths within ``root`` made relative to it."""
    if not isinstance(obj, (str, dict, list, tuple, int, float, bool)) and obj is not None:
        obj = _json_default(obj)            # paths, numpy values, sets: as the JSON writer writes them
    if isinstance(obj, str) and os.path.isabs(obj):
        try:
            rel = Path(os.path.normpath(obj)).relative_to(root)
        except ValueError:
            return obj
        return RUN_PREFIX + rel.as_posix()
    if isinstance(obj, dict):
        return {k: _portable(v, root) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_portable(v, root) for v in obj]
    return obj


def _resolved(obj: Any, root: Path) -> Any:
    if isinstance(obj, str) and obj.startswith(RUN_PREFIX):
        return os.path.normpath(root / obj[len(RUN_PREFIX):])
    if isinstance(obj, dict):
        return {k: _resolved(v, root) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_resolved(v, root) for v in obj]
    return obj


def write_json_atomic(path: str | os.PathLike, obj: Any, indent: int = 2) -> None:
    """JSON, atomically; inside a run folder, paths within the run are stored relative to it."""
    root = run_root_of(path)
    if root is not None:
        obj = _portable(obj, root.resolve())
    text = json.dumps(obj, indent=indent, default=_json_default, sort_keys=False)
    write_text_atomic(path, text + "\n")


def read_json(path: str | os.PathLike) -> Any:
    """JSON; inside a run folder, its relative paths resolved against where the run is now."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: file not found") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from None
    root = run_root_of(path)
    return _resolved(data, root.resolve()) if root is not None else data


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def save_state_dict(state: Mapping[str, Any], path: str | os.PathLike,
                    metadata: Mapping[str, str] | None = None) -> Path:
    """Save tensors as safetensors, atomically. Shared storage is copied apart first."""
    import torch
    from safetensors.torch import save as st_save

    tensors = {k: v.detach().contiguous().clone() if isinstance(v, torch.Tensor) else v
               for k, v in state.items()}
    bad = [k for k, v in tensors.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise TypeError(f"{path}: state dict entries are not tensors: {bad[:5]}")
    write_bytes_atomic(path, st_save(tensors, metadata={k: str(v) for k, v in (metadata or {}).items()}))
    return Path(path)


def load_state_dict(path: str | os.PathLike, device: str = "cpu") -> dict:
    """Load a safetensors file; a ``.pt``/``.pth``/``.bin`` file only through ``weights_only=True``."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: weights file not found")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file
        return load_file(str(path), device=device)
    import torch
    return torch.load(path, map_location=device, weights_only=True)
