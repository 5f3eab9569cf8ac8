"""The only HTTP client that talks to runtimes (SPEC §11.6 address rule, redirects, caps).

Every address the control plane dials for an execution is judged before a byte is sent:

- an IP-literal host is judged as written (aiohttp never hands literals to the resolver);
- a name is resolved once, by :class:`CheckingResolver`, the resolver of the connector that dials
  it; one refused address in the answer refuses the connection, and the addresses judged are the
  ones dialled, so a second lookup cannot swap in another (DNS rebinding);
- IPv4-mapped (``::ffff:a.b.c.d``) and IPv4-compatible (``::a.b.c.d``) addresses are judged as
  their IPv4 address.

The session ignores the environment (``trust_env=False``: no proxy), keeps no cookies, follows
redirects itself (same origin only, at most 3), bounds the whole exchange by one timeout and reads
at most ``max_response_bytes`` of a body.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver
from multidict import CIMultiDictProxy
from yarl import URL

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_ALWAYS_REFUSED = tuple(
    ipaddress.ip_network(n)
    for n in (
        "0.0.0.0/8",  # unspecified
        "::/128",
        "169.254.0.0/16",  # link-local (holds the 169.254.169.254 metadata address)
        "fe80::/10",
        "224.0.0.0/4",  # multicast
        "ff00::/8",
        "fd00:ec2::254/128",  # cloud metadata
        "100.100.100.200/32",
    )
)
_LOOPBACK = (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"))
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
MAX_REDIRECTS = 3


def judged_as(address: IPAddress) -> IPAddress:
    """IPv4-mapped and IPv4-compatible IPv6 addresses count as their IPv4 address."""
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return address.ipv4_mapped
        value = int(address)
        if value >> 32 == 0 and value not in (0, 1):
            return ipaddress.IPv4Address(value)
    return address


def is_refused(address: IPAddress, *, allow_loopback: bool) -> bool:
    ip = judged_as(address)
    if isinstance(ip, ipaddress.IPv6Address) and ip.scope_id:
        ip = ipaddress.IPv6Address(int(ip))
    if any(ip in net for net in _ALWAYS_REFUSED if net.version == ip.version):
        return True
    return not allow_loopback and any(ip in net for net in _LOOPBACK if net.version == ip.version)


def parse_ip(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


class AddressRefused(OSError):
    """A dialled address breaks the address rule; nothing was sent."""

    def __init__(self, address: str) -> None:
        super().__init__(f"address refused: {address}")
        self.address = address


class CheckingResolver(AbstractResolver):
    """Resolves like aiohttp's default resolver and refuses the answer if any address is refused."""

    def __init__(self, *, allow_loopback: bool, inner: AbstractResolver | None = None) -> None:
        self._inner = inner or DefaultResolver()
        self._allow_loopback = allow_loopback

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        answers = await self._inner.resolve(host, port, family)
        for answer in answers:
            address = parse_ip(answer["host"])
            if address is None:
                raise AddressRefused(answer["host"])
            if is_refused(address, allow_loopback=self._allow_loopback):
                raise AddressRefused(str(judged_as(address)))
        return answers

    async def close(self) -> None:
        await self._inner.close()


# ---------------------------------------------------------------- outcomes of a call


@dataclass(frozen=True)
class RuntimeResponse:
    """A response that was received (any status); ``body`` is at most the cap."""

    status: int
    headers: CIMultiDictProxy[str]
    body: bytes
    over_cap: bool


class CallFailed(Exception):
    """The call ended without a usable response; ``reason`` is a §11.6 failure reason."""

    def __init__(self, reason: str, text: str, response: RuntimeResponse | None = None) -> None:
        super().__init__(text)
        self.reason = reason
        self.text = text
        self.response = response


def _short_error(exc: BaseException) -> str:
    """A short, secret-free description of a connection failure."""
    cause: BaseException = exc
    if isinstance(exc, aiohttp.ClientConnectorError):
        cause = exc.os_error
    if isinstance(exc, aiohttp.ClientConnectorDNSError):
        return f"DNS lookup failed for {exc.host}"
    if isinstance(exc, aiohttp.ClientSSLError | ssl.SSLError) or isinstance(cause, ssl.SSLError):
        return "TLS handshake failed"
    if isinstance(cause, ConnectionRefusedError):
        return "connection refused"
    if isinstance(cause, ConnectionResetError) or isinstance(
        exc, aiohttp.ClientConnectionResetError
    ):
        return "connection reset"
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "server disconnected"
    if isinstance(exc, aiohttp.ClientPayloadError):
        return "incomplete response body"
    if isinstance(exc, aiohttp.ClientResponseError):
        return f"invalid HTTP response ({exc.message})"[:200]
    text = str(cause).splitlines()[0] if str(cause) else type(cause).__name__
    return text[:200]


