"""Stopping child processes that were started in their own session (`start_new_session=True`),
so that a signal to their process group also reaches what they spawned; a free loopback port
for a child to listen on."""

from __future__ import annotations

import os
import signal
import socket
import subprocess


def stop_process(process: subprocess.Popen | None, timeout: float = 10.0) -> None:
    """SIGTERM the process's group, wait up to `timeout` seconds, then SIGKILL it; nothing to do
    for no process or one that has exited."""
    if process is None or process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (the demo's SuperLink and sites)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
