"""Platform API keys: generation, the first-start admin key, and request authentication (SPEC §1.8)."""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import time
from collections.abc import Mapping
from pathlib import Path

from controlplane.errors import AuthInvalid, AuthRequired
from controlplane.settings import Settings
from controlplane.store import api_keys
from controlplane.store.base import Store
from shared.ids import new_id
from shared.logs import get_logger
from shared.timeutil import now_ms

log = get_logger("controlplane.auth")

_CACHE_SECONDS = 5.0
ADMIN_KEY_FILE = "admin-api-key"


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def generate_api_key() -> str:
    return "mmk_" + secrets.token_urlsafe(32)


def bearer_token(headers: Mapping[str, str]) -> str | None:
    """The token of ``Authorization: Bearer …``; any other scheme counts as absent."""
    value = headers.get("Authorization")
    if not value:
        return None
    scheme, _, token = value.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


class ApiKeyAuthenticator:
    """Turns request headers into an actor, or raises ``AUTH_REQUIRED`` / ``AUTH_INVALID``.

    Configured keys live in memory as digests. Database keys are looked up by digest and cached,
    hits and misses alike, for at most five seconds (so revocation takes effect within 5 s).
    """

    def __init__(self, store: Store, settings: Settings) -> None:
        self._store = store
        self._required = settings.auth.required
        self._configured = {digest(k): f"key_cfg_{digest(k)[:12]}" for k in settings.auth.api_keys}
        self._cache: dict[str, tuple[str | None, float]] = {}

    async def authenticate(self, headers: Mapping[str, str]) -> str:
        if not self._required:
            return "anonymous"
        header_key = headers.get("x-api-key")
        bearer = bearer_token(headers)
        if header_key is not None and bearer is not None and header_key != bearer:
            raise AuthInvalid("x-api-key and Authorization carry different keys")
        presented = header_key if header_key is not None else bearer
        if not presented:
            raise AuthRequired()
        key_id = await self._lookup(digest(presented))
        if key_id is None:
            raise AuthInvalid()
        return f"api-key:{key_id}"

    async def _lookup(self, presented: str) -> str | None:
        for known, configured_id in self._configured.items():
            if hmac.compare_digest(known, presented):
                return configured_id
        now = time.monotonic()
        cached = self._cache.get(presented)
        if cached is not None and cached[1] > now:
            return cached[0]
        async with self._store.read() as conn:
            row = await api_keys.find_active_by_digest(conn, presented)
        key_id = None
        if row is not None and hmac.compare_digest(row["digest"], presented):
            key_id = str(row["id"])
        if len(self._cache) > 10_000:
            self._cache.clear()
        self._cache[presented] = (key_id, now + _CACHE_SECONDS)
        return key_id


async def create_api_key(store: Store, label: str) -> tuple[str, str]:
    """A new database key: returns ``(key_id, secret)``; only the digest is stored."""
    secret = generate_api_key()
    key_id = new_id("key")
    async with store.write() as conn:
        await api_keys.insert(conn, key_id, label, digest(secret), now_ms())
    return key_id, secret


async def ensure_admin_key(store: Store, settings: Settings) -> Path | None:
    """On first start, generate the admin key into ``<data_dir>/admin-api-key`` (mode 0600).

    The "no active key" check runs again under the write lock, so replicas starting together
    generate at most one key. Returns the file path when a key was generated.
    """
    if not settings.auth.required or settings.auth.api_keys:
        return None
    path = settings.resolved_data_dir / ADMIN_KEY_FILE
    async with store.write() as conn:
        await store.singleton_lock(conn, "admin-key")
        if await api_keys.count_active(conn) > 0:
            return None
        secret = generate_api_key()
        await api_keys.insert(conn, new_id("key"), "admin", digest(secret), now_ms())
        write_secret_file(path, secret + "\n")
    log.warning("admin_api_key_generated", path=str(path))
    return path


def write_secret_file(path: Path, content: str) -> None:
    """Write atomically with mode 0600 from the first byte."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, content.encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
