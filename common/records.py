"""Reading JSON-array or JSONL files record by record, with errors that name the file, line and
field: every package reads user data through this (judge test sets, training data, validation
sets)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path


class InputError(ValueError):
    """Bad user input; the message names the file, line or item, and field."""


def read_records(path: Path) -> Iterator[tuple[str, dict]]:
    """Records of a JSON array or JSONL file, each with a location such as `file:7`."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: cannot read ({exc})") from exc
    if text.lstrip().startswith("["):
        try:
            items = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InputError(f"{path}:{exc.lineno}: invalid JSON ({exc.msg})") from exc
        for index, item in enumerate(items):
            where = f"{path}[{index}]"
            if not isinstance(item, dict):
                raise InputError(f"{where}: expected a JSON object")
            yield where, item
        return
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            item = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InputError(f"{where}: invalid JSON ({exc.msg})") from exc
        if not isinstance(item, dict):
            raise InputError(f"{where}: expected a JSON object")
        yield where, item
