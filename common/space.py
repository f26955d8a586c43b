"""The hyperparameter search space: TOML in, candidate configs with stable content-hash ids out.

Deliberately light (standard library only): the agent and the wire protocol read config ids and
parameters without loading torch.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

OPTIMIZERS = ("sgd", "adamw")
SCHEDULERS = ("cosine", "linear")
FINETUNES = ("full", "lora", "qlora")
REQUIRED = ("optimizer", "learning_rate", "scheduler", "epochs")
DEFAULT_LORA_RANK = 8
ALPACA_BASELINE = "alpaca-baseline"

ScheduleHorizon = Literal["run", "config"]
SCHEDULE_HORIZONS: tuple[str, ...] = ("run", "config")

PAPER_SPACE_TOML = """\
# The PandaLM paper's grid (section 4): optimizer x learning rate x scheduler x epochs 1-5.
# One training run per (optimizer, learning_rate, scheduler) saves a checkpoint at the end of
# every epoch: 16 runs, 80 configs.
[grid]
optimizer = ["sgd", "adamw"]
learning_rate = [2e-6, 1e-5, 2e-5, 2e-4]
scheduler = ["cosine", "linear"]
epochs = [1, 2, 3, 4, 5]

# Stanford Alpaca's recipe, a config of the grid.
[named.alpaca-baseline]
optimizer = "adamw"
learning_rate = 2e-5
scheduler = "cosine"
epochs = 3
"""


class SpaceError(ValueError):
    """A search space or config that cannot be used; the message names the place and field."""


@dataclass(frozen=True)
class Parameter:
    """One hyperparameter as every side spells it: its type, its choices (names) or range (a
    positive integer; a positive number up to `maximum`), and the value that stands for "not
    set" (left out of a config's canonical form, so adding the parameter to a space keeps the
    ids of the paper's configs; the wire sends it in an empty cell)."""

    kind: type
    choices: tuple[str, ...] = ()
    maximum: float | None = None
    unset: str | int | float | None = None

    def canonical(self, name: str, value: Any) -> str | int | float:
        """The value in one spelling; SpaceError names the parameter when it is not allowed."""
        if self.choices:
            if not isinstance(value, str) or value.lower() not in self.choices:
                choices = ", ".join(self.choices)
                raise SpaceError(f"{name} must be one of {choices}, got {value!r}")
            return value.lower()
        is_int = isinstance(value, int) and not isinstance(value, bool)
        if self.kind is int:
            if not is_int or value < 1:
                raise SpaceError(f"{name} must be a positive integer, got {value!r}")
            return value
        maximum = math.inf if self.maximum is None else self.maximum
        if not (is_int or isinstance(value, float)) or not 0 < value <= maximum:
            allowed = "a positive number" if self.maximum is None else f"in (0, {maximum:g}]"
            raise SpaceError(f"{name} must be {allowed}, got {value!r}")
        return float(value)


PARAMETERS: dict[str, Parameter] = {
    "optimizer": Parameter(str, OPTIMIZERS),
    "learning_rate": Parameter(float),
    "scheduler": Parameter(str, SCHEDULERS),
    "epochs": Parameter(int),
    "finetune": Parameter(str, FINETUNES, unset="full"),
    "lora_rank": Parameter(int, unset=0),
    "data_fraction": Parameter(float, maximum=1.0, unset=1.0),
}
"""The search space's parameters: the space file, config ids, the wire protocol's parameter
columns (common/protocol.py) and the trainer all read them from here."""


def _canonical_value(name: str, value: Any) -> str | int | float:
    if name not in PARAMETERS:
        raise SpaceError(f"unknown parameter {name!r} (known: {', '.join(PARAMETERS)})")
    return PARAMETERS[name].canonical(name, value)


def canonical_params(params: Mapping[str, Any]) -> dict[str, Any]:
    """Validated parameters in one spelling: lower-case names, floats, neutral values left out."""
    missing = [name for name in REQUIRED if name not in params]
    if missing:
        raise SpaceError(f"missing parameter(s): {', '.join(missing)}")
    canonical = {name: _canonical_value(name, value) for name, value in params.items()}
    finetune = _param(canonical, "finetune")
    if finetune == "full" and "lora_rank" in canonical:
        raise SpaceError("lora_rank applies to finetune = 'lora' or 'qlora' only")
    if finetune != "full":
        canonical.setdefault("lora_rank", DEFAULT_LORA_RANK)
    return {
        name: value for name, value in sorted(canonical.items()) if value != PARAMETERS[name].unset
    }


def _param(params: Mapping[str, Any], name: str) -> Any:
    return params[name] if name in params else PARAMETERS[name].unset


def params_id(params: Mapping[str, Any]) -> str:
    """First 12 hex digits of the SHA-256 of the parameters' canonical JSON (sorted keys)."""
    text = json.dumps(dict(params), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:12]


@dataclass(frozen=True)
class CandidateConfig:
    """One point of the search space; `id` is the same on every machine."""

    id: str
    params: Mapping[str, Any] = field(hash=False)

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> CandidateConfig:
        canonical = canonical_params(params)
        return cls(params_id(canonical), canonical)

    def get(self, name: str) -> Any:
        """A parameter's value, its neutral value where the canonical form leaves it out."""
        return _param(self.params, name)

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "params": dict(self.params)}


