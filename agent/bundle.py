"""`pandalm-agent bundle`: an offline install bundle for an air-gapped site.

The bundle is built on a connected machine of the target platform (same CPU architecture and
Python minor version) and holds everything a site needs, so that `install.sh` on the site never
reaches a network:

    pandalm-bundle/
      install.sh            deploy/bundle/install.sh: venv, offline pip install, models, config
      bundle.env            what the bundle was built for, checked by install.sh: machine,
                            Python version and the llama.cpp build's CPU baseline (the
                            /proc/cpuinfo flags its kernels need, judge/cpu.py)
      requirements.txt      every distribution, pinned; all of them are in wheelhouse/
      wheelhouse/           wheels only (the site builds nothing): this project and every
                            dependency at the versions installed where the bundle was built
      models/               laid out as in $PANDALM_HOME/models
      site.toml.template    `pandalm-agent init`'s template pointing at the bundled models
      SHA256SUMS            every other file; install.sh refuses a damaged bundle

Wheels come from the configured package indexes (`pip download --only-binary=:all:`), pinned to
the versions of the running environment; llama-cpp-python has no wheel on PyPI, so the locally
built wheel this environment was installed from must be in `$PANDALM_HOME/wheelhouse`
(`make setup`; portable, x86-64-v3, unless built with LLAMA_CPU=native), a `--wheels` folder or
pip's wheel cache. The builtin SmolLM2 travels as its GGUF only: the site converts it into a
transformers directory on first use (`judge.models.builtin_base_hf_dir`). The builtin judge
travels as its exported GGUF when this machine has built it (`make setup` does); otherwise the
site merges the packaged adapter itself on first use, offline as well.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import tomllib
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from fnmatch import fnmatch
from importlib import metadata
from pathlib import Path
from urllib.parse import unquote, urlparse

from agent.config import site_toml
from judge.backends import SpecError, parse_spec
from judge.cpu import baseline_name, required_flags, system_info
from judge.models import BUILTIN_GGUF_NAME, ModelNotFoundError, builtin_base_gguf, cache_dir

TOP = "pandalm-bundle"
"""The archive's single top-level folder."""
MODELS_PLACEHOLDER = "@MODELS@"
SITE_NAME_PLACEHOLDER = "@SITE_NAME@"
DATA_DIR_PLACEHOLDER = "@DATA_DIR@"
PROJECT = "pandalm-fed"
NO_PYPI_WHEEL = "llama-cpp-python"
"""The one dependency without a wheel on PyPI: its wheel is built locally once."""


class BundleError(RuntimeError):
    """A bundle that cannot be built; the message names the option, file or package."""


Log = Callable[[str], object]


@dataclass(frozen=True)
class ModelPlan:
    """Which model files the bundle carries and how the site config names them."""

    copies: list[tuple[Path, str]] = field(default_factory=list)
    """(source file or folder, destination relative to models/)."""
    judge_spec: str = "builtin"
    base: str = "builtin"


@dataclass(frozen=True)
class BundleResult:
    path: Path
    size: int
    wheels: int
    requirements: list[str]
    models: list[str]
    cpu_baseline: str


def plan_models(judge: str = "builtin", base: Path | None = None) -> ModelPlan:
    """Map `--judge` and `--base` to model copies; what a judge carries comes from its backend
    kind (judge.backends' registry); the builtin model travels as its GGUF."""

    try:
        spec = parse_spec(judge)
        copies, judge_spec = spec.backend.carry(spec, MODELS_PLACEHOLDER)
        if base is None and not any(d == BUILTIN_GGUF_NAME for _, d in copies):
            copies.insert(0, (builtin_base_gguf(), BUILTIN_GGUF_NAME))  # the builtin base
    except SpecError as exc:
        raise BundleError(f"--judge {judge}: {exc}") from None
    except ModelNotFoundError as exc:
        raise BundleError(str(exc)) from None
    base_value = "builtin"
    if base is not None:
        if not (base / "config.json").is_file():
            raise BundleError(f"--base {base}: not a transformers model directory (no config.json)")
        copies.append((base, f"base/{base.resolve().name}"))
        base_value = f"{MODELS_PLACEHOLDER}/base/{base.resolve().name}"
    return ModelPlan(copies, judge_spec, base_value)


