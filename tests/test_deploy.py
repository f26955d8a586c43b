"""What can be checked of deploy/ without a container engine or a cluster."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import urlsplit

import yaml
from typer.main import get_command

from agent.cli import app as agent_app
from coordinator.cli import app as coordinator_app
from coordinator.flower_internals import superlink_api_prefixes

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"


def _commands(app) -> set[str]:
    return set(get_command(app).commands)


def test_compose_file_parses_and_runs_a_coordinator_and_three_sites() -> None:
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    services = compose["services"]
    default = {name for name, service in services.items() if "profiles" not in service}
    assert default == {"coordinator", "site-1", "site-2", "site-3"}
    for name in ("site-1", "site-2", "site-3"):
        assert services[name]["command"][:2] == ["start", "--config"]
        assert services[name]["command"][2] == f"/etc/pandalm/{name}.toml"
        assert services[name]["build"]["dockerfile"] == "deploy/docker/Dockerfile.agent-cpu"
    for service in services.values():
        if "build" in service:  # else a published image (the GPU profile's vLLM judge)
            assert (DEPLOY.parent / service["build"]["dockerfile"]).is_file()


def test_kubernetes_manifests_parse() -> None:
    kinds = []
    for path in sorted((DEPLOY / "k8s").glob("*.yaml")):
        for document in yaml.safe_load_all(path.read_text()):
            assert {"apiVersion", "kind", "metadata"} <= set(document), path
            kinds.append(document["kind"])
            spec = document.get("spec", {}).get("template", {}).get("spec", {})
            for container in spec.get("containers", []):
                assert container["args"][0] in _commands(agent_app) | _commands(coordinator_app)
    assert {"Deployment", "StatefulSet", "Service", "NetworkPolicy"} <= set(kinds)


def test_images_are_built_with_the_commands_ci_runs() -> None:
    makefile = (DEPLOY.parent / "Makefile").read_text()
    assert re.search(r"^setup:", makefile, re.M)
    for dockerfile in (DEPLOY / "docker").glob("Dockerfile.*"):
        text = dockerfile.read_text()
        assert "make setup" in text, dockerfile
        entry = re.search(r'ENTRYPOINT \["(pandalm-\w+)"\]', text).group(1)
        default = re.search(r'CMD \["(\w+)"', text).group(1)
        commands = _commands(agent_app if entry == "pandalm-agent" else coordinator_app)
        assert default in commands, dockerfile


def test_systemd_units_start_existing_commands() -> None:
    for unit in (DEPLOY / "systemd").glob("*.service"):
        line = re.search(r"^ExecStart=\S*/(pandalm-\w+) (\w+)", unit.read_text(), re.M)
        app = agent_app if line.group(1) == "pandalm-agent" else coordinator_app
        assert line.group(2) in _commands(app), unit


def test_fleet_proxy_forwards_only_flowers_fleet_prefix() -> None:
    """Static check, with or without nginx; tests/test_fleet_proxy.py runs the file."""
    conf = (DEPLOY / "nginx" / "fleet-only.conf").read_text()
    prefixes = superlink_api_prefixes()  # their values: tests/test_flower_internals.py
    locations = re.findall(r"location (.+) \{", conf)
    assert locations == [f"~ ^{prefixes['fleet']}/[a-z-]+$", "/"]
    assert conf.count("proxy_pass") == 1
    catch_all = conf[conf.index("location / {") :]
    assert "return 403" in catch_all and "proxy_pass" not in catch_all
    assert not re.search(r"^\s*http2\s", conf, re.M)  # the directive needs nginx >= 1.25.1


def test_the_gpu_sites_judge_server_is_the_one_its_spec_names() -> None:
    """The guide's `openai:` spec names the Compose judge service, its port and served model;
    the judge is reachable from its own site only, on an internal network."""
    from judge.backends import parse_spec

    guide = (DEPLOY / "GUIDE.md").read_text()
    spec = re.search(r'spec = "(openai:http[^"]+)"', guide).group(1)
    url = urlsplit(str(parse_spec(spec).path))
    assert parse_spec(spec).options["model"] == "pandalm-7b"
    assert spec in (DEPLOY / "compose.yaml").read_text()
    assert spec in (DEPLOY / "docker" / "Dockerfile.agent-gpu").read_text()
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    judge, site = compose["services"][url.hostname], compose["services"]["site-gpu"]
    command = judge["command"]
    assert command[command.index("--served-model-name") + 1] == "pandalm-7b"
    assert command[command.index("--port") + 1] == str(url.port)
    assert judge["profiles"] == site["profiles"] == ["gpu"]
    assert site["build"]["dockerfile"] == "deploy/docker/Dockerfile.agent-gpu"
    assert site["command"] == ["start", "--config", "/etc/pandalm/site-gpu.toml"]
    assert site["depends_on"][url.hostname]["condition"] == "service_healthy"
    (private,) = judge["networks"]
    assert private in site["networks"] and compose["networks"][private] == {"internal": True}
    others = [s for n, s in compose["services"].items() if n not in (url.hostname, "site-gpu")]
    assert all(private not in s.get("networks", []) for s in others)