def _refused_address(exc: BaseException) -> str | None:
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, AddressRefused):
            return seen.address
        if isinstance(seen, aiohttp.ClientConnectorError) and isinstance(
            seen.os_error, AddressRefused
        ):
            return seen.os_error.address
        seen = seen.__cause__ or seen.__context__
    return None


def same_origin(a: URL, b: URL) -> bool:
    return (a.scheme, a.host, a.port) == (b.scheme, b.host, b.port)


class RuntimeClient:
    """One shared session for every execution; created and closed by the app's cleanup context."""

    def __init__(
        self,
        *,
        allow_loopback: bool,
        max_response_bytes: int,
        resolver: AbstractResolver | None = None,
    ) -> None:
        """``resolver`` replaces the system resolver under the check (tests use a fixed table)."""
        self.allow_loopback = allow_loopback
        self.max_response_bytes = max_response_bytes
        self._inner_resolver = resolver
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(
            resolver=CheckingResolver(
                allow_loopback=self.allow_loopback, inner=self._inner_resolver
            ),
            use_dns_cache=False,
            limit=0,
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            trust_env=False,
            cookie_jar=aiohttp.DummyCookieJar(),
            timeout=aiohttp.ClientTimeout(total=None),
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _check_literal(self, url: URL) -> None:
        address = parse_ip(url.host or "")
        if address is not None and is_refused(address, allow_loopback=self.allow_loopback):
            raise AddressRefused(str(judged_as(address)))

    async def _read(self, resp: aiohttp.ClientResponse) -> tuple[bytes, bool]:
        cap = self.max_response_bytes
        if resp.content_length is not None and resp.content_length > cap:
            return b"", True
        chunks: list[bytes] = []
        size = 0
        async for chunk in resp.content.iter_chunked(65_536):
            if size + len(chunk) > cap:
                chunks.append(chunk[: cap - size])
                return b"".join(chunks), True
            chunks.append(chunk)
            size += len(chunk)
        return b"".join(chunks), False

    async def request(
        self,
        method: str,
        url: str,
        *,
        headers: Mapping[str, str],
        body: bytes | None,
        time_limit: float,
    ) -> RuntimeResponse:
        """Send one exchange (following same-origin redirects) and return the final response.

        Raises :class:`CallFailed` with reason ``address_refused``, ``unreachable``, ``timeout``
        or ``redirect_refused``.
        """
        try:
            async with asyncio.timeout(time_limit):
                return await self._exchange(method, URL(url, encoded=False), headers, body)
        except CallFailed:
            raise
        except TimeoutError:
            raise CallFailed("timeout", "timed out") from None
        except (aiohttp.ClientError, OSError, ValueError) as exc:
            refused = _refused_address(exc)
            if refused is not None:
                raise CallFailed("address_refused", refused) from None
            raise CallFailed("unreachable", _short_error(exc)) from None

    async def _exchange(
        self, method: str, url: URL, headers: Mapping[str, str], body: bytes | None
    ) -> RuntimeResponse:
        assert self._session is not None, "runtime client is not started"
        redirects = 0
        while True:
            self._check_literal(url)
            kwargs: dict[str, Any] = {"headers": dict(headers), "allow_redirects": False}
            if body is not None:
                kwargs["data"] = body
            async with self._session.request(method, url, **kwargs) as resp:
                payload, over_cap = await self._read(resp)
                response = RuntimeResponse(resp.status, resp.headers, payload, over_cap)
                location = resp.headers.get("Location")
            if response.status not in REDIRECT_STATUSES or not location:
                return response
            try:
                target = url.join(URL(location))
            except ValueError:
                raise CallFailed("redirect_refused", "invalid Location", response) from None
            if not same_origin(url, target) or redirects >= MAX_REDIRECTS:
                raise CallFailed("redirect_refused", "redirect refused", response)
            redirects += 1
            if response.status == 303 or (response.status in (301, 302) and method == "POST"):
                method, body = "GET", None
                headers = {k: v for k, v in headers.items() if k.lower() != "content-type"}
            url = target
