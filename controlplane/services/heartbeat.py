"""The heartbeat (SPEC §6): leased runtime endpoints, applied with group commit.

Concurrent heartbeats are queued and applied by one writer task, a batch per write transaction:

1. read, in two statements for the whole batch, the agents it names (with their machines' gate
   columns) and the endpoints of their machines, locking them (``FOR UPDATE`` on PostgreSQL,
   machines first; SQLite's ``BEGIN IMMEDIATE`` already serialises writers), in id order so that
   batches and agent routes never deadlock;
2. run each heartbeat's checks (§6.3 steps 3–10) in request order against an in-memory copy of
   those rows, which each applied heartbeat updates, so later heartbeats of the batch see the
   effects of earlier ones (two agents racing for one key: the first wins, the second gets 409);
   a heartbeat that fails any check contributes no write at all (all or nothing);
3. write what the applied heartbeats changed in a handful of statements, commit, and only then
   answer: a ``200`` means the change is durable.

A batch that PostgreSQL rolls back as a deadlock victim or for a serialization failure (another
replica's batch or the sweeper holding the same rows) is simply run again, a few times. If the
batch's transaction fails for another unexpected reason (say a unique violation from another
replica's concurrent insert), each heartbeat of the batch is retried in a transaction of its own,
so one bad heartbeat fails alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from pydantic import ValidationError

from controlplane.errors import (
    AgentAuthExpired,
    AgentAuthInvalid,
    AgentAuthRequired,
    AgentPairingInactive,
    AgentPolicyDenied,
    ApiError,
    EndpointConflict,
    InternalError,
    NotFound,
    RateLimited,
    ValidationFailed,
)
from controlplane.http import decode_json_object, validate
from controlplane.services.auth import digest
from controlplane.services.endpoints import (
    HEARTBEAT_AUDITED,
    EndpointInput,
    changed_columns,
    merged_row,
    new_row,
    touch,
    wire_fields,
)
from controlplane.services.liveness import effective_status
from controlplane.services.machine_gate import check_gate
from controlplane.services.metrics import Metrics
from controlplane.services.rate_limit import SlidingWindowLimiter
from controlplane.services.secrets import TokenCipher
from controlplane.settings import Settings
from controlplane.store import agents, audit
from controlplane.store import runtime_endpoints as endpoints
from controlplane.store.base import Connection, Store, is_transient
from shared.logs import get_logger
from shared.timeutil import now_ms, to_iso
from shared.wire import HeartbeatEndpointEntry, HeartbeatRequest

log = get_logger("controlplane.heartbeat")

MAX_BATCH = 256
MAX_ENTRIES = 64
ALLOWED_LISTS = 4096
TRANSIENT_ATTEMPTS = 5

# A HeartbeatResult in wire form: built as a plain dict, the hot path's cheapest shape.
Result = dict[str, Any]


def pick_token(body_token: str | None, header_token: str | None, bearer: str | None) -> str:
    """§6.2: the first present carrier; several present with different values → 401."""
    present = [t for t in (body_token, header_token, bearer) if t]
    if not present:
        raise AgentAuthRequired()
    if any(t != present[0] for t in present[1:]):
        raise AgentAuthInvalid("the agent token carriers differ")
    return present[0]


class EntryMemo:
    """Validated heartbeat entries by content.

    An agent sends the same entries every few seconds, and validating one (URL normalisation,
    address parsing) is most of a heartbeat's parsing cost. Entries are immutable once validated,
    so equal raw entries share one validated model. Only successes are kept; the memo is emptied
    when it reaches ``size`` entries (a bound, not a cache policy: the working set is one or two
    entries per agent).
    """

    def __init__(self, size: int = 32_768) -> None:
        self._size = size
        self._entries: dict[tuple[tuple[str, Any], ...], HeartbeatEndpointEntry] = {}

    def get(self, raw: Any) -> HeartbeatEndpointEntry | None:
        """The validated entry, or ``None`` when it is invalid or not memoisable.

        An entry that carries a runtime token is never kept: a secret lives no longer than the
        request that brought it.
        """
        if not isinstance(raw, dict) or raw.get("authToken") or raw.get("auth_token"):
            return None
        try:
            key = tuple(raw.items())
            entry = self._entries.get(key)
        except TypeError:  # a nested (unhashable) value: validate it with the request
            return None
        if entry is None:
            try:
                entry = HeartbeatEndpointEntry.model_validate(raw)
            except ValidationError:
                return None
            if len(self._entries) >= self._size:
                self._entries.clear()
            self._entries[key] = entry
        return entry

    def parse(self, raw: bytes) -> HeartbeatRequest:
        """§6.3 step 1 from the body bytes: the JSON rules of §1.2, then the heartbeat's own.

        When an entry is invalid the whole body is validated again, so every problem is reported
        with its full path (``endpoints[1].providerKey``).
        """
        data = decode_json_object(raw)
        if data is None:
            raise ValidationFailed.field("", "a JSON body is required")
        entries = data.get("endpoints")
        if isinstance(entries, list) and len(entries) <= MAX_ENTRIES:
            validated = [self.get(e) for e in entries]
            if None not in validated:
                data = {**data, "endpoints": validated}
        return validate(HeartbeatRequest, data)


@dataclass(slots=True)
class _Pending:
    request: HeartbeatRequest
    token_digest: str = field(repr=False)
    future: asyncio.Future[Result]
    admitted: bool | None = None  # the rate limiter's answer, kept across a retry


@dataclass
class _Batch:
    """The rows a batch reads, as mutable copies, and what its applied heartbeats changed."""

    now: int
    agents: dict[str, dict[str, Any]]
    endpoints: dict[tuple[str, str], dict[str, Any]]
    dirty_agents: set[str] = field(default_factory=set)
    inserted: set[tuple[str, str]] = field(default_factory=set)
    changed: set[tuple[str, str]] = field(default_factory=set)
    renewed: set[tuple[str, str]] = field(default_factory=set)
    events: list[dict[str, Any]] = field(default_factory=list)
    iso: dict[int, str] = field(default_factory=dict)

    def to_iso(self, ms: int) -> str:
        text = self.iso.get(ms)
        if text is None:
            text = self.iso[ms] = to_iso(ms)
        return text


class HeartbeatService:
    """Owns the writer task; :meth:`submit` returns once the heartbeat is durable (or refused)."""

    def __init__(
        self,
        store: Store,
        settings: Settings,
        cipher: TokenCipher,
        metrics: Metrics,
        limiter: SlidingWindowLimiter | None = None,
    ) -> None:
        self._store = store
        self._cipher = cipher
        self._metrics = metrics
        self._limiter = limiter or SlidingWindowLimiter(settings.heartbeat.rate_limit_per_second)
        lease = settings.lease
        self._default_lease = lease.default_seconds
        self._min_lease = lease.min_seconds
        self._max_lease = lease.max_seconds
        self._enrolment_ttl_ms = settings.agents.enrollment_ttl_seconds * 1000
        self._entries = EntryMemo()
        self._allowed: dict[str, list[str]] = {}  # used by the writer only
        self._queue: list[_Pending] = []
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    # ------------------------------------------------------------ lifetime

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="heartbeat-writer")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self._fail(self._queue, "the control plane is stopping")
        self._queue = []

    # ------------------------------------------------------------ entry points

    def parse(self, raw: bytes) -> HeartbeatRequest:
        """Step 1 (validation), with validated entries memoised across heartbeats."""
        return self._entries.parse(raw)

    async def submit(self, request: HeartbeatRequest, token: str) -> Result:
        """Steps 3–10 of §6.3 and the side effects of §6.5, durable when this returns.

        Returns a ``HeartbeatResult`` in wire form (camelCase keys).
        """
        started = time.perf_counter()
        future: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        self._queue.append(_Pending(request, digest(token), future))
        self._wakeup.set()
        try:
            result = await future
        except ApiError as exc:
            self._metrics.observe_heartbeat(exc.code.value, time.perf_counter() - started)
            raise
        outcome = "applied" if result["applied"] else "replay"
        self._metrics.observe_heartbeat(outcome, time.perf_counter() - started)
        return result

    # ------------------------------------------------------------ the writer

    async def _run(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            while self._queue:
                batch, self._queue = self._queue[:MAX_BATCH], self._queue[MAX_BATCH:]
                try:
                    await self._process(batch)
                except asyncio.CancelledError:
                    self._fail(batch, "the control plane is stopping")
                    raise

    async def _process(self, batch: list[_Pending]) -> None:
        """Apply a batch and answer each heartbeat; alone on a retry when the batch fails."""
        self._metrics.heartbeat_batch.observe(len(batch))
        try:
            outcomes = await self._apply_retrying(batch)
        except asyncio.CancelledError:
            raise
        except Exception:
            if len(batch) == 1:
                log.exception("heartbeat_failed")
                self._fail(batch)
                return
            log.warning("heartbeat_batch_failed", size=len(batch), exc_info=True)
            for pending in batch:
                await self._process([pending])
            return
        for pending, outcome in zip(batch, outcomes, strict=True):
            if pending.future.done():
                continue
            if isinstance(outcome, ApiError):
                pending.future.set_exception(outcome)
            else:
                pending.future.set_result(outcome)

    @staticmethod
    def _fail(batch: Sequence[_Pending], message: str | None = None) -> None:
        """Answer every waiting heartbeat of ``batch`` with a 500 (an error each)."""
        for pending in batch:
            if not pending.future.done():
                pending.future.set_exception(InternalError(message))

    async def _apply_retrying(self, batch: list[_Pending]) -> list[Result | ApiError]:
        """:meth:`_apply`, run again when the database rolled it back as a transient failure.

        Each attempt reads the rows afresh; the rate limiter's answers are kept on the pending
        heartbeats, so a retry never counts a heartbeat twice.
        """
        attempt = 1
        while True:
            try:
                return await self._apply(batch)
            except Exception as exc:
                if attempt >= TRANSIENT_ATTEMPTS or not is_transient(exc):
                    raise
                log.info(
                    "heartbeat_batch_retried",
                    size=len(batch),
                    attempt=attempt,
                    sqlstate=getattr(exc, "sqlstate", None),
                )
            await asyncio.sleep(0.005 * attempt)
            attempt += 1

    async def _apply(self, batch: list[_Pending]) -> list[Result | ApiError]:
        return await self._store.run_write(partial(self._apply_in, batch))

    async def _apply_in(self, batch: list[_Pending], conn: Connection) -> list[Result | ApiError]:
        """The batch's transaction; on SQLite it runs without suspending (awaits only conn)."""
        machine_ids = sorted({p.request.machine_id for p in batch})
        agent_ids = sorted({p.request.agent_id for p in batch})
        now = now_ms()
        agent_rows = await agents.lock_for_heartbeats(conn, machine_ids, agent_ids)
        endpoint_rows = await endpoints.lock_for_heartbeats(conn, machine_ids)
        state = _Batch(
            now=now,
            agents={a["id"]: a for a in agent_rows},
            endpoints={(e["machine_id"], e["provider_key"]): e for e in endpoint_rows},
        )
        outcomes = [self._decide(p, state) for p in batch]
        await self._write(conn, state)
        return outcomes

    @staticmethod
    async def _write(conn: Connection, state: _Batch) -> None:
        """Everything the batch's applied heartbeats changed, in as few statements as possible."""
        await agents.save_heartbeats(
            conn,
            [
                (
                    a["status"],
                    a["last_seen_at"],
                    a["last_sequence"],
                    a["last_lease_seconds"],
                    a["updated_at"],
                    a["id"],
                )
                for a in (state.agents[i] for i in sorted(state.dirty_agents))
            ],
        )
        rows = state.endpoints
        await endpoints.save_batch(
            conn,
            inserts=[rows[k] for k in sorted(state.inserted)],
            updates=[rows[k] for k in sorted(state.changed - state.inserted)],
            renewals=[rows[k] for k in sorted(state.renewed - state.changed - state.inserted)],
        )
        for event in state.events:
            await audit.insert_event(conn, **event)

    # ------------------------------------------------------------ one heartbeat

    def _allowed_of(self, text: str) -> list[str]:
        """An agent's ``allowedProviderKeys`` from its stored JSON. Thousands of agents share a
        few distinct lists: each is parsed once and shared (never mutated)."""
        keys = self._allowed.get(text)
        if keys is None:
            if len(self._allowed) >= ALLOWED_LISTS:
                self._allowed.clear()
            keys = self._allowed[text] = json.loads(text)
        return keys

    def lease_of(self, request: HeartbeatRequest) -> int:
        """``leaseSeconds ?? leaseTtlSeconds ?? lease.default_seconds``, clamped (§6.1)."""
        sent = request.lease_seconds
        if sent is None:
            sent = request.lease_ttl_seconds
        if sent is None:
            sent = self._default_lease
        return max(self._min_lease, min(self._max_lease, sent))

    def _decide(self, pending: _Pending, state: _Batch) -> Result | ApiError:
        """§6.3 steps 3–10 for one heartbeat; on success its changes are staged in ``state``."""
        request, now = pending.request, state.now
        agent = state.agents.get(request.agent_id)
        if agent is None or agent["machine_id"] != request.machine_id:
            return NotFound(f"machine agent {request.agent_id} not found")
        if not hmac.compare_digest(agent["token_digest"], pending.token_digest):
            return AgentAuthInvalid()
        if (
            agent["status"] == "provisioned"
            and agent["token_issued_at"] + self._enrolment_ttl_ms <= now
        ):
            return AgentAuthExpired()
        if pending.admitted is None:
            pending.admitted = self._limiter.allow(agent["id"])
        if not pending.admitted:
            return RateLimited(1, "more heartbeats than the agent's rate limit allows")
        if agent["status"] == "revoked":
            return AgentPairingInactive()
        try:
            check_gate(agents.machine_of(agent))
        except ApiError as exc:
            return exc
        lease = self.lease_of(request)
        last_sequence = agent["last_sequence"]
        allowed = self._allowed_of(agent["allowed_provider_keys"])
        if (
            request.sequence is not None
            and last_sequence is not None
            and request.sequence <= last_sequence
        ):
            return self._replay(request, agent, lease, allowed, state)
        sent_keys = [e.provider_key for e in request.endpoints]
        denied = [k for k in sent_keys if k not in allowed]
        if denied:
            return AgentPolicyDenied(
                f"provider keys not allowed for this agent: {', '.join(denied)}",
                details={"providerKeys": denied, "allowedProviderKeys": allowed},
            )
        conflicts = []
        for key in sent_keys:
            row = state.endpoints.get((request.machine_id, key))
            if row is None or (row["source"] == "agent" and row["agent_id"] == agent["id"]):
                continue
            held = row["lease_expires_at"] is not None and row["lease_expires_at"] > now
            if row["source"] == "manual" or held:
                conflicts.append(
                    {"providerKey": key, "source": row["source"], "agentId": row["agent_id"]}
                )
        if conflicts:
            return EndpointConflict(
                "provider keys held by a manual endpoint or another agent: "
                + ", ".join(c["providerKey"] for c in conflicts),
                details={
                    "providerKeys": [c["providerKey"] for c in conflicts],
                    "conflicts": conflicts,
                },
            )
        return self._apply_one(request, agent, lease, allowed, state)

    def _apply_one(
        self,
        request: HeartbeatRequest,
        agent: dict[str, Any],
        lease: int,
        allowed: list[str],
        state: _Batch,
    ) -> Result:
        """§6.5: upsert every listed endpoint under a new lease; stage the §6.6 audit event."""
        now, machine_id, agent_id = state.now, request.machine_id, agent["id"]
        until = now + lease * 1000
        until_iso = state.to_iso(until)
        changes: list[dict[str, Any]] = []
        results: list[dict[str, Any]] = []
        for entry in request.endpoints:
            key = (machine_id, entry.provider_key)
            stored = state.endpoints.get(key)
            if stored is not None and _is_renewal(stored, entry, agent_id, now):
                # The common case: same fields, same status, lease still running.
                row = stored
                row["lease_expires_at"] = until
                row["last_checked_at"] = now
                if entry.status == "active":
                    row["last_healthy_at"] = now
                state.renewed.add(key)
            else:
                row, change = self._upsert(stored, entry, machine_id, agent_id, until, now)
                if change is not None:
                    changes.append(change)
                state.endpoints[key] = row
                if stored is None:
                    state.inserted.add(key)
                else:
                    state.changed.add(key)
            results.append(
                {
                    "providerKey": entry.provider_key,
                    "endpointBaseUrl": row["endpoint_base_url"],
                    "status": row["status"],
                    "leaseExpiresAt": until_iso,
                    "healthError": row["health_error"],
                    "hasAuthToken": row["auth_token_enc"] is not None,
                }
            )
        activated = agent["status"] == "provisioned"
        agent["status"] = "active"
        agent["last_seen_at"] = now
        if request.sequence is not None:
            agent["last_sequence"] = request.sequence
        agent["last_lease_seconds"] = lease
        if activated:
            agent["updated_at"] = now
        state.dirty_agents.add(agent_id)
        if activated or changes:
            state.events.append(
                {
                    "actor": f"machine-agent:{agent_id}",
                    "type": "machine-agent.heartbeat",
                    "resource_type": "machine_agent",
                    "resource_id": agent_id,
                    "machine_id": machine_id,
                    "payload": {
                        "sequence": request.sequence,
                        "leaseSeconds": lease,
                        "agentActivated": activated,
                        "changes": changes,
                    },
                    "at": now,
                }
            )
        return _result(request, agent, lease, allowed, results, state, applied=True)

    def _upsert(
        self,
        stored: dict[str, Any] | None,
        entry: HeartbeatEndpointEntry,
        machine_id: str,
        agent_id: str,
        until: int,
        now: int,
    ) -> tuple[dict[str, Any], dict[str, Any] | None]:
        """Create, take over, revive or change one endpoint; returns it and its §6.6 change."""
        sent = EndpointInput(
            endpoint_base_url=entry.endpoint_base_url,
            label=entry.label,
            auth_type=entry.auth_type,
            auth_token=entry.auth_token,
            model_alias=entry.model_alias,
            network_scope=entry.network_scope,
            probe_path=entry.probe_path,
        )
        leased = {
            "source": "agent",
            "agent_id": agent_id,
            "status": entry.status,
            "health_error": entry.health_error,
            "lease_expires_at": until,
            "last_checked_at": now,
        }
        healthy = now if entry.status == "active" else None
        if stored is None:
            row = new_row(machine_id, entry.provider_key, sent, self._cipher, now, **leased)
            row["last_healthy_at"] = healthy
            return row, _change(entry, "created", [])
        taken_over = stored["agent_id"] != agent_id
        lapsed = stored["lease_expires_at"] is None or stored["lease_expires_at"] <= now
        row, _ = merged_row(stored, sent, self._cipher, taken_over=taken_over)
        row.update(leased)
        if healthy is not None:
            row["last_healthy_at"] = healthy
        fields = wire_fields(changed_columns(stored, row, HEARTBEAT_AUDITED))
        touch(stored, row, now)
        if taken_over:
            return row, _change(entry, "taken-over", fields)
        if lapsed:
            return row, _change(entry, "revived", fields)
        return row, _change(entry, "updated", fields) if fields else None

    @staticmethod
    def _replay(
        request: HeartbeatRequest,
        agent: dict[str, Any],
        lease: int,
        allowed: list[str],
        state: _Batch,
    ) -> Result:
        """§6.3 step 8: nothing changes; report the stored state of the keys this agent owns."""
        results = []
        for entry in request.endpoints:
            row = state.endpoints.get((request.machine_id, entry.provider_key))
            if (
                row is None
                or row["source"] != "agent"
                or row["agent_id"] != agent["id"]
                or row["lease_expires_at"] is None
            ):
                continue
            results.append(
                {
                    "providerKey": row["provider_key"],
                    "endpointBaseUrl": row["endpoint_base_url"],
                    "status": effective_status(row, state.now),
                    "leaseExpiresAt": state.to_iso(row["lease_expires_at"]),
                    "healthError": row["health_error"],
                    "hasAuthToken": row["auth_token_enc"] is not None,
                }
            )
        return _result(request, agent, lease, allowed, results, state, applied=False)


