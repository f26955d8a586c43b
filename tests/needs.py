"""Tests that need a system tool or server: they fail in CI (which installs it: .ci/run) and
skip elsewhere, with the reason either way."""

from __future__ import annotations

import os
import shutil

import pytest


def fail_or_skip(reason: str) -> None:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(reason, pytrace=False)
    pytest.skip(reason)


def needs_tool(tool: str, package: str) -> str:
    """The tool's path (on PATH or in /usr/sbin); fails or skips without it."""
    found = shutil.which(tool) or shutil.which(tool, path="/usr/sbin")
    if found is None:
        fail_or_skip(f"needs {tool} (Debian: apt-get install {package}; .ci/run installs it)")
    return str(found)
