"""A site worker whose responses of the planted config carry the planted token and whose judge
runs on the planted-token backend double (integration tests only).

python -m tests.planted_worker SITE_TOML PLANTED_CONFIG_ID [TIE_SHARE [SECONDS_PER_ITEM]]

SECONDS_PER_ITEM slows the judge down, so that a test can kill the worker mid-judging.
"""

import logging
import sys
from pathlib import Path

from agent.config import load_site_config
from agent.worker import SiteWorker
from tests.doubles import SlowJudge, planted_token_judge, planting_generation
from trainer import generate

if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    config_path, planted = Path(sys.argv[1]), sys.argv[2]
    tie_share = float(sys.argv[3]) if len(sys.argv) > 3 else 0.0
    seconds = float(sys.argv[4]) if len(sys.argv) > 4 else 0.0
    generate.generate_responses = planting_generation(planted)
    judge = planted_token_judge(tie_share)
    worker = SiteWorker(
        load_site_config(config_path),
        judge_factory=lambda config, mode: SlowJudge(judge(config, mode), seconds),
    )
    worker.run_forever(poll_seconds=0.2)
