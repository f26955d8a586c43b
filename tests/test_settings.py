"""The Flower run config: what `RunConfig` writes for a run it reads back, from one module."""

from __future__ import annotations

from common.settings import RunConfig, RunSettings


def test_the_run_config_reads_back_what_it_writes() -> None:
    changed = dict(selection_mode="racing", min_sites=3, wait_for_sites=12.5, round_timeout=5.0)
    changed |= dict(retry_seconds=0.5, max_retry_seconds=4.0, patience=5, validation_items=40)
    changed |= dict(judge_mode="generate", blocks=2, chunk_items=3, budget=0.25, site_timeout=90.0)
    changed |= dict(baseline="alpaca-baseline")
    settings = RunSettings(run_key="lr-sweep-2", secure_aggregation="when-possible", **changed)
    assert all(getattr(RunSettings(run_key="x"), k) != v for k, v in changed.items()), "no default"
    written = RunConfig(settings, "sqlite:///state/c.sqlite", "/runs/space.toml", "/runs/w.jsonl")
    flat = written.as_flower_config()
    assert all(isinstance(value, (str, int, float)) for value in flat.values()), "flat"
    assert RunConfig.from_flower_config(flat) == written


def test_the_run_config_fills_defaults_and_casts_overrides() -> None:
    """A key the config lacks takes its default; `flwr run --run-config wait_for_sites=30`
    gives an int where a float belongs."""
    read = RunConfig.from_flower_config({"run_key": "r", "database": "d", "wait_for_sites": 30})
    assert read == RunConfig(RunSettings(run_key="r", wait_for_sites=30.0), "d")
    assert isinstance(read.settings.wait_for_sites, float)
