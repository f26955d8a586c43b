"""A site without Flower: protocol answers from the database, the worker's real training,
generation and judging (on a judge backend double that prefers a planted token), the egress
ledger."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import pytest
from sqlmodel import Session, select

from agent.config import load_site_config, site_toml
from agent.db import (
    ComparisonJob,
    ItemJudgment,
    TrainingJob,
    ledger,
    open_database,
    reference_scores,
)
from agent.site import handle_message
from agent.worker import SiteWorker, reference_answers
from common.protocol import (
    COMPARE_MESSAGE,
    SPACE_MESSAGE,
    TRAIN_MESSAGE,
    Code,
    CompareMessage,
    Comparison,
    SpaceMessage,
    Status,
    TrainMessage,
    TrainRequest,
    encode_compare,
    encode_space,
    encode_train,
)
from common.space import CandidateConfig
from common.tally import Tally
from tests.doubles import planted_token_judge, planting_generation
from trainer.reference import exact_match

CONFIGS = [
    CandidateConfig.from_params(
        {"optimizer": optimizer, "learning_rate": lr, "scheduler": "linear", "epochs": epochs}
    )
    for optimizer, lr in (("adamw", 2e-4), ("sgd", 2e-6))
    for epochs in (1, 2)
]


def write_site_config(
    folder: Path,
    base: Path | str,
    name: str = "site-a",
    seed: int = 0,
    database: str = "",
    settings: Mapping[str, Mapping[str, object]] | None = None,
) -> Path:
    """`pandalm-agent init`'s site.toml for a small, insecure test site; `settings` set more,
    table by table."""
    tables: dict[str, dict[str, object]] = {
        "data": {"train_examples": 16, "validation_items": 6},
        "model": {"base": str(base), "max_length": 96, "max_new_tokens": 8, "keep_weights": True},
        "flower": {"insecure": True},
    }
    if database:
        tables["site"] = {"database": database}
    for table, values in (settings or {}).items():
        tables.setdefault(table, {}).update(values)
    path = folder / f"{name}.toml"
    path.write_text(site_toml(name, seed, tables))
    return path


def space_record(run_key: str = "run-1", configs=CONFIGS, train_on_request=False) -> dict:
    return encode_space(
        SpaceMessage(
            run_key=run_key,
            config_ids=tuple(c.id for c in configs),
            params=tuple(dict(c.params) for c in configs),
            validation_items=6,
            judge_mode="score",
            train_on_request=train_on_request,
        )
    )


def train_record(*configs: int, run_key: str = "run-1") -> dict:
    return encode_train(TrainMessage(run_key, TrainRequest(configs)))


def compare_record(*pairs: tuple[int, int]) -> dict:
    return encode_compare(CompareMessage("run-1", tuple(Comparison(a, b, 0, 6) for a, b in pairs)))


def site_tally(engine, row) -> Tally:
    """A site's own tally, from its database, for a comparison the coordinator recorded (configs
    are indices into CONFIGS)."""
    with Session(engine) as session:
        job = session.exec(
            select(ComparisonJob).where(
                ComparisonJob.run_key == row.run_key,
                ComparisonJob.a_id == CONFIGS[row.a].id,
                ComparisonJob.b_id == CONFIGS[row.b].id,
                ComparisonJob.item_start == row.item_start,
            )
        ).one()
        return job.tally()


def test_site_answers_from_its_database(
    tmp_path: Path, tiny_llama: Path, new_database_url, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = load_site_config(
        write_site_config(tmp_path, tiny_llama, database=new_database_url("agent"))
    )
    engine = open_database(config.database_url)

    early = handle_message(engine, COMPARE_MESSAGE, compare_record((0, 1)))
    assert (early["status"], early["code"]) == (Status.REFUSED, Code.UNKNOWN_RUN)
    accepted = handle_message(engine, SPACE_MESSAGE, space_record())
    assert (accepted["status"], accepted["pointwise_judge"]) == (Status.OK, 0)
    again = handle_message(engine, SPACE_MESSAGE, space_record(), pointwise_judge=True)
    assert (again["status"], again["pointwise_judge"]) == (Status.OK, 1)
    changed = handle_message(engine, SPACE_MESSAGE, space_record(configs=CONFIGS[:3]))
    assert (changed["status"], changed["code"]) == (Status.REFUSED, Code.SPACE_CHANGED)
    forged = space_record("run-2")
    forged["param.epochs"][0] = 3
    refused = handle_message(engine, SPACE_MESSAGE, forged)
    assert refused["code"] == Code.CONFIG_ID_MISMATCH
    unknown = handle_message(engine, "train", {})
    assert (unknown["status"], unknown["code"]) == (Status.REFUSED, Code.UNKNOWN_MESSAGE)

    request = compare_record((1, 0), (2, 3), (0, 3))
    pending = handle_message(engine, COMPARE_MESSAGE, request)
    assert pending["status"] == Status.PENDING and pending["tallies"] == []

    planted = CONFIGS[1].id
    monkeypatch.setattr("trainer.generate.generate_responses", planting_generation(planted))
    worker = SiteWorker(config, judge_factory=planted_token_judge())
    while worker.step():
        pass
    responses = [json.loads(line) for line in config.responses_file.open()]
    assert len({r["config_id"] for r in responses}) == 4

    # The judge-free reference checks, per config, kept in the site's database (no tally, they
    # never leave the site): exact match on the builtin tasks' answers, and the dense one, the
    # answers' mean per-token NLL under the candidate, scored while its model was loaded.
    answers = reference_answers(config)
    rows = reference_scores(engine, "run-1")
    scores = {(row.config_id, row.metric): row for row in rows}
    assert len(rows) == len(scores) == 2 * len(CONFIGS)
    assert {metric for _, metric in scores} == {"exact_match", "answer_nll"}
    for config_id in (c.id for c in CONFIGS):
        mine = {r["item_id"]: r["response"] for r in responses if r["config_id"] == config_id}
        expected = sum(exact_match(mine[i], a.text) for i, a in answers.items()) / len(answers)
        row = scores[config_id, "exact_match"]
        assert (row.items, row.value) == (6, expected)
        nll = scores[config_id, "answer_nll"]
        assert nll.items == 6 and 0 < nll.value < 30
    assert len({round(scores[c.id, "answer_nll"].value, 6) for c in CONFIGS}) > 1, (
        "the candidates differ, and so do their NLLs"
    )

    answer = handle_message(engine, COMPARE_MESSAGE, request)
    assert answer["status"] == Status.OK
    # (1 vs 0): the planted config 1 wins all 6 items; (2 vs 3): ties; (0 vs 3): ties
    assert answer["tallies"] == [6, 0, 0, 0, 6, 0, 6, 0, 0, 6, 0, 6, 0, 0, 6]
    assert handle_message(engine, COMPARE_MESSAGE, request) == answer
    with Session(engine) as session:
        assert len(session.exec(select(ItemJudgment)).all()) == 18

    # Nothing but the protocol's integer fields left the site.
    entries = ledger(engine)
    assert len(entries) == 9
    for entry in entries:
        content = json.loads(entry.content)
        flag = {"pointwise_judge"} if entry.message_type == SPACE_MESSAGE else set()
        assert set(content) - flag == {"status", "code", "progress", "tallies"}
        assert all(
            isinstance(v, int)
            for v in (
                content["status"],
                content["code"],
                content["progress"],
                *content["tallies"],
                *(content[name] for name in flag & set(content)),
            )
        )


def test_the_site_says_its_judge_is_pointwise_from_the_spec(tmp_path: Path) -> None:
    from agent.client_app import _pointwise_judge

    gguf = tmp_path / "judge.gguf"
    gguf.write_bytes(b"GGUF")
    for spec, pointwise in (("builtin", True), (f"gguf:{gguf}", False)):
        path = tmp_path / f"{pointwise}.toml"
        path.write_text(f'[site]\nname = "s"\n[judge]\nspec = "{spec}"\n')
        assert _pointwise_judge(str(path)) is pointwise


def _judge_site(folder: Path, spec: str, base: Path | str | None = None) -> Path:
    return write_site_config(folder, base or folder, settings={"judge": {"spec": spec}})


@pytest.mark.parametrize(
    ("url", "allowed"),
    [
        ("http://127.0.0.1:8000/v1", True),
        ("http://localhost:8000", True),
        ("http://10.20.0.5:8000/v1?model=pandalm-7b", True),
        ("http://[::1]:8000/v1", True),
        ("https://8.8.8.8/v1", False),
    ],
)
def test_a_judge_server_must_be_on_the_sites_network(
    tmp_path: Path, url: str, allowed: bool
) -> None:
    from agent.config import SiteConfigError, check_judge_endpoint

    path = _judge_site(tmp_path, f"openai:{url}")
    config = load_site_config(path)
    if allowed:
        check_judge_endpoint(config)
    else:
        with pytest.raises(
            SiteConfigError,
            match=r"\[judge\]\.spec: the judge host 8\.8\.8\.8 "
            r"is at 8\.8\.8\.8, not a loopback or private address; the judge is "
            r"sent the site's texts",
        ):
            check_judge_endpoint(config)
        remote = {"judge": {"spec": f"openai:{url}", "allow_remote": True}}
        check_judge_endpoint(
            load_site_config(write_site_config(tmp_path, tmp_path, settings=remote))
        )


def test_the_agent_refuses_a_public_judge_host_in_one_line(tmp_path: Path) -> None:
    """The check runs in the command's body, after the config loaded: still one line, exit 2."""
    from typer.testing import CliRunner

    from agent.cli import app

    path = _judge_site(tmp_path, "openai:https://8.8.8.8/v1")
    result = CliRunner().invoke(app, ["worker", "--config", str(path)])
    assert result.exit_code == 2, result.output
    assert "error:" in result.output and "the judge host 8.8.8.8" in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)


