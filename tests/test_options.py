"""Command-line options declared on dataclass fields (trainer/options.py): every marked field is
an option with its help, type, bounds and default, and the values reach the dataclass."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pytest
import typer
from typer.testing import CliRunner

from trainer.arguments import (
    BuiltinJudgeArguments,
    CandidateTrainingArguments,
    JudgeTrainingArguments,
)
from trainer.cli import app as train_app
from trainer.options import CLI, cli, dataclass_options

runner = CliRunner()


@dataclass
class Recipe:
    out: Path = field(metadata=cli("--out", help="where it goes"))
    steps: int = field(default=3, metadata=cli(min=1, help="how many steps"))
    mode: Literal["fast", "slow"] = field(default="fast", metadata=cli(help="the pace"))
    tags: list[str] = field(default_factory=list, metadata=cli("--tag", help="a label"))
    hidden_knob: float = 0.5  # no `cli`: not an option


def _recipe_app(seen: list[Recipe]) -> typer.Typer:
    app = typer.Typer()

    @app.command()
    @dataclass_options(Recipe)
    def cook(settings: dict[str, Any], dry: bool = False) -> None:
        """Cook a recipe."""
        seen.append(Recipe(**settings))

    @app.command()
    def other() -> None:  # a second command, so that `cook` is a subcommand
        """Nothing."""

    return app


def test_every_marked_field_is_an_option_and_its_value_reaches_the_dataclass(
    tmp_path: Path,
) -> None:
    seen: list[Recipe] = []
    app = _recipe_app(seen)
    help_text = " ".join(runner.invoke(app, ["cook", "--help"]).output.split())
    for phrase in ("--out", "where it goes", "--steps", "how many steps", "--mode", "the pace"):
        assert phrase in help_text
    assert "--tag" in help_text and "--dry" in help_text and "hidden" not in help_text
    result = runner.invoke(
        app, ["cook", "--out", str(tmp_path), "--steps", "7", "--mode", "slow", "--tag", "a",
              "--tag", "b"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert seen == [Recipe(tmp_path, 7, "slow", ["a", "b"])]
    assert runner.invoke(app, ["cook", "--out", "x"]).exit_code == 0
    assert seen[-1] == Recipe(Path("x"))  # the dataclass's defaults
    assert runner.invoke(app, ["cook", "--out", "x", "--steps", "0"]).exit_code == 2  # min=1
    assert runner.invoke(app, ["cook", "--steps", "2"]).exit_code == 2  # --out is required


@pytest.mark.parametrize(
    ("command", "settings"),
    [
        ("judge", JudgeTrainingArguments),
        ("candidates", CandidateTrainingArguments),
        ("builtin-judge", BuiltinJudgeArguments),
    ],
)
def test_pandalm_train_help_lists_every_field_option_with_its_help(
    command: str, settings: type
) -> None:
    result = runner.invoke(train_app, [command, "--help"], env={"COLUMNS": "250"})
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    marked = [f for f in dataclasses.fields(settings) if CLI in f.metadata]
    assert len(marked) >= 5
    for f in marked:
        option = f.metadata[CLI]
        # in Annotated[..., typer.Option("--out")] the first name sits in `default`
        names = [d for d in (option.default, *option.param_decls) if isinstance(d, str)]
        assert (names or ["--" + f.name.replace("_", "-")])[0].split("/")[0] in text, f.name
        assert option.help and option.help in text, f.name
