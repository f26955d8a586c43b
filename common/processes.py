"""Stopping child processes that were started in their own session (`start_new_session=True`),
so that a signal to their process group also reaches what they spawned."""

from __future__ import annotations

import os
import signal
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
