"""A site's configuration (`site.toml`), validated on load with errors naming file and field."""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal
from urllib.parse import SplitResult, urlsplit

import pydantic
import tomlkit

from common.settings import read_toml, settings_table, typed_table
from common.space import FINETUNES
from judge.backends import BACKENDS, Location, check_spec_form

SITE_TEMPLATE = """\
# A pandalm-fed site. Only win/tie/loss tallies ever leave this machine.
[site]
name = "site"
data_dir = "site-data" # checkpoints, responses, judgments, ledger
# database = "postgresql+psycopg://USER:PASSWORD@HOST/DB"  # default: SQLite in data_dir
# judge_cache = "postgresql+psycopg://USER:PASSWORD@HOST/DB"  # the judgment cache, likewise
workers = 1                       # job workers, each on its own GPU (or on the CPU)
worker_lease = 120.0              # s after a dead worker's last heartbeat: its job is taken over

[data]
train = "builtin"                 # or an Alpaca-format JSON/JSONL file
validation = "builtin"            # or a JSON/JSONL file of instruction/input records
builtin_seed = 0
train_examples = 64
validation_items = 16

[model]
base = "builtin"                  # or a local transformers model directory
max_length = 256
batch_size = 8
max_steps_per_epoch = 0           # 0: whole epochs
max_new_tokens = 64
generation_batch_size = 8         # validation prompts decoded together
torch_threads = 1
keep_weights = false              # full weights are deleted once their responses exist
                                  # (adapters kept; export retrains a deleted winner)

[judge]
spec = "builtin"                  # rule:NAME | gguf:PATH | hf:PATH | openai:URL | reward:PATH|URL
allow_remote = false              # a served judge must be on this site's network unless true

[privacy]
epsilon = 0.0                     # > 0: differentially private tallies (agent/privacy.py)
budget = 0.0                      # total epsilon per run; 0: no limit

[flower]
superlink = "127.0.0.1:9092"
clientappio_port = 9094
insecure = false
root_certificates = ""
"""


def site_toml(
    name: str, seed: int = 0, settings: Mapping[str, Mapping[str, object]] | None = None
) -> str:
    """`SITE_TEMPLATE` for site `name` (its data in `NAME-data`, builtin data shard `seed`) with
    `settings` set table by table, its comments kept: `pandalm-agent init`, the demo and the
    offline bundle all write their site.toml from it."""
    document = tomlkit.parse(SITE_TEMPLATE)
    values = {"site": {"name": name, "data_dir": f"{name}-data"}, "data": {"builtin_seed": seed}}
    for table, table_values in [*values.items(), *(settings or {}).items()]:
        for key, value in table_values.items():
            document[table][key] = value  # type: ignore[index]
    return tomlkit.dumps(document)


class SiteConfigError(ValueError):
    """A site.toml that cannot be used; the message names the file and field."""


@settings_table
class DataSettings:
    train: str = "builtin"
    """Alpaca-format JSON/JSONL file, or `builtin` for the generated demo data."""
    validation: str = "builtin"
    builtin_seed: int = 0
    """Shard seed of the builtin data: sites with different seeds hold different data."""
    train_examples: int = 64
    validation_items: int = 16


@settings_table
class ModelSettings:
    base: str = "builtin"
    finetune: Literal[FINETUNES] = "full"
    max_length: int = 256
    batch_size: int = 8
    max_steps_per_epoch: int = 0
    """0 trains whole epochs; N caps every epoch at N optimizer steps (quick demos)."""
    lora_top_layers: int = 0
    """LoRA candidates adapt only the last N layers (cheaper steps); 0: every layer."""
    max_new_tokens: int = 64
    generation_batch_size: int = 8
    """Validation prompts decoded together: on a CPU one batch of 8 costs little more than one
    prompt, whatever the training batch size."""
    torch_threads: int = 1
    keep_weights: bool = False
    """Keep full fine-tuning weights after their responses exist (judging needs only
    responses; LoRA adapters are always kept; `export` trains a deleted winner again)."""


@settings_table
class JudgeSettings:
    spec: str = "builtin"
    max_new_tokens: int = 256
    allow_remote: bool = False
    """An `openai:URL` judge sees the site's texts: its host must be loopback or a private
    address unless this is set."""

    @pydantic.field_validator("spec")
    @classmethod
    def _spec_syntax(cls, spec: str) -> str:
        """The spec's form and options; its model file is looked for when the judge loads."""
        check_spec_form(spec)
        return spec


@settings_table
class PrivacySettings:
    epsilon: float = 0.0
    """Differential privacy per comparison (agent/privacy.py); 0 sends exact tallies."""
    budget: float = 0.0
    """Total epsilon a run may spend at this site; 0: no limit."""


@settings_table
class FlowerSettings:
    superlink: str = "127.0.0.1:9092"
    clientappio_port: int = 9094
    insecure: bool = False
    root_certificates: str = ""


