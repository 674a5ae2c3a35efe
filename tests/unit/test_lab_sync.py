"""The fabric sync's incremental prefix-list update: the running lists end up permitting
exactly what the rendered config permits, whatever the seq numbers did."""

from __future__ import annotations

import re

from hypothesis import given
from hypothesis import strategies as st

from lab.frr_sync import (
    DENY_SEQ,
    PrefixList,
    config_change,
    parse_prefix_lists,
    prefix_list_commands,
)


def rendered(host: str, prefixes: list[str]) -> str:
    """What the leaf template renders for one host's IPv4 list."""
    lines = [
        f"ip prefix-list HOST-{host}-V4 seq {i * 5} permit {p}"
        for i, p in enumerate(prefixes, start=1)
    ]
    lines.append(f"ip prefix-list HOST-{host}-V4 seq {(len(prefixes) + 1) * 5} deny any")
    return "\n".join(lines) + "\n"


def replay(running: dict[str, PrefixList], commands: list[str]) -> dict[str, PrefixList]:
    """A model of FRR executing the commands (entries keyed by seq; no in-place edits)."""
    entries = {
        name: {seq: ("permit", p) for p, seq in pl.permits.items()}
        | ({pl.deny: ("deny", "any")} if pl.deny is not None else {})
        for name, pl in running.items()
    }
    pattern = re.compile(r"^(no )?ip prefix-list (\S+) seq (\d+) (permit|deny) (\S+)$")
    for command in commands:
        match = pattern.match(command)
        assert match, command
        negate, name, seq, action, prefix = match.groups()
        table = entries.setdefault(name, {})
        if negate:
            assert table.pop(int(seq)) == (action, prefix), command
        else:
            assert int(seq) not in table, f"{command}: seq in use (FRR would edit it in place)"
            table[int(seq)] = (action, prefix)
    text = "\n".join(
        f"ip prefix-list {name} seq {seq} {action} {prefix}"
        for name, table in entries.items()
        for seq, (action, prefix) in sorted(table.items())
    )
    return parse_prefix_lists(text)


def permitted(lists: dict[str, PrefixList], name: str) -> list[str]:
    """Prefixes permitted before the list's deny, in evaluation order."""
    pl = lists[name]
    assert pl.deny is not None
    return [p for p, seq in sorted(pl.permits.items(), key=lambda kv: kv[1]) if seq < pl.deny]


def test_an_insert_at_the_front_is_one_command_not_a_rewrite() -> None:
    before = rendered("h1", ["10.0.0.0/28", "10.0.0.16/28"])
    running = parse_prefix_lists(before)
    commands, after = prefix_list_commands(running, parse_prefix_lists(
        rendered("h1", ["10.0.0.0/30", "10.0.0.0/28", "10.0.0.16/28"])
    ))  # fmt: skip
    # First time: the deny moves up out of the way (add, then remove the old one). Only
    # exact permits and one deny: the order of the permits does not matter.
    assert commands == [
        f"ip prefix-list HOST-h1-V4 seq {DENY_SEQ} deny any",
        "ip prefix-list HOST-h1-V4 seq 6 permit 10.0.0.0/30",  # 5 is taken; order is free
        "no ip prefix-list HOST-h1-V4 seq 15 deny any",
    ]
    later, _ = prefix_list_commands(after, parse_prefix_lists(
        rendered("h1", ["10.0.0.0/30", "10.0.0.0/28", "10.0.0.16/28", "10.0.0.32/28"])
    ))  # fmt: skip
    assert later == ["ip prefix-list HOST-h1-V4 seq 20 permit 10.0.0.32/28"]


def test_config_change_sees_prefix_list_only_changes() -> None:
    change = config_change(rendered("h1", []), rendered("h1", ["10.0.0.0/28"]))
    assert change.prefix_lists_only and change.hosts() == {"h1"}
    assert not config_change("router bgp 1\n", "router bgp 2\n").prefix_lists_only


prefix_sets = st.lists(
    st.sampled_from([f"10.0.{i}.0/24" for i in range(12)]), unique=True, max_size=8
)


@given(st.lists(prefix_sets, min_size=1, max_size=6))
def test_any_sequence_of_renderings_converges(sequence: list[list[str]]) -> None:
    running = parse_prefix_lists(rendered("h1", []))
    for prefixes in sequence:
        commands, after = prefix_list_commands(
            running, parse_prefix_lists(rendered("h1", prefixes))
        )
        running = replay(running, commands)
        assert running == after
        assert sorted(permitted(running, "HOST-h1-V4")) == sorted(prefixes)
