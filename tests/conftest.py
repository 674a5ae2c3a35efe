"""Shared test plumbing: when CI=true, a missing tool is a failure, never a skip."""

from __future__ import annotations

import json
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


def record_figure(check: str, what: str, value: float | str, unit: str = "") -> None:
    """A figure a fault test measured: printed, and with `TERRACE_FIGURES=FILE` also
    appended to FILE as one JSON line (`bench/faults` collects them into its table)."""
    print(f"{check}: {what}: {value}{' ' + unit if unit else ''}")
    target = os.environ.get("TERRACE_FIGURES")
    if target:
        line = {"check": check, "what": what, "value": value, "unit": unit}
        with open(target, "a", encoding="utf-8") as out:
            out.write(json.dumps(line) + "\n")
