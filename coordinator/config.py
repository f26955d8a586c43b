"""The operator's federation.toml, validated on load with errors naming file and field."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path

from common.settings import (
    RunConfig,
    RunSettings,
    read_toml,
    settings_table,
    typed_table,
)
from common.space import SpaceError, load_space
from coordinator.selection import check_selection_mode


class FederationConfigError(ValueError):
    """A federation.toml that cannot be used."""


@settings_table
class SuperLinkSettings:
    address: str = "127.0.0.1:9092"
    database: str = "superlink.sqlite"
    insecure: bool = False
    certificates: str = ""
    """Folder with ca.crt, server.pem, server.key (`pandalm-coordinator certs init`)."""
    authenticate_sites: bool = True
    """Only SuperNodes whose public key was registered (`pandalm-coordinator sites add`)
    may connect; needs TLS."""


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
        return RunConfig(self.run, self.database_url, self.space, self.wire_log).as_flower_config()


@settings_table
class RunTable:
    """federation.toml's [run] table: the run's name and where its files are."""

    name: str
    """The run's key: sites keep their work under it, a restart with it resumes the run."""
    state_dir: str = "coordinator-state"
    """The SuperLink's and the coordinator's files, next to federation.toml."""
    database: str = "coordinator.sqlite"
    """A SQLAlchemy URL, or a SQLite file in state_dir."""
    space: str = ""
    """The search space's TOML file; default: the paper's grid."""
    wire_log: str = ""


@settings_table
class SuperLinkTable(SuperLinkSettings):
    """federation.toml's [superlink] table: the SuperLink's settings, and whether to start it."""

    start: bool = True


def _check_baseline(path: Path, baseline: str, space_file: Path | None) -> None:
    """A baseline must name a config of the run's space (the paper's grid without a space
    file): refused here, before any process starts, rather than after the selection."""
    if not baseline:
        return
    try:
        space = load_space(space_file)
    except SpaceError as exc:
        raise FederationConfigError(f"{path}: [run].space: {exc}") from None
    try:
        space.index_of(baseline)
    except SpaceError as exc:
        raise FederationConfigError(f"{path}: [selection].baseline: {exc}") from None


def load_federation_config(path: Path) -> FederationConfig:
    """Read and validate a federation.toml: every table, key, type and allowed value."""
    document = read_toml(path, FederationConfigError)
    unknown = set(document) - {"run", "selection", "superlink"}
    if unknown:
        raise FederationConfigError(f"{path}: [{sorted(unknown)[0]}]: unknown table")
    run = typed_table(RunTable, document.get("run", {}), f"{path}: [run]", FederationConfigError)
    base = path.parent.resolve()
    if run.space and not (base / run.space).is_file():
        raise FederationConfigError(f"{path}: [run].space: no file {run.space}")
    settings = typed_table(
        RunSettings,
        document.get("selection", {}),
        f"{path}: [selection]",
        FederationConfigError,
        renamed={"mode": "selection_mode"},
        run_key=run.name,
    )
    try:
        check_selection_mode(settings.selection_mode)
    except ValueError as exc:
        raise FederationConfigError(f"{path}: [selection].selection_mode: {exc}") from None
    _check_baseline(path, settings.baseline, base / run.space if run.space else None)
    link = typed_table(
        SuperLinkTable, document.get("superlink", {}), f"{path}: [superlink]", FederationConfigError
    )
    link_settings = {f.name: getattr(link, f.name) for f in fields(SuperLinkSettings)}
    if link.certificates:
        link_settings["certificates"] = str(base / link.certificates)
    return FederationConfig(
        run=settings,
        database=run.database,
        space=str(base / run.space) if run.space else "",
        state_dir=base / run.state_dir,
        superlink=SuperLinkSettings(**link_settings),
        start_superlink=link.start,
        wire_log=str(base / run.wire_log) if run.wire_log else "",
    )
