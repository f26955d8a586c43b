"""`pandalm-agent start`: supervise the site's processes: the job workers (`[site] workers`, each
pinned to one device), the SuperNode and the app guard that decides which app bundles the
SuperNode may run (agent/guard.py).

Each runs as a child process with its log under the data directory; one that exits is started
again after a pause, and a signal to the agent stops them all. A child also gets SIGTERM when the
agent itself dies, even by kill -9 (Linux's parent-death signal): the SuperNode then deactivates
itself at the SuperLink, so a restarted site is admitted at once. Only a SuperNode that cannot
say goodbye (killed -9 itself, a lost machine) stays "online" at the SuperLink until two missed
heartbeats (Flower 1.42: 2 x 30 s), and a restarted one is refused until then (exit code 305,
"[code: 2004] Failed to activate SuperNode"; the supervisor keeps restarting it).
"""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
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
    env: dict[str, str] = field(default_factory=dict)
    """Set for this child on top of the site's environment (a worker's device)."""

    def start(self, env: dict[str, str]) -> None:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        handle = self.log.open("ab")
        self.process = subprocess.Popen(
            self.command,
            stdout=handle,
            stderr=subprocess.STDOUT,
            env={**env, **self.env},
            start_new_session=True,
            preexec_fn=_die_with_parent if sys.platform == "linux" else None,
        )
        handle.close()

    def stop(self) -> None:
        stop_process(self.process)


PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In the child before it runs: SIGTERM it when the agent dies, however it dies."""
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


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


def worker_command(config: SiteConfig, slot: int = 1) -> list[str]:
    return [
        sys.executable, "-m", "agent", "worker", "--config", str(config.source),
        "--slot", str(slot),
    ]  # fmt: skip


def _gpus() -> list[str]:
    """The GPUs this agent may use: those CUDA_VISIBLE_DEVICES names, else nvidia-smi's."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [device.strip() for device in visible.split(",") if device.strip()]
    if shutil.which("nvidia-smi") is None:
        return []
    listed = subprocess.run(
        ["nvidia-smi", "--query-gpu=index", "--format=csv,noheader"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    return listed.stdout.split() if listed.returncode == 0 else []


def worker_devices(count: int, gpus: list[str]) -> list[str]:
    """Each worker's CUDA_VISIBLE_DEVICES: one GPU each, in turn; "" (the CPU) without GPUs."""
    return [gpus[slot % len(gpus)] if gpus else "" for slot in range(count)]


def worker_children(config: SiteConfig, logs: Path) -> list[Child]:
    """The site's job workers: slot 1 logs to worker.log, slot n to worker-n.log."""
    children = []
    for slot, device in enumerate(worker_devices(config.workers, _gpus()), start=1):
        log = logs / ("worker.log" if slot == 1 else f"worker-{slot}.log")
        env = {"CUDA_VISIBLE_DEVICES": device}
        children.append(Child(f"worker-{slot}", worker_command(config, slot), log, env=env))
    return children


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
    """Run workers, SuperNode and app guard until a signal; restart whichever exits."""
    logs = config.data_dir / "logs"
    children = [
        *worker_children(config, logs),
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
