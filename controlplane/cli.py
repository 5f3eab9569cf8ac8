"""``mm-controlplane serve``: parse flags, load settings, run until SIGTERM (SPEC §16, §19)."""

from __future__ import annotations

import argparse
import asyncio
import gc
import signal
import sys
from pathlib import Path
from typing import Any

from aiohttp import web

from controlplane import keys
from controlplane.app import create_app
from controlplane.settings import ConfigError, Settings, load_settings
from controlplane.store.migrations import SchemaTooNew
from shared.logs import configure_logging, get_logger
from shared.sdnotify import Notifier

log = get_logger("controlplane")

EXIT_CONFIG = 78


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mm-controlplane", description="Machine Markets control plane"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the API server")
    serve.add_argument("--config", type=Path, help="TOML settings file (or MM_CONFIG)")
    serve.add_argument("--host", help="listen address (server.host)")
    serve.add_argument("--port", type=int, help="listen port (server.port)")
    serve.add_argument("--data-dir", type=Path, help="data directory (data_dir)")
    serve.add_argument("--database-url", help="sqlite:///PATH or postgresql://... (database.url)")
    serve.add_argument("--no-auth", action="store_true", help="local development only: no API key")
    return parser


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if args.host is not None:
        out.setdefault("server", {})["host"] = args.host
    if args.port is not None:
        out.setdefault("server", {})["port"] = args.port
    if args.data_dir is not None:
        out["data_dir"] = args.data_dir
    if args.database_url is not None:
        out.setdefault("database", {})["url"] = args.database_url
    if args.no_auth:
        out.setdefault("auth", {})["required"] = False
    return out


async def serve(settings: Settings) -> int:
    notifier = Notifier()
    app = create_app(settings)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    try:
        await runner.setup()
    except SchemaTooNew as exc:
        log.error("schema_too_new", error=str(exc))
        return EXIT_CONFIG
    except ConfigError as exc:
        log.error("configuration_error", error=str(exc))
        return EXIT_CONFIG
    # Everything loaded so far lives for the whole process: keep it out of every GC pass.
    gc.freeze()
    site = web.TCPSite(
        runner,
        settings.server.host,
        settings.server.port,
        shutdown_timeout=max(10.0, settings.execution.timeout_seconds + 5),
    )
    await site.start()
    addresses = [f"http://{h}:{p}" for h, p, *_ in (s.getsockname() for s in _sockets(runner))]
    admin_file = app[keys.ADMIN_KEY_FILE]
    log.info(
        "listening",
        urls=addresses,
        database=app[keys.STORE].description,
        adminKeyFile=str(admin_file) if admin_file else None,
    )
    if not settings.auth.required:
        log.warning("AUTHENTICATION DISABLED", host=settings.server.host)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, app[keys.CATALOGUE].schedule_reload)
    notifier.ready(status=f"listening on {', '.join(addresses)}")
    watchdog = asyncio.create_task(notifier.run_watchdog())
    await stop.wait()
    notifier.stopping()
    log.info("stopping")
    watchdog.cancel()
    await runner.cleanup()
    notifier.close()
    return 0


def _sockets(runner: web.AppRunner) -> list[Any]:
    server = runner.server
    sites = list(runner.sites)
    sockets: list[Any] = []
    for site in sites:
        srv = getattr(site, "_server", None)
        if srv is not None and getattr(srv, "sockets", None):
            sockets.extend(srv.sockets)
    del server
    return sockets


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = load_settings(args.config, _overrides(args))
    except ConfigError as exc:
        configure_logging()
        log.error("configuration_error", error=str(exc))
        print(f"mm-controlplane: configuration error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    configure_logging(settings.log.level, settings.log.format)
    try:
        return asyncio.run(serve(settings))
    except KeyboardInterrupt:
        return 0
    except ConfigError as exc:
        log.error("configuration_error", error=str(exc))
        return EXIT_CONFIG


if __name__ == "__main__":
    sys.exit(main())
