"""Compare an environment with the pinned requirement files; exit 1 naming every difference.

    python environments/check_pins.py environments/requirements-dev.txt [...]

``make`` runs it on a venv it did not create (one built by hand, e.g. for another CUDA runtime)
instead of deleting it. Standard library only: it must run before anything is installed.
"""

from __future__ import annotations

import re
import sys
from importlib import metadata
from pathlib import Path

PIN = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?\s*==\s*([^\s;#]+)")


def pins(path: Path, seen: set[Path] | None = None) -> dict[str, str]:
    """``name -> version`` of the ``name==version`` lines of ``path`` and the files it includes (-r)."""
    seen = seen if seen is not None else set()
    if path.resolve() in seen:
        return {}
    seen.add(path.resolve())
    out = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if line.startswith(("-r ", "--requirement ")):
            out.update(pins(path.parent / line.split(maxsplit=1)[1], seen))
        elif (m := PIN.match(line)):
            out[m.group(1).lower().replace("_", "-")] = m.group(2)
    return out


def differences(wanted: dict[str, str]) -> list[str]:
    problems = []
    for name, version in sorted(wanted.items()):
        try:
            have = metadata.version(name)
        except metadata.PackageNotFoundError:
            problems.append(f"{name}: not installed (pinned {version})")
            continue
        # a local build tag (torch 2.14.1+cu126) satisfies the pin 2.14.1
        if have.split("+", 1)[0] != version.split("+", 1)[0]:
            problems.append(f"{name}: {have} installed, {version} pinned")
    return problems


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    wanted = {}
    for arg in argv:
        wanted.update(pins(Path(arg)))
    problems = differences(wanted)
    for p in problems:
        print(f"  {p}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
