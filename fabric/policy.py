"""Tenant isolation as data: a host's desired state compiled into ipsets and iptables rules.

Owns the chain layout (see docs/policy.md), the stable rule hashes carried in `tr:`
comments, parsing of `iptables-save` / `ipset save` output restricted to Terrace's own
objects, and the diff from what is installed to what should be, rendered as
`ipset restore` and `iptables-restore --noflush` scripts. Pure: no I/O, no subprocess;
the speaker's firewall reconciler runs the scripts. Must never emit a line that
touches a chain or set Terrace did not create (names `TERRACE-…`, `tr-…`), except the
jump rules it inserts at the top of FORWARD and INPUT, which carry a `tr:` comment.

Semantics: membership of a network is decided by source address (anti-spoofing makes
that sound), so sets hold a network's subnets and never endpoint addresses; creating an
endpoint on one host changes no rule on another.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import ipaddress
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from fabric.addressing import AddressError, parse_address, parse_network
from fabric.naming import HOST_INTERFACE_PREFIX, host_interface, short_id
from fabric.state import Endpoint, HostState, Network, Rule

Family = Literal[4, 6]
FAMILIES: tuple[Family, ...] = (4, 6)

CHAIN_PREFIX = "TERRACE-"
SET_PREFIX = "tr-"
COMMENT_PREFIX = "tr:"
SET_TYPE = "hash:net"
SET_MAXELEM = 65536

FORWARD_CHAIN = "TERRACE-FORWARD"
INPUT_CHAIN = "TERRACE-INPUT"
FROM_ENDPOINT_CHAIN = "TERRACE-FROM-EP"
TO_ENDPOINT_CHAIN = "TERRACE-TO-EP"
BASE_CHAINS = ("FORWARD", "INPUT")

ANY_TERRACE_INTERFACE = HOST_INTERFACE_PREFIX + "+"
_SET_FAMILY = {4: "inet", 6: "inet6"}
_ICMP = {4: "icmp", 6: "ipv6-icmp"}
_HOST_BITS = {4: 32, 6: 128}
_HEX = "0123456789abcdef"


def ingress_chain(endpoint_id: str) -> str:
    """Chain deciding what may reach one endpoint (same suffix as its veth)."""
    return "TERRACE-IN-" + short_id(endpoint_id)


def egress_chain(endpoint_id: str) -> str:
    """Chain checking the source address of what leaves one endpoint."""
    return "TERRACE-OUT-" + short_id(endpoint_id)


def network_set(network_id: str, family: Family) -> str:
    """The ipset holding a network's subnets of one family."""
    return f"{SET_PREFIX}{short_id(network_id)}-{family}"


# --------------------------------------------------------------------------- data


@dataclass(frozen=True, slots=True)
class PolicyRule:
    """One iptables rule of ours: `-A chain match -m comment --comment tr:hash action`.

    `origin` says which intent produced it (e.g. `rule:<id>`, `same-network:<id>`,
    `default-drop:<endpoint id>`); it is part of the hash, so identical matches from
    two intents stay two rules with two counters.
    """

    chain: str
    match: str
    action: str
    origin: str
    hash: str = field(init=False)

    def __post_init__(self) -> None:
        text = "\0".join((self.chain, self.match, self.action, self.origin))
        object.__setattr__(self, "hash", hashlib.sha256(text.encode()).hexdigest()[:16])

    def body(self) -> str:
        """The rule without `-A chain`: matches, our comment, then the action."""
        match = f"{self.match} " if self.match else ""
        return f'{match}-m comment --comment "{COMMENT_PREFIX}{self.hash}" {self.action}'

    def line(self) -> str:
        return f"-A {self.chain} {self.body()}"


@dataclass(frozen=True, slots=True)
class IpSet:
    """A `hash:net` set of one family."""

    name: str
    family: Family
    members: frozenset[str]
    kind: str = SET_TYPE
    maxelem: int = SET_MAXELEM

    def header(self) -> str:
        family = _SET_FAMILY[self.family]
        return f"create {self.name} {self.kind} family {family} maxelem {self.maxelem}"

    def compatible(self, other: IpSet) -> bool:
        return (self.kind, self.family, self.maxelem) == (other.kind, other.family, other.maxelem)


