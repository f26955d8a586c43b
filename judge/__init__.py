"""PandaLM judge: prompt and parse, verdict rules, backends, metrics.

Importing this package turns Hugging Face hub access off (a site never downloads at run time).
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
