"""Shared fixtures: the real app behind pytest-aiohttp's client, on SQLite and on PostgreSQL.

Every API test runs once per backend (``backend`` is parametrised); ``MM_TEST_BACKENDS=sqlite``
narrows a local run. In CI both run: PostgreSQL is never silently skipped.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from controlplane.app import create_app
from controlplane.settings import Settings, load_settings
from tests.helpers import Api

PG_ROOT = os.environ.get("MM_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")
BACKENDS = [b for b in os.environ.get("MM_TEST_BACKENDS", "sqlite,postgresql").split(",") if b]
ADMIN_KEY = "mmk_test_admin_key_0123456789abcdef"
FERNET_KEY = "u4kvGv2u1JdPZ6T9xLkJfu0O9Rf0vQ5XqkW0bYtq9mI="


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def database_url(backend: str, tmp_path: Path) -> AsyncIterator[str]:
    """A fresh database: a SQLite file in tmp_path, or a new PostgreSQL schema dropped afterwards."""
    if backend == "sqlite":
        yield f"sqlite:///{tmp_path / 'mm.sqlite3'}"
        return
    schema = f"t_{secrets.token_hex(6)}"
    conn = await asyncpg.connect(PG_ROOT)
    try:
        await conn.execute(f"CREATE SCHEMA {schema}")
    finally:
        await conn.close()
    yield f"{PG_ROOT}?search_path={schema}"
    conn = await asyncpg.connect(PG_ROOT)
    try:
        await conn.execute(f"DROP SCHEMA {schema} CASCADE")
    finally:
        await conn.close()


SettingsFactory = Callable[..., Settings]


@pytest.fixture
def make_settings(tmp_path: Path, database_url: str) -> SettingsFactory:
    """Settings for a test app; keyword overrides use the file's nesting (``lease={...}``)."""

    def factory(**overrides: Any) -> Settings:
        base: dict[str, Any] = {
            "data_dir": str(tmp_path / "data"),
            "database": {"url": database_url},
            "auth": {"api_keys": ADMIN_KEY},
            "security": {"secret_key": FERNET_KEY},
            "pairing": {"jwt_secret": "test-pairing-secret"},
            "identity": {"verification_mode": "operator"},
            "log": {"format": "json"},
        }
        for key, value in overrides.items():
            if isinstance(value, dict) and isinstance(base.get(key), dict):
                base[key] = {**base[key], **value}
            else:
                base[key] = value
        return load_settings(None, base, environ={})

    return factory


@pytest.fixture
def settings(make_settings: SettingsFactory) -> Settings:
    return make_settings()


@pytest.fixture
async def client(
    database_url: str, aiohttp_client: Any, settings: Settings
) -> TestClient[Any, Any]:
    # database_url before aiohttp_client: apps close before their PostgreSQL schema is dropped.
    client: TestClient[Any, Any] = await aiohttp_client(create_app(settings))
    return client


@pytest.fixture
def api(client: TestClient[Any, Any]) -> Api:
    """The API as the admin operator."""
    return Api(client, ADMIN_KEY)


@pytest.fixture
def make_api(
    database_url: str, aiohttp_client: Any, make_settings: SettingsFactory
) -> Callable[..., Any]:
    """Build an app with other settings and return an :class:`Api` for it."""

    async def factory(**overrides: Any) -> Api:
        client = await aiohttp_client(create_app(make_settings(**overrides)))
        return Api(client, ADMIN_KEY)

    return factory