def site_template(plan: ModelPlan) -> str:
    """`pandalm-agent init`'s template with placeholders that install.sh fills in."""
    return site_toml(
        SITE_NAME_PLACEHOLDER,
        settings={
            "site": {"data_dir": DATA_DIR_PLACEHOLDER},
            "model": {"base": plan.base},
            "judge": {"spec": plan.judge_spec},
        },
    )


def source_root() -> Path:
    """The source checkout this package runs from; the project wheel is built from it."""
    root = Path(__file__).resolve().parents[1]
    pyproject = root / "pyproject.toml"
    if not pyproject.is_file() or f'name = "{PROJECT}"' not in pyproject.read_text():
        raise BundleError(
            f"{pyproject}: not a {PROJECT} source checkout; build bundles from one "
            "(pip install -e .)"
        )
    return root


def installed_pins() -> list[str]:
    """`name==version` of every distribution in this environment but the project itself."""
    pins: dict[str, str] = {}
    for dist in metadata.distributions():
        name = dist.metadata["Name"]
        if not name:
            continue
        key = re.sub(r"[-_.]+", "-", name).lower()
        if key != PROJECT and key not in pins:
            pins[key] = f"{key}=={dist.version}"
    return sorted(pins.values())


def _pip(args: Sequence[str], what: str, env: dict[str, str] | None = None) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "pip", *args], capture_output=True, text=True, env=env, check=False
    )
    if result.returncode != 0:
        tail = "\n".join((result.stdout + result.stderr).strip().splitlines()[-15:])
        raise BundleError(f"{what} failed (pip {' '.join(args[:2])} ...):\n{tail}")
    return result.stdout


def _project_wheel(root: Path, wheelhouse: Path) -> Path:
    """Build the project's wheel from a copy of its sources (no build/ in the checkout)."""
    config = tomllib.loads((root / "pyproject.toml").read_text())
    patterns = config["tool"]["setuptools"]["packages"]["find"]["include"]
    with tempfile.TemporaryDirectory(prefix="pandalm-src-") as folder:
        src = Path(folder)
        for path in root.iterdir():
            if path.is_file() and (
                path.name in ("pyproject.toml", "setup.cfg", "setup.py")
                or path.name.startswith(("README", "LICENSE"))
            ):
                shutil.copy2(path, src / path.name)
            elif (path / "__init__.py").is_file() and any(fnmatch(path.name, p) for p in patterns):
                shutil.copytree(path, src / path.name, ignore=shutil.ignore_patterns("__pycache__"))
        # with setuptools at hand nothing is fetched to build; else pip isolates the build
        ok = _has_module("setuptools") and _has_module("wheel")
        isolation = ["--no-build-isolation"] if ok else []
        _pip(
            ["wheel", "--no-deps", *isolation, "-q", "--wheel-dir", str(wheelhouse), str(src)],
            f"building the {PROJECT} wheel from {root}",
        )
    built = sorted(wheelhouse.glob("pandalm_fed-*.whl"))
    if not built:
        raise BundleError(f"{wheelhouse}: pip wheel wrote no pandalm_fed wheel")
    return built[-1]


