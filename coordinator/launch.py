"""Starting a SuperLink, submitting the run to it and following the run, through Flower's own
commands (`flower-superlink`, `flwr run`, `flwr ls`). No runtime dependency installation: it
would reach for a package index.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pydantic

from common.processes import stop_process as stop_process  # re-exported: the CLI, demo, tests
from coordinator.flower_app import write_flower_app
from coordinator.tomlconfig import SETTINGS

CONNECTION = "pandalm"


def _bin(name: str) -> str:
    return str(Path(sys.executable).parent / name)


def port_open(address: str) -> bool:
    host, _, port = address.rpartition(":")
    with socket.socket() as probe:
        probe.settimeout(0.5)
        return probe.connect_ex((host, int(port))) == 0


def wait_for_port(address: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not port_open(address):
        if time.monotonic() > deadline:
            raise TimeoutError(f"nothing listens on {address} after {timeout:.0f}s")
        time.sleep(0.2)


def flower_environment(state_dir: Path) -> dict[str, str]:
    """Flower's own processes start each other by name (flower-superexec, flwr-serverapp):
    this venv's bin goes first on PATH."""
    return {
        **os.environ,
        "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
        "FLWR_HOME": str(state_dir / "flwr"),
        "FLWR_TELEMETRY_ENABLED": "0",
        "FLWR_DISABLE_UPDATE_CHECK": "1",
        "PYTHONUNBUFFERED": "1",
    }


@pydantic.dataclasses.dataclass(config=SETTINGS)
class SuperLinkSettings:
    address: str = "127.0.0.1:9092"
    database: str = "superlink.sqlite"
    insecure: bool = False
    certificates: str = ""
    """Folder with ca.crt, server.pem, server.key (`pandalm-coordinator certs init`)."""
    authenticate_sites: bool = True
    """Only SuperNodes whose public key was registered (`pandalm-coordinator sites add`)
    may connect; needs TLS."""


def start_superlink(settings: SuperLinkSettings, state_dir: Path) -> subprocess.Popen:
    """A SuperLink with a persistent database; its log goes to state_dir/superlink.log."""
    host, _, port = settings.address.rpartition(":")
    command = [
        _bin("flower-superlink"),
        "--host", host,
        "--port", port,
        "--database", str(state_dir / settings.database),
        "--disable-runtime-dependency-installation",
    ]  # fmt: skip
    if settings.insecure:
        command.append("--insecure")
    else:
        if settings.authenticate_sites:
            command.append("--enable-supernode-auth")
        certs = Path(settings.certificates)
        command += [
            "--ssl-ca-certfile", str(certs / "ca.crt"),
            "--ssl-certfile", str(certs / "server.pem"),
            "--ssl-keyfile", str(certs / "server.key"),
        ]  # fmt: skip
    state_dir.mkdir(parents=True, exist_ok=True)
    log = (state_dir / "superlink.log").open("ab")
    process = subprocess.Popen(
        command,
        stdout=log,
        stderr=subprocess.STDOUT,
        env=flower_environment(state_dir),
        start_new_session=True,
    )
    log.close()
    wait_for_port(settings.address)
    return process


def write_connection(settings: SuperLinkSettings, state_dir: Path) -> None:
    """The Flower CLI's connection to the SuperLink, in its own FLWR_HOME."""
    home = state_dir / "flwr"
    home.mkdir(parents=True, exist_ok=True)
    lines = [
        "[superlink]",
        f'default = "{CONNECTION}"',
        "",
        f"[superlink.{CONNECTION}]",
        f'address = "{settings.address}"',
        f"insecure = {'true' if settings.insecure else 'false'}",
    ]
    if not settings.insecure:
        lines.append(f'root-certificates = "{Path(settings.certificates) / "ca.crt"}"')
    (home / "config.toml").write_text("\n".join(lines) + "\n")


def _toml(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    return repr(value)


def submit_run(state_dir: Path, run_config: dict[str, object]) -> str:
    """Submit the app with `flwr run`; returns Flower's run id."""
    app = write_flower_app(state_dir / "app")
    overrides = " ".join(f"{k}={_toml(v)}" for k, v in run_config.items())
    answer = flwr_cli(state_dir, "run", str(app), CONNECTION, "--run-config", overrides)
    return str(answer["run-id"])


def run_status(state_dir: Path, run_id: str) -> dict:
    """Flower's view of a run (`flwr ls --run-id`): status, details, traffic; empty while the
    SuperLink does not answer."""
    try:
        runs = flwr_cli(state_dir, "ls", CONNECTION, "--run-id", run_id).get("runs", [])
    except RuntimeError:
        return {}
    return runs[0] if runs else {}


def flwr_cli(state_dir: Path, *args: str) -> dict:
    """Run a `flwr` command against this coordinator's SuperLink; its JSON answer."""
    result = subprocess.run(
        [_bin("flwr"), *args, "--format", "json"],
        capture_output=True, text=True, env=flower_environment(state_dir), check=False,
    )  # fmt: skip
    try:
        answer = json.loads(result.stdout)
    except json.JSONDecodeError:
        answer = {"success": False, "error-message": (result.stdout + result.stderr).strip()}
    if not answer.get("success", False):
        message = answer.get("error-message") or (result.stdout + result.stderr).strip()
        raise RuntimeError(f"flwr {args[0]} {args[1] if len(args) > 1 else ''}: {message}")
    return answer
