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

import tomli_w
from rich.console import Console
from rich.live import Live

from common.appbundle import write_flower_app
from common.processes import stop_process
from coordinator.config import FederationConfig, SuperLinkSettings
from coordinator.console import render
from coordinator.db import SCHEMA, open_database, run_finished
from coordinator.run_store import RunStore
from dbschema import create_database_engine, upgrade_line

CONNECTION = "pandalm"


def _bin(name: str) -> str:
    return str(Path(sys.executable).parent / name)


def port_open(address: str) -> bool:
    host, _, port = address.rpartition(":")
    with socket.socket() as probe:
        probe.settimeout(0.5)
        return probe.connect_ex((host, int(port))) == 0


SUPERLINK_START_SECONDS = 300.0
"""How long a starting SuperLink may take to listen (it migrates its database first)."""


def wait_for_port(
    address: str, timeout: float = 30.0, process: subprocess.Popen | None = None
) -> None:
    """Until something listens on `address`; with `process`, fail at once if it exits."""
    deadline = time.monotonic() + timeout
    while not port_open(address):
        if process is not None and process.poll() is not None:
            raise RuntimeError(
                f"the process meant to listen on {address} exited with code {process.returncode}"
            )
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
    # a SuperLink migrating its database on a loaded host took over 30 s and was killed
    # mid-migration by a shorter wait; one that exits is reported at once instead
    try:
        wait_for_port(settings.address, SUPERLINK_START_SECONDS, process)
    except RuntimeError as exc:
        raise RuntimeError(f"{exc}; see {state_dir / 'superlink.log'}") from None
    return process


def write_connection(settings: SuperLinkSettings, state_dir: Path) -> None:
    """The Flower CLI's connection to the SuperLink, in its own FLWR_HOME."""
    home = state_dir / "flwr"
    home.mkdir(parents=True, exist_ok=True)
    connection: dict[str, object] = {"address": settings.address, "insecure": settings.insecure}
    if not settings.insecure:
        connection["root-certificates"] = str(Path(settings.certificates) / "ca.crt")
    document = {"superlink": {"default": CONNECTION, CONNECTION: connection}}
    (home / "config.toml").write_text(tomli_w.dumps(document))


def submit_run(state_dir: Path, run_config: dict[str, object]) -> str:
    """Submit the app with `flwr run`; returns Flower's run id."""
    app = write_flower_app(state_dir / "app")
    overrides = state_dir / "run-config.toml"  # a file: flwr's key=value parser splits on spaces
    overrides.write_text(tomli_w.dumps(run_config))
    answer = flwr_cli(state_dir, "run", str(app), CONNECTION, "--run-config", str(overrides))
    return str(answer["run-id"])


def run_status(state_dir: Path, flower_run_id: str) -> dict:
    """Flower's view of a run (`flwr ls --run-id`): status, details, traffic; empty while the
    SuperLink does not answer."""
    try:
        runs = flwr_cli(state_dir, "ls", CONNECTION, "--run-id", flower_run_id).get("runs", [])
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


FLOWER_STATUS_SECONDS = 30.0
"""How often Flower itself is asked while the run's record says it is still going: every `flwr
ls` is a Python process of its own, about a second of CPU that the sites' training lacks."""


def follow_run(
    federation: FederationConfig,
    flower_run_id: str,
    live_view: bool = True,
    console: Console | None = None,
) -> dict:
    """Show the live console until Flower says the run finished; returns Flower's run record.
    Flower is asked when the coordinator database says the run ended, and every
    FLOWER_STATUS_SECONDS otherwise (a ServerApp that died never writes its end)."""
    engine = open_database(federation.database_url)
    asked = time.monotonic()
    with Live(render(engine, federation.run.run_key), console=console, refresh_per_second=1,
              transient=False, auto_refresh=live_view) as live:  # fmt: skip
        while True:
            live.update(render(engine, federation.run.run_key))
            ended = run_finished(engine, federation.run.run_key)
            if ended or time.monotonic() - asked >= FLOWER_STATUS_SECONDS:
                asked = time.monotonic()
                status = run_status(federation.state_dir, flower_run_id)
                if str(status.get("status", "")).startswith("finished"):
                    return status
            time.sleep(2)


def run_federation(federation: FederationConfig, console: Console, restart: bool = False) -> dict:
    """Start or reach the SuperLink, submit the run, follow it to the end. A failed or stopped
    run resumes; with `restart` its coordinator records are deleted first and it runs over."""
    superlink = None
    if federation.start_superlink and not port_open(federation.superlink.address):
        superlink = start_superlink(federation.superlink, federation.state_dir)
    try:
        write_connection(federation.superlink, federation.state_dir)
        changed, line = upgrade_line(create_database_engine(federation.database_url), SCHEMA)
        if changed:
            console.print(line, highlight=False, soft_wrap=True)
        store = RunStore(open_database(federation.database_url), federation.run.run_key)
        if restart and store.forget():
            console.print(f"run {federation.run.run_key}: its earlier comparisons are deleted")
        flower_run_id = submit_run(federation.state_dir, federation.run_config())
        console.print(f"submitted run {federation.run.run_key} (Flower run {flower_run_id})")
        status = follow_run(federation, flower_run_id, console=console)
    finally:
        stop_process(superlink)
    if status.get("status") != "finished:completed":
        record_flower_end(store, status)
        raise RuntimeError(
            f"the run ended {status.get('status')}: {status.get('status-details')} (start it "
            "again to resume it once the cause is fixed, or with --restart to run it over)"
        )
    return status


def record_flower_end(store: RunStore, status: dict) -> None:
    """A run Flower ended without completing, as the coordinator database records it: a
    ServerApp stopped (`flwr stop`) or killed writes nothing itself, so a run still `running`
    there is marked `stopped` or `failed` with Flower's details (one that failed in the run loop
    already says why)."""
    flower_status = str(status.get("status", ""))
    details = str(status.get("status-details") or flower_status or "no status from Flower")
    store.end("stopped" if flower_status == "finished:stopped" else "failed", details)
