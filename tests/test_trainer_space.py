"""The search space: the paper's grid, TOML parsing and its errors, stable config ids, runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from typer.testing import CliRunner

from common.space import (
    ALPACA_BASELINE,
    CandidateConfig,
    SpaceError,
    load_space,
    parse_space,
    plan_training_runs,
)
from trainer.cli import app

BASELINE = {"optimizer": "adamw", "learning_rate": 2e-5, "scheduler": "cosine", "epochs": 3}


def test_paper_grid_has_80_configs_in_16_runs_of_5_epochs() -> None:
    space = load_space()
    assert len(space.configs) == 80
    assert len({config.id for config in space.configs}) == 80
    runs = plan_training_runs(space.configs)
    assert len(runs) == 16
    assert all(run.epochs == 5 and len(run.configs) == 5 for run in runs)
    assert {run.params["optimizer"] for run in runs} == {"sgd", "adamw"}
    assert {run.params["learning_rate"] for run in runs} == {2e-6, 1e-5, 2e-5, 2e-4}
    assert {run.params["scheduler"] for run in runs} == {"cosine", "linear"}
    assert [c.params["epochs"] for c in runs[0].configs] == [1, 2, 3, 4, 5]


def test_alpaca_baseline_is_a_named_config_of_the_grid() -> None:
    space = load_space()
    baseline = space.named(ALPACA_BASELINE)
    assert dict(baseline.params) == BASELINE
    assert baseline in space.configs


def test_config_ids_are_pinned() -> None:
    """Ids travel between machines and releases: any change here breaks running federations."""
    assert CandidateConfig.from_params(BASELINE).id == "7270eac5d7d0"
    lora = CandidateConfig.from_params({**BASELINE, "finetune": "lora", "lora_rank": 16})
    assert lora.id == CandidateConfig.from_params(lora.params).id
    assert lora.id != CandidateConfig.from_params(BASELINE).id


@given(
    order=st.permutations(list(BASELINE)),
    int_lr=st.booleans(),
    upper=st.booleans(),
    explicit_neutral=st.booleans(),
)
def test_config_id_ignores_spelling(
    order: list[str], int_lr: bool, upper: bool, explicit_neutral: bool
) -> None:
    params = {name: BASELINE[name] for name in order}
    params["learning_rate"] = 1 if int_lr else 1.0
    if upper:
        params["optimizer"], params["scheduler"] = "AdamW", "Cosine"
    if explicit_neutral:
        params.update(finetune="full", data_fraction=1)
    reference = CandidateConfig.from_params({**BASELINE, "learning_rate": 1.0})
    assert CandidateConfig.from_params(params) == reference


@pytest.mark.parametrize(
    "change",
    [
        {"epochs": 4},
        {"learning_rate": 2e-4},
        {"optimizer": "sgd"},
        {"scheduler": "linear"},
        {"data_fraction": 0.5},
        {"finetune": "lora"},
        {"finetune": "qlora"},
        {"finetune": "lora", "lora_rank": 4},
    ],
)
def test_every_parameter_changes_the_id(change: dict) -> None:
    assert CandidateConfig.from_params({**BASELINE, **change}).id != "7270eac5d7d0"


def test_lora_configs_carry_their_rank_and_full_ones_drop_a_rank_axis() -> None:
    space = parse_space(
        """
        [grid]
        optimizer = "adamw"
        learning_rate = 2e-5
        scheduler = "cosine"
        epochs = [1, 2]
        finetune = ["full", "lora"]
        lora_rank = [4, 8]
        data_fraction = [0.5, 1.0]
        """
    )
    # full: 2 epochs x 2 fractions; lora: 2 epochs x 2 ranks x 2 fractions
    assert len(space.configs) == 4 + 8
    assert {c.params.get("lora_rank") for c in space.configs} == {None, 4, 8}
    assert all(("lora_rank" in c.params) == (c.get("finetune") == "lora") for c in space.configs)
    assert len(plan_training_runs(space.configs)) == 2 + 4


def test_several_grids_and_a_default_finetune() -> None:
    space = parse_space(
        """
        [[grid]]
        optimizer = "sgd"
        learning_rate = [1e-5, 2e-5]
        scheduler = "linear"
        epochs = 1
        [[grid]]
        optimizer = "adamw"
        learning_rate = 2e-5
        scheduler = "cosine"
        epochs = 1
        finetune = "full"
        """,
        finetune="lora",
    )
    assert [c.get("finetune") for c in space.configs] == ["lora", "lora", "full"]
    assert space.configs[0].params["lora_rank"] == 8


def test_config_horizon_gives_every_config_its_own_run() -> None:
    space = load_space()
    runs = plan_training_runs(space.configs, horizon="config")
    assert len(runs) == 80
    assert all(run.epochs == run.configs[0].params["epochs"] for run in runs)
    shared = plan_training_runs(space.configs, horizon="run")
    assert len({r.id for r in runs} | {r.id for r in shared}) == 80 + 16


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        (
            "[grid]\noptimizer=['sgd', 'adam']\nlearning_rate=1e-5\nscheduler='linear'\nepochs=1",
            "[grid]: optimizer must be one of sgd, adamw, got 'adam'",
        ),
        ("[grid]\noptimizer = 'sgd'", "missing parameter(s): learning_rate, scheduler, epochs"),
        (
            "[grid]\noptimizer='sgd'\nlearning_rate=-1\nscheduler='linear'\nepochs=1",
            "learning_rate must be a positive number",
        ),
        (
            "[grid]\noptimizer='sgd'\nlearning_rate=1e-5\nscheduler='linear'\nepochs=[]",
            "[grid]: epochs has no values",
        ),
        (
            "[grid]\noptimizer='sgd'\nlearning_rate=1e-5\nscheduler='linear'\nepochs=1\nmomentum=0.9",
            "unknown parameter 'momentum'",
        ),
        (
            "[named.x]\noptimizer='sgd'\nlearning_rate=1e-5\nscheduler='linear'\nepochs=1\n"
            "lora_rank=4",
            "[named.x]: lora_rank applies to finetune = 'lora' or 'qlora' only",
        ),
        ("[grids]\noptimizer = 'sgd'", "unknown table(s) grids"),
        ("[grid\n", "invalid TOML"),
        ("", "declares no [grid] and no [named.NAME] config"),
    ],
)
def test_bad_spaces_name_the_file_and_field(tmp_path: Path, toml: str, message: str) -> None:
    path = tmp_path / "space.toml"
    path.write_text(toml)
    with pytest.raises(SpaceError) as error:
        load_space(path)
    assert str(error.value).startswith(str(path))
    assert message in str(error.value)


def test_cli_space_json_lists_ids_and_parameters() -> None:
    result = CliRunner().invoke(app, ["space", "--json"])
    assert result.exit_code == 0, result.output
    listed = json.loads(result.stdout)
    assert len(listed) == 80
    assert {"id": "7270eac5d7d0", "params": BASELINE} in listed


def test_cli_space_table_and_errors(tmp_path: Path) -> None:
    path = tmp_path / "space.toml"
    path.write_text(
        "[named.mine]\noptimizer='sgd'\nlearning_rate=1e-5\nscheduler='linear'\nepochs=2"
    )
    result = CliRunner().invoke(app, ["space", "--space", str(path), "--qlora"])
    assert result.exit_code == 0, result.output
    config = load_space(path, finetune="qlora").named("mine")
    assert config.id in result.stdout and "mine" in result.stdout and "qlora" in result.stdout
    result = CliRunner().invoke(app, ["space", "--lora", "--qlora"])
    assert result.exit_code == 2
    assert "--lora and --qlora exclude each other" in result.output
