"""``create_app(settings)``: wiring only. Everything with a lifetime is a cleanup context."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from aiohttp import web

from controlplane import keys
from controlplane.api import (
    agents,
    audit,
    catalogue,
    graph,
    health,
    heartbeat,
    machines,
    metrics,
    policies,
    runtime_endpoints,
    tasks,
)
from controlplane.middleware import auth_middleware, error_middleware
from controlplane.services.auth import ApiKeyAuthenticator, ensure_admin_key
from controlplane.services.secrets import load_cipher
from controlplane.services.sweeper import Sweeper
from controlplane.settings import Settings
from controlplane.store import migrate, open_store
from shared.logs import get_logger

log = get_logger("controlplane.app")

RESOURCES = (
    health,
    metrics,
    machines,
    policies,
    runtime_endpoints,
    agents,
    heartbeat,
    graph,
    catalogue,
    tasks,
    audit,
)


async def _store_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[keys.SETTINGS]
    store = await open_store(settings)
    try:
        applied = await migrate(store)
        if applied:
            log.info("migrations_applied", versions=applied, database=store.description)
        app[keys.STORE] = store
        app[keys.CIPHER] = load_cipher(settings)
        app[keys.AUTHENTICATOR] = ApiKeyAuthenticator(store, settings)
        path = await ensure_admin_key(store, settings)
        app[keys.ADMIN_KEY_FILE] = path
        yield
    finally:
        await store.close()


async def _sweeper_ctx(app: web.Application) -> AsyncIterator[None]:
    sweeper = Sweeper(app[keys.STORE], app[keys.SETTINGS])
    app[keys.SWEEPER] = sweeper
    task = asyncio.create_task(sweeper.run(), name="lease-sweeper")
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def create_app(settings: Settings, *, run_sweeper: bool = True) -> web.Application:
    app = web.Application(
        middlewares=[error_middleware, auth_middleware],
        client_max_size=settings.server.max_body_bytes,
    )
    app[keys.SETTINGS] = settings
    app.cleanup_ctx.append(_store_ctx)
    if run_sweeper:
        app.cleanup_ctx.append(_sweeper_ctx)
    for resource in RESOURCES:
        app.router.add_routes(resource.routes)
    return app
