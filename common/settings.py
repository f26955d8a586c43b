"""Reading operator TOML files into settings dataclasses, with errors that name the file and field.

Shared by the coordinator's federation.toml and the agent's site.toml. The settings classes are
pydantic dataclasses declared with `settings_table`: pydantic checks each key, type and allowed
value. `RunSettings` lives here, not in the coordinator, because the app bundle carries its
defaults and a site's guard builds that bundle; so does `RunConfig`, the Flower run config that
carries it to the ServerApp.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Literal, TypeVar

import pydantic
from pydantic import ConfigDict, ValidationError

from common.protocol import JUDGE_MODES

SETTINGS = ConfigDict(extra="forbid", strict=True)
"""Pydantic config of every settings dataclass an operator's TOML fills: no unknown key, no
coercion (a string where a number belongs is an error, not a guess; an int is a float)."""
settings_table = pydantic.dataclasses.dataclass(frozen=True, config=SETTINGS)
"""The decorator of those settings dataclasses: checked on construction, immutable after."""

T = TypeVar("T")

AUTO = "auto"
"""Not a procedure: the coordinator picks round robin or racing from the sites' judges."""


_TYPE_NAMES = {"int_type": "int", "float_type": "float", "bool_type": "bool", "string_type": "str"}


def read_toml(path: Path, error: type[ValueError]) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise error(f"{path}: cannot read ({exc})") from exc
    except tomllib.TOMLDecodeError as exc:
        raise error(f"{path}: invalid TOML ({exc})") from exc


def typed_table(
    cls: type[T],
    values: object,
    where: str,
    error: type[ValueError],
    renamed: Mapping[str, str] | None = None,
    **fixed: Any,
) -> T:
    """`cls` from a TOML table (plus `fixed` values set elsewhere in the file); every problem
    pydantic finds becomes one line `{where}.{key}: ...` of the raised `error`. A key of an
    older version, `renamed` old -> new, is refused with its new name."""
    if not isinstance(values, dict):
        raise error(f"{where}: expected a table")
    known = [f.name for f in fields(cls) if f.name not in fixed]  # type: ignore[arg-type]
    for key in values:
        if key in (renamed or {}):
            raise error(f"{where}.{key}: renamed to {renamed[key]}; write {renamed[key]} = ...")
        if key in fixed:
            raise error(f"{where}.{key}: unknown setting (known: {', '.join(known)})")
    try:
        return cls(**values, **fixed)
    except ValidationError as exc:
        raise error("\n".join(_line(where, e, known) for e in exc.errors())) from None


def _line(where: str, problem: Any, known: list[str]) -> str:
    kind, context, location = problem["type"], problem.get("ctx", {}), problem["loc"]
    # a check in __post_init__ has no location: its message starts with the key
    key = ".".join(str(part) for part in location) + ": " if location else ""
    message = str(context["error"]) if kind == "value_error" else problem["msg"]
    if kind in ("unexpected_keyword_argument", "extra_forbidden"):
        message = f"unknown setting (known: {', '.join(known)})"
    elif kind in _TYPE_NAMES:
        message = f"must be {_TYPE_NAMES[kind]}, got {problem['input']!r}"
    elif kind == "literal_error":
        message = f"{problem['input']!r} is not one of {context['expected']}"
    elif kind in ("missing", "missing_argument"):
        message = "required"
    return f"{where}.{key}{message}"


SECURE_AGGREGATION = ("required", "when-possible", "off")


@settings_table
class RunSettings:
    """What the operator sets in federation.toml for one run; pydantic checks every value on
    construction, `__post_init__` the budget. The coordinator's ServerApp gets them through the
    Flower run config, whose keys and defaults the app bundle (common/appbundle.py) declares."""

    run_key: str
    """The run's key: federation.toml's [run] name."""
    selection_mode: str = "paper"
    """A selection mode coordinator/selection.py registers, or auto; checked where the
    coordinator reads federation.toml (the modes are the coordinator's own business)."""
    min_sites: int = 1
    wait_for_sites: float = 300.0
    round_timeout: float = 60.0
    retry_seconds: float = 2.0
    max_retry_seconds: float = 30.0
    """Pending sites are asked again after retry_seconds, doubling up to this while nothing
    changes: every message costs a site a fresh ClientApp process."""
    patience: int = 3
    """Rounds a site must have missed (besides `site_timeout`) before it is left out, and the
    secure sums that may fail in a row before the run stops."""
    site_timeout: float = 600.0
    """Seconds without a valid answer after which a site is left out (questions to a stopped
    node come back at once, so rounds alone would drop it in seconds); one that answers again
    before the run ends rejoins."""
    validation_items: int = 16
    judge_mode: Literal[JUDGE_MODES] = "score"
    blocks: int = 4
    chunk_items: int = 8
    budget: float = 1.0
    """racing and halving: judgments to spend, as a multiple of the paper procedure's."""
    eta: int = 2
    """halving: each rung trains on only the best 1/eta of the runs it judged."""
    secure_aggregation: Literal[SECURE_AGGREGATION] = "required"
    """SecAgg+ for the tallies: `required` (stop with fewer than 3 sites), `when-possible`
    (tallies in the clear with fewer than 3 sites) or `off`."""
    result_timeout: float = 120.0
    """Seconds the coordinator keeps sending the run's result to sites that have not
    acknowledged it (offline and left-out sites get it when they answer again)."""
    baseline: str = ""
    """The default recipe to measure the choice against: a `[named.NAME]` config of the space
    (the paper's grid names Alpaca's, `alpaca-baseline`) or a config id; checked against the
    space where the coordinator reads federation.toml. Empty: no such comparison."""

    def __post_init__(self) -> None:
        if not self.budget > 0:
            raise ValueError(f"budget: must be above 0, got {self.budget}")
        if self.eta < 2:
            raise ValueError(f"eta: must be at least 2, got {self.eta}")
        if self.result_timeout < 0:
            raise ValueError(f"result_timeout: must be 0 or more, got {self.result_timeout}")


@dataclass(frozen=True)
class RunConfig:
    """What the flat Flower run config carries to the coordinator's ServerApp: a run's settings
    and files. `pandalm-coordinator start` writes it, the app bundle declares it with defaults
    and coordinator/server_app.py reads it back, all through this class."""

    settings: RunSettings
    database: str
    """The coordinator database's SQLAlchemy URL."""
    space: str = ""
    """The search space's TOML file; empty: the paper's grid."""
    wire_log: str = ""
    """The JSONL file every reply is recorded in; empty: none."""

    def as_flower_config(self) -> dict[str, object]:
        files = {"database": self.database, "space": self.space, "wire_log": self.wire_log}
        return {**asdict(self.settings), **files}

    @classmethod
    def from_flower_config(cls, config: Mapping[str, object]) -> RunConfig:
        """The inverse of `as_flower_config`; a setting the config lacks takes its default, and
        each value is cast to its default's type (an override may give 30 for 30.0)."""
        values = {
            name: type(declared.default)(config[name]) if name != "run_key" else str(config[name])
            for name, declared in RunSettings.__dataclass_fields__.items()
            if name in config
        }
        return cls(
            RunSettings(**values),
            str(config["database"]),
            str(config.get("space", "")),
            str(config.get("wire_log", "")),
        )
