"""Build and run the controller's aiohttp application.

Owns start-up and shutdown: the database (URL or embedded), the schema check, the change
feed, the admin token, the listeners (TCP and unix socket). Routes come from the registry.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from controller import (  # noqa: F401  (importing registers the routes)
    api_admin,
    api_explain,
    api_fabric,
    api_networks,
    api_state,
    api_views,
)
from controller.auth import Authenticator, load_admin_token
from controller.context import CONTROLLER_KEY, Controller
from controller.db import EmbeddedPostgres, check_schema, make_engine, upgrade, wait_for_database
from controller.feed import ChangeFeed
from controller.metrics import metrics_middleware
from controller.openapi import build_openapi
from controller.problems import problem_middleware
from controller.registry import ROUTES, json_response, make_view

log = logging.getLogger("terrace.controller")
VERSION = "0.1.0"


@dataclass
class Settings:
    database_url: str | None
    data_dir: Path
    listen: str | None = "127.0.0.1:8080"
    unix: str | None = None
    migrate: bool = False  # migrate on start (the embedded database always does)

    @classmethod
    def from_env(cls) -> Settings:
        return cls(
            database_url=os.environ.get("TERRACE_DATABASE_URL") or None,
            data_dir=Path(os.environ.get("TERRACE_DATA_DIR", ".terrace")),
            listen=os.environ.get("TERRACE_LISTEN", "127.0.0.1:8080"),
            unix=os.environ.get("TERRACE_UNIX_SOCKET") or None,
        )


def asyncpg_dsn(url: str) -> str:
    return url.replace("postgresql+asyncpg://", "postgresql://", 1)


def create_app(controller: Controller) -> web.Application:
    app = web.Application(
        middlewares=[metrics_middleware(controller.metrics), problem_middleware],
        client_max_size=2 << 20,
    )
    app[CONTROLLER_KEY] = controller

    async def end_streams(_app: web.Application) -> None:
        controller.feed.close_streams()

    app.on_shutdown.append(end_streams)
    for spec in ROUTES:
        app.router.add_route(spec.method, spec.path, make_view(spec, controller.auth.principal))
    openapi = build_openapi(VERSION)

    async def openapi_view(_request: web.Request) -> web.Response:
        return json_response(openapi)

    app.router.add_get("/openapi.json", openapi_view)
    _add_dashboard(app)
    return app


def _add_dashboard(app: web.Application) -> None:
    """The dashboard (`controller/dashboard/`), when it is there."""
    try:
        from controller import dashboard
    except ImportError:
        return
    setup = getattr(dashboard, "setup", None)
    if setup is not None:
        setup(app)


async def open_controller(settings: Settings) -> tuple[Controller, EmbeddedPostgres | None]:
    embedded: EmbeddedPostgres | None = None
    url = settings.database_url
    if url is None:
        embedded = EmbeddedPostgres(settings.data_dir)
        url = await asyncio.to_thread(embedded.start)
    engine = make_engine(url)
    await wait_for_database(engine)
    if embedded is not None or settings.migrate:
        await upgrade(engine)
    await check_schema(engine)
    admin_token, token_path = load_admin_token(settings.data_dir)
    if token_path is not None:
        log.info("admin token in %s", token_path.resolve())
    feed = ChangeFeed(asyncpg_dsn(engine.url.render_as_string(hide_password=False)))
    auth = Authenticator(engine, admin_token)
    # A deleted tenant or host, or a revoked token, must stop working at once.
    feed.on_kinds(lambda kinds: auth.forget() if kinds & {"tenant", "host"} else None)
    await feed.start()
    controller = Controller(engine=engine, feed=feed, auth=auth, data_dir=settings.data_dir)
    return controller, embedded


async def close_controller(controller: Controller, embedded: EmbeddedPostgres | None) -> None:
    await controller.feed.stop()
    await controller.engine.dispose()
    if embedded is not None:
        await asyncio.to_thread(embedded.stop)


def _prepare_socket_path(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


async def serve(settings: Settings, *, ready: asyncio.Event | None = None) -> None:
    controller, embedded = await open_controller(settings)
    runner = web.AppRunner(create_app(controller), access_log=None)
    await runner.setup()
    try:
        if settings.listen:
            host, _, port = settings.listen.rpartition(":")
            await web.TCPSite(runner, host or "127.0.0.1", int(port)).start()
            log.info("listening on http://%s", settings.listen)
        if settings.unix:
            _prepare_socket_path(Path(settings.unix))
            await web.UnixSite(runner, settings.unix).start()
            os.chmod(settings.unix, 0o660)
            log.info("listening on unix:%s", settings.unix)
        if ready is not None:
            ready.set()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, stop.set)
        await stop.wait()
    finally:
        await runner.cleanup()
        await close_controller(controller, embedded)