@dataclass(frozen=True)
class SiteConfig:
    """Everything a site agent needs; paths are resolved against the config file's folder."""

    name: str
    data_dir: Path
    database: str = ""
    """SQLAlchemy URL of the agent's state; empty: SQLite in the data directory."""
    judge_cache_database: str = ""
    """SQLAlchemy URL of the judgment cache; empty: SQLite in the data directory."""
    workers: int = 1
    """Job workers `pandalm-agent start` runs, each pinned to one device."""
    worker_lease: float = 120.0
    """Seconds a worker's claim on a job outlives its last heartbeat."""
    data: DataSettings = field(default_factory=DataSettings)
    model: ModelSettings = field(default_factory=ModelSettings)
    judge: JudgeSettings = field(default_factory=JudgeSettings)
    privacy: PrivacySettings = field(default_factory=PrivacySettings)
    flower: FlowerSettings = field(default_factory=FlowerSettings)
    source: Path | None = None

    @property
    def database_url(self) -> str:
        return self.database or f"sqlite:///{self.data_dir / 'agent.sqlite'}"

    @property
    def candidates_dir(self) -> Path:
        return self.data_dir / "candidates"

    @property
    def responses_file(self) -> Path:
        return self.data_dir / "responses.jsonl"

    @property
    def keys_dir(self) -> Path:
        return self.data_dir / "keys"

    @property
    def judge_cache(self) -> str:
        """The judgment cache's database URL."""
        return self.judge_cache_database or f"sqlite:///{self.data_dir / 'judge-cache.sqlite'}"


@settings_table
class SiteTable:
    """site.toml's [site] table."""

    name: str
    data_dir: str = ""
    """Default: `NAME-data` next to the file."""
    database: str = ""
    """The agent database's SQLAlchemy URL; default: SQLite in data_dir."""
    judge_cache: str = ""
    """The judgment cache's URL; default: SQLite in data_dir."""
    workers: int = 1
    """Job workers, each pinned to one device (a GPU each, in turn; all on the CPU without)."""
    worker_lease: float = 120.0
    """Seconds after a worker's last heartbeat (every quarter lease) when another worker may
    take its training or comparison job over: longer than any pause of a live worker."""

    def __post_init__(self) -> None:
        if self.workers < 1:
            raise ValueError(f"workers: must be at least 1, got {self.workers}")
        if not self.worker_lease > 0:
            raise ValueError(f"worker_lease: must be above 0, got {self.worker_lease}")


SECTIONS = {
    "privacy": PrivacySettings,
    "data": DataSettings,
    "model": ModelSettings,
    "judge": JudgeSettings,
    "flower": FlowerSettings,
}


def load_site_config(path: Path) -> SiteConfig:
    """Read and validate a site.toml: every table, key, type and allowed value."""
    document = read_toml(path, SiteConfigError)
    for key in document:
        if key not in ("site", *SECTIONS):
            raise SiteConfigError(f"{path}: [{key}]: unknown table")
    site = typed_table(SiteTable, document.get("site", {}), f"{path}: [site]", SiteConfigError)
    parsed = {
        key: typed_table(cls, document.get(key, {}), f"{path}: [{key}]", SiteConfigError)
        for key, cls in SECTIONS.items()
    }
    data_dir = Path(site.data_dir or f"{site.name}-data").expanduser()
    if not data_dir.is_absolute():
        data_dir = path.parent.resolve() / data_dir
    for key in ("train", "validation"):
        value = getattr(parsed["data"], key)
        if value != "builtin" and not (path.parent / value).expanduser().exists():
            raise SiteConfigError(f"{path}: [data].{key}: no file {value}")
    return SiteConfig(
        name=site.name,
        data_dir=data_dir,
        database=site.database,
        judge_cache_database=site.judge_cache,
        workers=site.workers,
        worker_lease=site.worker_lease,
        source=path.resolve(),
        **parsed,
    )


def resolve_data_path(config: SiteConfig, value: str) -> Path:
    base = config.source.parent if config.source else Path.cwd()
    return (base / value).expanduser()


def _judge_url(config: SiteConfig) -> SplitResult | None:
    """The URL of a served judge (a registered kind whose location is a URL), else None."""
    kind, location, _options = check_spec_form(config.judge.spec)
    return urlsplit(location) if BACKENDS[kind].where(location) is Location.URL else None


def judge_endpoint(config: SiteConfig) -> str | None:
    """`host:port` of a served judge (where the site's texts are sent), else None."""
    url = _judge_url(config)
    if url is None:
        return None
    port = url.port or (443 if url.scheme == "https" else 80)
    return f"{url.hostname}:{port}"


def check_judge_endpoint(config: SiteConfig) -> None:
    """Refuse a judge server outside the site's network: every address its host resolves to
    must be loopback or private, unless `[judge] allow_remote = true`."""
    url = _judge_url(config)
    if url is None or config.judge.allow_remote:
        return
    host = url.hostname
    where = f"{config.source}: [judge].spec"
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(host, None)}
    except socket.gaierror as exc:
        raise SiteConfigError(
            f"{where}: cannot resolve the judge host {host!r} to check that it is on the "
            f"site's network ({exc.strerror})"
        ) from None
    public = sorted(a for a in addresses if not (_ip(a).is_loopback or _ip(a).is_private))
    if public:
        raise SiteConfigError(
            f"{where}: the judge host {host} is at {', '.join(public)}, not a loopback or "
            "private address; the judge is sent the site's texts, so it must be on the site's "
            "own network (set [judge] allow_remote = true if that server is yours)"
        )


def _ip(address: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    return ipaddress.ip_address(address.partition("%")[0])
