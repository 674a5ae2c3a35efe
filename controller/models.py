"""Request bodies of the REST API, validated by pydantic, and the event the change
stream sends; their JSON schemas feed `/openapi.json`. Value checks that need the
address arithmetic live in `fabric.addressing` and are called from the validators, so
the messages are the same everywhere (`10.0.0.1/24 has host bits set; did you mean
10.0.0.0/24?`)."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, field_validator

from fabric.addressing import AddressError, parse_address, parse_network

Name = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")]
Asn = Annotated[StrictInt, Field(ge=1, le=4294967295)]
PORT_RANGE = re.compile(r"^(\d{1,5})(?:-(\d{1,5}))?$")


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


def _cidr(value: str) -> str:
    try:
        return str(parse_network(value))
    except AddressError as exc:
        raise ValueError(str(exc)) from None


def _address(value: str) -> str:
    try:
        return str(parse_address(value))
    except AddressError as exc:
        raise ValueError(str(exc)) from None


class PoolIn(Body):
    cidr: Annotated[str, Field(max_length=64, examples=["10.64.0.0/10"])]

    @field_validator("cidr")
    @classmethod
    def _check(cls, v: str) -> str:
        return _cidr(v)


class TenantIn(Body):
    name: Name


class RackIn(Body):
    name: Name
    asn: Asn | None = None


class HostIn(Body):
    name: Name
    rack: Name
    address: Annotated[str, Field(max_length=64)]
    address6: Annotated[str, Field(max_length=64)] | None = None
    asn: Asn | None = None

    @field_validator("address")
    @classmethod
    def _check4(cls, v: str) -> str:
        return _address(v)

    @field_validator("address6")
    @classmethod
    def _check6(cls, v: str | None) -> str | None:
        return None if v is None else _address(v)


class NetworkIn(Body):
    name: Name
    auto_grow: StrictBool = False
    tenant_id: Annotated[str, Field(max_length=64)] | None = None


class SubnetIn(Body):
    family: Literal[4, 6] | None = None
    prefix_length: Annotated[StrictInt, Field(ge=0, le=128)] | None = None
    block_prefix_length: Annotated[StrictInt, Field(ge=0, le=128)] | None = None
    rack_prefix_length: Annotated[StrictInt, Field(ge=0, le=128)] | None = None
    cidr: Annotated[str, Field(max_length=64)] | None = None

    @field_validator("cidr")
    @classmethod
    def _check(cls, v: str | None) -> str | None:
        return None if v is None else _cidr(v)


class EndpointIn(Body):
    network_id: Annotated[str, Field(max_length=64)]
    host: Name
    name: Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][\w.:-]*$")]
    netns: Annotated[str, Field(max_length=255, pattern=r"^[\w.:/-]+$")] | None = None
    interface: Annotated[str, Field(min_length=1, max_length=15, pattern=r"^[\w.-]+$")] | None = (
        None
    )


Port = StrictInt | Annotated[str, Field(max_length=11)]


class RuleIn(Body):
    from_network: Annotated[str, Field(max_length=64)] | None = None
    from_cidr: Annotated[str, Field(max_length=64)] | None = None
    protocol: Literal["tcp", "udp", "icmp", "any"] = "any"
    ports: Annotated[list[Port], Field(max_length=64)] = []

    @field_validator("from_cidr")
    @classmethod
    def _check(cls, v: str | None) -> str | None:
        return None if v is None else _cidr(v)

    @field_validator("ports")
    @classmethod
    def _ports(cls, v: list[int | str]) -> list[int | str]:
        return [_port(p) for p in v]


def _port(value: int | str) -> int | str:
    if isinstance(value, int):
        if not 1 <= value <= 65535:
            raise ValueError(f"port {value} is out of range (1..65535)")
        return value
    match = PORT_RANGE.match(value.strip())
    if not match:
        raise ValueError(f"port {value!r} must be a number or a range like '8000-8080'")
    low = int(match.group(1))
    high = int(match.group(2) or low)
    if not 1 <= low <= high <= 65535:
        raise ValueError(f"port range {value!r} must satisfy 1 <= low <= high <= 65535")
    return low if low == high and match.group(2) is None else f"{low}-{high}"


class HostStatusIn(BaseModel):
    """What a speaker reports; free-form beyond these fields."""

    model_config = ConfigDict(extra="allow")
    applied_revision: StrictInt | None = None
    last_error: str | None = None


class ChangeEvent(BaseModel):
    """One committed change, as `GET /v1/events` lists it and `/v1/events/stream` sends it."""

    id: int
    at: datetime
    kind: str
    action: str
    object_id: str | None
    tenant_id: str | None
    revision: int | None
    summary: str