@dataclass(frozen=True)
class SearchSpace:
    """The configs of a space in declaration order, and the names some of them carry."""

    configs: tuple[CandidateConfig, ...]
    names: Mapping[str, str] = field(default_factory=dict)  # name -> config id

    def named(self, name: str) -> CandidateConfig:
        if name not in self.names:
            raise SpaceError(f"no config named {name!r} (named: {', '.join(self.names) or '-'})")
        return next(config for config in self.configs if config.id == self.names[name])

    def index_of(self, name_or_id: str) -> int:
        """The position of the config named `name_or_id`, or whose id it is (a federation's
        baseline is written either way)."""
        config_id = self.names.get(name_or_id, name_or_id)
        for index, config in enumerate(self.configs):
            if config.id == config_id:
                return index
        names = ", ".join(self.names) or "-"
        raise SpaceError(f"{name_or_id!r} is no named config (named: {names}) and no config id")


def _grid_configs(grid: Mapping[str, Any], where: str) -> list[CandidateConfig]:
    axes = {name: values if isinstance(values, list) else [values] for name, values in grid.items()}
    empty = [name for name, values in axes.items() if not values]
    if empty:
        raise SpaceError(f"{where}: {empty[0]} has no values")
    configs = []
    for values in itertools.product(*axes.values()):
        params = dict(zip(axes, values, strict=True))
        if str(params.get("finetune", "full")).lower() == "full":
            params.pop("lora_rank", None)  # a rank axis means nothing to full fine-tuning
        configs.append(_config(params, where))
    return configs


def _config(params: Mapping[str, Any], where: str) -> CandidateConfig:
    try:
        return CandidateConfig.from_params(params)
    except SpaceError as exc:
        raise SpaceError(f"{where}: {exc}") from exc


def _table(value: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise SpaceError(f"{where}: expected a table, got {value!r}")
    return value


def parse_space(text: str, source: str = "<space>", finetune: str | None = None) -> SearchSpace:
    """A space from TOML: `[grid]` (or several `[[grid]]`) tables and `[named.NAME]` configs.

    `finetune` sets the method of every grid or named config that does not declare one.
    """
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise SpaceError(f"{source}: invalid TOML ({exc})") from exc
    unknown = set(document) - {"grid", "named"}
    if unknown:
        raise SpaceError(f"{source}: unknown table(s) {', '.join(sorted(unknown))}")
    grids = document.get("grid", [])
    grids = grids if isinstance(grids, list) else [grids]
    named = document.get("named", {})
    if not grids and not named:
        raise SpaceError(f"{source}: declares no [grid] and no [named.NAME] config")

    def with_default(params: Mapping[str, Any]) -> dict[str, Any]:
        return {"finetune": finetune, **params} if finetune else dict(params)

    configs: list[CandidateConfig] = []
    for index, grid in enumerate(grids):
        where = f"{source} [grid]" if len(grids) == 1 else f"{source} [[grid]] #{index + 1}"
        configs.extend(_grid_configs(with_default(_table(grid, where)), where))
    names = {}
    for name, params in _table(named, f"{source} [named]").items():
        where = f"{source} [named.{name}]"
        config = _config(with_default(_table(params, where)), where)
        configs.append(config)
        names[name] = config.id
    unique = {config.id: config for config in configs}  # equal ids are equal configs
    return SearchSpace(tuple(unique.values()), names)


def load_space(path: Path | None = None, finetune: str | None = None) -> SearchSpace:
    """The space declared in `path`, or the paper's grid without one."""
    if path is None:
        return parse_space(PAPER_SPACE_TOML, "<paper grid>", finetune)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise SpaceError(f"{path}: cannot read ({exc})") from exc
    return parse_space(text, str(path), finetune)


@dataclass(frozen=True)
class TrainingRun:
    """One training run: configs that differ only in epochs share it, one checkpoint per epoch."""

    id: str
    params: Mapping[str, Any] = field(hash=False)  # the configs' parameters without epochs
    epochs: int
    configs: tuple[CandidateConfig, ...]  # by epochs

    def get(self, name: str) -> Any:
        return _param(self.params, name)

    def config_for_epoch(self, epoch: int) -> CandidateConfig | None:
        return next((c for c in self.configs if c.params["epochs"] == epoch), None)


def plan_training_runs(
    configs: Iterable[CandidateConfig], horizon: ScheduleHorizon = "run"
) -> list[TrainingRun]:
    """Group configs into training runs.

    With horizon `run`, configs that differ only in epochs share a run of their largest epoch
    count, so the checkpoint of epoch k sits on a schedule that spans the whole run (as in the
    paper). With horizon `config`, every config has its own run whose schedule ends at its epoch.
    """
    if horizon not in SCHEDULE_HORIZONS:
        raise SpaceError(f"schedule horizon must be one of {SCHEDULE_HORIZONS}, got {horizon!r}")
    groups: dict[str, list[CandidateConfig]] = {}
    for config in configs:
        shared = {k: v for k, v in config.params.items() if k != "epochs"}
        key = params_id(shared) if horizon == "run" else config.id
        groups.setdefault(key, []).append(config)
    runs = []
    for members in groups.values():
        members = sorted(members, key=lambda c: c.params["epochs"])
        shared = {k: v for k, v in members[0].params.items() if k != "epochs"}
        served = [c.params["epochs"] for c in members]
        training_run_id = params_id({**shared, "epochs": served})
        runs.append(TrainingRun(training_run_id, shared, served[-1], tuple(members)))
    return runs


def training_run_indices(params: Sequence[Mapping[str, Any]]) -> list[list[int]]:
    """The space's training runs (horizon `run`) as lists of config indices by epochs: configs
    that differ only in `epochs`, in the order each run first appears. The coordinator's view,
    which sees parameters and no trainer: a multi-fidelity selection trains a run epoch by epoch
    and the epoch-k checkpoint is the config `epochs = k`."""
    runs: dict[str, list[int]] = {}
    for index, config in enumerate(params):
        shared = {k: v for k, v in config.items() if k != "epochs"}
        runs.setdefault(params_id(shared), []).append(index)
    return [sorted(run, key=lambda i: params[i]["epochs"]) for run in runs.values()]
