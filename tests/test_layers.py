"""The layers hold: the shared packages import no system package (DESIGN: core and downstream
import no system), so every system can build on them."""

import ast
from pathlib import Path

import pytest

SUPPORT = Path(__file__).resolve().parent.parent / "support"
SHARED = {"core", "data", "io", "params", "runs", "seeding", "devices"}


def imported_packages(package: str) -> dict[str, set[str]]:
    """support.<name> packages each module of ``package`` imports (absolute and relative, any depth)."""
    found = {}
    for path in sorted((SUPPORT / package).rglob("*.py")):
        names = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom):
                if node.level:           # relative: inside the package itself
                    names.add(package)
                elif node.module and node.module.startswith("support."):
                    names.add(node.module.split(".")[1])
                elif node.module == "support":
                    names.update(alias.name for alias in node.names)
            elif isinstance(node, ast.Import):
                names.update(a.name.split(".")[1] for a in node.names if a.name.startswith("support."))
        found[str(path.relative_to(SUPPORT))] = names
    return found


@pytest.mark.parametrize("package, allowed", [("core", SHARED), ("downstream", SHARED | {"downstream"})])
def test_shared_packages_import_no_system(package, allowed):
    wrong = {module: sorted(names - allowed) for module, names in imported_packages(package).items()
             if names - allowed}
    assert not wrong, f"{package} imports beyond the shared layers: {wrong}"


def test_the_check_sees_imports():
    assert "data" in imported_packages("core")["core/sample_writer.py"]
    assert "core" in imported_packages("downstream")["downstream/tasks.py"]