@dataclass(frozen=True, slots=True)
class Table:
    """Our chains of one family's filter table plus the jumps into FORWARD and INPUT."""

    chains: Mapping[str, tuple[PolicyRule, ...]]
    jumps: tuple[PolicyRule, ...]


@dataclass(frozen=True, slots=True)
class BaseRule:
    """A rule found in FORWARD or INPUT, ours or not, as `iptables-save` printed it."""

    line: str
    hash: str | None
    ours: bool


@dataclass(frozen=True, slots=True)
class InstalledTable:
    """What `iptables-save` shows of one family: our chains (as hash lists) and base chains."""

    chains: Mapping[str, tuple[str | None, ...]]
    base: Mapping[str, tuple[BaseRule, ...]]


@dataclass(frozen=True, slots=True)
class Installed:
    """What is in the kernel now, restricted to what Terrace owns (plus base chains)."""

    sets: Mapping[str, IpSet]
    tables: Mapping[Family, InstalledTable]

    def owned(self) -> Installed:
        """Only Terrace's objects: foreign rules in FORWARD/INPUT left out."""
        tables = {
            family: dataclasses.replace(
                table, base={b: tuple(r for r in rs if r.ours) for b, rs in table.base.items()}
            )
            for family, table in self.tables.items()
        }
        return Installed(sets=self.sets, tables=tables)


@dataclass(frozen=True, slots=True)
class RuleSet:
    """A host's complete desired firewall: sets, chains per family, and compile problems."""

    sets: Mapping[str, IpSet]
    tables: Mapping[Family, Table]
    problems: tuple[str, ...] = ()

    @classmethod
    def empty(cls) -> RuleSet:
        """Nothing of ours: planning towards it removes everything Terrace installed."""
        return cls(sets={}, tables={f: Table(chains={}, jumps=()) for f in FAMILIES})

    def rules(self) -> Iterable[PolicyRule]:
        for table in self.tables.values():
            yield from table.jumps
            for chain in table.chains.values():
                yield from chain

    def origins(self) -> dict[str, str]:
        """Rule hash → the intent that produced it (for reading counters)."""
        return {rule.hash: rule.origin for rule in self.rules()}

    def ipset_restore(self) -> str:
        """Script creating every set from nothing."""
        return plan(EMPTY_INSTALLED, self).ipset

    def iptables_restore(self, family: Family) -> str:
        """`iptables-restore --noflush` script installing this family from nothing."""
        return plan(EMPTY_INSTALLED, self).iptables[family]

    def installed(self) -> Installed:
        """How this rule set looks once installed, as the parsers would read it back."""
        return Installed(
            sets=dict(self.sets),
            tables={
                family: InstalledTable(
                    chains={name: tuple(r.hash for r in rs) for name, rs in t.chains.items()},
                    base={
                        base: tuple(
                            BaseRule(j.line(), j.hash, True) for j in t.jumps if j.chain == base
                        )
                        for base in BASE_CHAINS
                    },
                )
                for family, t in self.tables.items()
            },
        )


EMPTY_INSTALLED = Installed(
    sets={},
    tables={f: InstalledTable(chains={}, base={b: () for b in BASE_CHAINS}) for f in FAMILIES},
)


# ---------------------------------------------------------------------- compiling


def compile_host_policy(state: HostState) -> RuleSet:
    """The complete firewall one host needs for its endpoints at this revision."""
    problems: list[str] = []
    networks = {n.id: n for n in state.networks}
    endpoints = sorted(state.endpoints, key=lambda e: e.id)
    local_networks = {e.network_id for e in endpoints}
    rules = sorted((r for r in state.rules if r.network_id in local_networks), key=lambda r: r.id)
    referenced = local_networks | {r.from_network for r in rules if r.from_network}
    sets = _network_sets(sorted(referenced), networks, problems)
    tables = {f: _table(f, endpoints, rules, problems) for f in FAMILIES}
    return RuleSet(sets=sets, tables=tables, problems=tuple(dict.fromkeys(problems)))


