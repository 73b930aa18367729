"""Mutation testing of the research-critical functions: ``python tests/mutation.py [GROUP ...]``.

Each group of ``tests/mutation.toml`` is copied to ``outputs/mutation/<group>/``, where mutmut
mutates the named functions one change at a time and runs the group's own test files against each
mutant. A mutant the tests do not fail is a survivor: a bug they would let through. Prints the score
of each group (killed / (killed + survived); timeouts count as killed, mutants no test reaches as
survived) and the survivors, and exits 1 when the overall score is below the threshold.

``--keep`` reuses a group's folder, so mutmut re-tests only what changed; the default starts fresh,
so the score always reflects the tests as they are.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import time
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "tests" / "mutation.toml"
WORK = ROOT / "outputs" / "mutation"
KILLED = {"killed", "timeout"}
SURVIVED = {"survived", "no tests"}


def _toml_list(items: list[str]) -> str:
    """TOML literal strings: regexes keep their backslashes."""
    bad = [i for i in items if "'" in i or "\n" in i]
    if bad:
        raise SystemExit(f"{CONFIG.name}: {bad}: a single quote or newline cannot go in a TOML literal string")
    return "[" + ", ".join(f"'{i}'" for i in items) + "]"


def module_file(group: str, pattern: str) -> str:
    """support.data.rle.x_rle_encode* -> support/data/rle.py: the longest dotted prefix that is a file."""
    parts = pattern.split(".")
    for i in range(len(parts), 0, -1):
        candidate = "/".join(parts[:i]) + ".py"
        if (ROOT / candidate).is_file():
            return candidate
    raise SystemExit(f"{CONFIG.name} [groups.{group}]: no module file for mutant pattern {pattern!r}")


def prepare(name: str, group: dict, patterns: list[str], keep: bool) -> Path:
    """A work folder holding the package, the group's tests and a pyproject naming them."""
    work = WORK / name
    if work.exists() and not keep:
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    for sub in ("support", "tests"):
        if (work / sub).exists():
            shutil.rmtree(work / sub)
        shutil.copytree(ROOT / sub, work / sub, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    files = sorted({module_file(name, m) for m in group["mutants"]})
    for t in group["tests"]:
        if not (ROOT / t).is_file():
            raise SystemExit(f"{CONFIG.name} [groups.{name}]: test file {t} does not exist")
    (work / "pyproject.toml").write_text(
        "[tool.mutmut]\n"
        'source_paths = ["support"]\n'
        f"only_mutate = {_toml_list(files)}\n"
        f"pytest_add_cli_args_test_selection = {_toml_list(group['tests'])}\n"
        'pytest_add_cli_args = ["-p", "no:cacheprovider", "-q", "-x"]\n'
        f"do_not_mutate_patterns = {_toml_list(patterns)}\n"
        # each mutant's tests run in a fork of mutmut's process, which has imported what the tests
        # need; fork-safe here because the suite runs torch on one thread (tests/conftest.py). A
        # fork server instead re-imports diffusers or peft in every mutant's process, 8x slower.
        'process_isolation = "fork"\n'
        "use_git_change_detection = false\n"
        "timeout_multiplier = 5.0\n"
        "timeout_constant = 10.0\n")
    return work


def mutmut(work: Path, *args: str, capture: bool = False) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).with_name("mutmut")
    env = {**os.environ, "PYTHONPATH": "", "MPLBACKEND": "Agg"}
    return subprocess.run([str(exe), *args], cwd=work, env=env, text=True,
                          stdout=subprocess.PIPE if capture else subprocess.DEVNULL,
                          stderr=subprocess.STDOUT if capture else None)


def results(work: Path, patterns: list[str]) -> dict[str, str]:
    """Mutant name -> status, for the mutants the group names."""
    import fnmatch

    out = mutmut(work, "results", "--all", "true", capture=True).stdout
    status = {}
    for line in out.splitlines():
        m = re.match(r"\s*(\S+): (.+?)\s*$", line)
        if m and any(fnmatch.fnmatch(m.group(1), p) for p in patterns):
            status[m.group(1)] = m.group(2)
    return status


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python tests/mutation.py", description=__doc__.splitlines()[0])
    ap.add_argument("groups", nargs="*", help="groups of tests/mutation.toml (default: all but extra ones)")
    ap.add_argument("--keep", action="store_true", help="reuse each group's work folder and mutmut's cache")
    ap.add_argument("--max-children", type=int, default=os.cpu_count() or 1)
    args = ap.parse_args(argv)
    config = tomllib.loads(CONFIG.read_text())
    groups = config["groups"]
    unknown = [g for g in args.groups if g not in groups]
    if unknown:
        ap.error(f"unknown group(s) {unknown}; expected some of {sorted(groups)}")
    chosen = args.groups or [g for g, spec in groups.items() if not spec.get("extra")]
    totals = {"killed": 0, "survived": 0, "other": 0}
    survivors: list[tuple[str, str]] = []
    start = time.perf_counter()
    for name in chosen:
        group = groups[name]
        t0 = time.perf_counter()
        work = prepare(name, group, config.get("do_not_mutate_patterns", []), args.keep)
        run = mutmut(work, "run", "--max-children", str(args.max_children), *group["mutants"], capture=True)
        status = results(work, group["mutants"])
        if run.returncode != 0 and not status:
            print(run.stdout[-3000:], file=sys.stderr)
            raise SystemExit(f"mutmut failed on group {name} (exit {run.returncode}); work folder {work}")
        unchecked = sum(s == "not checked" for s in status.values())
        if unchecked:   # mutmut stopped before testing them: its clean run failed, say why
            print(run.stdout[-3000:], file=sys.stderr)
            raise SystemExit(f"mutmut left {unchecked} mutants of group {name} unchecked; work folder {work}")
        killed = sum(s in KILLED for s in status.values())
        timeouts = sum(s == "timeout" for s in status.values())
        survived = [m for m, s in status.items() if s in SURVIVED]
        other = len(status) - killed - len(survived)
        totals["killed"] += killed
        totals["survived"] += len(survived)
        totals["other"] += other
        survivors += [(m, status[m]) for m in survived]
        judged = killed + len(survived)
        score = killed / judged if judged else float("nan")
        print(f"{name:16s} {killed:4d} killed ({timeouts} by timeout) {len(survived):4d} survived {other:3d} other  "
              f"score {score:6.1%}  ({time.perf_counter() - t0:.0f} s)", flush=True)
    judged = totals["killed"] + totals["survived"]
    score = totals["killed"] / judged if judged else float("nan")
    print(f"{'all':16s} {totals['killed']:4d} killed {totals['survived']:4d} survived {totals['other']:3d} other  "
          f"score {score:6.1%}  ({time.perf_counter() - start:.0f} s)")
    if survivors:
        print("\nsurvivors (show one with: cd outputs/mutation/<group> && mutmut show NAME):")
        for m, s in survivors:
            print(f"  {m}  [{s}]")
    return 0 if judged and score >= config["threshold"] else 1


if __name__ == "__main__":
    sys.exit(main())
