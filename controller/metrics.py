"""Prometheus metrics in the text exposition format, without a client library.

Counts requests and their latency by route template, allocations and borrowed
addresses; the database pool and gauges are read when `/metrics` is scraped.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field

from aiohttp import web

BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


@dataclass
class Histogram:
    counts: list[int] = field(default_factory=lambda: [0] * (len(BUCKETS) + 1))
    total: float = 0.0
    n: int = 0

    def observe(self, value: float) -> None:
        self.n += 1
        self.total += value
        for i, bound in enumerate(BUCKETS):
            if value <= bound:
                self.counts[i] += 1
                return
        self.counts[-1] += 1


@dataclass
class Metrics:
    requests: dict[tuple[str, str, int], int] = field(default_factory=lambda: defaultdict(int))
    latency: dict[tuple[str, str], Histogram] = field(
        default_factory=lambda: defaultdict(Histogram)
    )
    counters: dict[str, float] = field(default_factory=lambda: defaultdict(float))

    def count(self, name: str, value: float = 1.0) -> None:
        self.counters[name] += value

    def render(self, gauges: Iterable[tuple[str, str, float]]) -> str:
        lines = [
            "# HELP terrace_http_requests_total HTTP requests by route and status.",
            "# TYPE terrace_http_requests_total counter",
        ]
        for (method, path, status), n in sorted(self.requests.items()):
            lines.append(
                f'terrace_http_requests_total{{method="{method}",route="{path}",'
                f'status="{status}"}} {n}'
            )
        lines += [
            "# HELP terrace_http_request_seconds HTTP request latency by route.",
            "# TYPE terrace_http_request_seconds histogram",
        ]
        for (method, path), hist in sorted(self.latency.items()):
            labels = f'method="{method}",route="{path}"'
            cumulative = 0
            for bound, n in zip((*BUCKETS, float("inf")), hist.counts, strict=True):
                cumulative += n
                le = "+Inf" if bound == float("inf") else repr(bound)
                lines.append(
                    f'terrace_http_request_seconds_bucket{{{labels},le="{le}"}} {cumulative}'
                )
            lines.append(f"terrace_http_request_seconds_sum{{{labels}}} {hist.total:.6f}")
            lines.append(f"terrace_http_request_seconds_count{{{labels}}} {hist.n}")
        for name, value in sorted(self.counters.items()):
            lines += [f"# TYPE {name} counter", f"{name} {value:g}"]
        for name, help_text, value in gauges:
            lines += [f"# HELP {name} {help_text}", f"# TYPE {name} gauge", f"{name} {value:g}"]
        return "\n".join(lines) + "\n"


def metrics_middleware(metrics: Metrics) -> Callable[..., Awaitable[web.StreamResponse]]:
    @web.middleware
    async def middleware(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        start = time.perf_counter()
        resource = request.match_info.route.resource
        path = resource.canonical if resource is not None else "unmatched"
        status = 500
        try:
            response = await handler(request)
            status = response.status
            return response
        except web.HTTPException as exc:
            status = exc.status
            raise
        finally:
            metrics.requests[(request.method, path, status)] += 1
            metrics.latency[(request.method, path)].observe(time.perf_counter() - start)

    return middleware