def _network_sets(
    network_ids: Sequence[str], networks: Mapping[str, Network], problems: list[str]
) -> dict[str, IpSet]:
    sets: dict[str, IpSet] = {}
    for network_id in network_ids:
        network = networks.get(network_id)
        if network is None:
            problems.append(
                f"network {network_id} is referenced but not in the state; its sets stay empty"
            )
        subnets = _subnets(network, problems) if network else []
        for family in FAMILIES:
            members = frozenset(s for s, f in subnets if f == family)
            name = network_set(network_id, family)
            sets[name] = IpSet(name, family, members)
    return sets


def _subnets(network: Network, problems: list[str]) -> list[tuple[str, int]]:
    subnets: list[tuple[str, int]] = []
    for text in network.subnets:
        try:
            cidr = parse_network(text, what=f"subnet of network {network.id}")
        except AddressError as exc:
            problems.append(f"{exc}; subnet left out of network {network.id}")
            continue
        subnets.append((cidr.with_prefixlen, cidr.version))
    return subnets


def _table(
    family: Family, endpoints: Sequence[Endpoint], rules: Sequence[Rule], problems: list[str]
) -> Table:
    chains: dict[str, tuple[PolicyRule, ...]] = {
        FORWARD_CHAIN: _forward_chain(),
        INPUT_CHAIN: _input_chain(family),
        **_dispatch(FROM_ENDPOINT_CHAIN, "-i", endpoints, egress_chain, ()),
        **_dispatch(TO_ENDPOINT_CHAIN, "-o", endpoints, ingress_chain, _ct()),
    }
    allowed = _allowed_sources(family, rules, problems)
    for endpoint in endpoints:
        address = _endpoint_address(endpoint, family, problems)
        chains[egress_chain(endpoint.id)] = _egress(family, endpoint.id, address)
        own = tuple(allowed.get(endpoint.network_id, ()))
        chains[ingress_chain(endpoint.id)] = _ingress(family, endpoint.id, endpoint.network_id, own)
    jumps = (
        PolicyRule("FORWARD", "", f"-j {FORWARD_CHAIN}", "jump:forward"),
        PolicyRule("INPUT", f"-i {ANY_TERRACE_INTERFACE}", f"-j {INPUT_CHAIN}", "jump:input"),
    )
    return Table(chains=chains, jumps=jumps)


def _ct() -> tuple[PolicyRule, ...]:
    return (
        PolicyRule(
            TO_ENDPOINT_CHAIN,
            "-m conntrack --ctstate RELATED,ESTABLISHED",
            "-j ACCEPT",
            "established",
        ),
        PolicyRule(TO_ENDPOINT_CHAIN, "-m conntrack --ctstate INVALID", "-j DROP", "invalid"),
    )


def _forward_chain() -> tuple[PolicyRule, ...]:
    any_veth = ANY_TERRACE_INTERFACE
    return (
        PolicyRule(FORWARD_CHAIN, f"-i {any_veth}", f"-j {FROM_ENDPOINT_CHAIN}", "anti-spoofing"),
        PolicyRule(FORWARD_CHAIN, f"-o {any_veth}", f"-g {TO_ENDPOINT_CHAIN}", "to-endpoints"),
        PolicyRule(FORWARD_CHAIN, f"-i {any_veth}", "-j ACCEPT", "endpoint-egress"),
    )


