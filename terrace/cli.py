"""`terrace`: the one command line of the project.

It dispatches to the controller, the speaker, the lab, and a thin client over the REST
API for the daily work. Every error is one line on stderr and a non-zero exit.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any

from speaker.client import ApiError, ControllerClient, ControllerUnavailable

Runner = Callable[[argparse.Namespace], int]


class CliError(Exception):
    """A one-line message for the user; exit status 1 (2 for usage)."""


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if getattr(args, "verbose", False) else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    run: Runner | None = getattr(args, "run", None)
    if run is None:
        parser.print_help()
        return 2
    try:
        return run(args)
    except CliError as exc:
        print(f"terrace: {exc}", file=sys.stderr)
        return 1
    except ApiError as exc:
        print(f"terrace: {exc}", file=sys.stderr)
        return 1
    except ControllerUnavailable as exc:
        print(f"terrace: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="terrace", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(metavar="COMMAND")
    _controller_commands(sub)
    _speaker_command(sub)
    from terrace import client_commands

    client_commands.register(sub)
    _optional_commands(sub)
    return parser


def _optional_commands(sub: Any) -> None:
    """Commands of parts that register themselves (lab, fabric sync) when present."""
    for module_name in ("lab.cli",):
        try:
            module = __import__(module_name, fromlist=["register"])
        except ImportError:
            continue
        module.register(sub)


def _controller_commands(sub: Any) -> None:
    p = sub.add_parser("controller", help="run the controller (REST API, dashboard)")
    _database_args(p)
    p.add_argument(
        "--listen",
        default=os.environ.get("TERRACE_LISTEN", "127.0.0.1:8080"),
        help="HOST:PORT for people and tools (default 127.0.0.1:8080; '' for none)",
    )
    p.add_argument(
        "--unix",
        default=os.environ.get("TERRACE_UNIX_SOCKET"),
        help="also serve on this unix socket (for speakers)",
    )
    p.add_argument(
        "--migrate", action="store_true", help="migrate the database schema before serving"
    )
    p.set_defaults(run=_run_controller)

    db = sub.add_parser("db", help="database maintenance").add_subparsers(metavar="ACTION")
    up = db.add_parser("upgrade", help="migrate the database to the newest schema")
    _database_args(up)
    up.set_defaults(run=_run_db_upgrade)


def _database_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--database-url",
        default=os.environ.get("TERRACE_DATABASE_URL"),
        help="postgresql://… (default: embedded Postgres in --data-dir)",
    )
    p.add_argument(
        "--data-dir", type=Path, default=Path(os.environ.get("TERRACE_DATA_DIR", ".terrace"))
    )


def _settings(args: argparse.Namespace) -> Any:
    from controller.app import Settings

    return Settings(
        database_url=args.database_url or None,
        data_dir=args.data_dir,
        listen=getattr(args, "listen", None) or None,
        unix=getattr(args, "unix", None) or None,
        migrate=getattr(args, "migrate", False),
    )


def _run_controller(args: argparse.Namespace) -> int:
    from controller.app import serve
    from controller.db import SchemaOutdated

    try:
        run_fast(serve(_settings(args)))
    except SchemaOutdated as exc:
        raise CliError(str(exc)) from None
    except (ConnectionError, OSError) as exc:
        raise CliError(f"cannot start the controller: {exc}") from None
    return 0


def run_fast(main: Coroutine[Any, Any, None]) -> None:
    """Run a server coroutine on uvloop (a faster event loop) when it is installed."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(main)
        return
    uvloop.run(main)


def _run_db_upgrade(args: argparse.Namespace) -> int:
    from controller.db import EmbeddedPostgres, head_revision, make_engine, upgrade

    async def run() -> None:
        embedded = None
        url = args.database_url
        if not url:
            embedded = EmbeddedPostgres(args.data_dir)
            url = embedded.start()
        engine = make_engine(url)
        try:
            await upgrade(engine)
        finally:
            await engine.dispose()
            if embedded is not None:
                embedded.stop()

    try:
        asyncio.run(run())
    except (ConnectionError, OSError) as exc:
        raise CliError(f"cannot reach the database: {exc}") from None
    print(f"database schema at {head_revision()}")
    return 0


def _speaker_command(sub: Any) -> None:
    try:
        from speaker.agent import add_speaker_arguments, speaker_main
    except ImportError:
        return
    p = sub.add_parser("speaker", help="run the per-host agent")
    add_speaker_arguments(p)
    p.set_defaults(run=speaker_main)


# ---- shared by the client commands -------------------------------------------------


def client_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--url",
        default=os.environ.get("TERRACE_URL", "http://127.0.0.1:8080"),
        help="controller URL or unix:PATH (env TERRACE_URL)",
    )
    p.add_argument(
        "--token",
        default=os.environ.get("TERRACE_TOKEN"),
        help="bearer token (env TERRACE_TOKEN; or TERRACE_TOKEN_FILE, or <data-dir>/admin.token)",
    )
    p.add_argument("--json", action="store_true", help="print the raw JSON answer")


def resolve_token(args: argparse.Namespace) -> str:
    if args.token:
        return str(args.token)
    candidates = [
        os.environ.get("TERRACE_TOKEN_FILE"),
        str(Path(os.environ.get("TERRACE_DATA_DIR", ".terrace")) / "admin.token"),
    ]
    for path in candidates:
        if path and Path(path).is_file():
            return Path(path).read_text().strip()
    raise CliError("no token: pass --token, set TERRACE_TOKEN or TERRACE_TOKEN_FILE")


def call(args: argparse.Namespace, method: str, path: str, **kwargs: Any) -> Any:
    async def run() -> Any:
        async with ControllerClient(args.url, resolve_token(args)) as client:
            return await client.request(method, path, **kwargs)

    return asyncio.run(run())


def output(args: argparse.Namespace, data: Any, columns: Sequence[str] | None = None) -> int:
    if args.json or columns is None:
        print(json.dumps(data, indent=2, default=str))
        return 0
    rows = data if isinstance(data, list) else [data]
    print_table(rows, columns)
    return 0


def print_table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> None:
    cells = [[_cell(r.get(c)) for c in columns] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]
    print("  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip())
    for row in cells:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, list):
        return (
            ",".join(_cell(v) if not isinstance(v, dict) else v.get("cidr", "?") for v in value)
            or "-"
        )
    return str(value)


if __name__ == "__main__":
    sys.exit(main())
