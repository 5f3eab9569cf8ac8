"""Controller addresses of an identity reference: embedded, configured, and the optional registry.

The registry (SPEC §3.2) is an MCR-style HTTP service: ``GET {registry_url}/machine/{identityRef}``.
Its answers (``200`` and ``404``) are cached for 60 s; failures are never cached and never raise
here: a :class:`Controllers` result records the failure, and the caller decides whether it matters
(challenge creation always fails with ``503``, proof verification only when the signer is not a
locally known controller). Callers resolve before opening a write transaction, so no database
transaction waits on the network.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import aiohttp
from yarl import URL

from controlplane.services.identity import ResolutionSource, embedded_address
from controlplane.settings import IdentitySettings
from shared.logs import get_logger

log = get_logger("controlplane.identity_registry")

CACHE_SECONDS = 60.0
TIMEOUT_SECONDS = 5.0
MAX_BODY_BYTES = 64 * 1024
_CACHE_LIMIT = 10_000
_DID_HEX = re.compile(r"^did:peaq:0x[0-9a-fA-F]{40}$")


class RegistryUnavailable(Exception):
    """The registry could not give an answer (connection, timeout, status, body)."""


@dataclass(frozen=True)
class Controllers:
    """Who may sign for an identity reference, and where each entry came from."""

    identity_ref: str
    embedded: str | None = None
    configured: tuple[str, ...] = ()
    registry: tuple[str, ...] = ()
    registry_failed: bool = False
    registry_error: str | None = field(default=None, compare=False)

    @property
    def local(self) -> list[str]:
        """Controllers known without the registry: the embedded address, then configured ones."""
        out = [self.embedded] if self.embedded else []
        return out + [a for a in self.configured if a not in out]

    @property
    def addresses(self) -> list[str]:
        """Every known controller (EIP-55): embedded, configured, registry; no duplicates."""
        out = self.local
        return out + [a for a in self.registry if a not in out]

    def source_of(self, signer: str) -> ResolutionSource | None:
        """The first of ``peaqos-mcr``, ``self-controlled-did``, ``operator-config`` naming ``signer``."""
        if signer in self.registry:
            return "peaqos-mcr"
        if signer == self.embedded:
            return "self-controlled-did"
        if signer in self.configured:
            return "operator-config"
        return None


class ControllerResolver:
    """Resolves controllers; holds the registry HTTP session and the 60 s answer cache."""

    def __init__(self, settings: IdentitySettings) -> None:
        self._settings = settings
        self._base = settings.registry_url.rstrip("/") if settings.registry_url else None
        self._session: aiohttp.ClientSession | None = None
        self._cache: dict[str, tuple[float, tuple[str, ...]]] = {}

    async def resolve(self, identity_ref: str) -> Controllers:
        """``identity_ref`` must already be in stored form (``normalize_identity_ref``)."""
        embedded = embedded_address(identity_ref)
        configured = tuple(self._settings.controllers.get(identity_ref, ()))
        if self._base is None:
            return Controllers(identity_ref, embedded, configured)
        try:
            registry = await self._registry(identity_ref)
        except RegistryUnavailable as exc:
            log.warning("identity_registry_unavailable", identityRef=identity_ref, reason=str(exc))
            return Controllers(
                identity_ref, embedded, configured, registry_failed=True, registry_error=str(exc)
            )
        return Controllers(identity_ref, embedded, configured, registry)

    async def _registry(self, identity_ref: str) -> tuple[str, ...]:
        now = time.monotonic()
        cached = self._cache.get(identity_ref)
        if cached is not None and cached[0] > now:
            return cached[1]
        addresses = await self._fetch(identity_ref)
        if len(self._cache) >= _CACHE_LIMIT:
            self._cache.clear()
        self._cache[identity_ref] = (time.monotonic() + CACHE_SECONDS, addresses)
        return addresses

    async def _fetch(self, identity_ref: str) -> tuple[str, ...]:
        url = URL(f"{self._base}/machine/{quote(identity_ref, safe=':')}", encoded=True)
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(trust_env=False)
        try:
            async with asyncio.timeout(TIMEOUT_SECONDS):
                async with self._session.get(
                    url,
                    headers={"accept": "application/json"},
                    timeout=aiohttp.ClientTimeout(total=TIMEOUT_SECONDS),
                ) as resp:
                    if resp.status == 404:
                        return ()
                    if resp.status != 200:
                        raise RegistryUnavailable(f"registry answered HTTP {resp.status}")
                    if resp.content_length is not None and resp.content_length > MAX_BODY_BYTES:
                        raise RegistryUnavailable("registry body exceeds 64 KiB")
                    body = bytearray()
                    async for chunk in resp.content.iter_chunked(16 * 1024):
                        body += chunk
                        if len(body) > MAX_BODY_BYTES:
                            raise RegistryUnavailable("registry body exceeds 64 KiB")
        except TimeoutError:
            raise RegistryUnavailable("registry timed out") from None
        except aiohttp.ClientError as exc:
            raise RegistryUnavailable(f"registry unreachable: {type(exc).__name__}") from None
        try:
            document = json.loads(bytes(body))
        except (ValueError, UnicodeDecodeError):
            raise RegistryUnavailable("registry body is not JSON") from None
        return _addresses(document)

    def forget(self) -> None:
        """Drop every cached answer."""
        self._cache.clear()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


def _addresses(document: Any) -> tuple[str, ...]:
    """``peaqos.did`` and ``peaqos.operator`` when each is a ``did:peaq:0x…`` string."""
    peaqos = document.get("peaqos") if isinstance(document, dict) else None
    if not isinstance(peaqos, dict):
        return ()
    out: list[str] = []
    for key in ("did", "operator"):
        value = peaqos.get(key)
        if isinstance(value, str) and _DID_HEX.fullmatch(value):
            address = embedded_address(value)
            if address is not None and address not in out:
                out.append(address)
    return tuple(out)