def _input_chain(family: Family) -> tuple[PolicyRule, ...]:
    """Endpoint → its host: ICMP and replies only (the jump already matched `-i tr+`)."""
    icmp = f"-p {_ICMP[family]}"
    rules: list[PolicyRule] = []
    if family == 6:
        rules += [
            PolicyRule(INPUT_CHAIN, f"{icmp} --icmpv6-type 134", "-j DROP", "router-advertisement"),
            PolicyRule(INPUT_CHAIN, f"{icmp} --icmpv6-type 137", "-j DROP", "icmp-redirect"),
            PolicyRule(INPUT_CHAIN, f"-s fe80::/10 {icmp}", "-j ACCEPT", "neighbour-discovery"),
            PolicyRule(
                INPUT_CHAIN, f"-s ::/128 {icmp}", "-j ACCEPT", "duplicate-address-detection"
            ),
        ]
    else:
        rules.append(PolicyRule(INPUT_CHAIN, f"{icmp} --icmp-type 5", "-j DROP", "icmp-redirect"))
    rules += [
        PolicyRule(INPUT_CHAIN, "", f"-j {FROM_ENDPOINT_CHAIN}", "anti-spoofing"),
        PolicyRule(
            INPUT_CHAIN, "-m conntrack --ctstate RELATED,ESTABLISHED", "-j ACCEPT", "established"
        ),
        PolicyRule(INPUT_CHAIN, icmp, "-j ACCEPT", "endpoint-to-host-icmp"),
        PolicyRule(INPUT_CHAIN, "", "-j DROP", "default-drop:host"),
    ]
    return tuple(rules)


def dispatch_bucket(chain: str, endpoint_id: str) -> str:
    """The bucket chain of a dispatch chain that holds this endpoint's veth."""
    return f"{chain}-{host_interface(endpoint_id)[len(HOST_INTERFACE_PREFIX)]}"


def _dispatch(
    chain: str,
    direction: str,
    endpoints: Sequence[Endpoint],
    target: Callable[[str], str],
    head: tuple[PolicyRule, ...],
) -> dict[str, tuple[PolicyRule, ...]]:
    """Send each veth to its endpoint's chain; a Terrace veth with no chain is dropped.

    Veths are spread over 16 bucket chains by the first hex digit of their name
    (`-i tr3+ -g TERRACE-FROM-EP-3`), so adding an endpoint rewrites one bucket of
    ~n/16 rules, not one chain of n, and a packet walks ~16 + n/16 rules.
    """
    kind = "egress" if direction == "-i" else "ingress"
    buckets: dict[str, list[PolicyRule]] = {f"{chain}-{d}": [] for d in _HEX}
    for endpoint in endpoints:
        bucket = dispatch_bucket(chain, endpoint.id)
        buckets[bucket].append(_dispatch_rule(bucket, direction, endpoint.id, target(endpoint.id)))
    top = [
        PolicyRule(chain, f"{direction} {HOST_INTERFACE_PREFIX}{d}+", f"-g {chain}-{d}", kind)
        for d in _HEX
    ]
    catch_all = f"unknown-interface:{kind}"
    chains = {chain: (*head, *top, PolicyRule(chain, "", "-j DROP", catch_all))}
    for bucket, rules in buckets.items():
        chains[bucket] = (*rules, PolicyRule(bucket, "", "-j DROP", catch_all))
    return chains


# The per-endpoint builders are pure and memoized: a host with 1,000 endpoints
# recompiles in milliseconds when one of them changes.
_MEMO = 1 << 15


@functools.lru_cache(maxsize=_MEMO)
def _dispatch_rule(chain: str, direction: str, endpoint_id: str, target: str) -> PolicyRule:
    kind = "egress" if direction == "-i" else "ingress"
    match = f"{direction} {host_interface(endpoint_id)}"
    return PolicyRule(chain, match, f"-g {target}", f"{kind}:{endpoint_id}")


@functools.lru_cache(maxsize=_MEMO)
def _egress(family: Family, endpoint_id: str, address: str | None) -> tuple[PolicyRule, ...]:
    """Anti-spoofing: only the endpoint's own address of this family may leave its veth."""
    chain = egress_chain(endpoint_id)
    drop = PolicyRule(chain, "", "-j DROP", f"spoofed-source:{endpoint_id}")
    if address is None:
        return (drop,)
    own = f"-s {address}/{_HOST_BITS[family]}"
    return (PolicyRule(chain, own, "-j RETURN", f"own-address:{endpoint_id}"), drop)


