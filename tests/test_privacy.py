"""Optional differential privacy on tallies: the noise, valid noisy tallies, the budget."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.config import load_site_config
from agent.db import open_database
from agent.privacy import discrete_laplace, noisy_tally
from agent.site import handle_message
from agent.worker import SiteWorker
from common.protocol import COMPARE_MESSAGE, SPACE_MESSAGE, Code, Status
from common.tally import Tally
from tests.doubles import planted_token_judge, planting_generation
from tests.test_agent_site import CONFIGS, compare_record, space_record, write_site_config


@pytest.mark.parametrize("epsilon", [0.5, 2.0])
def test_noise_has_the_discrete_laplace_variance(epsilon: float) -> None:
    samples = discrete_laplace(np.random.default_rng(0), epsilon, 2, 200_000)
    q = math.exp(-epsilon / 2)
    assert abs(samples.mean()) < 0.05 * (1 + 1 / epsilon)
    assert samples.var() == pytest.approx(2 * q / (1 - q) ** 2, rel=0.05)


@given(
    st.lists(st.integers(0, 20), min_size=4, max_size=4),
    st.floats(0.1, 5.0),
    st.integers(0, 10_000),
)
def test_noisy_tallies_are_valid_reports(counts: list[int], epsilon: float, seed: int) -> None:
    span = sum(counts)
    noisy = noisy_tally(Tally(*counts, items=span), epsilon, span, np.random.default_rng(seed))
    assert min(noisy.win, noisy.tie, noisy.loss, noisy.invalid) >= 0
    assert noisy.items == noisy.win + noisy.tie + noisy.loss + noisy.invalid <= span


def test_budget_is_spent_once_per_comparison_and_then_refused(
    tmp_path: Path, tiny_llama: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_site_config(
        tmp_path, tiny_llama, settings={"privacy": {"epsilon": 1.0, "budget": 2.0}}
    )
    config = load_site_config(path)
    engine = open_database(config.database_url)
    assert handle_message(engine, SPACE_MESSAGE, space_record())["status"] == Status.OK
    monkeypatch.setattr("trainer.generate.generate_responses", planting_generation(CONFIGS[1].id))
    worker = SiteWorker(config, judge_factory=planted_token_judge())
    first = compare_record((1, 0), (2, 3))
    handle_message(engine, COMPARE_MESSAGE, first)
    while worker.step():
        pass
    answer = handle_message(engine, COMPARE_MESSAGE, first)
    assert answer["status"] == Status.OK
    assert handle_message(engine, COMPARE_MESSAGE, first) == answer  # no fresh noise on repeat
    tallies = answer["tallies"]
    assert all(t >= 0 for t in tallies) and tallies[4] <= 6 and tallies[9] <= 6

    third = compare_record((0, 3))
    handle_message(engine, COMPARE_MESSAGE, third)
    while worker.step():
        pass
    refused = handle_message(engine, COMPARE_MESSAGE, third)
    assert (refused["status"], refused["code"]) == (Status.FAILED, Code.PRIVACY_BUDGET)
