"""The module map of docs/ARCHITECTURE.md, checked: which package may import which, no import
cycle between modules, a site's guard that stays light, and `pandalm-coordinator demo` from the
demo package above the coordinator."""

from __future__ import annotations

import ast
import graphlib
import subprocess
import sys
import tomllib
from importlib import import_module
from pathlib import Path

import pytest
from typer.testing import CliRunner

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("agent", "common", "coordinator", "dbschema", "demo", "judge", "trainer")
MAY_IMPORT = {
    "common": set(),
    "dbschema": set(),
    "judge": {"common", "dbschema"},
    "trainer": {"common", "dbschema", "judge"},
    "agent": {"common", "dbschema", "judge", "trainer"},
    "coordinator": {"common", "dbschema"},
    "demo": {"agent", "common", "coordinator", "dbschema", "judge", "trainer"},
}


def _modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            if "migrations" in parts:
                continue  # Alembic scripts, loaded by Alembic from the files
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def _imports(path: Path, type_checking: bool) -> set[str]:
    """Project modules `path` imports anywhere in it (at the top, inside functions), and with
    `type_checking` also inside TYPE_CHECKING blocks (which never run, but still tie modules
    together for a reader)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skipped = {
        id(inner)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
        for statement in node.body
        for inner in ast.walk(statement)
    }
    names: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skipped and not type_checking:
            continue
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return {name for name in names if name.split(".")[0] in PACKAGES}


def test_every_package_imports_only_what_the_map_allows() -> None:
    breaches = []
    for module, path in _modules().items():
        package = module.split(".")[0]
        allowed = MAY_IMPORT[package] | {package}
        breaches += [
            f"{module} imports {name}"
            for name in sorted(_imports(path, type_checking=False))
            if name.split(".")[0] not in allowed
        ]
    assert not breaches, "\n".join(breaches)


def test_no_import_cycle_between_modules() -> None:
    """Every import counts, deferred and TYPE_CHECKING ones too: a circle closed through an
    import inside a function is still a circle for whoever reads or moves the code."""
    modules = _modules()
    graph = {
        module: {name for name in _imports(path, type_checking=True) if name in modules} - {module}
        for module, path in modules.items()
    }
    try:
        tuple(graphlib.TopologicalSorter(graph).static_order())
    except graphlib.CycleError as exc:
        pytest.fail(f"import cycle: {' -> '.join(exc.args[1])}")


def test_the_site_guard_loads_nothing_of_the_coordinator() -> None:
    """The guard only hashes the app bundle: no run loop, scikit-learn or SecAgg+ behind it."""
    probe = (
        "import sys, agent.guard; "
        "print(' '.join(m for m in sys.modules if m.split('.')[0] in ('sklearn', 'coordinator')))"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd=ROOT
    ).stdout.split()
    assert "agent.guard" in _modules()
    assert loaded == [], f"importing agent.guard loaded {loaded}"


def test_the_coordinator_console_script_offers_demo_and_every_coordinator_command() -> None:
    """The coordinator never imports the demo, yet `pandalm-coordinator demo` stays: the
    console script names the demo's command line, which adds `demo` to the coordinator's."""
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    module, name = scripts["pandalm-coordinator"].split(":")
    app = getattr(import_module(module), name)
    for command in ("demo", "start", "report", "db upgrade", "sites add"):
        result = CliRunner().invoke(app, [*command.split(), "--help"])
        assert result.exit_code == 0, f"{command}: {result.output}"
