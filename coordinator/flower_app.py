"""The Flower app bundle (FAB) of a run: a pyproject.toml and nothing else.

Its components name the installed `coordinator.server_app` and `agent.client_app`, so the bundle
carries no code: every site runs the code it installed itself. The file is generated from the
installed version alone, byte for byte the same on every machine, so a site can tell whether a
bundle is the one its own version produces.
"""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

from coordinator.federation import RunSettings

APP_NAME = "pandalm-fed-app"
PUBLISHER = "pandalm"


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    return repr(value)


def app_pyproject() -> str:
    """The bundle's pyproject.toml; run config keys carry RunSettings' defaults."""
    from importlib.metadata import version

    defaults = RunSettings(name="run")
    config_lines = [
        f"{f.name} = {_toml_value(getattr(defaults, f.name))}" for f in fields(RunSettings)
    ]
    config_lines += ['database = "sqlite:///coordinator.sqlite"', 'space = ""', 'wire_log = ""']
    return "\n".join(
        [
            "[project]",
            f'name = "{APP_NAME}"',
            f'version = "{version("pandalm-fed")}"',
            'description = "pandalm-fed federated hyperparameter selection"',
            'license = "Apache-2.0"',
            "dependencies = []",
            "",
            "[tool.flwr.app]",
            f'publisher = "{PUBLISHER}"',
            "",
            "[tool.flwr.app.components]",
            'serverapp = "coordinator.server_app:app"',
            'clientapp = "agent.client_app:app"',
            "",
            "[tool.flwr.app.config]",
            *config_lines,
            "",
        ]
    )


def write_flower_app(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "pyproject.toml").write_text(app_pyproject())
    return folder
