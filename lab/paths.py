"""Where a namespace lab keeps its things, and what it remembers about itself.

A lab named `L` owns: network namespaces `L-<node>` (spines, leaves, hosts) and
`L-c-<container>`; the run directory `/run/terrace/L/` (controller socket, pidfiles,
logs, token files, FRR configs, the speakers' runtime directories, `lab.json`); and
`/var/run/frr/L-<router>/` (FRR's sockets). Every process the lab starts carries the run
directory or an `L-` namespace in its command line, so leftovers can be found by name.

This module owns names, paths and the state file. It never starts or stops anything.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

RUN_ROOT = Path(os.environ.get("TERRACE_LAB_RUN_DIR", "/run/terrace"))
FRR_RUN_ROOT = Path("/var/run/frr")
NETNS_DIR = Path("/var/run/netns")
_LAB_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,23}$")


class LabError(Exception):
    """A lab step failed; the message names the step and the node."""


def check_lab_name(name: str) -> str:
    if not _LAB_NAME.match(name):
        raise LabError(
            f"lab name {name!r} must be 1..24 letters, digits, - or _ (it prefixes namespace names)"
        )
    return name


def node_netns(lab: str, node: str) -> str:
    """The namespace of a spine, leaf or host."""
    return f"{lab}-{node}"


def container_netns(lab: str, container: str) -> str:
    """The namespace of a lab container (an endpoint's network namespace)."""
    return f"{lab}-c-{container}"


@dataclass(frozen=True, slots=True)
class LabPaths:
    """The run directory of one lab and the files in it."""

    name: str
    root: Path

    @classmethod
    def of(cls, name: str) -> LabPaths:
        return cls(check_lab_name(name), RUN_ROOT / name)

    @property
    def socket(self) -> Path:
        return self.root / "controller.sock"

    @property
    def url(self) -> str:
        return f"unix:{self.socket}"

    @property
    def state_file(self) -> Path:
        return self.root / "lab.json"

    @property
    def pids(self) -> Path:
        return self.root / "pids"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def tokens(self) -> Path:
        return self.root / "tokens"

    @property
    def default_data_dir(self) -> Path:
        return self.root / "data"

    def pidfile(self, process: str) -> Path:
        return self.pids / f"{process}.pid"

    def log(self, process: str) -> Path:
        return self.logs / f"{process}.log"

    def token_file(self, host: str) -> Path:
        return self.tokens / f"{host}.token"

    def frr_dir(self, router: str) -> Path:
        """The router's config dir: `frr.conf` (as applied) and `frr.log` (FRR's log)."""
        return self.root / "frr" / router

    def speaker_dir(self, host: str) -> Path:
        return self.root / f"speaker-{host}"

    def frr_run_dir(self, router: str) -> Path:
        return FRR_RUN_ROOT / node_netns(self.name, router)


@dataclass(slots=True)
class LabState:
    """What `lab up` recorded: enough for every other lab command to find its parts."""

    name: str
    topology_file: str
    topology_text: str
    data_dir: str
    listen: str | None
    admin_token_file: str
    namespaces: list[str] = field(default_factory=list)
    containers: dict[str, dict[str, Any]] = field(default_factory=dict)

    def save(self, paths: LabPaths) -> None:
        tmp = paths.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2))
        tmp.replace(paths.state_file)

    @classmethod
    def load(cls, paths: LabPaths) -> LabState:
        try:
            doc = json.loads(paths.state_file.read_text())
        except FileNotFoundError:
            raise LabError(
                f"lab {paths.name} is not up (no {paths.state_file}); run `terrace lab up FILE`"
            ) from None
        return cls(**doc)

    @property
    def admin_token(self) -> str:
        return Path(self.admin_token_file).read_text().strip()


def running_labs() -> list[str]:
    """Names of the labs with a state file, sorted."""
    if not RUN_ROOT.is_dir():
        return []
    return sorted(p.parent.name for p in RUN_ROOT.glob("*/lab.json"))


def resolve_lab(name: str | None) -> LabPaths:
    """The lab named, or the only one running."""
    if name:
        return LabPaths.of(name)
    labs = running_labs()
    if len(labs) == 1:
        return LabPaths.of(labs[0])
    if not labs:
        raise LabError("no lab is up; run `terrace lab up FILE`")
    raise LabError(f"several labs are up ({', '.join(labs)}); pass --name")
