"""The runtimes the agent reports, and one observation pass over all of them (SPEC §17.3, §17.4 step 1).

Explicit ``[[runtimes]]`` and autodiscovered ones become the same :class:`Runtime`, so the heartbeat,
the state file and ``mm-agent probe`` never care where a runtime came from beyond its ``source``.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import urlsplit

import aiohttp

from agent.config import AgentConfig, RuntimeConfig, RuntimeKind
from agent.discovery import WELL_KNOWN, Port, discover
from agent.errors import ConfigError
from agent.probes import PROBES, ProbeResult
from agent.token import read_secret_file, resolve_secret_path
from shared.endpoints import EndpointAuthType, EndpointNetworkScope
from shared.logs import get_logger

log = get_logger("agent.runtimes")

RuntimeSource = Literal["config", "autodiscover"]


@dataclass(frozen=True, slots=True)
class Runtime:
    provider_key: str
    kind: RuntimeKind
    endpoint_base_url: str
    probe_path: str
    source: RuntimeSource
    label: str | None = None
    auth_type: EndpointAuthType | None = None
    auth_token_file: str | None = None
    model_alias: str | None = None
    network_scope: EndpointNetworkScope | None = None

    @classmethod
    def from_config(cls, runtime: RuntimeConfig) -> Runtime:
        return cls(
            provider_key=runtime.provider_key,
            kind=runtime.kind,
            endpoint_base_url=runtime.endpoint_base_url,
            probe_path=runtime.effective_probe_path,
            source="config",
            label=runtime.label,
            auth_type=runtime.effective_auth_type,
            auth_token_file=runtime.auth_token_file,
            model_alias=runtime.model_alias,
            network_scope=runtime.network_scope,
        )


@dataclass(frozen=True, slots=True)
class Observation:
    runtime: Runtime
    result: ProbeResult


@dataclass
class RuntimeSecrets:
    """Runtime tokens, read from their files every cycle so a rotated token is used at once.

    A file that turns unreadable or too permissive while running is logged and the last good value
    kept: the daemon only refuses such files at start, it does not die over them later.
    """

    environ: Mapping[str, str] = field(default_factory=lambda: os.environ)
    _last_good: dict[str, str] = field(default_factory=dict, repr=False)
    _failing: set[str] = field(default_factory=set)

    def get(self, runtime: Runtime) -> str | None:
        spec = runtime.auth_token_file
        if not spec:
            return None
        try:
            value = read_secret_file(resolve_secret_path(spec, self.environ), self.environ)
        except ConfigError as exc:
            if spec not in self._failing:
                log.error(
                    "runtime_token_unreadable", provider_key=runtime.provider_key, problem=str(exc)
                )
                self._failing.add(spec)
            return self._last_good.get(spec)
        self._failing.discard(spec)
        self._last_good[spec] = value
        return value


def _loopback_ports(runtimes: Sequence[Runtime]) -> set[int]:
    ports: set[int] = set()
    for runtime in runtimes:
        parts = urlsplit(runtime.endpoint_base_url)
        host = (parts.hostname or "").strip("[]")
        try:
            loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = False
        if loopback:
            ports.add(parts.port or (443 if parts.scheme == "https" else 80))
    return ports


async def observe(
    config: AgentConfig,
    session: aiohttp.ClientSession,
    secrets: RuntimeSecrets,
    *,
    allowed: Collection[str] | None,
    ports: Sequence[Port] = WELL_KNOWN,
) -> list[Observation]:
    """Probe every explicit runtime and run autodiscovery, all concurrently.

    ``allowed`` is the agent's allow-list from the last heartbeat response (``None`` before the
    first one: then every listed provider is tried).
    """
    explicit = [Runtime.from_config(rc) for rc in config.runtimes]
    probes = []
    for runtime in explicit:
        probe_cls = PROBES[runtime.kind]
        probes.append(
            probe_cls(
                base_url=runtime.endpoint_base_url,
                probe_path=runtime.probe_path,
                timeout_seconds=config.probe.timeout_seconds,
                degraded_latency_ms=config.probe.degraded_latency_ms,
                auth_type=runtime.auth_type,
                token=secrets.get(runtime),
            ).probe(session)
        )
    explicit_keys = {runtime.provider_key for runtime in explicit}
    wanted: set[str] = set()
    if config.autodiscover.enabled:
        wanted = {
            key
            for key in config.autodiscover.providers
            if key not in explicit_keys and (allowed is None or key in allowed)
        }
    discovery = discover(
        session,
        wanted=wanted,
        skip_ports=_loopback_ports(explicit),
        timeout_seconds=config.probe.timeout_seconds,
        degraded_latency_ms=config.probe.degraded_latency_ms,
        ports=ports,
    )
    results, found = await asyncio.gather(asyncio.gather(*probes), discovery)
    observations = [
        Observation(runtime, result) for runtime, result in zip(explicit, results, strict=True)
    ]
    for item in found:
        runtime = Runtime(
            provider_key=item.provider_key,
            kind=item.kind,
            endpoint_base_url=item.endpoint_base_url,
            probe_path=item.probe_path,
            source="autodiscover",
        )
        observations.append(Observation(runtime, item.result))
    return observations
