"""Preflight: everything a site needs, checked before hours of work start.

`pandalm-agent check` and `pandalm-agent start` run these checks before any process starts, and
the worker runs them again before it trains a run (a config changed behind a running agent then
fails at once, not after the training). Each problem is one line naming the file, line and
field, with the protocol code the worker sends for it (`Code.BAD_DATA`, `BAD_JUDGE`,
`BAD_BASE_MODEL`, `NO_DISK`); the text itself never leaves the site.

Checked: every record of the training and validation files (each line parsed, each field
checked, by the trainer's own record readers), the judge spec's model file, model directory or
server, the base model directory, that the data directory and the databases can be written, and
the disk space the run's checkpoints take (an estimate, from the base model's size).
"""

from __future__ import annotations

import errno
import json
import shutil
import socket
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from sqlalchemy import text
from sqlalchemy.engine import make_url

from agent.config import SiteConfig, SiteConfigError, check_judge_endpoint, resolve_data_path
from common.protocol import Code
from common.records import InputError, record_problems
from common.space import DEFAULT_LORA_RANK, CandidateConfig
from dbschema import create_database_engine
from judge.backends import SpecError, parse_spec
from judge.models import ModelNotFoundError, builtin_base_gguf, builtin_base_hf_path
from trainer.data import instruction_record, validation_item
from trainer.reference import reference_answer

JUDGE_CONNECT_SECONDS = 3.0
WEIGHT_FILES = ("*.safetensors", "*.bin", "*.gguf")
DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}
MIB = 2**20


@dataclass(frozen=True)
class Problem:
    """One thing that stops the site from working, and the code the worker sends for it."""

    code: Code
    text: str


@dataclass(frozen=True)
class DiskEstimate:
    """Disk a run's training takes at its peak: every config's kept checkpoint (bf16 weights or
    the LoRA adapter) plus the newest unfinished checkpoint's full-precision resume state."""

    checkpoint_bytes: int
    resume_bytes: int
    configs: int
    """The run's configs; 0 when no run is known yet (room for one candidate)."""
    free_bytes: int
    present_bytes: int = 0
    """Checkpoints already under the candidates folder (a resumed run's, reused)."""

    @property
    def needed_bytes(self) -> int:
        total = max(self.configs, 1) * self.checkpoint_bytes + self.resume_bytes
        return max(total - self.present_bytes, 0)

    def line(self) -> str:
        what = f"a space of {self.configs} configs" if self.configs else "one candidate"
        return (
            f"disk: about {self.checkpoint_bytes / MIB:.0f} MiB per candidate checkpoint and "
            f"{self.resume_bytes / MIB:.0f} MiB of resume state; {what}: "
            f"{self.needed_bytes / MIB:.0f} MiB needed, {self.free_bytes / MIB:.0f} MiB free"
        )


def site_problems(
    config: SiteConfig,
    configs: Sequence[CandidateConfig] = (),
    reach_judge: bool = True,
) -> list[Problem]:
    """Every problem preflight finds (empty: ready). `configs`: a run's space, for its disk
    estimate (none: room for one candidate); `reach_judge`: also connect to a judge server."""
    return [
        *_config_problems(config),
        *_data_problems(config),
        *_judge_problems(config, reach_judge),
        *_base_model_problems(config),
        *_storage_problems(config),
        *_disk_problems(config, configs),
    ]


def _config_problems(config: SiteConfig) -> Iterator[Problem]:
    """The data files the config names must still be there (the config may have changed)."""
    for key in ("train", "validation"):
        value = getattr(config.data, key)
        if value != "builtin" and not resolve_data_path(config, value).is_file():
            yield Problem(Code.BAD_DATA, f"{config.source}: [data].{key}: no file {value}")


def _data_problems(config: SiteConfig) -> Iterator[Problem]:
    """Every record of the site's own data files, each field checked."""
    checks: dict[str, Callable[[str, dict], object]] = {
        "train": instruction_record,
        "validation": lambda where, record: (
            validation_item(where, record),
            reference_answer(where, record),
        ),
    }
    for key, check in checks.items():
        value = getattr(config.data, key)
        path = resolve_data_path(config, value)
        if value != "builtin" and path.is_file():
            for line in record_problems(path, check):
                yield Problem(Code.BAD_DATA, line)


def _judge_problems(config: SiteConfig, reach: bool) -> Iterator[Problem]:
    """The spec's model file or directory is there; a server is on the site's network and,
    with `reach`, answers a connection."""
    where = f"{config.source}: [judge].spec"
    try:
        spec = parse_spec(config.judge.spec)
        check_judge_endpoint(config)
    except (SpecError, ModelNotFoundError) as exc:
        yield Problem(Code.BAD_JUDGE, f"{where}: {exc}")
        return
    except SiteConfigError as exc:
        yield Problem(Code.BAD_JUDGE, str(exc))
        return
    if reach and spec.served:
        url = _server_address(str(spec.path))
        try:
            socket.create_connection(url, timeout=JUDGE_CONNECT_SECONDS).close()
        except OSError as exc:
            yield Problem(
                Code.BAD_JUDGE,
                f"{where}: no judge server answers at {url[0]}:{url[1]} ({exc.strerror or exc})",
            )


def _server_address(url: str) -> tuple[str, int]:
    """(host, port) of an http(s) URL."""
    parts = urlsplit(url)
    return parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80)


def _base_model_problems(config: SiteConfig) -> Iterator[Problem]:
    """The base model the candidates start from is on this machine."""
    if config.model.base == "builtin":
        if (builtin_base_hf_path() / "config.json").is_file():
            return
        try:
            builtin_base_gguf()
        except ModelNotFoundError as exc:
            yield Problem(Code.BAD_BASE_MODEL, f"{config.source}: [model].base: {exc}")
        return
    path = Path(config.model.base).expanduser()
    if not (path / "config.json").is_file():
        yield Problem(
            Code.BAD_BASE_MODEL,
            f"{config.source}: [model].base: {path} is not a local transformers model "
            "directory (no config.json)",
        )