def _endpoint_address(endpoint: Endpoint, family: Family, problems: list[str]) -> str | None:
    text = endpoint.ipv4 if family == 4 else endpoint.ipv6
    if not text:
        return None
    address, problem = _host_address(text, family)
    if problem:
        problems.append(f"endpoint {endpoint.name} ({endpoint.id}): {problem}; it may not send")
    return address


@functools.lru_cache(maxsize=_MEMO)
def _host_address(text: str, family: Family) -> tuple[str | None, str | None]:
    """(canonical address, None) or (None, why not)."""
    try:
        address = parse_address(text.split("/", maxsplit=1)[0])
    except AddressError as exc:
        return None, str(exc)
    if address.version != family:
        return None, f"{text} is not an IPv{family} address"
    return str(address), None


def _allowed_sources(
    family: Family, rules: Sequence[Rule], problems: list[str]
) -> dict[str, list[tuple[str, str]]]:
    """Per destination network: (match, origin) of each of its rules, in rule-id order."""
    allowed: dict[str, list[tuple[str, str]]] = {}
    for rule in rules:
        matches = rule_matches(rule, family, problems)
        allowed.setdefault(rule.network_id, []).extend((m, f"rule:{rule.id}") for m in matches)
    return allowed


@functools.lru_cache(maxsize=_MEMO)
def _ingress(
    family: Family, endpoint_id: str, network_id: str, allowed: tuple[tuple[str, str], ...]
) -> tuple[PolicyRule, ...]:
    """Same network, then each rule of the endpoint's network, then a counted drop."""
    chain = ingress_chain(endpoint_id)
    own_set = network_set(network_id, family)
    return (
        PolicyRule(
            chain, f"-m set --match-set {own_set} src", "-j ACCEPT", f"same-network:{network_id}"
        ),
        *(PolicyRule(chain, match, "-j ACCEPT", origin) for match, origin in allowed),
        PolicyRule(chain, "", "-j DROP", f"default-drop:{endpoint_id}"),
    )


def rule_matches(rule: Rule, family: Family, problems: list[str]) -> list[str]:
    """The iptables matches of one rule in one family ([] when it does not apply there).

    An invalid rule yields no match at all (never a wider one) and a problem.
    """
    source = _rule_source(rule, family, problems)
    if source is None:
        return []
    services = _rule_services(rule, family, problems)
    return [f"{source} {s}".strip() for s in services]


def _rule_source(rule: Rule, family: Family, problems: list[str]) -> str | None:
    if bool(rule.from_network) == bool(rule.from_cidr):
        problems.append(f"rule {rule.id} needs exactly one of from_network and from_cidr; ignored")
        return None
    if rule.from_network:
        return f"-m set --match-set {network_set(rule.from_network, family)} src"
    try:
        cidr = parse_network(str(rule.from_cidr), what=f"from_cidr of rule {rule.id}")
    except AddressError as exc:
        problems.append(f"{exc}; rule {rule.id} ignored")
        return None
    return f"-s {cidr.with_prefixlen}" if cidr.version == family else None


def _rule_services(rule: Rule, family: Family, problems: list[str]) -> list[str]:
    if rule.protocol == "icmp":
        if rule.ports:
            problems.append(f"rule {rule.id}: ports are ignored for icmp")
        return [f"-p {_ICMP[family]}"]
    try:
        ports = sorted({parse_port_range(p) for p in rule.ports})
    except ValueError as exc:
        problems.append(f"rule {rule.id}: {exc}; rule ignored")
        return []
    protocols = ["tcp", "udp"] if rule.protocol == "any" else [rule.protocol]
    if not ports:
        return [""] if rule.protocol == "any" else [f"-p {rule.protocol}"]
    return [f"-p {p} --dport {_port_text(r)}" for p in protocols for r in ports]


