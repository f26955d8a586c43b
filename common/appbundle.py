"""The Flower app bundle (FAB) of a run: a pyproject.toml and nothing else.

Its components name the installed `coordinator.server_app` and `agent.client_app`, so the bundle
carries no code: every site runs the code it installed itself. The file is generated from the
installed version alone, byte for byte the same on every machine, so a site can tell whether a
bundle is the one its own version produces (agent/guard.py). Light on purpose: the site's guard
builds it without importing the coordinator.
"""

from __future__ import annotations

from importlib.metadata import version
from pathlib import Path

import tomli_w

from common.settings import RunConfig, RunSettings

APP_NAME = "pandalm-fed-app"
PUBLISHER = "pandalm"


def app_pyproject() -> str:
    """The bundle's pyproject.toml; run config keys carry RunSettings' defaults."""
    return tomli_w.dumps(
        {
            "project": {
                "name": APP_NAME,
                "version": version("pandalm-fed"),
                "description": "pandalm-fed federated hyperparameter selection",
                "license": "Apache-2.0",
                "dependencies": [],
            },
            "tool": {
                "flwr": {
                    "app": {
                        "publisher": PUBLISHER,
                        "components": {
                            "serverapp": "coordinator.server_app:app",
                            "clientapp": "agent.client_app:app",
                        },
                        "config": RunConfig(
                            RunSettings(run_key="run"), "sqlite:///coordinator.sqlite"
                        ).as_flower_config(),
                    }
                }
            },
        }
    )


def write_flower_app(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "pyproject.toml").write_text(app_pyproject())
    return folder
