"""A heartbeat batch that PostgreSQL picks as a deadlock victim is run again, not answered 500.

With several replicas, a batch can meet another transaction holding the same machine's rows in
the opposite order (the sweeper, an operator's tool). Here a plain connection plays that part:
it locks the agent's endpoint row, the heartbeat locks the machine and waits for that row, then
the connection asks for the machine. PostgreSQL aborts the heartbeat's transaction (it waited
first, so its deadlock check runs first); the heartbeat service retries it and answers 200.
"""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from tests.conftest import PG_ROOT
from tests.helpers import Api, endpoint_entry, enroll_agent, heartbeat, make_machine


@pytest.mark.parametrize("backend", ["postgresql"])
async def test_a_heartbeat_picked_as_deadlock_victim_is_retried(
    api: Api, database_url: str
) -> None:
    machine = await make_machine(api)
    agent = await enroll_agent(api, machine["id"], allowedProviderKeys=["qvac"])
    assert (await heartbeat(api, agent, [endpoint_entry()], sequence=1)).status == 200

    schema = database_url.rsplit("search_path=", 1)[1]
    other = await asyncpg.connect(PG_ROOT, server_settings={"search_path": schema})
    try:
        async with other.transaction():
            await other.execute(
                "SELECT id FROM runtime_endpoints WHERE machine_id = $1 FOR UPDATE", machine["id"]
            )
            url = "http://127.0.0.1:2222"
            beat = asyncio.create_task(heartbeat(api, agent, [endpoint_entry(url=url)], sequence=2))
            await asyncio.sleep(0.3)  # the batch holds the machine and waits for the endpoint
            assert not beat.done()
            # Granted only once PostgreSQL has aborted the heartbeat's transaction.
            await other.execute("SELECT id FROM machines WHERE id = $1 FOR UPDATE", machine["id"])
        reply = await beat
    finally:
        await other.close()
    assert reply.status == 200, reply.body
    assert reply.item["applied"] is True
    assert reply.item["lastSequence"] == 2
    listing = await api.get(f"/machines/{machine['id']}/runtime-endpoints")
    assert [e["endpointBaseUrl"] for e in listing.body["items"]] == [url]