def base_model_dir(config: SiteConfig) -> Path | None:
    """The base model's directory as the trainer reads it, if it is there yet."""
    if config.model.base == "builtin":
        path = builtin_base_hf_path()
        return path if path.is_dir() else None
    path = Path(config.model.base).expanduser()
    return path if path.is_dir() else None


def _storage_problems(config: SiteConfig) -> Iterator[Problem]:
    """The data directory and both databases can be written."""
    problem = _unwritable(config.data_dir)
    if problem:
        yield Problem(Code.NO_DISK, f"{config.data_dir}: the data directory {problem}")
        return
    for key, url in (("database", config.database_url), ("judge_cache", config.judge_cache)):
        problem = _database_problem(url)
        if problem:
            yield Problem(Code.NO_DISK, f"{config.source}: [site].{key}: {problem}")


def _unwritable(folder: Path) -> str | None:
    """Why `folder` cannot hold the site's files, or None: a file is written there and removed
    (folders it lacked are made and removed again)."""
    made: list[Path] = []
    try:
        for parent in [*reversed(folder.parents), folder]:
            if not parent.exists():
                parent.mkdir()
                made.append(parent)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".preflight-"):
            pass
    except OSError as exc:
        return f"cannot be written ({exc.strerror or exc})"
    finally:
        for parent in reversed(made):
            parent.rmdir()
    return None


def _database_problem(url: str) -> str | None:
    """Why the database at `url` cannot be written, or None. A SQLite file's folder (and the
    file, if there) must be writable; a server must answer."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if not parsed.database or parsed.database == ":memory:":
            return None
        file = Path(parsed.database)
        problem = _unwritable(file.parent)
        if problem:
            return f"{file}: its folder {problem}"
        if file.exists() and not _opens_for_writing(file):
            return f"{file}: cannot be written"
        return None
    try:
        with create_database_engine(url).connect() as connection:
            connection.execute(text("SELECT 1"))
    except Exception as exc:  # any driver error: the line names the server, not a traceback
        shown = parsed.render_as_string(hide_password=True)
        return f"{shown}: cannot connect ({str(exc).splitlines()[0]})"
    return None


def _opens_for_writing(file: Path) -> bool:
    try:
        with file.open("r+b"):
            return True
    except OSError:
        return False


def _disk_problems(config: SiteConfig, configs: Sequence[CandidateConfig]) -> Iterator[Problem]:
    estimate = disk_estimate(config, configs)
    if estimate is not None and estimate.needed_bytes > estimate.free_bytes:
        yield Problem(Code.NO_DISK, f"{config.data_dir}: not enough disk: {estimate.line()}")


def disk_estimate(
    config: SiteConfig, configs: Sequence[CandidateConfig] = ()
) -> DiskEstimate | None:
    """The run's peak checkpoint disk; None when the base model or the disk cannot be read
    (their own checks say why). Without `configs`: one candidate."""
    base = base_model_dir(config)
    folder = next((p for p in [config.data_dir, *config.data_dir.parents] if p.is_dir()), None)
    if base is None or folder is None:
        return None
    model_config = _model_config(base)
    params = _parameter_count(base, model_config)
    if config.model.finetune == "full":
        checkpoint, resume = 2 * params, 12 * params  # bf16 kept; fp32 weights + AdamW state
    else:
        rank = max((int(c.params.get("lora_rank", 0)) for c in configs), default=0)
        adapter = _lora_parameters(model_config, rank or DEFAULT_LORA_RANK) or params
        checkpoint, resume = 4 * adapter, 12 * adapter
    return DiskEstimate(
        checkpoint_bytes=checkpoint,
        resume_bytes=resume,
        configs=len(configs),
        free_bytes=shutil.disk_usage(folder).free,
        present_bytes=_folder_bytes(config.candidates_dir),
    )


def _model_config(base: Path) -> dict:
    try:
        return json.loads((base / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def _parameter_count(base: Path, model_config: dict) -> int:
    """Parameters of the base model, from its weight files' size and stored dtype."""
    size = sum(f.stat().st_size for pattern in WEIGHT_FILES for f in base.glob(pattern))
    dtype = str(model_config.get("torch_dtype") or model_config.get("dtype") or "float32")
    return size // DTYPE_BYTES.get(dtype, 4)


def _lora_parameters(model_config: dict, rank: int) -> int:
    """A LoRA adapter on every linear layer of a LLaMA-family block (q, k, v, o, gate, up,
    down): rank x (in + out) per module; 0 when the config lacks the sizes."""
    try:
        hidden = int(model_config["hidden_size"])
        inner = int(model_config["intermediate_size"])
        layers = int(model_config["num_hidden_layers"])
        heads = int(model_config["num_attention_heads"])
    except (KeyError, TypeError, ValueError):
        return 0
    kv = hidden * int(model_config.get("num_key_value_heads", heads)) // heads
    return rank * layers * (9 * hidden + 2 * kv + 3 * inner)


def _folder_bytes(folder: Path) -> int:
    if not folder.is_dir():
        return 0
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def failure_code(exc: BaseException, default: Code) -> Code:
    """The code for an error met while preparing a run: bad data, a missing base model or a
    full disk say so; anything else is the step's own failure code (`default`)."""
    if isinstance(exc, InputError):
        return Code.BAD_DATA
    if isinstance(exc, ModelNotFoundError):
        return Code.BAD_BASE_MODEL
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return Code.NO_DISK
    return default
