"""The site's app guard: a site runs only the Flower app its own installed version produces.

Flower's SuperLink ships each run's app bundle (FAB) to the SuperNodes, which would run it. The
agent therefore starts its SuperNode with `--isolation process` and runs this guard in place of
Flower's SuperExec: for every task it compares the bundle's hash with the hash of the bundle the
installed pandalm-fed builds (a pyproject.toml naming the installed ClientApp), *before any of
it is imported*. A match starts `flwr-clientapp` for the task; anything else is refused with a
fixed code (the SuperNode must get an answer or it stalls) and written to the egress ledger.

This uses Flower 1.42's runtime API (`flwr.supercore.runtime`, `flwr.supernode.runtime`), outside
Flower's public API: through agent/flower_internals.py, checked by tests/test_flower_internals.py;
the project pins flwr==1.42.0 for it.
"""

from __future__ import annotations

import hashlib
import logging
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from flwr.app import Error, Message
from sqlalchemy import Engine

from agent.db import record_egress
from agent.flower_internals import (
    AcquireTaskRequest,
    ErrorCode,
    RuntimeHttpClient,
    RuntimeTokenHttpInterceptor,
    RuntimeVersionHttpInterceptor,
    SubStatus,
    TaskType,
    build_fab_from_disk,
    make_simple_http_retry_invoker,
    pull_task_input,
    push_message,
    push_task_output,
)
from common.appbundle import write_flower_app
from common.protocol import Code, Reply, Status, encode_reply

log = logging.getLogger(__name__)
REFUSAL = "UNTRUSTED_APP"


def trusted_fab_hash() -> str:
    """SHA-256 of the app bundle the installed version builds (what `flwr run` would send)."""
    with tempfile.TemporaryDirectory() as folder:
        return hashlib.sha256(build_fab_from_disk(write_flower_app(Path(folder)))).hexdigest()


def _client(address: str, component: str, token: str | None = None) -> RuntimeHttpClient:
    interceptors = [RuntimeVersionHttpInterceptor(component_name=component)]
    if token is not None:
        interceptors.append(RuntimeTokenHttpInterceptor(token))
    return RuntimeHttpClient.from_server_address(
        server_address=address,
        insecure=True,  # the SuperNode's runtime API listens on loopback only
        root_certificates=None,
        interceptors=interceptors,
        retry_invoker=make_simple_http_retry_invoker(),
    )


class AppGuard:
    """Polls the SuperNode's runtime API and lets through trusted app bundles only."""

    def __init__(self, runtime_address: str, engine: Engine, trusted_hash: str) -> None:
        self.address = runtime_address
        self.engine = engine
        self.trusted_hash = trusted_hash
        self.children: list[subprocess.Popen] = []

    def run_forever(self, poll_seconds: float = 0.25) -> None:
        client = _client(self.address, "SuperExec")
        while True:
            self.step(client)
            self.children = [c for c in self.children if c.poll() is None]
            time.sleep(poll_seconds)

    def step(self, client: RuntimeHttpClient) -> None:
        answer = client.AcquireTask(
            AcquireTaskRequest(supported_task_types=[TaskType.CLIENT_APP.value])
        )
        if not (answer.HasField("task") and answer.token):
            return
        if answer.task.fab_hash == self.trusted_hash:
            clientapp = str(Path(sys.executable).parent / "flwr-clientapp")
            command = [clientapp, "--runtime-api-address", self.address, "--token", answer.token]
            self.children.append(subprocess.Popen([*command, "--insecure"]))
            return
        self.refuse(answer.token, answer.task.fab_hash)

    def refuse(self, token: str, fab_hash: str) -> None:
        """Answer the task with a refusal without importing anything of its bundle."""
        log.warning("refused an app bundle with hash %s (trusted: %s)", fab_hash, self.trusted_hash)
        record_egress(
            self.engine, "", "app-refused", encode_reply(Reply(Status.REFUSED, Code.UNTRUSTED_APP))
        )
        client = _client(self.address, "flwr-clientapp", token)
        try:
            message, context, _run, _fab = pull_task_input(client)
            push_message(
                client,
                Message(Error(code=ErrorCode.UNKNOWN, reason=REFUSAL), reply_to=message),
                context,
            )
            push_task_output(client, context, SubStatus.FAILED, REFUSAL)
        finally:
            client.close()
