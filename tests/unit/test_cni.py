"""terrace-cni without a kernel or a controller: configuration, environment, every error
path's code, results checked against the schema written from the CNI spec's text; and
the kernel reconciler's sharing rules with the plugin (lock, newer veths)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator, FormatChecker

import speaker
from speaker import cni_spec
from speaker.cni import netns_reference, run
from speaker.cni_spec import Attachment, CniError, build_result, endpoint_name
from speaker.kernel import KernelReconciler, KernelSnapshot
from speaker.naming import host_veth_name
from tests.unit.test_speaker_kernel_diff import MemoryKernel, ep, state

SCHEMA = json.loads((Path(speaker.__file__).parent / "cni_result.schema.json").read_text())
NETWORK = "0b5e4c8e-3f51-4b5a-9a53-1a2b3c4d5e6f"


def validate(doc: dict[str, Any], kind: str) -> None:
    schema = {**SCHEMA, "oneOf": [{"$ref": f"#/$defs/{kind}"}]}
    Draft202012Validator(schema, format_checker=FormatChecker()).validate(doc)


def config(**changes: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "cniVersion": "1.0.0",
        "name": "prod",
        "type": "terrace-cni",
        "controller": "unix:/nonexistent/terrace.sock",
        "token_file": "/nonexistent/host.token",
        "host": "h1",
        "network": NETWORK,
    }
    doc.update(changes)
    return {k: v for k, v in doc.items() if v is not None}


def env(command: str = "ADD", **changes: str) -> dict[str, str]:
    doc = {
        "CNI_COMMAND": command,
        "CNI_CONTAINERID": "abc123def456",
        "CNI_NETNS": "/var/run/netns/does-not-exist-4f1c",
        "CNI_IFNAME": "eth0",
        "CNI_PATH": "/usr/lib/cni",
    }
    doc.update(changes)
    return {k: v for k, v in doc.items() if v}


def error_of(stdin: str, environ: dict[str, str]) -> dict[str, Any]:
    status, out = run(stdin, environ)
    assert status == 1 and out is not None, out
    validate(out, "error")
    return out


# ---- error paths, each with its code ----------------------------------------------------


@pytest.mark.parametrize(
    ("environ", "code"),
    [
        (env(CNI_COMMAND=""), cni_spec.INVALID_ENVIRONMENT),
        (env("BOGUS"), cni_spec.INVALID_ENVIRONMENT),
        (env(CNI_CONTAINERID=""), cni_spec.INVALID_ENVIRONMENT),
        (env(CNI_CONTAINERID="-starts-with-dash"), cni_spec.INVALID_ENVIRONMENT),
        (env(CNI_IFNAME="much-too-long-name0"), cni_spec.INVALID_ENVIRONMENT),
        (env(CNI_IFNAME=""), cni_spec.INVALID_ENVIRONMENT),
        (env(CNI_NETNS=""), cni_spec.INVALID_ENVIRONMENT),
        (env("CHECK", CNI_NETNS=""), cni_spec.INVALID_ENVIRONMENT),
        (env(CNI_ARGS="IgnoreUnknown=1;broken"), cni_spec.INVALID_ENVIRONMENT),
    ],
)
def test_invalid_environment_is_code_4(environ: dict[str, str], code: int) -> None:
    assert error_of(json.dumps(config()), environ)["code"] == code


@pytest.mark.parametrize(
    ("stdin", "code"),
    [
        ("{not json", cni_spec.DECODING_FAILURE),
        ("[1, 2]", cni_spec.DECODING_FAILURE),
        ("", cni_spec.DECODING_FAILURE),
        (json.dumps(config(prevResult=[])), cni_spec.DECODING_FAILURE),
        (json.dumps(config(prevResult={"ips": "10.0.0.1"})), cni_spec.DECODING_FAILURE),
        (json.dumps(config(cniVersion="0.3.1")), cni_spec.INCOMPATIBLE_VERSION),
        (json.dumps(config(cniVersion="2.0.0")), cni_spec.INCOMPATIBLE_VERSION),
        (json.dumps(config(cniVersion=None)), cni_spec.INVALID_CONFIG),
        (json.dumps(config(ipam={"type": "host-local"})), cni_spec.UNSUPPORTED_FIELD),
        (json.dumps(config(controller=None)), cni_spec.INVALID_CONFIG),
        (json.dumps(config(token_file="")), cni_spec.INVALID_CONFIG),
        (json.dumps(config(host=None)), cni_spec.INVALID_CONFIG),
        (json.dumps(config(network=None)), cni_spec.INVALID_CONFIG),
        (json.dumps(config(network="acme/web")), cni_spec.INVALID_CONFIG),
        (json.dumps(config(network_name=7)), cni_spec.INVALID_CONFIG),
        (json.dumps(config(timeout=-1)), cni_spec.INVALID_CONFIG),
        (json.dumps(config(timeout=True)), cni_spec.INVALID_CONFIG),
    ],
)
def test_bad_configuration_gets_its_code(stdin: str, code: int) -> None:
    assert error_of(stdin, env("DEL"))["code"] == code


def test_incompatible_version_names_the_supported_ones() -> None:
    out = error_of(json.dumps(config(cniVersion="0.4.0")), env("DEL"))
    assert "1.0.0" in out["details"] and out["cniVersion"] == "0.4.0"


def test_tenant_slash_name_network_explains_what_to_give() -> None:
    out = error_of(json.dumps(config(network="acme/web")), env("DEL"))
    assert "network id" in out["msg"] and "host token" in out["msg"]


def test_unsupported_field_names_key_and_value() -> None:
    out = error_of(json.dumps(config(ipam={"type": "host-local"})), env())
    assert 'ipam={"type": "host-local"}' in out["msg"]


def test_missing_netns_on_add_and_check_is_container_unknown() -> None:
    for command in ("ADD", "CHECK"):
        assert error_of(json.dumps(config()), env(command))["code"] == cni_spec.CONTAINER_UNKNOWN


def test_unreadable_token_file_is_io_failure() -> None:
    out = error_of(json.dumps(config()), env("DEL"))
    assert out["code"] == cni_spec.IO_FAILURE and "/nonexistent/host.token" in out["msg"]


def test_unreachable_controller_is_try_again_later(tmp_path: Path) -> None:
    token = tmp_path / "host.token"
    token.write_text("trh_x\n")
    out = error_of(json.dumps(config(token_file=str(token))), env("DEL"))
    assert out["code"] == cni_spec.TRY_AGAIN_LATER, out


def test_status_with_unreachable_controller_is_plugin_not_available(tmp_path: Path) -> None:
    token = tmp_path / "host.token"
    token.write_text("trh_x\n")
    out = error_of(json.dumps(config(token_file=str(token), cniVersion="1.1.0")), env("STATUS"))
    assert out["code"] == cni_spec.PLUGIN_NOT_AVAILABLE, out


def test_gc_needs_well_formed_valid_attachments() -> None:
    stdin = json.dumps(config(**{"cni.dev/valid-attachments": [{"containerID": "x"}]}))
    assert error_of(stdin, env("GC"))["code"] == cni_spec.INVALID_CONFIG


def test_errors_are_plain_objects_with_details_string() -> None:
    doc = CniError(cni_spec.PLUMBING_FAILED, "veth failed", "EEXIST").to_json("1.0.0")
    validate(doc, "error")
    assert doc == {"cniVersion": "1.0.0", "code": 102, "msg": "veth failed", "details": "EEXIST"}


# ---- VERSION --------------------------------------------------------------------------


@pytest.mark.parametrize("stdin", ['{"cniVersion": "1.0.0"}', "", '{"cniVersion": "0.4.0"}'])
def test_version_answers_whatever_version_was_asked(stdin: str) -> None:
    status, out = run(stdin, {"CNI_COMMAND": "VERSION"})
    assert status == 0 and out is not None
    validate(out, "version")
    assert out["supportedVersions"] == ["1.0.0", "1.1.0"]


# ---- results -------------------------------------------------------------------------


ATTACHMENT = Attachment(
    host_interface=host_veth_name("ep-1"),
    ifname="eth0",
    container_mac="0a:58:0a:40:00:05",
    sandbox="/var/run/netns/cni-1234",
    ipv4="10.64.0.5",
    ipv6="2001:db8:100::5",
)
LOOPBACK_RESULT = {
    "cniVersion": "1.0.0",
    "interfaces": [{"name": "lo", "mac": "00:00:00:00:00:00", "sandbox": "/var/run/netns/x"}],
    "ips": [
        {"interface": 0, "address": "127.0.0.1/8"},
        {"interface": 0, "address": "::1/128"},
    ],
    "dns": {},
}


def test_result_lists_both_interfaces_addresses_gateways_and_default_routes() -> None:
    result = build_result("1.0.0", ATTACHMENT)
    validate(result, "success")
    assert result["interfaces"] == [
        {"name": ATTACHMENT.host_interface, "mac": "ee:ee:ee:ee:ee:ee"},
        {"name": "eth0", "mac": "0a:58:0a:40:00:05", "sandbox": "/var/run/netns/cni-1234"},
    ]
    assert result["ips"] == [
        {"address": "10.64.0.5/32", "gateway": "169.254.1.1", "interface": 1},
        {"address": "2001:db8:100::5/128", "gateway": "fe80::1", "interface": 1},
    ]
    assert result["routes"] == [
        {"dst": "0.0.0.0/0", "gw": "169.254.1.1"},
        {"dst": "::/0", "gw": "fe80::1"},
    ]
    assert result["dns"] == {}


def test_result_of_a_single_family_endpoint_has_that_family_only() -> None:
    result = build_result("1.0.0", Attachment("tr0", "eth1", "", "/proc/1/ns/net", None, "fd::1"))
    validate({**result, "interfaces": result["interfaces"][:1]}, "success")
    assert [i["address"] for i in result["ips"]] == ["fd::1/128"]
    assert [r["dst"] for r in result["routes"]] == ["::/0"]


def test_prev_result_is_kept_and_our_indexes_follow_its_interfaces() -> None:
    result = build_result("1.0.0", ATTACHMENT, LOOPBACK_RESULT)
    validate(result, "success")
    assert [i["name"] for i in result["interfaces"]] == ["lo", ATTACHMENT.host_interface, "eth0"]
    assert [i["interface"] for i in result["ips"]] == [0, 0, 2, 2]
    assert result["ips"][:2] == LOOPBACK_RESULT["ips"]
    assert cni_spec.prev_host_interfaces(result) == [ATTACHMENT.host_interface]


def test_the_schema_rejects_what_the_spec_forbids() -> None:
    good = build_result("1.0.0", ATTACHMENT)
    for bad in (
        {**good, "cniVersion": None},
        {**good, "ips": [{"address": "10.0.0.1", "interface": 1}]},
        {**good, "ips": [{"address": "10.0.0.1/32", "interface": "eth0"}]},
        {**good, "interfaces": [{"mac": "ee:ee:ee:ee:ee:ee"}]},
        {**good, "routes": [{"gw": "169.254.1.1"}]},
    ):
        with pytest.raises(Exception, match=r"."):
            validate(bad, "success")
    with pytest.raises(Exception, match=r"."):
        validate({"cniVersion": "1.0.0", "code": 8, "msg": "x"}, "error")


def test_endpoint_names_fit_the_controller_and_keep_the_interface() -> None:
    assert endpoint_name("abc", "eth0") == "cni-abc-eth0"
    long = endpoint_name("f" * 200, "net1")
    assert len(long) == cni_spec.ENDPOINT_NAME_MAX and long.endswith("-net1")


def test_netns_paths_become_names_inside_the_netns_directory(tmp_path: Path) -> None:
    (tmp_path / "netns").mkdir()
    (tmp_path / "alias").symlink_to(tmp_path / "netns")
    directory = str(tmp_path / "netns")
    assert netns_reference(f"{directory}/cni-1", directory) == "cni-1"
    assert netns_reference(str(tmp_path / "alias" / "cni-1"), directory) == "cni-1"
    assert netns_reference("/proc/4242/ns/net", directory) == "/proc/4242/ns/net"


# ---- the kernel reconciler shares the kernel with the plugin -------------------------


def test_a_veth_the_plugin_built_for_a_newer_revision_survives_an_older_state() -> None:
    kernel = MemoryKernel(netns={"c1"})
    reconciler = KernelReconciler(kernel)
    reconciler.apply(state(ep(1)))
    newer = KernelReconciler(MemoryKernel(netns={"c1"}))  # builds ep 2 like the plugin does
    newer.apply(state(ep(1), ep(2)))
    kernel.veths.update(newer.dataplane.veths)  # type: ignore[attr-defined]
    kernel.routes.update(newer.dataplane.routes)  # type: ignore[attr-defined]
    before = dict(kernel.routes)
    report = reconciler.apply(state(ep(1)))  # the speaker is one revision behind
    assert report.changes == 0 and kernel.routes == before
    assert host_veth_name("ep-2") in kernel.veths
    reconciler.apply(state(ep(1), ep(2)))  # it catches up: nothing to do
    reconciler.apply(state(ep(1)))  # the endpoint is deleted: now it goes
    assert host_veth_name("ep-2") not in kernel.veths


def test_the_first_apply_removes_unknown_veths() -> None:
    kernel = MemoryKernel(netns={"c1"})
    KernelReconciler(kernel).apply(state(ep(1), ep(2)))
    KernelReconciler(kernel).apply(state(ep(1)))
    assert list(kernel.veths) == [host_veth_name("ep-1")]


def test_every_apply_holds_the_kernel_lock() -> None:
    held: list[bool] = []

    @contextmanager
    def lock() -> Iterator[None]:
        held.append(True)
        yield
        held.append(False)

    class Watched(MemoryKernel):
        def snapshot(self) -> KernelSnapshot:
            held.append(held[-1])
            return super().snapshot()

    KernelReconciler(Watched(netns={"c1"}), lock=lock).apply(state(ep(1)))
    assert held == [True, True, False]
