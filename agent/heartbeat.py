"""The heartbeat loop (SPEC §17.4 cycle, §17.5 failures).

One :meth:`HeartbeatLoop.cycle` probes every runtime, sends one heartbeat when one is due, records
state and returns how long to sleep. Keeping the decision "how long until the next step" inside the
cycle lets tests drive the loop step by step without waiting on real timers.

Failure handling follows the table of §17.5: transient failures (no answer, 5xx, 429) are retried
after random exponential delays drawn by tenacity, so a fleet that lost its control plane at the
same moment does not come back as one synchronised wave; client errors are never retried quickly.
Probing continues every cycle either way, so the first heartbeat after an outage is fresh.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import hashlib
import json
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import aiohttp
from pydantic import ValidationError
from tenacity import RetryCallState, Retrying, wait_random_exponential

from agent.config import AgentConfig
from agent.discovery import WELL_KNOWN, Port
from agent.errors import AgentRevoked, ConfigError
from agent.probes.base import ProbeResult, error_text
from agent.runtimes import Observation, RuntimeSecrets, observe
from agent.state import AgentState, LastError, RuntimeState, StateStore
from agent.token import AgentToken
from shared.errors import ErrorCode
from shared.logs import get_logger
from shared.sdnotify import Notifier
from shared.timeutil import now_ms, parse_iso, to_iso, to_iso_opt
from shared.validation import WireModel
from shared.wire import MAX_SEQUENCE, HeartbeatEndpointEntry, HeartbeatRequest, HeartbeatResult

log = get_logger("agent.heartbeat")

RETRY_CAP_SECONDS = 60.0
CLIENT_ERROR_HOLD_SECONDS = 60.0
CONFLICT_DROP_SECONDS = 600.0
MAX_RETRY_AFTER_SECONDS = 3600.0
MAX_ENTRIES = 64
GOODBYE_HEALTH_ERROR = "mm-agent stopped"


class _HeartbeatResponse(WireModel):
    item: HeartbeatResult


@dataclass(frozen=True, slots=True)
class SendOutcome:
    """What one POST produced: a result, or an error with whatever the server said about it."""

    result: HeartbeatResult | None = None
    http_status: int | None = None
    code: str | None = None
    message: str = ""
    details: Any = None
    retry_after: float | None = None

    @property
    def ok(self) -> bool:
        return self.result is not None

    @property
    def transient(self) -> bool:
        """No answer, 5xx or 429: worth retrying soon (§17.5 first row)."""
        status = self.http_status
        return not self.ok and (status is None or status >= 500 or status == 429)


class RetryDelays:
    """Delays between retries of a failing heartbeat: tenacity's full-jitter exponential wait.

    Attempt *n* waits a uniform random time in ``[0, min(60, 2**(n-1))]`` seconds; a ``Retry-After``
    from the server raises the floor.
    """

    def __init__(self, cap: float = RETRY_CAP_SECONDS) -> None:
        self._wait = wait_random_exponential(multiplier=1, max=cap)
        self._retrying = Retrying(wait=self._wait)
        self.attempt = 0

    def next(self, at_least: float = 0.0) -> float:
        self.attempt += 1
        state = RetryCallState(self._retrying, None, (), {})
        state.attempt_number = self.attempt
        return max(at_least, self._wait(state))

    def reset(self) -> None:
        self.attempt = 0


def parse_retry_after(value: str | None) -> float | None:
    """``Retry-After`` as seconds: delta-seconds or an HTTP date, bounded to one hour."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        seconds = (when - datetime.now(UTC)).total_seconds()
    if seconds != seconds:  # NaN
        return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER_SECONDS)


