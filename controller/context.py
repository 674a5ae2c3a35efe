"""The per-process controller context handed to every handler: engine, feed, metrics.

It owns nothing but references; building and tearing it down is `controller/app.py`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web
from sqlalchemy.ext.asyncio import AsyncEngine

from controller.allocator import EndpointAllocator
from controller.auth import Authenticator
from controller.desired import DesiredStates
from controller.feed import ChangeFeed
from controller.metrics import Metrics


@dataclass
class Controller:
    engine: AsyncEngine
    feed: ChangeFeed
    auth: Authenticator
    data_dir: Path
    metrics: Metrics = field(default_factory=Metrics)
    allocator: EndpointAllocator = field(init=False)
    states: DesiredStates = field(init=False)

    def __post_init__(self) -> None:
        self.allocator = EndpointAllocator(self.engine, self.metrics)
        self.states = DesiredStates(self.engine)


CONTROLLER_KEY = web.AppKey("terrace", Controller)


def ctx(request: web.Request) -> Controller:
    return request.app[CONTROLLER_KEY]
