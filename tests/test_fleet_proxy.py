"""deploy/nginx/fleet-only.conf, run for real: Debian's nginx serves the shipped file (only the
certificate folder, the listening port and the upstream substituted) in front of a TLS SuperLink
that admits registered sites only. A registered site whose SuperNode knows only the proxy's
address connects through it and answers a run's query; the Control and runtime APIs and
traversal variants of them are refused by nginx and never reach the SuperLink.
"""

from __future__ import annotations

import os
import socket
import ssl
import subprocess
import time
from pathlib import Path

import pytest
from sqlmodel import Session, select

from agent.config import load_site_config
from agent.identity import enroll
from agent.supervisor import guard_command, site_environment, supernode_command
from common.processes import free_port, stop_process
from coordinator.certs import init_certificates
from coordinator.config import load_federation_config
from coordinator.db import RunSite
from coordinator.db import open_database as open_coordinator_database
from coordinator.launch import (
    CONNECTION,
    flwr_cli,
    start_superlink,
    submit_run,
    wait_for_port,
)
from coordinator.results import run_result
from coordinator.sites import register_site
from tests.needs import needs_tool
from tests.test_identity import write_tls_site

pytestmark = pytest.mark.slow
SHIPPED = Path(__file__).resolve().parents[1] / "deploy" / "nginx" / "fleet-only.conf"
SITE = "site-behind-proxy"
REFUSED = [
    "/v1/control/list-runs",
    "/v1/control/start-run",
    "/v1/runtime/get-run",
    "/v1/fleet/../control/list-runs",
    "/v1/fleet/%2e%2e/control/list-runs",
    "/v1/fleet/%2E%2E/control/list-runs",
    "/v1/fleet/..%2fcontrol/list-runs",
    "/v1/fleet/%2e%2e%2fcontrol%2flist-runs",
    "/v1/fleet/pull-messages/../../control/list-runs",
    "//v1/control/list-runs",
    "/v1//control/list-runs",
    "/v1/fleet//../control/list-runs",
    "//v1/fleet/../control/list-runs",
    "/v1/fleet/get-run?then=/v1/control/list-runs",
    "/v1/fleet/./get-run",
    "/",
]
SPACE = '[[grid]]\noptimizer = "sgd"\nlearning_rate = 2e-6\nscheduler = "linear"\nepochs = [1, 2]\n'


def shipped_with(certs: Path, listen: str, upstream: str) -> str:
    """The shipped file with only its paths substituted; fails if one of them moved."""
    text = SHIPPED.read_text()
    substitutions = {
        "/etc/pandalm/certs/": f"{certs}/",
        "listen 9443 ": f"listen {listen} ",
        "https://127.0.0.1:9092;": f"https://{upstream};",
    }
    for old, new in substitutions.items():
        assert old in text, f"{SHIPPED} no longer holds {old!r}"
        text = text.replace(old, new)
    return text


