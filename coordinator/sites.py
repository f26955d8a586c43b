"""The sites allowed to connect, by name: `pandalm-coordinator sites add | list | remove`.

Flower's SuperLink admits a SuperNode by its public key and gives it a node id; the coordinator
database keeps the name the operator chose next to that node id (`RegisteredSite`), so results,
the console, summary.json and the report name registered sites. The name comes from the
operator, not from the site: nothing about a site crosses the wire for it.
"""

from __future__ import annotations

import re
from pathlib import Path

from coordinator.config import FederationConfig
from coordinator.db import (
    open_database,
    record_registration,
    record_removal,
    registered_site,
    site_names,
)
from coordinator.launch import CONNECTION, flwr_cli, write_connection

SITE_NAME = re.compile(r"(?=[A-Za-z0-9._-]*[A-Za-z])[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
"""Letters, digits, '.', '_', '-' (at most 64, at least one letter: never mistaken for a node
id; safe in the console's markup, the report's HTML and file names)."""


class SiteRegistryError(RuntimeError):
    """A site that cannot be added or removed as asked; the message says why."""


def register_site(federation: FederationConfig, name: str, key_file: Path) -> str:
    """Register the site's public key with the running SuperLink and record its name with the
    node id it got; returns that node id."""
    if not SITE_NAME.fullmatch(name):
        raise SiteRegistryError(
            f"site name {name!r}: use 1-64 letters, digits, '.', '_' or '-', starting with a "
            "letter or digit and holding at least one letter"
        )
    engine = open_database(federation.database_url)
    taken = registered_site(engine, name)
    if taken is not None:
        raise SiteRegistryError(
            f"a site named {name!r} is registered already (node {taken.node_id})"
        )
    public_key = key_file.read_text().strip()  # FileNotFoundError names the file
    write_connection(federation.superlink, federation.state_dir)
    answer = flwr_cli(federation.state_dir, "supernode", "register", str(key_file), CONNECTION,
                      "--name", name)  # fmt: skip
    node_id = str(answer["node-id"])
    record_registration(engine, node_id, name, public_key)
    return node_id


def list_sites(federation: FederationConfig) -> list[dict]:
    """Flower's list of nodes, each with the name it was registered under ("" if none)."""
    write_connection(federation.superlink, federation.state_dir)
    nodes = flwr_cli(federation.state_dir, "supernode", "list", CONNECTION).get("nodes", [])
    names = site_names(open_database(federation.database_url))
    return [{"name": names.get(str(n["node-id"]), ""), **n} for n in nodes]


def remove_site(federation: FederationConfig, name_or_node_id: str) -> str:
    """Unregister a site by name or node id; its SuperNode can no longer connect. Its name
    stays on record for earlier runs. Returns the node id."""
    engine = open_database(federation.database_url)
    site = registered_site(engine, name_or_node_id)
    if site is None and not name_or_node_id.isdigit():
        raise SiteRegistryError(f"no registered site named {name_or_node_id!r}")
    node_id = site.node_id if site is not None else name_or_node_id
    write_connection(federation.superlink, federation.state_dir)
    flwr_cli(federation.state_dir, "supernode", "unregister", node_id, CONNECTION)
    record_removal(engine, node_id)
    return node_id
