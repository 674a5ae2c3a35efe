"""The one client of Terrace's REST API, used by the speaker, the CNI plugin and the CLI.

It speaks to a controller at `unix:/path/to.sock` or `http(s)://host:port`, sends the
bearer token, and turns RFC 9457 problem answers into `ApiError` with the problem's
detail. It owns no state of its own beyond the HTTP session.
"""

from __future__ import annotations

import json
from types import TracebackType
from typing import Any

import aiohttp


class ApiError(Exception):
    """The controller answered with an error; `problem` is the problem+json body."""

    def __init__(self, status: int, problem: dict[str, Any]) -> None:
        self.status = status
        self.problem = problem
        detail = problem.get("detail") or problem.get("title") or "error"
        super().__init__(f"{status} {problem.get('title', '')}: {detail}".strip())


class ControllerUnavailable(Exception):
    """The controller could not be reached at all."""


class ControllerClient:
    """Async client; use as `async with ControllerClient(url, token) as client:`."""

    def __init__(self, url: str, token: str | None = None) -> None:
        self.url = url
        self.token = token
        if url.startswith("unix:"):
            self._connector_path: str | None = url.removeprefix("unix:")
            self._base = "http://terrace"
        else:
            self._connector_path = None
            self._base = url.rstrip("/")
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> ControllerClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector: aiohttp.BaseConnector | None = None
            if self._connector_path is not None:
                connector = aiohttp.UnixConnector(path=self._connector_path)
            headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
            self._session = aiohttp.ClientSession(
                connector=connector, headers=headers, timeout=aiohttp.ClientTimeout(total=None)
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def request(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        params: dict[str, Any] | None = None,
        timeout: float = 30.0,
        raw_body: str | None = None,
        content_type: str = "application/json",
    ) -> Any:
        """One API call; returns the decoded JSON (or text) or raises ApiError."""
        data: str | None = raw_body
        if body is not None:
            data = json.dumps(body)
        clean = {k: str(v) for k, v in (params or {}).items() if v is not None}
        try:
            async with self._get_session().request(
                method,
                self._base + path,
                data=data,
                params=clean,
                headers={"Content-Type": content_type} if data is not None else None,
                timeout=aiohttp.ClientTimeout(total=timeout),
            ) as resp:
                text = await resp.text()
                return _decode(resp.status, resp.content_type, text)
        except (aiohttp.ClientConnectionError, TimeoutError) as exc:
            raise ControllerUnavailable(
                f"cannot reach the controller at {self.url}: {exc}"
            ) from exc

    async def desired_state(self, host: str, after: int, timeout: float) -> dict[str, Any]:
        """Long-poll the host's desired state newer than `after`."""
        result: dict[str, Any] = await self.request(
            "GET",
            f"/v1/hosts/{host}/desired-state",
            params={"after": after, "timeout": timeout},
            timeout=timeout + 15,
        )
        return result

    async def post_status(self, host: str, status: dict[str, Any]) -> None:
        await self.request("POST", f"/v1/hosts/{host}/status", body=status)


def _decode(status: int, content_type: str, text: str) -> Any:
    is_json = content_type.endswith("json")
    payload: Any = json.loads(text) if is_json and text else text
    if status >= 400:
        if not isinstance(payload, dict):
            payload = {"title": "error", "status": status, "detail": str(payload)[:500]}
        raise ApiError(status, payload)
    return payload
