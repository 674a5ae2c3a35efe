"""Shared test plumbing: when CI=true, a missing tool is a failure, never a skip."""

from __future__ import annotations

import os
import shutil

import pytest

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def require(condition: bool, why: str) -> None:
    """Skip locally when a tool is missing; fail in CI (tests must run there)."""
    if condition:
        return
    if IN_CI:
        pytest.fail(f"CI=true but {why}", pytrace=False)
    pytest.skip(why)


def require_root_tools(*tools: str) -> None:
    require(os.geteuid() == 0, "these tests need root (network namespaces)")
    for tool in tools:
        require(shutil.which(tool) is not None or os.path.exists(tool), f"{tool} is not installed")
