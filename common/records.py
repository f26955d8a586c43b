"""Reading JSON-array or JSONL files record by record, with errors that name the file, line and
field: every package reads user data through this (judge test sets, training data, validation
sets)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

MAX_PROBLEMS = 20
"""`record_problems` stops after this many bad records: the operator sees the pattern."""


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
        if line.strip():
            where = f"{path}:{number}"
            yield where, _jsonl_record(where, line)


def _jsonl_record(where: str, line: str) -> dict:
    """One line of a JSONL file as a JSON object."""
    try:
        item = json.loads(line)
    except json.JSONDecodeError as exc:
        raise InputError(f"{where}: invalid JSON ({exc.msg})") from exc
    if not isinstance(item, dict):
        raise InputError(f"{where}: expected a JSON object")
    return item


def record_problems(
    path: Path, check: Callable[[str, dict], object], limit: int = MAX_PROBLEMS
) -> list[str]:
    """Every problem of a data file, one line each naming `file:line` and field: each record
    parsed and passed to `check` (which raises InputError), so a file is checked whole before
    hours of work start. A JSONL file goes on past a bad line; a JSON array that does not
    parse is one problem. At most `limit` problems, then a line saying how many more."""
    problems: list[str] = []
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        return [f"{path}: cannot read ({exc})"]
    if text.lstrip().startswith("["):
        records: Iterator[tuple[str, dict | InputError]] = _array_records(path)
    else:
        records = _line_records(path, text)
    count = 0
    for where, record in records:
        count += 1
        try:
            if isinstance(record, InputError):
                raise record
            check(where, record)
        except InputError as exc:
            problems.append(str(exc))
    if not count:
        problems.append(f"{path}: no records")
    if len(problems) > limit:
        problems[limit:] = [f"{path}: {len(problems) - limit} more bad records"]
    return problems


def _array_records(path: Path) -> Iterator[tuple[str, dict | InputError]]:
    try:
        yield from read_records(path)
    except InputError as exc:  # the array does not parse, or an item is no object
        yield str(path), exc


def _line_records(path: Path, text: str) -> Iterator[tuple[str, dict | InputError]]:
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            where = f"{path}:{number}"
            try:
                yield where, _jsonl_record(where, line)
            except InputError as exc:
                yield where, exc
