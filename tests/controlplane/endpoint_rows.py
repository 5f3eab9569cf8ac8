"""Runtime endpoints for task tests: registered over the API, adjusted in the database.

Endpoints are created with ``PUT /machines/:id/runtime-endpoints/:key`` (manual endpoints, the
operator's way). What no API offers a test directly — an agent lease that has just run out, a token
no configured key decrypts, an address the PUT would accept but execution must refuse — is set on
the row itself.
"""

from __future__ import annotations

from typing import Any

from controlplane import keys
from shared.timeutil import now_ms
from tests.helpers import Api


async def put_endpoint(
    api: Api, machine_id: str, provider_key: str, base_url: str, **fields: Any
) -> dict[str, Any]:
    reply = await api.put(
        f"/machines/{machine_id}/runtime-endpoints/{provider_key}",
        {"endpointBaseUrl": base_url, **fields},
    )
    assert reply.status in (200, 201), reply.body
    endpoint: dict[str, Any] = reply.item
    return endpoint


async def _execute(api: Api, sql: str, *args: Any) -> None:
    store = api.client.app[keys.STORE]
    async with store.write() as conn:
        await conn.execute(sql, *args)


async def make_agent_endpoint(api: Api, endpoint_id: str, *, lease_ms: int) -> None:
    """Turn the endpoint into an agent endpoint whose lease ends ``lease_ms`` from now."""
    await _execute(
        api,
        "UPDATE runtime_endpoints SET source = 'agent', agent_id = 'magt_TEST',"
        " lease_expires_at = ? WHERE id = ?",
        now_ms() + lease_ms,
        endpoint_id,
    )


async def set_row(api: Api, endpoint_id: str, **columns: Any) -> None:
    assignments = ", ".join(f"{name} = ?" for name in columns)
    await _execute(
        api,
        f"UPDATE runtime_endpoints SET {assignments} WHERE id = ?",  # noqa: S608 - test column names
        *columns.values(),
        endpoint_id,
    )


async def fetch(api: Api, sql: str, *args: Any) -> list[dict[str, Any]]:
    store = api.client.app[keys.STORE]
    async with store.read() as conn:
        return [dict(row) for row in await conn.fetch(sql, *args)]