def parse_port_range(text: str) -> tuple[int, int]:
    """`"80"` → (80, 80); `"8000-8080"` → (8000, 8080); anything else raises ValueError."""
    low, _, high = str(text).strip().partition("-")
    try:
        first, last = int(low), int(high or low)
    except ValueError:
        raise ValueError(f"port {text!r} is not a number or a range like 8000-8080") from None
    if not 1 <= first <= last <= 65535:
        raise ValueError(f"port range {text!r} must lie in 1..65535 with low <= high")
    return first, last


def _port_text(port_range: tuple[int, int]) -> str:
    first, last = port_range
    return str(first) if first == last else f"{first}:{last}"


# ------------------------------------------------------------------------ parsing

_COUNTERS = re.compile(r"^\[(\d+):(\d+)\]\s+")
_HASH = re.compile(r'--comment "?' + re.escape(COMMENT_PREFIX) + r'([0-9a-f]+)"?')
_OUR_TARGET = re.compile(r"-[jg] " + re.escape(CHAIN_PREFIX))


def parse_ipset_save(text: str) -> dict[str, IpSet]:
    """Our `tr-` sets from `ipset save` output; foreign sets are ignored."""
    headers: dict[str, tuple[str, Family, int]] = {}
    members: dict[str, set[str]] = {}
    for line in text.splitlines():
        words = line.split()
        if len(words) < 3 or not words[1].startswith(SET_PREFIX):
            continue
        if words[0] == "create":
            headers[words[1]] = _set_header(words)
            members.setdefault(words[1], set())
        elif words[0] == "add":
            members.setdefault(words[1], set()).add(canonical_cidr(words[2]))
    return {
        name: IpSet(name, family, frozenset(members.get(name, ())), kind, maxelem)
        for name, (kind, family, maxelem) in headers.items()
    }


def _set_header(words: list[str]) -> tuple[str, Family, int]:
    options = dict(zip(words[3::2], words[4::2], strict=False))
    family: Family = 6 if options.get("family") == "inet6" else 4
    return words[2], family, int(options.get("maxelem", SET_MAXELEM))


@functools.lru_cache(maxsize=_MEMO)
def canonical_cidr(text: str) -> str:
    """`10.0.0.1` → `10.0.0.1/32`; the form both sides of a set diff are compared in."""
    return ipaddress.ip_network(text, strict=False).with_prefixlen


def parse_iptables_save(text: str) -> InstalledTable:
    """Our chains and the base chains of the filter table from `iptables-save [-c]`."""
    chains: dict[str, list[str | None]] = {}
    base: dict[str, list[BaseRule]] = {b: [] for b in BASE_CHAINS}
    for line in _filter_table_lines(text):
        if line.startswith(":"):
            name = line[1:].split()[0]
            if name.startswith(CHAIN_PREFIX):
                chains.setdefault(name, [])
            continue
        words = line.split(maxsplit=2)
        if len(words) < 2 or words[0] != "-A":
            continue
        found = _HASH.search(line)
        rule_hash = found.group(1) if found else None
        if words[1].startswith(CHAIN_PREFIX):
            chains.setdefault(words[1], []).append(rule_hash)
        elif words[1] in base:
            ours = rule_hash is not None or bool(_OUR_TARGET.search(line))
            base[words[1]].append(BaseRule(line, rule_hash, ours))
    return InstalledTable(
        chains={k: tuple(v) for k, v in chains.items()},
        base={k: tuple(v) for k, v in base.items()},
    )


def _filter_table_lines(text: str, *, keep_counters: bool = False) -> Iterable[str]:
    inside = False
    for raw in text.splitlines():
        line = _COUNTERS.sub("", raw.strip())
        if inside and keep_counters and line.startswith("-A"):
            yield raw.strip()
        elif line.startswith("*"):
            inside = line == "*filter"
        elif line == "COMMIT":
            inside = False
        elif inside and line and not line.startswith("#"):
            yield line


def parse_counters(text: str) -> dict[str, int]:
    """Packets per rule hash from `iptables-save -c` (summed if a hash shows up twice)."""
    counters: dict[str, int] = {}
    for raw in _filter_table_lines(text, keep_counters=True):
        counted = _COUNTERS.match(raw)
        found = _HASH.search(raw)
        if counted and found:
            counters[found.group(1)] = counters.get(found.group(1), 0) + int(counted.group(1))
    return counters


