"""Every golden FRR config is accepted by FRR itself; broken ones are rejected.

Two levels: `vtysh --dryrun -f FILE` (FRR's command parser, no daemons) for every
golden config, and applying a config to real zebra + bgpd in a throwaway network
namespace (`vtysh -N NS -f FILE`), which also catches semantic errors such as
activating an unknown neighbor. The golden configs come from tests/unit/test_frr.py.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.lab

GOLDEN = Path(__file__).resolve().parents[1] / "golden"
FRR_DAEMONS = Path("/usr/lib/frr")
GOLDEN_FILES = sorted(GOLDEN.glob("*.conf"))


def _missing(what: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"{what} is required when CI=true")
    pytest.skip(f"{what} is not available")


@pytest.fixture(scope="module")
def vtysh() -> str:
    path = shutil.which("vtysh")
    if path is None:
        _missing("vtysh (apt install frr)")
    assert path is not None
    return path


def _dryrun(vtysh: str, path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [vtysh, "--dryrun", "-f", str(path)], capture_output=True, text=True, check=False
    )


def test_golden_files_exist() -> None:
    names = {p.name for p in GOLDEN_FILES}
    assert {"two-rack-leaf1.conf", "two-rack-spine1.conf", "four-rack-leaf4.conf"} <= names


@pytest.mark.parametrize("path", GOLDEN_FILES, ids=lambda p: p.stem)
def test_golden_config_passes_frr_parser(vtysh: str, path: Path) -> None:
    result = _dryrun(vtysh, path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Unknown command" not in result.stdout + result.stderr


@pytest.mark.parametrize(
    ("good", "bad"),
    [
        ("maximum-prefix 1000", "maximum-prefix lots"),
        ("seq 5 permit 10.64.0.0/28", "seq 5 permit 10.64.0.0/99"),
        ("bgp bestpath as-path multipath-relax", "bgp bestpath as-path multipath-relaxed"),
    ],
)
def test_frr_parser_rejects_a_broken_config(
    vtysh: str, tmp_path: Path, good: str, bad: str
) -> None:
    text = (GOLDEN / "two-rack-leaf1.conf").read_text()
    assert good in text
    broken = tmp_path / "broken.conf"
    broken.write_text(text.replace(good, bad, 1))
    result = _dryrun(vtysh, broken)
    assert result.returncode != 0, f"FRR accepted {bad!r}"
    assert bad.rsplit(maxsplit=1)[-1] in result.stdout + result.stderr


# ------------------------------------------------------------ real daemons, real apply


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), capture_output=True, text=True, check=False)


def _wait_for_daemons(vtysh: str, ns: str, deadline: float) -> None:
    last = ""
    while time.monotonic() < deadline:
        result = _run(vtysh, "-N", ns, "-c", "show daemons")
        last = result.stdout + result.stderr
        if result.returncode == 0 and "zebra" in last and "bgpd" in last:
            return
        time.sleep(0.1)
    pytest.fail(f"zebra and bgpd did not answer in namespace {ns}; last: {last!r}")


@pytest.fixture
def frr_namespace(vtysh: str, tmp_path: Path) -> Iterator[str]:
    """zebra + bgpd with an empty config in a fresh namespace; all removed afterwards."""
    if os.geteuid() != 0:
        _missing("root (network namespaces)")
    if not (FRR_DAEMONS / "bgpd").exists():
        _missing("FRR daemons in /usr/lib/frr")
    ns = f"tfrr{uuid.uuid4().hex[:8]}"
    rundir = Path("/var/run/frr") / ns
    empty = tmp_path / "empty.conf"
    empty.write_text("")
    empty.chmod(0o644)
    pids: list[Path] = []
    try:
        subprocess.run(["ip", "netns", "add", ns], check=True)
        subprocess.run(["ip", "-n", ns, "link", "set", "lo", "up"], check=True)
        rundir.mkdir(parents=True)
        shutil.chown(rundir, "frr", "frr")
        for daemon in ("zebra", "bgpd"):
            pid = rundir / f"{daemon}.pid"
            pids.append(pid)
            subprocess.run(
                ["ip", "netns", "exec", ns, str(FRR_DAEMONS / daemon), "-d", "-N", ns,
                 "-F", "datacenter", "-f", str(empty), "-i", str(pid)],
                check=True,
            )  # fmt: skip
        _wait_for_daemons(vtysh, ns, time.monotonic() + 20)
        yield ns
    finally:
        for pid in pids:
            if pid.exists():
                _run("kill", pid.read_text().strip())
        _run("ip", "netns", "del", ns)
        shutil.rmtree(rundir, ignore_errors=True)


def _prefix_list_lines(text: str) -> set[str]:
    return {
        line.strip()
        for line in text.splitlines()
        if line.startswith(("ip prefix-list", "ipv6 prefix-list"))
    }


@pytest.mark.parametrize("name", ["two-rack-leaf1", "four-rack-spine1", "four-rack-leaf3"])
def test_golden_config_applies_to_running_frr(vtysh: str, frr_namespace: str, name: str) -> None:
    path = GOLDEN / f"{name}.conf"
    result = _run(vtysh, "-N", frr_namespace, "-f", str(path))
    assert result.returncode == 0, result.stdout + result.stderr
    running = _run(vtysh, "-N", frr_namespace, "-c", "show running-config").stdout
    assert _prefix_list_lines(running) == _prefix_list_lines(path.read_text())
    assert "router bgp" in running


def test_running_frr_rejects_a_semantic_error(
    vtysh: str, frr_namespace: str, tmp_path: Path
) -> None:
    text = (GOLDEN / "two-rack-leaf1.conf").read_text()
    activate = next(line for line in text.splitlines() if line.endswith(" activate"))
    broken = tmp_path / "broken.conf"
    broken.write_text(text.replace(activate, "  neighbor 192.0.2.99 activate", 1))
    assert _dryrun(vtysh, broken).returncode == 0  # the parser alone cannot tell
    result = _run(vtysh, "-N", frr_namespace, "-f", str(broken))
    assert result.returncode != 0
    assert "192.0.2.99" in result.stdout + result.stderr
