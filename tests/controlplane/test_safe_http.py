"""The runtime HTTP client: the §11.6 address rule, redirects, the body cap, no proxies."""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web
from aiohttp.abc import AbstractResolver, ResolveResult

from controlplane.services.safe_http import (
    AddressRefused,
    CallFailed,
    CheckingResolver,
    RuntimeClient,
    is_refused,
    judged_as,
)


@pytest.mark.parametrize(
    ("address", "refused_without_loopback", "refused_with_loopback"),
    [
        ("169.254.169.254", True, True),
        ("169.254.1.1", True, True),
        ("fe80::1", True, True),
        ("fe80::1%2", True, True),
        ("fd00:ec2::254", True, True),
        ("100.100.100.200", True, True),
        ("0.0.0.0", True, True),  # noqa: S104 - an address to refuse, not to bind
        ("0.1.2.3", True, True),
        ("::", True, True),
        ("224.0.0.1", True, True),
        ("239.255.255.250", True, True),
        ("ff02::1", True, True),
        ("::ffff:169.254.169.254", True, True),  # IPv4-mapped
        ("::169.254.169.254", True, True),  # IPv4-compatible
        ("127.0.0.1", True, False),
        ("127.8.9.10", True, False),
        ("::1", True, False),
        ("::ffff:127.0.0.1", True, False),
        ("::127.0.0.1", True, False),
        ("10.0.0.5", False, False),
        ("192.168.1.20", False, False),
        ("100.100.100.201", False, False),
        ("8.8.8.8", False, False),
        ("2001:db8::1", False, False),
        ("fd00:ec2::253", False, False),
    ],
)
def test_address_rule(
    address: str, refused_without_loopback: bool, refused_with_loopback: bool
) -> None:
    ip = ipaddress.ip_address(address)
    assert is_refused(ip, allow_loopback=False) is refused_without_loopback
    assert is_refused(ip, allow_loopback=True) is refused_with_loopback


def test_mapped_and_compatible_addresses_are_judged_as_ipv4() -> None:
    assert judged_as(ipaddress.ip_address("::ffff:10.1.2.3")) == ipaddress.ip_address("10.1.2.3")
    assert judged_as(ipaddress.ip_address("::10.1.2.3")) == ipaddress.ip_address("10.1.2.3")
    assert judged_as(ipaddress.ip_address("::1")) == ipaddress.ip_address("::1")
    assert judged_as(ipaddress.ip_address("::")) == ipaddress.ip_address("::")


class TableResolver(AbstractResolver):
    """A DNS stand-in: each name answers the addresses in the table, port as asked."""

    def __init__(self, table: dict[str, list[str]]) -> None:
        self.table = table
        self.lookups: list[str] = []

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        self.lookups.append(host)
        if host not in self.table:
            raise OSError(f"no such host {host}")
        return [
            {
                "hostname": host,
                "host": address,
                "port": port,
                "family": socket.AF_INET6 if ":" in address else socket.AF_INET,
                "proto": 0,
                "flags": socket.AI_NUMERICHOST,
            }
            for address in self.table[host]
        ]

    async def close(self) -> None:
        return None


async def test_resolver_refuses_an_answer_holding_any_refused_address() -> None:
    inner = TableResolver(
        {
            "metadata.test": ["169.254.169.254"],
            "mixed.test": ["93.184.216.34", "169.254.169.254"],
            "local.test": ["127.0.0.1"],
            "fine.test": ["93.184.216.34"],
        }
    )
    resolver = CheckingResolver(allow_loopback=False, inner=inner)
    for name, address in (
        ("metadata.test", "169.254.169.254"),
        ("mixed.test", "169.254.169.254"),
        ("local.test", "127.0.0.1"),
    ):
        with pytest.raises(AddressRefused) as caught:
            await resolver.resolve(name, 80)
        assert caught.value.address == address
    assert [a["host"] for a in await resolver.resolve("fine.test", 80)] == ["93.184.216.34"]
    loopback_ok = CheckingResolver(allow_loopback=True, inner=inner)
    assert [a["host"] for a in await loopback_ok.resolve("local.test", 80)] == ["127.0.0.1"]


@pytest.fixture
async def server(aiohttp_server: Any) -> AsyncIterator[Any]:
    seen: list[tuple[str, str]] = []

    async def handle(request: web.Request) -> web.StreamResponse:
        seen.append((request.method, request.path))
        if request.path == "/see-other":
            raise web.HTTPSeeOther("/landed")
        if request.path == "/big":
            return web.Response(body=b"x" * 5000)
        if request.path == "/elsewhere":
            raise web.HTTPFound("http://127.0.0.2:1/landed")
        return web.json_response({"method": request.method, "path": request.path})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    srv = await aiohttp_server(app, host="127.0.0.1")
    srv.seen = seen
    return srv


async def _client(**kw: Any) -> RuntimeClient:
    client = RuntimeClient(
        allow_loopback=kw.pop("allow_loopback", True),
        max_response_bytes=kw.pop("max_response_bytes", 1000),
        **kw,
    )
    await client.start()
    return client


async def test_names_are_dialled_at_the_checked_address(server: Any) -> None:
    inner = TableResolver({"runtime.test": ["127.0.0.1"], "rebind.test": ["169.254.169.254"]})
    client = await _client(resolver=inner)
    try:
        response = await client.request(
            "GET",
            f"http://runtime.test:{server.port}/v1/models",
            headers={},
            body=None,
            time_limit=5,
        )
        assert response.status == 200
        with pytest.raises(CallFailed) as caught:
            await client.request(
                "GET", f"http://rebind.test:{server.port}/", headers={}, body=None, time_limit=5
            )
        assert (caught.value.reason, caught.value.text) == ("address_refused", "169.254.169.254")
    finally:
        await client.close()
    assert server.seen == [("GET", "/v1/models")]


async def test_loopback_literal_is_refused_unless_allowed(server: Any) -> None:
    client = await _client(allow_loopback=False)
    try:
        with pytest.raises(CallFailed) as caught:
            await client.request(
                "GET", f"http://127.0.0.1:{server.port}/", headers={}, body=None, time_limit=5
            )
        assert caught.value.reason == "address_refused"
    finally:
        await client.close()
    assert server.seen == []


async def test_proxy_environment_is_ignored(server: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")
    monkeypatch.setenv("http_proxy", "http://127.0.0.1:9")
    client = await _client()
    try:
        response = await client.request(
            "GET", f"http://127.0.0.1:{server.port}/direct", headers={}, body=None, time_limit=5
        )
    finally:
        await client.close()
    assert response.status == 200
    assert server.seen == [("GET", "/direct")]


async def test_redirects_and_the_body_cap(server: Any) -> None:
    client = await _client()
    base = f"http://127.0.0.1:{server.port}"
    try:
        response = await client.request(
            "POST",
            base + "/see-other",
            headers={"content-type": "application/json"},
            body=b"{}",
            time_limit=5,
        )
        assert response.status == 200
        assert server.seen[-1] == ("GET", "/landed")  # 303 turns into a GET without a body

        with pytest.raises(CallFailed) as caught:
            await client.request("GET", base + "/elsewhere", headers={}, body=None, time_limit=5)
        assert caught.value.reason == "redirect_refused"
        assert caught.value.response is not None
        assert caught.value.response.status == 302

        big = await client.request("GET", base + "/big", headers={}, body=None, time_limit=5)
        assert (big.status, big.over_cap, len(big.body)) == (200, True, 0)
    finally:
        await client.close()