def start_nginx(nginx: str, folder: Path, server_block: str) -> subprocess.Popen:
    """nginx in the foreground with the server block and a wrapper of test paths only: an
    access log that records, per request, the raw URI, the status and the upstream reached."""
    folder.mkdir()
    (folder / "fleet-only.conf").write_text(server_block)
    temp_paths = "".join(
        f"    {kind}_temp_path {folder / kind};\n"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    (folder / "nginx.conf").write_text(
        ("user root;\n" if os.geteuid() == 0 else "")  # workers must reach these temp folders
        + f"pid {folder / 'nginx.pid'};\nerror_log {folder / 'error.log'} info;\n"
        "events {}\nhttp {\n"
        "    log_format probe '$request_uri\\t$status\\t$upstream_addr';\n"
        f"    access_log {folder / 'access.log'} probe;\n{temp_paths}"
        f"    include {folder / 'fleet-only.conf'};\n}}\n"
    )
    base = [nginx, "-p", str(folder), "-e", str(folder / "error.log"),
            "-c", str(folder / "nginx.conf")]  # fmt: skip
    checked = subprocess.run([*base, "-t"], capture_output=True, text=True, check=False)
    assert checked.returncode == 0, checked.stderr
    return subprocess.Popen(
        [*base, "-g", "daemon off;"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


def raw_request(address: str, ca_file: Path, target: str, method: str = "POST") -> int:
    """The status nginx answers to exactly this request line (no client-side URL cleaning)."""
    host, _, port = address.rpartition(":")
    context = ssl.create_default_context(cafile=str(ca_file))
    with (
        socket.create_connection((host, int(port)), timeout=10) as plain,
        context.wrap_socket(plain, server_hostname=host) as tls,
    ):
        tls.sendall(
            f"{method} {target} HTTP/1.1\r\nHost: {host}\r\nContent-Length: 0\r\n"
            "Connection: close\r\n\r\n".encode()
        )
        head = tls.recv(4096).decode("latin-1")
    return int(head.split(" ", 2)[1])


def access_log(folder: Path) -> list[tuple[str, int, str]]:
    rows = [line.split("\t") for line in (folder / "access.log").read_text().splitlines()]
    return [(uri, int(status), upstream) for uri, status, upstream in rows]


def upstreams(folder: Path, uris: list[str], timeout: float = 5.0) -> dict[str, str]:
    """The upstream nginx passed each request URI to ("-": none), once these requests are
    logged (nginx logs a request after answering it)."""
    deadline = time.monotonic() + timeout
    while True:
        logged = {uri: upstream for uri, _status, upstream in access_log(folder)}
        if set(uris) <= set(logged) or time.monotonic() > deadline:
            return logged
        time.sleep(0.05)


@pytest.fixture(scope="module")
def proxied(tmp_path_factory: pytest.TempPathFactory):
    """A TLS SuperLink on loopback, nginx with the shipped file in front of it, and one
    registered site whose SuperNode (and app guard) reach the SuperLink through nginx only."""
    nginx = needs_tool("nginx", "nginx")
    folder = tmp_path_factory.mktemp("proxy")
    certs = folder / "certs"
    init_certificates(certs, ["127.0.0.1"])
    superlink, proxy = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    (folder / "space.toml").write_text(SPACE)
    (folder / "federation.toml").write_text(
        f'[run]\nname = "proxied"\nspace = "space.toml"\nstate_dir = "coordinator"\n'
        f'[selection]\nselection_mode = "paper"\nmin_sites = 1\nwait_for_sites = 30.0\n'
        f"round_timeout = 20.0\nretry_seconds = 0.5\nmax_retry_seconds = 2.0\npatience = 50\n"
        f'validation_items = 2\nblocks = 1\nsecure_aggregation = "off"\n'
        f'[superlink]\naddress = "{superlink}"\ncertificates = "certs"\n'
    )
    federation = load_federation_config(folder / "federation.toml")
    site = load_site_config(write_tls_site(folder, SITE, proxy))
    processes = [start_superlink(federation.superlink, federation.state_dir)]
    try:
        server_block = shipped_with(certs, proxy, superlink)
        processes.append(start_nginx(nginx, folder / "nginx", server_block))
        wait_for_port(proxy)
        node_id = register_site(federation, SITE, enroll(site.keys_dir, comment=SITE))
        env = site_environment(site)
        for command, log in ((supernode_command(site), "supernode.log"),
                             (guard_command(site), "guard.log")):  # fmt: skip
            with (folder / log).open("wb") as handle:
                processes.append(
                    subprocess.Popen(
                        command,
                        stdout=handle,
                        stderr=subprocess.STDOUT,
                        env=env,
                        start_new_session=True,
                    )
                )
        yield folder, federation, node_id, proxy
    finally:
        for process in reversed(processes):
            stop_process(process)


def test_a_registered_site_answers_a_query_through_the_proxy(proxied) -> None:
    """The run waits for the site, sends it the space and records its answer: the node the
    SuperLink admitted is the one registered, and it is named by its registration."""
    folder, federation, node_id, _proxy = proxied
    flower_run_id = submit_run(federation.state_dir, federation.run_config())
    engine = open_coordinator_database(federation.database_url)
    deadline = time.monotonic() + 90
    try:
        while True:
            with Session(engine) as session:
                rows = session.exec(select(RunSite).where(RunSite.run_key == "proxied")).all()
            if rows and rows[0].last_seen is not None:
                break
            assert time.monotonic() < deadline, (folder / "supernode.log").read_text()[-2000:]
            time.sleep(0.5)
    finally:  # the site never trains: the run would go on asking
        flwr_cli(federation.state_dir, "stop", flower_run_id, CONNECTION)
    assert [(r.node_id, r.status) for r in rows] == [(node_id, "active")]
    assert run_result(engine, "proxied").sites == [SITE]
    forwarded = {uri for uri, status, upstream in access_log(folder / "nginx")
                 if status == 200 and upstream != "-"}  # fmt: skip
    assert {"/v1/fleet/pull-messages", "/v1/fleet/push-messages"} <= forwarded


def test_control_runtime_and_traversal_requests_never_reach_the_superlink(proxied) -> None:
    folder, federation, _node_id, proxy = proxied
    ca_file = folder / "certs" / "ca.crt"
    statuses = {target: raw_request(proxy, ca_file, target) for target in REFUSED}
    statuses["GET /v1/fleet/get-run"] = raw_request(proxy, ca_file, "/v1/fleet/get-run", "GET")
    assert statuses == dict.fromkeys(statuses, 403)
    logged = upstreams(folder / "nginx", REFUSED)
    assert {target: logged.get(target) for target in REFUSED} == dict.fromkeys(REFUSED, "-")
    # The same client gets past nginx with a Fleet-shaped path (the SuperLink has no such
    # method): the refusals above are nginx's, not the SuperLink's.
    probe = "/v1/fleet/no-such-method"
    assert raw_request(proxy, ca_file, probe) == 404
    assert upstreams(folder / "nginx", [probe])[probe] == federation.superlink.address
