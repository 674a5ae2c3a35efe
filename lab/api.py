"""A blocking face of `speaker.client.ControllerClient` for lab commands and tests.

Each call opens a client, makes one request and closes it: lab commands are short and
make few calls, and tests may call from any thread. Errors are the client's own
(`ApiError`, `ControllerUnavailable`).
"""

from __future__ import annotations

import asyncio
from typing import Any

from speaker.client import ControllerClient


class LabApi:
    """`api.get("/v1/status")`, `api.post("/v1/pools", {"cidr": ...})`, ..."""

    def __init__(self, url: str, token: str | None) -> None:
        self.url = url
        self.token = token

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        async def once() -> Any:
            async with ControllerClient(self.url, self.token) as client:
                return await client.request(method, path, **kwargs)

        return asyncio.run(once())

    def get(self, path: str, **params: Any) -> Any:
        return self.call("GET", path, params=params or None)

    def post(self, path: str, body: Any = None, **params: Any) -> Any:
        return self.call("POST", path, body=body if body is not None else {}, params=params)

    def put_text(self, path: str, text: str, content_type: str = "application/yaml") -> Any:
        return self.call("PUT", path, raw_body=text, content_type=content_type)

    def delete(self, path: str) -> Any:
        return self.call("DELETE", path)
