"""Reading operator TOML files into dataclasses, with errors that name the file and field.

Shared by the coordinator's federation.toml and the agent's site.toml (the agent already
imports the coordinator's protocol module; this one is as light).
"""

from __future__ import annotations

import tomllib
from dataclasses import fields
from pathlib import Path
from typing import Any


def read_toml(path: Path, error: type[ValueError]) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise error(f"{path}: cannot read ({exc})") from exc
    except tomllib.TOMLDecodeError as exc:
        raise error(f"{path}: invalid TOML ({exc})") from exc


def typed_table(
    cls: type, values: object, where: str, error: type[ValueError], skip: tuple[str, ...] = ()
) -> dict[str, Any]:
    """Check a TOML table against a dataclass's fields and their defaults' types."""
    if not isinstance(values, dict):
        raise error(f"{where}: expected a table")
    known = {f.name: f for f in fields(cls) if f.name not in skip}
    checked = {}
    for key, value in values.items():
        if key not in known:
            raise error(f"{where}.{key}: unknown setting (known: {', '.join(known)})")
        expected = type(known[key].default)
        if expected is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        elif not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
            raise error(f"{where}.{key}: must be {expected.__name__}, got {value!r}")
        checked[key] = value
    return checked