def _error_body(status: int, raw: bytes) -> tuple[str, str, Any]:
    """``(code, message, details)`` from the error envelope, or ``HTTP_<status>`` without one."""
    try:
        error = json.loads(raw)["error"]
        code = str(error["code"])
        message = str(error.get("message", ""))[:500]
        details = error.get("details")
    except (ValueError, KeyError, TypeError):
        return f"HTTP_{status}", f"HTTP {status}", None
    return code, message, details


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class HeartbeatLoop:
    def __init__(
        self,
        config: AgentConfig,
        token: AgentToken,
        *,
        control_session: aiohttp.ClientSession,
        probe_session: aiohttp.ClientSession,
        store: StateStore,
        notifier: Notifier,
        environ: Mapping[str, str] | None = None,
        ports: Sequence[Port] = WELL_KNOWN,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self._clock = clock
        self.token = token
        self.control_session = control_session
        self.probe_session = probe_session
        self.store = store
        self._notifier = notifier
        self._secrets = RuntimeSecrets() if environ is None else RuntimeSecrets(environ)
        self._ports = ports
        self.retry = RetryDelays()
        self.sequence = 0
        self._forced_sequence: int | None = None
        self.allowed: list[str] | None = None
        self._next_hint: int | None = None
        self._send_not_before = 0.0
        self._hold_reason: str | None = None
        self._policy_dropped: set[str] = set()
        self._policy_allowed_at_drop: list[str] | None = None
        self._conflict_dropped: dict[str, float] = {}
        self._sent_tokens: dict[str, str] = {}
        self._pending_tokens: dict[str, str] = {}
        self._server_has_token: dict[str, bool] = {}
        self.observations: list[Observation] = []
        self._last_heartbeat_at: int | None = None
        self._last_success_at: int | None = None
        self._last_error: LastError | None = None
        self._last_ok: bool | None = None
        self._statuses: dict[str, str] = {}

    # -- lifecycle -------------------------------------------------------------------------

    def restore(self, state: AgentState | None) -> None:
        """Continue from the state file: above all the sequence, which must keep increasing."""
        if state is None:
            return
        same_agent = (state.machine_id, state.agent_id) == (
            self.config.control_plane.machine_id,
            self.config.control_plane.agent_id,
        )
        if not same_agent:
            return
        if state.sequence is not None:
            self.sequence = max(self.sequence, state.sequence)
        self._last_error = state.last_error
        self._last_ok = state.last_error is None if state.last_heartbeat_at else None
        with contextlib.suppress(ValueError):
            self._last_heartbeat_at = parse_iso(state.last_heartbeat_at or "")
        with contextlib.suppress(ValueError):
            self._last_success_at = parse_iso(state.last_success_at or "")

    def reconfigure(
        self,
        config: AgentConfig,
        token: AgentToken,
        *,
        control_session: aiohttp.ClientSession,
        store: StateStore,
    ) -> None:
        """Apply a reloaded configuration; an operator's SIGHUP also means "try again now"."""
        identity_changed = (config.control_plane.machine_id, config.control_plane.agent_id) != (
            self.config.control_plane.machine_id,
            self.config.control_plane.agent_id,
        )
        self.config = config
        self.token = token
        self.control_session = control_session
        self.store = store
        self._send_not_before = 0.0
        self._hold_reason = None
        self.retry.reset()
        if identity_changed:
            self.allowed = None
            self._policy_dropped.clear()
            self._conflict_dropped.clear()
            self._sent_tokens.clear()
            self._server_has_token.clear()

    async def cycle(self) -> float:
        """Probe, heartbeat if due, record; return the seconds until the next cycle."""
        self.observations = await observe(
            self.config, self.probe_session, self._secrets, allowed=self.allowed, ports=self._ports
        )
        self._log_changes()
        if self._hold_reason == "auth" and self._token_rotated():
            self._send_not_before = 0.0
        if self._clock() >= self._send_not_before - 0.01:
            await self._heartbeat()
        await self.store.save(self.snapshot())
        self._notifier.status(self.status_line())
        return self.next_delay()

    async def goodbye(self) -> None:
        """One last heartbeat marking every runtime unreachable, bounded by the shutdown timeout.

        Without it the control plane would keep routing to this machine until the leases ran out.
        """
        stopped = ProbeResult("unreachable", None, GOODBYE_HEALTH_ERROR)
        self.observations = [Observation(o.runtime, stopped) for o in self.observations]
        if not self.observations:
            return
        timeout = self.config.heartbeat.shutdown_timeout_seconds
        try:
            async with asyncio.timeout(timeout):
                outcome = await self._send(self.observations, send_tokens=False)
        except TimeoutError:
            log.warning("goodbye_timeout", timeout_seconds=timeout)
            return
        if outcome.ok:
            self._last_heartbeat_at = self._last_success_at = now_ms()
            log.info(
                "goodbye_sent", endpoints=len(outcome.result.endpoints) if outcome.result else 0
            )
        else:
            log.warning("goodbye_failed", code=outcome.code, status=outcome.http_status)
        await self.store.save(self.snapshot())

    # -- one heartbeat -------------------------------------------------------------------

    async def _heartbeat(self) -> None:
        outcome = await self._send(self.observations)
        if outcome.result is not None and not outcome.result.applied:
            last = outcome.result.last_sequence
            if last is not None:
                log.warning("heartbeat_replayed", sequence=self.sequence, last_sequence=last)
                self._forced_sequence = last + 1
                outcome = await self._send(self.observations)
        elif (outcome.http_status == 401 and self._token_rotated()) or self._drop_refused_keys(
            outcome
        ):
            # A rotated token, or keys the server refused now left out: one corrected try.
            outcome = await self._send(self.observations)
        self._settle(outcome)

    def _entries(
        self, observations: Sequence[Observation], *, send_tokens: bool
    ) -> tuple[list[HeartbeatEndpointEntry], dict[str, str]]:
        now = self._clock()
        self._conflict_dropped = {k: t for k, t in self._conflict_dropped.items() if t > now}
        dropped = self._policy_dropped | set(self._conflict_dropped)
        entries: list[HeartbeatEndpointEntry] = []
        pending: dict[str, str] = {}
        for observation in observations:
            runtime, result = observation.runtime, observation.result
            if runtime.provider_key in dropped or len(entries) >= MAX_ENTRIES:
                continue
            data: dict[str, Any] = {
                "providerKey": runtime.provider_key,
                "endpointBaseUrl": runtime.endpoint_base_url,
                "status": result.status,
                "probePath": runtime.probe_path,
                "healthError": result.health_error,
                "label": runtime.label,
                "authType": runtime.auth_type,
                "modelAlias": runtime.model_alias,
                "networkScope": runtime.network_scope,
            }
            token = self._secrets.get(runtime) if send_tokens else None
            if token:
                digest = _digest(token)
                key = runtime.provider_key
                if self._sent_tokens.get(key) != digest or not self._server_has_token.get(
                    key, True
                ):
                    data["authToken"] = token
                    pending[key] = digest
            entries.append(HeartbeatEndpointEntry.model_validate(data))
        return entries, pending

    def _next_sequence(self) -> int:
        if self._forced_sequence is not None:
            sequence, self._forced_sequence = self._forced_sequence, None
        else:
            sequence = max(self.sequence + 1, now_ms())
        return min(sequence, MAX_SEQUENCE)

    async def _send(
        self, observations: Sequence[Observation], *, send_tokens: bool = True
    ) -> SendOutcome:
        cp = self.config.control_plane
        try:
            entries, pending = self._entries(observations, send_tokens=send_tokens)
            sequence = self._next_sequence()
            request = HeartbeatRequest(
                machine_id=cp.machine_id,
                agent_id=cp.agent_id,
                agent_token=self.token.value,
                endpoints=entries,
                lease_seconds=self.config.heartbeat.lease_seconds,
                sequence=sequence,
            )
        except ValidationError as exc:
            # Only locations: a validation message could quote a token.
            fields = [".".join(str(p) for p in err["loc"]) for err in exc.errors()]
            log.error("heartbeat_invalid", fields=fields)
            return SendOutcome(code="INVALID_REQUEST", message="heartbeat failed validation")
        self.sequence = sequence
        self._pending_tokens = pending
        body = request.model_dump_json(by_alias=True, exclude_none=True)
        try:
            async with self.control_session.post(
                cp.heartbeat_url,
                data=body,
                headers={"Content-Type": "application/json"},
                allow_redirects=False,
            ) as response:
                status = response.status
                raw = await response.read()
                retry_after = parse_retry_after(response.headers.get("Retry-After"))
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            code = "TIMEOUT" if isinstance(exc, TimeoutError) else "CONNECTION_ERROR"
            return SendOutcome(code=code, message=error_text(exc, cp.timeout_seconds))
        log.debug("heartbeat_sent", sequence=sequence, endpoints=len(entries), status=status)
        if 200 <= status < 300:
            try:
                result = _HeartbeatResponse.model_validate_json(raw).item
            except ValidationError:
                return SendOutcome(
                    http_status=status, code="INVALID_RESPONSE", message="unexpected response body"
                )
            return SendOutcome(result=result, http_status=status)
        code, message, details = _error_body(status, raw)
        return SendOutcome(
            http_status=status,
            code=code,
            message=message,
            details=details,
            retry_after=retry_after,
        )

    def _drop_refused_keys(self, outcome: SendOutcome) -> bool:
        """§17.5 third row: leave out the keys the server refused; True when any were dropped."""
        policy = outcome.http_status == 403 and outcome.code == ErrorCode.AGENT_POLICY_DENIED
        conflict = outcome.http_status == 409 and outcome.code == ErrorCode.ENDPOINT_CONFLICT
        if not (policy or conflict) or not isinstance(outcome.details, dict):
            return False
        keys = outcome.details.get("providerKeys")
        if not isinstance(keys, list) or not keys or not all(isinstance(k, str) for k in keys):
            return False
        log.error("heartbeat_keys_refused", code=outcome.code, provider_keys=keys)
        if policy:
            self._policy_dropped.update(keys)
            allowed = outcome.details.get("allowedProviderKeys")
            if isinstance(allowed, list) and all(isinstance(k, str) for k in allowed):
                self.allowed = list(allowed)
            self._policy_allowed_at_drop = self.allowed
        else:
            until = self._clock() + CONFLICT_DROP_SECONDS
            self._conflict_dropped.update(dict.fromkeys(keys, until))
        return True

    def _settle(self, outcome: SendOutcome) -> None:
        """Record the final outcome of this cycle's heartbeat and decide when to send again."""
        at = now_ms()
        self._last_heartbeat_at = at
        if outcome.result is not None:
            self._succeeded(outcome.result, at)
            return
        code = outcome.code or "UNKNOWN"
        self._last_error = LastError(code=code, message=outcome.message, at=to_iso(at))
        self._last_ok = False
        if outcome.http_status == 403 and code == ErrorCode.AGENT_PAIRING_INACTIVE:
            log.error("agent_revoked", code=code, message=outcome.message)
            raise AgentRevoked(outcome.message or code)
        if outcome.transient:
            delay = self.retry.next(at_least=outcome.retry_after or 0.0)
            self._hold_reason = "transient"
            self._send_not_before = self._clock() + delay
            log.warning(
                "heartbeat_failed",
                code=code,
                status=outcome.http_status,
                error=outcome.message,
                attempt=self.retry.attempt,
                retry_in=round(delay, 3),
            )
            return
        if outcome.http_status != 401:
            # Other refusals may name keys too (a second refusal): remember them for later.
            self._drop_refused_keys(outcome)
        self.retry.reset()
        self._hold_reason = "auth" if outcome.http_status == 401 else "client"
        self._send_not_before = self._clock() + CLIENT_ERROR_HOLD_SECONDS
        log.error(
            "heartbeat_rejected",
            code=code,
            status=outcome.http_status,
            error=outcome.message,
            retry_in=CLIENT_ERROR_HOLD_SECONDS,
        )

    def _succeeded(self, result: HeartbeatResult, at: int) -> None:
        if self._last_ok is not True:
            log.info(
                "heartbeat_ok" if self._last_ok is None else "heartbeat_recovered",
                endpoints=len(result.endpoints),
                lease_seconds=result.lease_seconds,
                sequence=self.sequence,
            )
        self._last_ok = True
        self._last_success_at = at
        self._last_error = None
        self._hold_reason = None
        self._send_not_before = 0.0
        self.retry.reset()
        self._next_hint = result.next_heartbeat_seconds
        if self._policy_dropped and result.allowed_provider_keys != self._policy_allowed_at_drop:
            log.info("policy_drops_cleared", provider_keys=sorted(self._policy_dropped))
            self._policy_dropped.clear()
        self.allowed = list(result.allowed_provider_keys)
        if result.applied:
            self._sent_tokens.update(self._pending_tokens)
        for endpoint in result.endpoints:
            self._server_has_token[endpoint.provider_key] = endpoint.has_auth_token

    def _token_rotated(self) -> bool:
        """Re-read the token file; True when it now holds a different token."""
        try:
            changed = self.token.reload()
        except ConfigError as exc:
            log.error("agent_token_unreadable", problem=str(exc))
            return False
        if changed:
            log.info("agent_token_reloaded", source=self.token.source)
        return changed

    # -- reporting -----------------------------------------------------------------------

    @property
    def retry_in(self) -> float:
        """Seconds until a heartbeat may be sent again (0 when one is due now)."""
        return max(0.0, self._send_not_before - self._clock())

    def next_delay(self) -> float:
        """``min(interval, nextHeartbeatSeconds)`` ± jitter, never under 1 s; sooner for a retry."""
        hb = self.config.heartbeat
        base = hb.interval_seconds
        if self._next_hint is not None:
            base = min(base, float(self._next_hint))
        delay = max(1.0, base * random.uniform(1 - hb.jitter, 1 + hb.jitter))
        until_send = self._send_not_before - self._clock()
        if 0 < until_send < delay:
            delay = until_send
        return max(delay, 0.0)

    def _log_changes(self) -> None:
        current = {o.runtime.provider_key: o for o in self.observations}
        for key, observation in current.items():
            previous = self._statuses.get(key)
            status = observation.result.status
            if previous != status:
                log.info(
                    "runtime_status",
                    provider_key=key,
                    status=status,
                    previous=previous,
                    source=observation.runtime.source,
                    health_error=observation.result.health_error,
                )
        for key in self._statuses.keys() - current.keys():
            log.info("runtime_gone", provider_key=key)
        self._statuses = {k: o.result.status for k, o in current.items()}

    def status_line(self) -> str:
        """``STATUS=`` for systemd (SPEC §17.6)."""
        total = len(self.observations)
        active = sum(1 for o in self.observations if o.result.status == "active")
        head = f"{total} runtimes, {active} active; "
        if self._last_heartbeat_at is None:
            return head + "last heartbeat never"
        verdict = (
            "ok" if self._last_ok else f"error {self._last_error.code if self._last_error else ''}"
        )
        return head + f"last heartbeat {to_iso(self._last_heartbeat_at)} {verdict}".rstrip()

    def snapshot(self) -> AgentState:
        cp = self.config.control_plane
        return AgentState(
            machine_id=cp.machine_id,
            agent_id=cp.agent_id,
            sequence=self.sequence or None,
            last_heartbeat_at=to_iso_opt(self._last_heartbeat_at),
            last_success_at=to_iso_opt(self._last_success_at),
            last_error=self._last_error,
            runtimes=[
                RuntimeState(
                    provider_key=o.runtime.provider_key,
                    endpoint_base_url=o.runtime.endpoint_base_url,
                    status=o.result.status,
                    health_error=o.result.health_error,
                    source=o.runtime.source,
                )
                for o in self.observations
            ],
        )
