"""A site worker whose judge is the planted-preference test double (integration tests only).

python -m tests.planted_worker SITE_TOML PLANTED_CONFIG_ID [TIE_SHARE]
"""

import logging
import sys
from pathlib import Path

from agent.config import load_site_config
from agent.worker import SiteWorker
from tests.doubles import PlantedPreferenceJudge

if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    config_path, planted = Path(sys.argv[1]), sys.argv[2]
    tie_share = float(sys.argv[3]) if len(sys.argv) > 3 else 0.0
    worker = SiteWorker(
        load_site_config(config_path),
        judge_factory=lambda _config, _mode: PlantedPreferenceJudge(planted, tie_share),
    )
    worker.run_forever(poll_seconds=0.2)
