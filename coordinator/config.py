"""The operator's federation.toml, validated on load with errors naming file and field."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path

from coordinator.federation import RunSettings
from coordinator.launch import SuperLinkSettings
from coordinator.tomlconfig import read_toml, typed_table


class FederationConfigError(ValueError):
    """A federation.toml that cannot be used."""


@dataclass(frozen=True)
class FederationConfig:
    run: RunSettings
    database: str
    space: str
    state_dir: Path
    superlink: SuperLinkSettings = field(default_factory=SuperLinkSettings)
    start_superlink: bool = True
    wire_log: str = ""
    """JSONL file that records every reply exactly as it arrived (an audit of what sites sent)."""

    @property
    def database_url(self) -> str:
        if "://" in self.database:
            return self.database
        return f"sqlite:///{(self.state_dir / self.database).resolve()}"

    def run_config(self) -> dict[str, object]:
        """The Flower run config that carries these settings to the ServerApp."""
        values: dict[str, object] = {f.name: getattr(self.run, f.name) for f in fields(RunSettings)}
        values["database"] = self.database_url
        values["space"] = self.space
        values["wire_log"] = self.wire_log
        return values


def load_federation_config(path: Path) -> FederationConfig:
    document = read_toml(path, FederationConfigError)
    unknown = set(document) - {"run", "selection", "superlink"}
    if unknown:
        raise FederationConfigError(f"{path}: [{sorted(unknown)[0]}]: unknown table")
    run = dict(document.get("run", {}))
    name = run.pop("name", None)
    if not isinstance(name, str):
        raise FederationConfigError(f'{path}: [run].name = "..." is required')
    base = path.parent.resolve()
    state_dir = base / str(run.pop("state_dir", "coordinator-state"))
    database = str(run.pop("database", "coordinator.sqlite"))
    space = str(run.pop("space", ""))
    wire_log = str(run.pop("wire_log", ""))
    if run:
        raise FederationConfigError(f"{path}: [run].{sorted(run)[0]}: unknown setting")
    if space and not (base / space).is_file():
        raise FederationConfigError(f"{path}: [run].space: no file {space}")
    selection = typed_table(
        RunSettings,
        document.get("selection", {}),
        f"{path}: [selection]",
        FederationConfigError,
        skip=("name",),
    )
    link = dict(document.get("superlink", {}))
    start = link.pop("start", True)
    if not isinstance(start, bool):
        raise FederationConfigError(f"{path}: [superlink].start: must be bool")
    link = typed_table(SuperLinkSettings, link, f"{path}: [superlink]", FederationConfigError)
    if "certificates" in link:
        link["certificates"] = str(base / link["certificates"])
    try:
        settings = RunSettings(name=name, **selection)
    except ValueError as exc:
        raise FederationConfigError(f"{path}: [selection].{exc}") from None
    return FederationConfig(
        run=settings,
        database=database,
        space=str(base / space) if space else "",
        state_dir=state_dir,
        superlink=SuperLinkSettings(**link),
        start_superlink=start,
        wire_log=str(base / wire_log) if wire_log else "",
    )
