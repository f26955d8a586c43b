"""TLS and site enrolment: certificates, site keys, and a SuperLink that refuses an
unregistered site (real flower-superlink and flower-supernode processes over TLS)."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_ssh_private_key, load_ssh_public_key
from typer.testing import CliRunner

from agent.cli import app as agent_app
from agent.config import load_site_config, site_toml
from agent.supervisor import site_environment, supernode_command
from common.processes import free_port, stop_process
from coordinator.certs import init_certificates
from coordinator.cli import app as coordinator_app
from coordinator.config import load_federation_config
from coordinator.db import open_database, record_registration, registered_site, site_names
from coordinator.launch import start_superlink

runner = CliRunner()


def test_certificates_chain_to_the_ca_and_name_the_superlink(tmp_path: Path) -> None:
    files = init_certificates(tmp_path / "certs", ["127.0.0.1", "link.example"])
    ca = x509.load_pem_x509_certificate(files["ca.crt"].read_bytes())
    server = x509.load_pem_x509_certificate(files["server.pem"].read_bytes())
    server.verify_directly_issued_by(ca)
    names = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["link.example"]
    assert [str(ip) for ip in names.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    assert files["ca.key"].stat().st_mode & 0o077 == 0
    with pytest.raises(FileExistsError):
        init_certificates(tmp_path / "certs", ["127.0.0.1"])


def write_tls_site(folder: Path, name: str, superlink: str) -> Path:
    """A site.toml that reaches `superlink` over TLS (the CA in folder/certs)."""
    flower = {
        "superlink": superlink,
        "clientappio_port": free_port(),
        "root_certificates": "certs/ca.crt",
    }
    path = folder / f"{name}.toml"
    path.write_text(site_toml(name, settings={"flower": flower}))
    return path


def test_only_registered_sites_connect(tmp_path: Path) -> None:
    superlink = f"127.0.0.1:{free_port()}"
    assert (
        runner.invoke(
            coordinator_app,
            ["certs", "init", "--out", str(tmp_path / "certs"), "--san", "127.0.0.1"],
        ).exit_code
        == 0
    )
    federation_toml = tmp_path / "federation.toml"
    federation_toml.write_text(
        f'[run]\nname = "tls"\n[superlink]\naddress = "{superlink}"\ncertificates = "certs"\n'
    )
    federation = load_federation_config(federation_toml)
    keys = {}
    for name in ("site-a", "site-b"):
        result = runner.invoke(
            agent_app, ["enroll", "--config", str(write_tls_site(tmp_path, name, superlink))]
        )
        assert result.exit_code == 0, result.output
        keys[name] = tmp_path / f"{name}-data" / "keys"
        private = load_ssh_private_key((keys[name] / "site_key").read_bytes(), password=None)
        assert isinstance(private, ec.EllipticCurvePrivateKey)
        assert private.curve.name == "secp384r1"
        assert (
            load_ssh_public_key((keys[name] / "site_key.pub").read_bytes()).public_numbers()
            == private.public_key().public_numbers()
        )

    link = start_superlink(federation.superlink, federation.state_dir)
    nodes = []
    try:
        added = runner.invoke(
            coordinator_app,
            [
                "sites",
                "add",
                "site-a",
                str(keys["site-a"] / "site_key.pub"),
                "--config",
                str(federation_toml),
            ],
        )
        assert added.exit_code == 0, added.output
        for name in ("site-a", "site-b"):
            config = load_site_config(tmp_path / f"{name}.toml")
            log = (tmp_path / f"{name}.log").open("wb")
            nodes.append(
                subprocess.Popen(
                    supernode_command(config),
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=site_environment(config),
                    start_new_session=True,
                )
            )
        deadline = time.monotonic() + 60
        listed = []
        while time.monotonic() < deadline:
            result = runner.invoke(
                coordinator_app, ["sites", "list", "--config", str(federation_toml)]
            )
            listed = json.loads(result.stdout)
            if nodes[1].poll() is not None and any(n["status"] == "online" for n in listed):
                break
            time.sleep(0.5)
        assert [n["status"] for n in listed] == ["online"]  # site-a alone, over TLS
        assert [n["name"] for n in listed] == ["site-a"]  # as registered by `sites add`
        assert nodes[1].poll() not in (None, 0)  # site-b was refused and gave up
        assert "SuperNode ID" not in (tmp_path / "site-b.log").read_text()
        removed = runner.invoke(
            coordinator_app, ["sites", "remove", "site-a", "--config", str(federation_toml)]
        )
        assert removed.exit_code == 0, removed.output
        engine = open_database(federation.database_url)
        assert registered_site(engine, "site-a") is None  # removed, its name kept for results
        assert site_names(engine) == {listed[0]["node-id"]: "site-a"}
    finally:
        for node in nodes:
            stop_process(node)
        stop_process(link)


def test_site_names_are_checked_before_flower_is_asked(tmp_path: Path) -> None:
    """A name that is not plain, or taken, is refused with the reason; no SuperLink runs here."""
    federation_toml = tmp_path / "federation.toml"
    federation_toml.write_text('[run]\nname = "names"\n[superlink]\naddress = "127.0.0.1:1"\n')
    key = tmp_path / "site.pub"
    key.write_text("ecdsa-sha2-nistp384 AAAA site\n")
    record_registration(
        open_database(load_federation_config(federation_toml).database_url), "12", "taken", "k"
    )
    for name, reason in (("[red]x", "use 1-64 letters"), ("123", "at least one letter"),
                         ("taken", "registered already (node 12)")):  # fmt: skip
        result = runner.invoke(
            coordinator_app, ["sites", "add", name, str(key), "--config", str(federation_toml)]
        )
        assert result.exit_code == 2 and reason in " ".join(result.output.split()), result.output