def test_a_judge_spec_that_is_no_url_is_refused_at_load(tmp_path: Path) -> None:
    from agent.config import SiteConfigError

    path = _judge_site(tmp_path, "openai:judge:8000")
    with pytest.raises(SiteConfigError, match=r"\[judge\]\.spec: .*is not an http\(s\) URL"):
        load_site_config(path)


def test_the_ledger_names_the_judge_server_at_run_start(
    tmp_path: Path, tiny_llama: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The pairs go to the judge server: its host (and nothing else) is in the ledger once,
    written when the run starts (here training then fails at once)."""

    def fail(*_args, **_kwargs):
        raise RuntimeError("training failed")

    monkeypatch.setattr("trainer.candidates.train_candidates", fail)
    spec = "openai:http://127.0.0.1:8000/v1?model=judge"
    config = load_site_config(_judge_site(tmp_path, spec, base=tiny_llama))
    engine = open_database(config.database_url)
    handle_message(engine, SPACE_MESSAGE, space_record())
    worker = SiteWorker(config)
    assert worker.step()
    worker._prepare("run-1")  # a restarted worker does not write it twice
    entries = [e for e in ledger(engine, "run-1") if e.message_type == "judge.endpoint"]
    assert [json.loads(e.content) for e in entries] == [{"judge_host": "127.0.0.1:8000"}]


@pytest.mark.parametrize(
    ("tables", "error"),
    [
        ('[model]\nfinetune = "lorra"', r"\[model\]\.finetune: 'lorra' is not one of 'full'"),
        ('[judge]\nspec = "gguff:x.gguf"', r"\[judge\]\.spec: unknown judge spec 'gguff:x\.gguf'"),
        ('[judge]\nspec = "hf:m?quant=8bit&bach=2"', r"\[judge\]\.spec: .*unknown option 'bach'"),
        ('[privacy]\nepsilon = "1.0"', r"\[privacy\]\.epsilon: must be float, got '1\.0'"),
        ("[flower]\ninsecure = 1", r"\[flower\]\.insecure: must be bool, got 1"),
        ("[data]\nbuiltin_seed = 1.5", r"\[data\]\.builtin_seed: must be int, got 1\.5"),
        ("[model]\nbach_size = 4", r"\[model\]\.bach_size: unknown setting \(known: base,"),
        ("[modle]", r"\[modle\]: unknown table"),
        ('[model]\nbatch_size = "eight"', r"\[model\]\.batch_size: must be int"),
        ('[data]\ntrain = "missing.jsonl"', r"\[data\]\.train: no file missing\.jsonl"),
        ("[site]\nnmae = 1", r"\[site\]\.name: required\n.*\[site\]\.nmae: unknown setting"),
    ],
)
def test_site_config_refuses_typos_and_wrong_types(tmp_path: Path, tables: str, error: str) -> None:
    """Every setting is checked when the file is read, with file and key in one line."""
    from agent.config import SiteConfigError

    path = tmp_path / "site.toml"
    site = "" if tables.startswith("[site]") else '[site]\nname = "a"\n'
    path.write_text(f"{site}{tables}\n")
    with pytest.raises(SiteConfigError, match=rf"^{path}: {error}"):
        load_site_config(path)


def test_a_site_trains_on_request_only_what_it_is_asked(
    tmp_path: Path, tiny_llama: Path, new_database_url, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A space sent with train_on_request trains nothing up front; `query.train` trains each
    asked config's run up to its epoch and generates those responses; a later request goes on
    from the last epoch trained and never trains an epoch twice."""
    config = load_site_config(
        write_site_config(tmp_path, tiny_llama, database=new_database_url("agent"))
    )
    engine = open_database(config.database_url)
    monkeypatch.setattr("trainer.generate.generate_responses", planting_generation(CONFIGS[1].id))
    worker = SiteWorker(config, judge_factory=planted_token_judge())
    assert handle_message(engine, SPACE_MESSAGE, space_record(train_on_request=True))["status"] == 0
    assert worker.step(), "the run's training jobs are planned"
    assert not worker.step(), "nothing is trained up front"
    early = handle_message(engine, COMPARE_MESSAGE, compare_record((0, 2)))
    assert (early["status"], early["code"]) == (Status.REFUSED, Code.NOT_READY)

    first = train_record(0, 2)  # epoch 1 of both runs
    assert handle_message(engine, TRAIN_MESSAGE, first) == {
        "status": Status.PENDING, "code": 0, "progress": 0, "tallies": []
    }  # fmt: skip
    while worker.step():
        pass
    assert handle_message(engine, TRAIN_MESSAGE, first)["status"] == Status.OK
    responses = {json.loads(line)["config_id"] for line in config.responses_file.open()}
    assert responses == {CONFIGS[0].id, CONFIGS[2].id}
    runs = sorted((config.candidates_dir / "runs").iterdir())
    assert all(len(list(run.glob("checkpoint-*"))) == 1 for run in runs)
    assert handle_message(engine, COMPARE_MESSAGE, compare_record((0, 2)))["status"] == 1
    while worker.step():
        pass
    assert handle_message(engine, COMPARE_MESSAGE, compare_record((0, 2)))["status"] == 0

    second = train_record(0, 1)  # config 0 is trained; config 1 continues run 0 to epoch 2
    assert handle_message(engine, TRAIN_MESSAGE, second)["progress"] == 500
    while worker.step():
        pass
    assert handle_message(engine, TRAIN_MESSAGE, second)["status"] == Status.OK
    with Session(engine) as session:
        jobs = list(session.exec(select(TrainingJob)))
    assert [job.status for job in jobs] == ["done", "done"], "one job per training run"
    assert sorted((job.until_epoch, job.epochs_ready) for job in jobs) == [(1, 1), (2, 2)]
    assert sum(job.epochs_trained for job in jobs) == 3, "3 epochs, none twice"
    assert sorted(len(list(run.glob("checkpoint-*"))) for run in runs) == [1, 2]

    normal = handle_message(engine, SPACE_MESSAGE, space_record("run-2"))
    assert normal["status"] == Status.OK
    refused = handle_message(engine, TRAIN_MESSAGE, train_record(0, run_key="run-2"))
    assert (refused["status"], refused["code"]) == (Status.REFUSED, Code.OUT_OF_RANGE)
    bad = handle_message(engine, TRAIN_MESSAGE, {**first, "configs": [2, 0]})
    assert (bad["status"], bad["code"]) == (Status.REFUSED, Code.OUT_OF_RANGE)
