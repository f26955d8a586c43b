"""common.processes.stop_process: the whole process group goes, politely or by SIGKILL."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import pytest

from common.processes import stop_process


def _running(pid: int) -> bool:
    """Alive and not a zombie waiting for a parent to reap it."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def test_a_child_and_its_own_children_stop_on_sigterm(tmp_path: Path) -> None:
    pid_file = tmp_path / "grandchild.pid"
    process = subprocess.Popen(
        ["sh", "-c", f"sleep 30 & echo $! > {pid_file}; wait"], start_new_session=True
    )
    while not pid_file.is_file() or not pid_file.read_text().strip():
        time.sleep(0.05)
    grandchild = int(pid_file.read_text())
    stop_process(process)
    assert process.returncode == -signal.SIGTERM
    time.sleep(0.2)
    assert not _running(grandchild)  # the group's `sleep` went with its parent


def test_a_child_ignoring_sigterm_is_killed_after_the_timeout() -> None:
    process = subprocess.Popen(
        ["sh", "-c", "trap '' TERM; while :; do sleep 0.05; done"], start_new_session=True
    )
    time.sleep(0.2)
    started = time.monotonic()
    stop_process(process, timeout=0.5)
    assert process.returncode == -signal.SIGKILL
    assert 0.5 <= time.monotonic() - started < 5
    stop_process(process)  # an exited process: nothing to do
    stop_process(None)


def test_waiting_for_a_port_fails_at_once_when_its_process_exits() -> None:
    """A SuperLink that dies while starting is reported with its exit code, not after the
    long wait a slow start (a database migration on a loaded host) is given."""
    import socket

    from coordinator.launch import wait_for_port

    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{probe.getsockname()[1]}"
    process = subprocess.Popen(["sh", "-c", "exit 3"])
    started = time.monotonic()
    with pytest.raises(RuntimeError, match="exited with code 3"):
        wait_for_port(address, timeout=120, process=process)
    assert time.monotonic() - started < 10
