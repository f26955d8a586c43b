"""Command-line options declared once, on a dataclass's fields.

A field becomes an option of a typer command when its metadata carries `cli(...)`:

    learning_rate: float = field(default=2e-5, metadata=cli(min=0.0, help="peak learning rate"))

`dataclass_options(Settings)` adds those options to a command, with the field's type and default;
the command receives their values as one dict (`settings`), so that it builds the dataclass inside
its own error handling (a dataclass's `__post_init__` checks raise there).
"""

from __future__ import annotations

import dataclasses
import inspect
import typing
from collections.abc import Callable
from typing import Annotated, Any

import typer
from typer.models import OptionInfo

CLI = "cli"
"""The field-metadata key of an option."""
INTO = "settings"
"""The command's parameter that receives the options' values."""


def cli(*names: str, help: str, **settings: Any) -> dict[str, OptionInfo]:
    """Field metadata that makes the field an option: `names` (default `--field-name`), its
    help line and any other `typer.Option` setting (`min`, `exists`, `hidden`...)."""
    return {CLI: typer.Option(*names, help=help, **settings)}


def _default(field: dataclasses.Field) -> Any:
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return inspect.Parameter.empty


def dataclass_options(settings_class: type) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorate a typer command: after its own parameters come one option per `cli` field of
    `settings_class`, in field order; the command gets them as its parameter `settings`, a dict
    field -> value."""
    hints = typing.get_type_hints(settings_class)
    fields = [f for f in dataclasses.fields(settings_class) if CLI in f.metadata]

    def decorate(command: Callable[..., Any]) -> Callable[..., Any]:
        own = inspect.signature(command, eval_str=True)
        params = [p for name, p in own.parameters.items() if name != INTO]
        clash = {p.name for p in params} & {f.name for f in fields}
        if INTO not in own.parameters or clash:
            raise TypeError(f"{command.__name__}: needs a parameter {INTO!r} and no field names")
        params += [
            inspect.Parameter(
                f.name,
                inspect.Parameter.KEYWORD_ONLY,
                default=_default(f),
                annotation=Annotated[hints[f.name], f.metadata[CLI]],
            )
            for f in fields
        ]

        def run(**values: Any) -> Any:
            chosen = {f.name: values.pop(f.name) for f in fields}
            return command(**values, **{INTO: chosen})

        run.__name__, run.__qualname__ = command.__name__, command.__qualname__
        run.__doc__, run.__module__ = command.__doc__, command.__module__
        run.__signature__ = own.replace(  # type: ignore[attr-defined]
            parameters=[p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in params]
        )
        return run

    return decorate
