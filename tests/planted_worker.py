"""A site worker whose judge is the planted-preference test double (integration tests only).

python -m tests.planted_worker SITE_TOML PLANTED_CONFIG_ID [TIE_SHARE [SECONDS_PER_ITEM]]

SECONDS_PER_ITEM slows the judge down, so that a test can kill the worker mid-judging.
"""

import logging
import sys
import time
from pathlib import Path

from agent.config import load_site_config
from agent.worker import SiteWorker
from tests.doubles import PlantedPreferenceJudge


class SlowJudge:
    """The planted judge taking `seconds` per item, as a real judge takes time."""

    def __init__(self, judge: PlantedPreferenceJudge, seconds: float) -> None:
        self.judge, self.seconds = judge, seconds

    def judge_comparison(self, a_id, b_id, pairs):  # type: ignore[no-untyped-def]
        for judgment in self.judge.judge_comparison(a_id, b_id, pairs):
            time.sleep(self.seconds)
            yield judgment


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    config_path, planted = Path(sys.argv[1]), sys.argv[2]
    tie_share = float(sys.argv[3]) if len(sys.argv) > 3 else 0.0
    seconds = float(sys.argv[4]) if len(sys.argv) > 4 else 0.0
    judge = SlowJudge(PlantedPreferenceJudge(planted, tie_share), seconds)
    worker = SiteWorker(load_site_config(config_path), judge_factory=lambda _config, _mode: judge)
    worker.run_forever(poll_seconds=0.2)
