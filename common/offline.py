"""Hugging Face libraries read their hub settings once, when first imported: a site never
downloads at run time, so each package that may load them turns the hub off before anything
else (`judge/__init__.py`, `trainer/__init__.py` call `stay_offline`)."""

from __future__ import annotations

import os

HUB_OFFLINE: dict[str, str] = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
}


def stay_offline() -> None:
    """Turn Hugging Face hub access off unless the environment already says otherwise."""
    for name, value in HUB_OFFLINE.items():
        os.environ.setdefault(name, value)
