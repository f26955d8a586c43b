"""Offline install bundles (`pandalm-agent bundle`, deploy/bundle/install.sh).

The slow test builds a real bundle once, then installs it and runs a judge `compare` and a site
agent inside a network namespace that has only loopback, every process under `strace`, and
checks that no connect() went anywhere but loopback or a local socket. It needs root, iproute2
(`ip netns`) and strace, and a connected machine to build the bundle (PyPI, the torch CPU wheel).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.main import get_command
from typer.testing import CliRunner

from agent.bundle import (
    DATA_DIR_PLACEHOLDER,
    MODELS_PLACEHOLDER,
    NATIVE_LIBS,
    SITE_NAME_PLACEHOLDER,
    TOP,
    BundleError,
    build_bundle,
    finish_bundle,
    installed_llama_wheel,
    plan_models,
    site_template,
)
from agent.cli import app as agent_app
from agent.config import load_site_config
from common.processes import stop_process
from judge.cpu import baseline_name, required_flags, system_info
from judge.models import BUILTIN_GGUF_NAME, ModelNotFoundError, builtin_base_gguf

REPO = Path(__file__).resolve().parents[1]
INSTALL_SH = REPO / "deploy" / "bundle" / "install.sh"
BASE_PYTHON = Path(getattr(sys, "_base_executable", sys.executable))


def _render(template: str, models: Path, name: str, data_dir: Path) -> str:
    return (
        template.replace(MODELS_PLACEHOLDER, str(models))
        .replace(SITE_NAME_PLACEHOLDER, name)
        .replace(DATA_DIR_PLACEHOLDER, str(data_dir))
    )


def test_the_agent_cli_has_a_bundle_command() -> None:
    assert "bundle" in get_command(agent_app).commands
    result = CliRunner().invoke(agent_app, ["bundle", "--help"])
    assert result.exit_code == 0 and "--judge" in result.output and "--base" in result.output


def test_builtin_judge_and_base_travel_as_the_gguf(fake_home: Path) -> None:
    plan = plan_models()
    assert plan.copies == [(fake_home / "models" / BUILTIN_GGUF_NAME, BUILTIN_GGUF_NAME)]
    assert (plan.judge_spec, plan.base) == ("builtin", "builtin")
    assert plan_models("rule:length?band=0.2").judge_spec == "rule:length?band=0.2"
    served = plan_models("openai:http://10.0.0.5:8000/v1?model=pandalm-7b")
    assert served.judge_spec == "openai:http://10.0.0.5:8000/v1?model=pandalm-7b"
    assert [d for _, d in served.copies] == [BUILTIN_GGUF_NAME]  # the base only, no judge


def test_a_named_judge_and_base_are_copied_and_the_template_points_at_them(
    fake_home: Path, tmp_path: Path
) -> None:
    judge = tmp_path / "panda.gguf"
    judge.write_bytes(b"GGUF")
    base = tmp_path / "my-base"
    base.mkdir()
    (base / "config.json").write_text("{}")
    plan = plan_models(f"gguf:{judge}?threads=4", base)
    assert [d for _, d in plan.copies] == ["judge/panda.gguf", "base/my-base"]  # no builtin
    site = tmp_path / "site.toml"
    site.write_text(_render(site_template(plan), tmp_path / "m", "site-q", tmp_path / "d"))
    config = load_site_config(site)
    assert config.name == "site-q" and config.data_dir == tmp_path / "d"
    assert config.judge.spec == f"gguf:{tmp_path / 'm'}/judge/panda.gguf?threads=4"
    assert config.model.base == f"{tmp_path / 'm'}/base/my-base"


def test_bad_options_are_named(fake_home: Path, tmp_path: Path) -> None:
    with pytest.raises(BundleError, match=r"--judge gguf:.*no GGUF file"):
        plan_models(f"gguf:{tmp_path / 'missing.gguf'}")
    with pytest.raises(BundleError, match=r"--judge hf:.*not a transformers model"):
        plan_models(f"hf:{tmp_path}")
    with pytest.raises(BundleError, match=r"--judge openai:x: .*not an http\(s\) URL"):
        plan_models("openai:x")
    with pytest.raises(BundleError, match=r"--base .*no config.json"):
        plan_models(base=tmp_path)
    with pytest.raises(BundleError, match=r"--out .*tar.gz"):
        build_bundle(tmp_path / "bundle.zip")
    (fake_home / "models" / BUILTIN_GGUF_NAME).unlink()
    with pytest.raises(BundleError, match="builtin model is not installed"):
        plan_models()


def test_install_script_never_uses_an_index() -> None:
    text = INSTALL_SH.read_text()
    assert subprocess.run(["sh", "-n", str(INSTALL_SH)], check=False).returncode == 0
    pip_lines = [line for line in text.splitlines() if "pip install" in line]
    assert pip_lines and all("--no-index" in line for line in pip_lines)
    assert "PIP_CONFIG_FILE=/dev/null" in text and "PIP_NO_INDEX=1" in text
    assert "download" not in text and "http" not in text


def _tiny_wheel(folder: Path, name: str = "tinypkg", version: str = "0.1") -> Path:
    """A valid pure-Python wheel, written by hand (no build backend, no index)."""
    files = {
        f"{name}/__init__.py": b"VALUE = 42\n",
        f"{name}-{version}.dist-info/METADATA": (
            f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n".encode()
        ),
        f"{name}-{version}.dist-info/WHEEL": (
            b"Wheel-Version: 1.0\nGenerator: hand\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
        ),
    }
    record = f"{name}-{version}.dist-info/RECORD"
    lines = []
    for path, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        lines.append(f"{path},sha256={digest},{len(data)}")
    files[record] = ("\n".join([*lines, f"{record},,"]) + "\n").encode()
    wheel = folder / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        for path, data in files.items():
            archive.writestr(path, data)
    return wheel


def _install(root: Path, target: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "PIP_INDEX_URL": "http://192.0.2.1/simple",  # would fail loudly if pip used it
        "PIP_FIND_LINKS": "/nonexistent",
    }
    return subprocess.run(
        ["sh", str(root / "install.sh"),
         "--prefix", str(target / "prefix"), "--home", str(target / "home"),
         "--config", str(target / "etc" / "site.toml"), "--data-dir", str(target / "data"),
         "--site-name", "site-x", "--python", str(BASE_PYTHON), *extra],
        capture_output=True, text=True, env=env, check=False, timeout=300,
    )  # fmt: skip


X86_64_V3_BUILD = ["pni", "ssse3", "avx", "avx2", "f16c", "fma", "bmi2"]
SANDY_BRIDGE = "fpu vme de pse tsc msr pae mce cx8 sse sse2 ht syscall nx lm pni ssse3 sse4_1 avx"


def _cpuinfo(path: Path, flags: str) -> Path:
    """A /proc/cpuinfo with two CPUs (install.sh reads the first one's flags)."""
    block = f"processor\t: {{}}\nmodel name\t: test CPU\nflags\t\t: {flags}\n\n"
    path.write_text(block.format(0) + block.format(1))
    return path


def test_the_manifest_states_the_builds_cpu_baseline(fake_home: Path, tmp_path: Path) -> None:
    root = tmp_path / TOP
    finish_bundle(root, plan_models(), [], X86_64_V3_BUILD)
    env = (root / "bundle.env").read_text()
    assert "LLAMA_CPU_BASELINE=x86-64-v3\n" in env
    assert 'LLAMA_CPU_FLAGS="pni ssse3 avx avx2 f16c fma bmi2"\n' in env
    finish_bundle(tmp_path / "native" / TOP, plan_models(), [], [*X86_64_V3_BUILD, "avx512f"])
    assert "LLAMA_CPU_BASELINE=x86-64-v4" in (tmp_path / "native" / TOP / "bundle.env").read_text()


def test_install_script_refuses_a_cpu_without_the_builds_extensions(
    fake_home: Path, tmp_path: Path
) -> None:
    """One line naming what the CPU lacks, before anything is installed; a CPU that has them
    all gets past the check (to the --python check here, which fails on purpose)."""
    root = tmp_path / TOP
    finish_bundle(root, plan_models(), [], X86_64_V3_BUILD)
    target = tmp_path / "target"
    env = {**os.environ, "PANDALM_CPUINFO": str(_cpuinfo(tmp_path / "old", SANDY_BRIDGE))}
    argv = ["sh", str(root / "install.sh"), "--prefix", str(target), "--python", "/nonexistent"]
    old = subprocess.run(argv, capture_output=True, text=True, env=env, check=False)
    assert old.returncode == 1 and old.stdout == ""
    assert old.stderr.count("\n") == 1 and "this CPU lacks avx2 f16c fma bmi2 (" in old.stderr
    assert "(x86-64-v3) needs" in old.stderr
    assert not target.exists()

    haswell = f"{SANDY_BRIDGE} sse4_2 avx2 f16c fma bmi1 bmi2 movbe"
    env["PANDALM_CPUINFO"] = str(_cpuinfo(tmp_path / "haswell", haswell))
    new = subprocess.run(argv, capture_output=True, text=True, env=env, check=False)
    assert new.returncode == 1 and "--python /nonexistent does not run" in new.stderr
    assert "lacks" not in new.stderr

    env["PANDALM_CPUINFO"] = str(tmp_path / "absent")
    unreadable = subprocess.run(argv, capture_output=True, text=True, env=env, check=False)
    assert "absent: no CPU flags to check" in unreadable.stderr


def _fake_llama_wheel(folder: Path, change: str = "") -> Path:
    """A zip named like the llama-cpp-python wheel whose RECORD lists the installed native
    libraries' hashes (one of them altered when `change` names it): what the lookup reads."""
    from importlib import metadata

    dist = metadata.distribution("llama-cpp-python")
    lines = []
    for f in dist.files or []:
        if f.hash is not None and str(f).startswith(NATIVE_LIBS):
            value = "0" * len(f.hash.value) if str(f).endswith(change or "\0") else f.hash.value
            lines.append(f"{f},{f.hash.mode}={value},{f.size}")
    folder.mkdir(parents=True, exist_ok=True)
    wheel = folder / f"llama_cpp_python-{dist.version}-py3-none-linux_x86_64.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr(f"llama_cpp_python-{dist.version}.dist-info/RECORD", "\n".join(lines))
    return wheel


def test_the_bundle_takes_the_llama_wheel_installed_here_not_another_build(
    fake_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PIP_CACHE_DIR", str(tmp_path / "pip-cache"))
    builds = fake_home / "wheelhouse" / "llama-cpp"
    other = _fake_llama_wheel(builds / "native-0123456789ab", change="libggml-cpu.so")
    with pytest.raises(BundleError, match=r"1 llama_cpp_python-.* found in .*none the build"):
        installed_llama_wheel([], log=lambda _m: None)
    this = _fake_llama_wheel(builds / "x86-64-v3-0123456789ab")
    assert installed_llama_wheel([], log=lambda _m: None) == this != other
    with pytest.raises(BundleError, match=r"--wheels .*nowhere: no such folder"):
        installed_llama_wheel([tmp_path / "nowhere"], log=lambda _m: None)


@pytest.mark.slow
def test_install_script_installs_a_bundle_and_refuses_a_damaged_one(
    fake_home: Path, tmp_path: Path
) -> None:
    """install.sh on a bundle whose wheelhouse is one hand-made wheel: venv, offline pip,
    models, config; an existing config is kept; a damaged bundle installs nothing."""
    root = tmp_path / "bundle" / TOP
    (root / "wheelhouse").mkdir(parents=True)
    _tiny_wheel(root / "wheelhouse")
    finish_bundle(root, plan_models(), ["tinypkg==0.1"], required_flags(system_info()))
    assert "wheelhouse/tinypkg-0.1-py3-none-any.whl" in (root / "SHA256SUMS").read_text()

    target = tmp_path / "target"
    result = _install(root, target)
    assert result.returncode == 0, result.stdout + result.stderr
    venv_python = target / "prefix" / ".venv" / "bin" / "python"
    assert subprocess.run([venv_python, "-c", "import tinypkg"], check=False).returncode == 0
    assert (target / "home" / "models" / BUILTIN_GGUF_NAME).read_bytes() == b"GGUF fake"
    assert "PANDALM_HOME=" in (target / "prefix" / "pandalm.env").read_text()
    config = load_site_config(target / "etc" / "site.toml")
    assert config.name == "site-x" and config.data_dir == target / "data"
    assert (config.judge.spec, config.model.base) == ("builtin", "builtin")

    (target / "etc" / "site.toml").write_text("# edited\n")
    again = _install(root, target)
    assert again.returncode == 0 and "kept the existing" in again.stdout
    assert (target / "etc" / "site.toml").read_text() == "# edited\n"

    (root / "models" / BUILTIN_GGUF_NAME).write_bytes(b"GGUF fakf")
    damaged = _install(root, tmp_path / "other")
    assert damaged.returncode != 0
    assert f"models/{BUILTIN_GGUF_NAME}: checksum mismatch" in damaged.stderr
    assert not (tmp_path / "other").exists()


# --- the air-gapped install, for real -------------------------------------------------------

CONNECT = re.compile(r"connect\(\d+, \{sa_family=(\w+)([^}]*)\}")
LOOPBACK = re.compile(r'inet_addr\("127\.|inet_pton\(AF_INET6, "(::1|::ffff:127\.)')
LOCAL_FAMILIES = {"AF_UNIX", "AF_LOCAL", "AF_UNSPEC", "AF_NETLINK"}


def classify_connects(lines: list[str]) -> tuple[list[str], list[str]]:
    """Split strace connect() lines into (loopback or local socket, anything else)."""
    local, other = [], []
    for line in lines:
        match = CONNECT.search(line)
        if match is not None:
            family, address = match.groups()
            is_local = family in LOCAL_FAMILIES or LOOPBACK.search(address)
            (local if is_local else other).append(line)
    return local, other


def test_the_trace_check_flags_every_connect_beyond_loopback() -> None:
    lines = [
        '7 connect(3, {sa_family=AF_UNIX, sun_path="/var/run/nscd/socket"}, 110) = -1 ENOENT',
        '7 connect(5, {sa_family=AF_INET, sin_port=htons(9092), sin_addr=inet_addr("127.0.0.1")'
        "}, 16 <unfinished ...>",
        "7 connect(5, {sa_family=AF_INET6, sin6_port=htons(9094), sin6_flowinfo=htonl(0), "
        'inet_pton(AF_INET6, "::1", &sin6_addr), sin6_scope_id=0}, 28) = 0',
        "7 connect(4, {sa_family=AF_UNSPEC, sa_data=...}, 16) = 0",
        '8 connect(6, {sa_family=AF_INET, sin_port=htons(53), sin_addr=inet_addr("10.0.0.2")}'
        ", 16) = -1 ENETUNREACH (Network is unreachable)",
        "8 connect(6, {sa_family=AF_INET6, sin6_port=htons(443), sin6_flowinfo=htonl(0), "
        'inet_pton(AF_INET6, "2a04:4e42::223", &sin6_addr), sin6_scope_id=0}, 28) = -1',
        "8 <... connect resumed>) = 0",
    ]
    local, other = classify_connects(lines)
    assert len(local) == 4
    assert [re.search(r"htons\((\d+)\)", line).group(1) for line in other] == ["53", "443"]


def _netns_skip_reason() -> str | None:
    if sys.platform != "linux" or os.geteuid() != 0:
        return "needs root on Linux (ip netns)"
    for tool, package in (("ip", "iproute2"), ("strace", "strace")):
        if shutil.which(tool) is None:
            return f"needs {tool} (apt-get install {package})"
    try:
        builtin_base_gguf()
    except ModelNotFoundError:
        return "needs the builtin model (make setup)"
    return None


@pytest.fixture(scope="session")
def site_bundle(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The real bundle (about 1 GB), built once per session and deleted afterwards."""
    reason = _netns_skip_reason()
    if reason:
        pytest.skip(reason)
    folder = tmp_path_factory.mktemp("site-bundle")
    started = time.monotonic()
    result = build_bundle(folder / "site-bundle.tar.gz", log=lambda _message: None)
    print(f"\nbundle: {result.size / 1e6:.0f} MB, {result.wheels} wheels, "
          f"built in {time.monotonic() - started:.0f}s")  # fmt: skip
    yield result.path
    shutil.rmtree(folder, ignore_errors=True)


class Namespace:
    """A network namespace with only loopback; every command in it runs under strace."""

    def __init__(self, name: str, traces: Path) -> None:
        self.name, self.traces = name, traces
        traces.mkdir(parents=True, exist_ok=True)
        subprocess.run(["ip", "netns", "add", name], check=True)
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)

    def command(self, step: str, argv: list[str]) -> list[str]:
        return [
            "ip", "netns", "exec", self.name,
            "strace", "-f", "--seccomp-bpf", "-qq", "-e", "trace=connect", "-e", "signal=none",
            "-o", str(self.traces / f"{step}.strace"), "--", *argv,
        ]  # fmt: skip

    def run(self, step: str, argv: list[str], env: dict[str, str], timeout: float) -> str:
        started = time.monotonic()
        result = subprocess.run(
            self.command(step, argv), capture_output=True, text=True, env=env, timeout=timeout,
            check=False,
        )  # fmt: skip
        print(f"{step}: {time.monotonic() - started:.0f}s")
        assert result.returncode == 0, f"{step}: {result.stdout[-3000:]}{result.stderr[-3000:]}"
        return result.stdout

    def start(self, step: str, argv: list[str], env: dict[str, str], log: Path):
        with log.open("ab") as sink:
            return subprocess.Popen(
                self.command(step, argv), stdout=sink, stderr=subprocess.STDOUT, env=env,
                start_new_session=True,
            )  # fmt: skip

    def connections(self) -> tuple[list[str], list[str]]:
        """(loopback or local-socket connects, every other connect) over all traces."""
        lines = [
            f"{trace.stem}: {line}"
            for trace in sorted(self.traces.glob("*.strace"))
            for line in trace.read_text(errors="replace").splitlines()
        ]
        return classify_connects(lines)

    def interfaces(self) -> list[dict]:
        out = subprocess.run(
            ["ip", "-n", self.name, "-s", "-j", "link", "show"],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        return json.loads(out.stdout)

    def close(self) -> None:
        pids = subprocess.run(
            ["ip", "netns", "pids", self.name], capture_output=True, text=True, check=False
        ).stdout.split()
        for pid in pids:  # whatever is left of the processes this test started in it
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), signal.SIGKILL)
        subprocess.run(["ip", "netns", "del", self.name], check=False)


def _wait_for(
    path: Path, text: str, timeout: float, processes: dict[str, subprocess.Popen], state: Path
) -> None:
    """Wait until a log shows `text`; fail at once if a process exits, with the logs."""
    deadline = time.monotonic() + timeout
    problem = f"{path}: no {text!r} after {timeout:.0f}s"
    while time.monotonic() < deadline:
        if path.is_file() and text in path.read_text(errors="replace"):
            return
        exited = [
            f"{n} exited ({p.returncode})" for n, p in processes.items() if p.poll() is not None
        ]
        if exited:
            problem = f"{', '.join(exited)} before {path.name} showed {text!r}"
            break
        time.sleep(0.5)
    tails = [
        f"--- {log.name}:\n{log.read_text(errors='replace')[-2000:]}"
        for log in (path, state / "superlink.log")
        if log.is_file()
    ]
    raise AssertionError("\n".join([problem, *tails]))


PAIRS = [
    {"instruction": "Add 2 and 3.", "input": "", "response1": "5", "response2": "6"},
    {"instruction": "Capital of France?", "input": "", "response1": "Paris.", "response2": "Rome."},
]


@pytest.mark.slow
def test_bundle_installs_and_runs_with_no_network(site_bundle: Path, tmp_path: Path) -> None:
    """install.sh, a judge compare and a site agent talking to a SuperLink, all inside a
    loopback-only network namespace: every connect() is to loopback or a local socket."""
    target = tmp_path / "site"
    prefix, home, config = target / "prefix", target / "home", target / "etc" / "site.toml"
    bin_dir = prefix / ".venv" / "bin"
    (target / "user").mkdir(parents=True)
    env = {
        "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "HOME": str(target / "user"),  # no caches of this machine's user
        "LANG": "C.UTF-8",
        "PANDALM_HOME": str(home),
        **{k: v for k, v in os.environ.items() if k.startswith("PIP_")},  # install.sh drops them
    }
    netns = Namespace(f"pandalm-offline-{os.getpid()}", tmp_path / "traces")
    superlink = agent = None
    try:
        assert [i["ifname"] for i in netns.interfaces()] == ["lo"]
        netns.run("extract", ["tar", "-xzf", str(site_bundle), "-C", str(target)], env, 120)
        flags = required_flags(system_info())  # the build installed here, as the manifest says
        manifest = (target / TOP / "bundle.env").read_text()
        assert f'LLAMA_CPU_FLAGS="{" ".join(flags)}"' in manifest
        assert f"LLAMA_CPU_BASELINE={baseline_name(flags)}" in manifest
        netns.run(
            "install",
            ["sh", str(target / TOP / "install.sh"), "--prefix", str(prefix), "--home", str(home),
             "--config", str(config), "--data-dir", str(target / "data"),
             "--site-name", "offline-site", "--python", str(BASE_PYTHON)],
            env, 420,
        )  # fmt: skip

        pairs, verdicts = target / "pairs.jsonl", target / "verdicts.jsonl"
        pairs.write_text("".join(json.dumps(p) + "\n" for p in PAIRS))
        netns.run(
            "compare",
            [str(bin_dir / "pandalm-judge"), "compare", str(pairs), "-o", str(verdicts),
             "--judge", "builtin", "--mode", "score"],
            env, 240,
        )  # fmt: skip
        records = [json.loads(line) for line in verdicts.read_text().splitlines()]
        assert len(records) == 2
        assert all(r["verdict"] in {"1", "2", "Tie", "invalid"} for r in records)
        assert all("probabilities" in r for r in records)

        text = config.read_text()
        text = re.sub(r"^superlink = .*$", 'superlink = "127.0.0.1:9092"', text, flags=re.M)
        config.write_text(re.sub(r"^insecure = false$", "insecure = true", text, flags=re.M))
        state = target / "coordinator"
        state.mkdir()
        flower_env = {
            **env,
            "PATH": f"{bin_dir}:{env['PATH']}",  # the SuperLink starts flower-superexec from PATH
            "FLWR_HOME": str(state / "flwr"),
            "FLWR_TELEMETRY_ENABLED": "0",
            "FLWR_DISABLE_UPDATE_CHECK": "1",
        }
        superlink = netns.start(
            "superlink",
            [str(bin_dir / "flower-superlink"), "--insecure", "--host", "127.0.0.1",
             "--port", "9092", "--database", str(state / "superlink.sqlite"),
             "--disable-runtime-dependency-installation"],
            flower_env, state / "superlink.log",
        )  # fmt: skip
        agent = netns.start(
            "agent", [str(bin_dir / "pandalm-agent"), "start", "--config", str(config)], env,
            target / "agent.log",
        )  # fmt: skip
        logs = target / "data" / "logs"
        for log, text in ((logs / "supernode.log", "SuperNode ID"),
                          (logs / "guard.log", "trusted app bundle")):  # fmt: skip
            _wait_for(log, text, 180, {"agent": agent, "superlink": superlink}, state)
        time.sleep(5)  # the worker imports torch and transformers, then polls its database
        stop_process(agent, timeout=30.0)  # the group: strace holds the traced command
        stop_process(superlink, timeout=30.0)
        for name in ("worker.log", "supernode.log", "guard.log"):
            assert "Traceback" not in (logs / name).read_text(), (logs / name).read_text()

        local, other = netns.connections()
        assert not other, "connect() beyond loopback:\n" + "\n".join(other[:20])
        assert any("htons(9092)" in line for line in local)  # the SuperNode reached the link
        interfaces = netns.interfaces()
        assert [i["ifname"] for i in interfaces] == ["lo"]
        assert interfaces[0]["stats64"]["tx"]["packets"] > 0  # the federation talked, on lo
    finally:
        stop_process(agent, timeout=30.0)  # the group: strace holds the traced command
        stop_process(superlink, timeout=30.0)
        netns.close()
        shutil.rmtree(target, ignore_errors=True)