def _has_module(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


def _record_hashes(lines: Sequence[str], prefix: str) -> dict[str, str]:
    """`path -> hash` of a RECORD's files under `prefix` (the native libraries)."""
    hashes = {}
    for line in lines:
        path, _, rest = line.partition(",")
        digest = rest.partition(",")[0]
        if path.startswith(prefix) and digest:
            hashes[path] = digest
    return hashes


NATIVE_LIBS = "llama_cpp/lib/"


def installed_llama_wheel(extra: Sequence[Path], log: Log) -> Path:
    """The locally built llama-cpp-python wheel whose native libraries are the ones installed
    here, so that the bundle carries (and its manifest states) the build this machine runs.

    Looked for in `--wheels` folders, `$PANDALM_HOME/wheelhouse` (the Makefile keeps one folder
    per set of CMake flags) and pip's wheel cache."""
    dirs = [Path(d) for d in extra]
    for d in dirs:
        if not d.is_dir():
            raise BundleError(f"--wheels {d}: no such folder")
    default = cache_dir() / "wheelhouse"
    if default.is_dir():
        dirs.append(default)
    try:
        dist = metadata.distribution(NO_PYPI_WHEEL)
    except metadata.PackageNotFoundError:
        raise BundleError(
            f"{NO_PYPI_WHEEL} is not installed here: build the bundle from the environment "
            "`make setup` creates"
        ) from None
    installed = {
        str(f): f"{f.hash.mode}={f.hash.value}"
        for f in dist.files or []
        if f.hash is not None and str(f).startswith(NATIVE_LIBS)
    }
    pattern = f"{NO_PYPI_WHEEL.replace('-', '_')}-{dist.version}-*.whl"
    pip_cache = subprocess.run(
        [sys.executable, "-m", "pip", "cache", "dir"], capture_output=True, text=True, check=False
    ).stdout.strip()
    searched = [*dirs, *([Path(pip_cache) / "wheels"] if pip_cache else [])]
    candidates = sorted({w for d in searched for w in d.rglob(pattern)})
    for wheel in candidates:
        with zipfile.ZipFile(wheel) as archive:
            record = next((n for n in archive.namelist() if n.endswith(".dist-info/RECORD")), "")
            lines = archive.read(record).decode().splitlines() if record else []
        if installed and _record_hashes(lines, NATIVE_LIBS) == installed:
            log(f"using {wheel} (the llama.cpp build installed here)")
            return wheel
    where = ", ".join(map(str, searched)) or str(default)
    if candidates:
        raise BundleError(
            f"{len(candidates)} {pattern} found in {where}, none the build installed here "
            f"({dist.locate_file(NATIVE_LIBS)}): rebuild and reinstall it with `make setup` "
            "or pass --wheels DIR holding the wheel it was installed from"
        )
    raise BundleError(
        f"no {pattern} in {where}: {NO_PYPI_WHEEL} has no wheel on PyPI; build it once with "
        "`make setup` (it lands in $PANDALM_HOME/wheelhouse/llama-cpp/) or pass --wheels DIR"
    )


def offline_environment() -> dict[str, str]:
    """pip as on the site: no config files, no PIP_* settings, no index."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env.update(PIP_CONFIG_FILE=os.devnull, PIP_NO_INDEX="1", PIP_DISABLE_PIP_VERSION_CHECK="1")
    return env


def build_wheelhouse(wheelhouse: Path, wheels: Sequence[Path] = (), log: Log = print) -> list[str]:
    """Download every wheel the project needs; returns the pinned requirements, checked to
    resolve from the wheelhouse alone."""
    wheelhouse.mkdir(parents=True, exist_ok=True)
    shutil.copy2(installed_llama_wheel(wheels, log), wheelhouse)
    log(f"building the {PROJECT} wheel")
    project = _project_wheel(source_root(), wheelhouse)
    constraints = wheelhouse.parent / ".constraints.txt"
    constraints.write_text("\n".join(installed_pins()) + "\n")
    log("downloading the dependencies' wheels at this environment's versions")
    try:
        _pip(
            [
                "download", "-q", "--only-binary=:all:", "--dest", str(wheelhouse),
                "--find-links", str(wheelhouse),
                "--constraint", str(constraints), str(project),
            ],
            "downloading the dependencies",
        )  # fmt: skip
    finally:
        constraints.unlink(missing_ok=True)
    log("checking that the wheelhouse alone installs the project")
    report = wheelhouse.parent / ".report.json"
    version = project.name.split("-")[1]
    try:
        _pip(
            [
                "install", "--dry-run", "--ignore-installed", "--no-index", "-q",
                "--only-binary=:all:", "--find-links", str(wheelhouse), "--report", str(report),
                f"{PROJECT}=={version}",
            ],
            f"resolving {PROJECT} from {wheelhouse} alone",
            env=offline_environment(),
        )  # fmt: skip
        items = json.loads(report.read_text())["install"]
    finally:
        report.unlink(missing_ok=True)
    used = {Path(unquote(urlparse(item["download_info"]["url"]).path)).name for item in items}
    for wheel in wheelhouse.glob("*.whl"):
        if wheel.name not in used:
            wheel.unlink()  # downloaded but not needed on this platform
    return sorted(f"{i['metadata']['name']}=={i['metadata']['version']}" for i in items)


def finish_bundle(
    root: Path, plan: ModelPlan, requirements: Sequence[str], cpu_flags: Sequence[str]
) -> None:
    """Everything but the wheelhouse: models, template, install script, pins, checksums;
    `cpu_flags` are the /proc/cpuinfo flags the bundled llama.cpp build needs."""
    models = root / "models"
    for source, destination in plan.copies:
        target = models / destination
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, target, ignore=shutil.ignore_patterns(".*"))
        else:
            shutil.copy2(source, target)
    models.mkdir(parents=True, exist_ok=True)
    (root / "site.toml.template").write_text(site_template(plan))
    script = source_root() / "deploy" / "bundle" / "install.sh"
    if not script.is_file():
        raise BundleError(f"{script}: missing from the source checkout")
    shutil.copy2(script, root / "install.sh")
    (root / "install.sh").chmod(0o755)
    (root / "requirements.txt").write_text("\n".join(requirements) + "\n")
    (root / "bundle.env").write_text(
        f"PANDALM_VERSION={_project_version()}\n"
        f"PYTHON_VERSION={sys.version_info.major}.{sys.version_info.minor}\n"
        f"MACHINE={platform.machine()}\n"
        f"LLAMA_CPU_BASELINE={baseline_name(list(cpu_flags))}\n"
        f'LLAMA_CPU_FLAGS="{" ".join(cpu_flags)}"\n'
    )
    sums = [
        f"{_sha256(path)}  {path.relative_to(root).as_posix()}"
        for path in sorted(root.rglob("*"))
        if path.is_file() and path.name != "SHA256SUMS"
    ]
    (root / "SHA256SUMS").write_text("\n".join(sums) + "\n")


def _project_version() -> str:
    config = tomllib.loads((source_root() / "pyproject.toml").read_text())
    return str(config["project"]["version"])


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_archive(root: Path, out: Path) -> int:
    """tar.gz (gzip level 1: wheels and GGUFs are compressed already) or plain .tar."""
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(f".{out.name}.partial")
    mode = "w" if out.name.endswith(".tar") else "w:gz"
    options = {} if mode == "w" else {"compresslevel": 1}
    try:
        with tarfile.open(partial, mode, **options) as archive:  # type: ignore[call-overload]
            archive.add(root, arcname=TOP)
        os.replace(partial, out)
    finally:
        partial.unlink(missing_ok=True)
    return out.stat().st_size


def build_bundle(
    out: Path,
    judge: str = "builtin",
    base: Path | None = None,
    wheels: Sequence[Path] = (),
    log: Log = print,
) -> BundleResult:
    """Build the whole bundle in a scratch folder next to `out`, then archive it."""
    if not out.name.endswith((".tar.gz", ".tgz", ".tar")):
        raise BundleError(f"--out {out}: name it .tar.gz, .tgz or .tar")
    plan = plan_models(judge, base)
    source_root()
    out.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(dir=out.parent, prefix=".pandalm-bundle-"))
    try:
        root = scratch / TOP
        requirements = build_wheelhouse(root / "wheelhouse", wheels, log)
        cpu_flags = required_flags(system_info())
        log(
            f"llama.cpp build: {baseline_name(cpu_flags)} ({' '.join(cpu_flags)}); "
            f"copying {len(plan.copies)} model file(s) and writing install.sh"
        )
        finish_bundle(root, plan, requirements, cpu_flags)
        log(f"writing {out}")
        size = write_archive(root, out)
        count = len(list((root / "wheelhouse").glob("*.whl")))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    models = [d for _, d in plan.copies]
    return BundleResult(out, size, count, list(requirements), models, baseline_name(cpu_flags))