def _is_renewal(
    stored: dict[str, Any], entry: HeartbeatEndpointEntry, agent_id: str, now: int
) -> bool:
    """A plain renewal (§1.3): this agent's live endpoint, and the entry changes nothing but
    bookkeeping. Such a write touches only the lease columns and is never audited."""
    lease = stored["lease_expires_at"]
    return (
        stored["agent_id"] == agent_id
        and stored["source"] == "agent"
        and lease is not None
        and lease > now
        and entry.endpoint_base_url == stored["endpoint_base_url"]
        and entry.status == stored["status"]
        and entry.health_error == stored["health_error"]
        and entry.auth_token is None
        and (entry.label is None or entry.label == stored["label"])
        and (entry.auth_type is None or entry.auth_type == stored["auth_type"])
        and (entry.model_alias is None or entry.model_alias == stored["model_alias"])
        and (entry.network_scope is None or entry.network_scope == stored["network_scope"])
        and (entry.probe_path is None or entry.probe_path == stored["probe_path"])
    )


def _change(entry: HeartbeatEndpointEntry, change: str, fields: list[str]) -> dict[str, Any]:
    return {
        "providerKey": entry.provider_key,
        "change": change,
        "fields": fields,
        "status": entry.status,
    }


def _result(
    request: HeartbeatRequest,
    agent: dict[str, Any],
    lease: int,
    allowed: list[str],
    results: list[dict[str, Any]],
    state: _Batch,
    *,
    applied: bool,
) -> Result:
    """``HeartbeatResult`` (shared.wire) in wire form."""
    return {
        "machineId": request.machine_id,
        "agentId": agent["id"],
        "leaseTtlSeconds": lease,
        "leaseSeconds": lease,
        "observedAt": state.to_iso(state.now),
        "nextHeartbeatSeconds": max(1, lease // 3),
        "applied": applied,
        "lastSequence": agent["last_sequence"],
        "allowedProviderKeys": list(allowed),
        "endpoints": results,
    }
