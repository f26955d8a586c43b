"""`pandalm-agent start`: supervise the site's processes: the job worker, the SuperNode and the
app guard that decides which app bundles the SuperNode may run (agent/guard.py).

Each runs as a child process with its log under the data directory; one that exits is started
again after a pause, and a signal to the agent stops both.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from agent.config import SiteConfig, resolve_data_path
from agent.identity import site_key_paths
from common.offline import HUB_OFFLINE
from common.processes import stop_process


@dataclass
class Child:
    name: str
    command: list[str]
    log: Path
    process: subprocess.Popen | None = None
    restarts: int = 0

    def start(self, env: dict[str, str]) -> None:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        handle = self.log.open("ab")
        self.process = subprocess.Popen(
            self.command, stdout=handle, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
        handle.close()

    def stop(self) -> None:
        stop_process(self.process)


def supernode_command(config: SiteConfig) -> list[str]:
    """The Flower SuperNode for this site; it never installs anything at run time."""
    flower = config.flower
    command = [
        str(Path(sys.executable).parent / "flower-supernode"),
        "--superlink",
        flower.superlink,
        "--port",
        str(flower.clientappio_port),
        "--node-config",
        f'site-config="{config.source}"',
        "--isolation",
        "process",  # the app guard, not the SuperNode, starts ClientApps
    ]
    if flower.insecure:
        command.append("--insecure")
    elif flower.root_certificates:
        command += ["--root-certificates", str(resolve_data_path(config, flower.root_certificates))]
    private_key, _ = site_key_paths(config.keys_dir)
    if private_key.is_file():
        command += ["--auth-supernode-private-key", str(private_key)]
    return command


def worker_command(config: SiteConfig) -> list[str]:
    return [sys.executable, "-m", "agent", "worker", "--config", str(config.source)]


def guard_command(config: SiteConfig) -> list[str]:
    return [sys.executable, "-m", "agent", "guard", "--config", str(config.source)]


def site_environment(config: SiteConfig) -> dict[str, str]:
    """No telemetry, no update checks, no package installs, no hub downloads."""
    return {
        **os.environ,
        "FLWR_HOME": str(config.data_dir / "flwr"),
        "FLWR_TELEMETRY_ENABLED": "0",
        "FLWR_DISABLE_UPDATE_CHECK": "1",
        "FLWR_SUPEREXEC_TASK_POLL_INTERVAL": "0.2",
        **HUB_OFFLINE,
        "OMP_NUM_THREADS": str(config.model.torch_threads),
        "PYTHONUNBUFFERED": "1",
    }


def supervise(config: SiteConfig, restart_pause: float = 3.0, on_tick=None) -> None:
    """Run worker, SuperNode and app guard until a signal; restart whichever exits."""
    logs = config.data_dir / "logs"
    children = [
        Child("worker", worker_command(config), logs / "worker.log"),
        Child("supernode", supernode_command(config), logs / "supernode.log"),
        Child("guard", guard_command(config), logs / "guard.log"),
    ]
    env = site_environment(config)
    stopping = False

    def stop(_signum, _frame) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    for child in children:
        child.start(env)
    try:
        while not stopping:
            for child in children:
                if child.process is not None and child.process.poll() is not None and not stopping:
                    time.sleep(restart_pause)
                    child.restarts += 1
                    child.start(env)
            if on_tick is not None:
                on_tick(children)
            time.sleep(0.5)
    finally:
        for child in children:
            child.stop()
