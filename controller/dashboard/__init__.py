"""The ops dashboard: static files (HTML, CSS, plain JS modules) served at `/` and `/ui/`.

Owns only the serving of these files. It must never fetch anything at run time, need a
build step, or serve anything but the files of this directory; the pages talk to the
REST API with the token the user signs in with (`controller/api_views.py` and the rest).
"""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

HERE = Path(__file__).resolve().parent
CONTENT_TYPES = {
    ".html": "text/html",
    ".js": "text/javascript",
    ".css": "text/css",
    ".svg": "image/svg+xml",
}
# The page loads only its own files and talks only to this controller.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


def dashboard_file(name: str) -> Path | None:
    """The file `name` of this directory, when it is one the dashboard serves."""
    if "/" in name or "\\" in name or name.startswith("."):
        return None
    path = HERE / name
    if path.suffix not in CONTENT_TYPES or not path.is_file():
        return None
    return path


def _serve(name: str) -> web.Response:
    path = dashboard_file(name)
    if path is None:
        raise web.HTTPNotFound()
    return web.Response(
        body=path.read_bytes(),
        content_type=CONTENT_TYPES[path.suffix],
        charset="utf-8",
        headers=SECURITY_HEADERS,
    )


async def index(_request: web.Request) -> web.Response:
    return _serve("index.html")


async def asset(request: web.Request) -> web.Response:
    return _serve(request.match_info["name"])


def setup(app: web.Application) -> None:
    """Add `GET /` (the page) and `GET /ui/{name}` (its scripts and styles)."""
    app.router.add_get("/", index)
    app.router.add_get("/ui/{name}", asset)