def counters_by_origin(counters: Mapping[str, int], rules: RuleSet) -> dict[str, int]:
    """Sum packet counters per intent (`rule:<id>`, `default-drop:<endpoint id>`, …)."""
    totals: dict[str, int] = {}
    for rule_hash, origin in rules.origins().items():
        totals[origin] = totals.get(origin, 0) + counters.get(rule_hash, 0)
    return totals


# ----------------------------------------------------------------------- diffing


@dataclass(frozen=True, slots=True)
class Patch:
    """Scripts that turn the installed state into the desired one, in this order.

    `ipset` (creates and updates) runs first so new rules find their sets;
    `iptables[family]` runs with `--noflush`; `ipset_cleanup` destroys sets only after
    the last rule referencing them is gone. An empty string means nothing to run.
    """

    ipset: str
    iptables: Mapping[Family, str]
    ipset_cleanup: str

    @property
    def empty(self) -> bool:
        return not (self.ipset or self.ipset_cleanup or any(self.iptables.values()))


def diff(old: RuleSet, new: RuleSet) -> Patch:
    """The minimal patch from one compiled rule set to another."""
    return plan(old.installed(), new)


def plan(installed: Installed, desired: RuleSet) -> Patch:
    """The minimal patch from what is installed to what is desired."""
    tables = {}
    for family in FAMILIES:
        have = installed.tables.get(family) or EMPTY_INSTALLED.tables[family]
        want = desired.tables.get(family) or Table(chains={}, jumps=())
        tables[family] = _iptables_script(have, want)
    stale_sets = sorted(set(installed.sets) - set(desired.sets))
    return Patch(
        ipset=_ipset_script(installed.sets, desired.sets),
        iptables=tables,
        ipset_cleanup="".join(f"destroy {name}\n" for name in stale_sets),
    )


def _ipset_script(have: Mapping[str, IpSet], want: Mapping[str, IpSet]) -> str:
    lines: list[str] = []
    for name in sorted(want):
        new = want[name]
        old = have.get(name)
        if old is not None and not old.compatible(new):
            lines.append(f"destroy {name}")  # fails loudly if a rule still uses it
            old = None
        if old is None:
            lines.append(new.header())
        current = old.members if old else frozenset()
        lines += [f"del {name} {m}" for m in sorted(current - new.members)]
        lines += [f"add {name} {m}" for m in sorted(new.members - current)]
    return "".join(f"{line}\n" for line in lines)


def _iptables_script(have: InstalledTable, want: Table) -> str:
    new_chains = [c for c in want.chains if c not in have.chains]
    changed = [
        c
        for c in want.chains
        if c in have.chains and have.chains[c] != tuple(r.hash for r in want.chains[c])
    ]
    stale = sorted(c for c in have.chains if c not in want.chains)
    lines = [f":{c} - [0:0]" for c in new_chains]
    lines += [f"-F {c}" for c in changed]
    for chain in (*new_chains, *changed):
        lines += [r.line() for r in want.chains[chain]]
    lines += _jump_fixes(have, want)
    lines += [f"-F {c}" for c in stale] + [f"-X {c}" for c in stale]
    if not lines:
        return ""
    return "*filter\n" + "".join(f"{line}\n" for line in lines) + "COMMIT\n"


def _jump_fixes(have: InstalledTable, want: Table) -> list[str]:
    """Keep our jumps first in each base chain; move only our own rules, never theirs."""
    lines: list[str] = []
    for base in BASE_CHAINS:
        wanted = [j for j in want.jumps if j.chain == base]
        present = have.base.get(base, ())
        ours = [r for r in present if r.ours]
        top = [r.hash for r in present[: len(wanted)]]
        if top == [j.hash for j in wanted] and len(ours) == len(wanted):
            continue
        lines += ["-D" + r.line[2:] for r in ours]
        lines += [f"-I {base} 1 {j.body()}" for j in reversed(wanted)]
    return lines
