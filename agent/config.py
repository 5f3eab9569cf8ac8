"""The agent's configuration (SPEC §17.1): one TOML file plus ``MM_AGENT_*`` overrides.

Validated once, at start (and again on ``SIGHUP``), so the daemon either runs with a coherent
configuration or refuses to start with exit 78. Every problem is reported at once, naming the field
(``heartbeat.interval_seconds``, ``runtimes[1].kind``) and where its value came from (the file, or
the environment variable that overrode it); an operator should never have to guess.
"""

from __future__ import annotations

import ipaddress
import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from agent.errors import ConfigError
from agent.probes import PROBES
from shared.endpoints import (
    BaseUrl,
    EndpointAuthType,
    EndpointLabel,
    EndpointNetworkScope,
    ModelAlias,
    ProbePath,
    ProviderKey,
)
from shared.validation import error_path

DEFAULT_CONFIG_PATH = Path("/etc/mm-agent/agent.toml")
ENV_PREFIX = "MM_AGENT_"
TOKEN_ENV = "MM_AGENT_TOKEN"  # noqa: S105 - the variable's name, not a secret

RuntimeKind = Literal["openai", "ollama", "llamacpp", "qvac", "http"]
DiscoverableProvider = Literal["qvac", "ollama", "vllm", "llamacpp"]
DISCOVERABLE: tuple[DiscoverableProvider, ...] = ("qvac", "ollama", "vllm", "llamacpp")

# Default probe path by kind (SPEC §17.1), owned by the probe classes themselves.
DEFAULT_PROBE_PATH: dict[str, str] = {kind: cls.default_probe_path for kind, cls in PROBES.items()}


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _is_loopback_host(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class ControlPlaneConfig(_Section):
    url: str
    machine_id: str = Field(min_length=1, max_length=1024)
    agent_id: str = Field(min_length=1, max_length=1024)
    token_file: str | None = None
    ca_file: str = ""
    timeout_seconds: float = Field(default=10, gt=0, le=300)
    allow_insecure_http: bool = False

    @field_validator("url")
    @classmethod
    def _url_shape(cls, value: str) -> str:
        parts = urlsplit(value.strip())
        if parts.scheme not in ("http", "https"):
            raise ValueError("must be an http:// or https:// URL")
        if not parts.hostname:
            raise ValueError("must include a host")
        if parts.username or parts.password:
            raise ValueError("must not contain user information")
        if parts.query or parts.fragment:
            raise ValueError("must not contain a query or fragment")
        return value.strip().rstrip("/")

    @field_validator("machine_id", "agent_id")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be blank")
        return value

    @model_validator(mode="after")
    def _https_unless_loopback(self) -> ControlPlaneConfig:
        """The token travels in the body: plain http is only safe on the same host."""
        host = urlsplit(self.url).hostname or ""
        if urlsplit(self.url).scheme == "http" and not (
            self.allow_insecure_http or _is_loopback_host(host)
        ):
            raise ValueError(
                "url: http:// is only allowed for loopback hosts; use https:// "
                "or set control_plane.allow_insecure_http = true"
            )
        return self

    @property
    def heartbeat_url(self) -> str:
        return f"{self.url}/api/v1/machine-agents/heartbeat"


class HeartbeatConfig(_Section):
    interval_seconds: float = Field(default=15, ge=5, le=300)
    jitter: float = Field(default=0.2, ge=0, le=0.5)
    lease_seconds: int = Field(default=45, ge=5, le=3600)
    shutdown_timeout_seconds: float = Field(default=3, gt=0, le=60)


class ProbeConfig(_Section):
    timeout_seconds: float = Field(default=3, gt=0, le=60)
    degraded_latency_ms: int = Field(default=1500, ge=1, le=600_000)


class AutodiscoverConfig(_Section):
    enabled: bool = True
    providers: list[DiscoverableProvider] = Field(default_factory=lambda: list(DISCOVERABLE))

    @field_validator("providers")
    @classmethod
    def _dedupe(cls, value: list[DiscoverableProvider]) -> list[DiscoverableProvider]:
        return list(dict.fromkeys(value))


class StateConfig(_Section):
    dir: str = Field(default="/var/lib/mm-agent", min_length=1)


class LogConfig(_Section):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["json", "text"] = "json"


class RuntimeConfig(_Section):
    provider_key: ProviderKey
    kind: RuntimeKind
    endpoint_base_url: BaseUrl
    model_alias: ModelAlias | None = None
    label: EndpointLabel | None = None
    probe_path: ProbePath | None = None
    auth_type: EndpointAuthType | None = None
    auth_token_file: str | None = Field(default=None, min_length=1)
    network_scope: EndpointNetworkScope | None = None

    @model_validator(mode="after")
    def _consistent_auth(self) -> RuntimeConfig:
        if self.auth_type == "none" and self.auth_token_file:
            raise ValueError("auth_type 'none' cannot be combined with auth_token_file")
        return self

    @property
    def effective_probe_path(self) -> str:
        return self.probe_path or DEFAULT_PROBE_PATH[self.kind]

    @property
    def effective_auth_type(self) -> EndpointAuthType | None:
        """``bearer`` when a token file is set and no type is (SPEC §17.1)."""
        if self.auth_type is None and self.auth_token_file:
            return "bearer"
        return self.auth_type


class AgentConfig(_Section):
    control_plane: ControlPlaneConfig
    heartbeat: HeartbeatConfig = HeartbeatConfig()
    probe: ProbeConfig = ProbeConfig()
    autodiscover: AutodiscoverConfig = AutodiscoverConfig()
    state: StateConfig = StateConfig()
    log: LogConfig = LogConfig()
    runtimes: list[RuntimeConfig] = Field(default_factory=list, max_length=64)

    @model_validator(mode="after")
    def _unique_provider_keys(self) -> AgentConfig:
        keys = [runtime.provider_key for runtime in self.runtimes]
        repeated = sorted({key for key in keys if keys.count(key) > 1})
        if repeated:
            raise ValueError(f"runtimes: provider_key repeated: {', '.join(repeated)}")
        return self


# Sections that environment variables may override; [[runtimes]] is file-only (SPEC §17.1).
_SECTIONS: dict[str, type[_Section]] = {
    "control_plane": ControlPlaneConfig,
    "heartbeat": HeartbeatConfig,
    "probe": ProbeConfig,
    "autodiscover": AutodiscoverConfig,
    "state": StateConfig,
    "log": LogConfig,
}
_LIST_FIELDS = {("autodiscover", "providers")}


def env_var_name(section: str, key: str) -> str:
    return f"{ENV_PREFIX}{section}_{key}".upper()


def _env_overrides(
    raw: dict[str, Any], environ: Mapping[str, str]
) -> tuple[dict[tuple[str, str], str], list[str]]:
    """Apply ``MM_AGENT_<SECTION>_<KEY>`` onto the parsed file; return where each value came from."""
    known: dict[str, tuple[str, str]] = {}
    for section, model in _SECTIONS.items():
        for key in model.model_fields:
            known[env_var_name(section, key)] = (section, key)
    origins: dict[tuple[str, str], str] = {}
    problems: list[str] = []
    for name in sorted(environ):
        if not name.startswith(ENV_PREFIX) or name == TOKEN_ENV:
            continue
        if name not in known:
            problems.append(f"environment {name}: unknown setting (no such section and key)")
            continue
        section, key = known[name]
        value: Any = environ[name]
        if (section, key) in _LIST_FIELDS:
            value = [item.strip() for item in value.split(",") if item.strip()]
        table = raw.setdefault(section, {})
        if isinstance(table, dict):
            table[key] = value
            origins[(section, key)] = name
    return origins, problems


def _describe(exc: ValidationError, path: Path, origins: dict[tuple[str, str], str]) -> list[str]:
    problems: list[str] = []
    for err in exc.errors(include_url=False):
        loc = tuple(err["loc"])
        field = error_path(loc) or "(file)"
        message = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            message = "unknown key"
        elif err["type"] == "missing":
            message = "required"
        origin = origins.get((str(loc[0]), str(loc[1]))) if len(loc) >= 2 else None
        where = f"environment {origin}" if origin else str(path)
        problems.append(f"{where}: {field}: {message}")
    return problems


def load_config(path: Path, environ: Mapping[str, str] | None = None) -> AgentConfig:
    """Read, override and validate; raise :class:`ConfigError` listing every problem."""
    env = os.environ if environ is None else environ
    try:
        with path.open("rb") as handle:
            raw: dict[str, Any] = tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(f"{path}: configuration file not found") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read configuration file: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    origins, problems = _env_overrides(raw, env)
    try:
        config = AgentConfig.model_validate(raw)
    except ValidationError as exc:
        problems.extend(_describe(exc, path, origins))
        raise ConfigError(problems) from None
    if problems:
        raise ConfigError(problems)
    return config


def config_warnings(config: AgentConfig) -> list[str]:
    """Legal but unwise settings that ``check-config`` and ``run`` point out."""
    warnings: list[str] = []
    if config.heartbeat.lease_seconds < 3 * config.heartbeat.interval_seconds:
        warnings.append(
            f"heartbeat.lease_seconds ({config.heartbeat.lease_seconds}) is less than "
            f"3 × heartbeat.interval_seconds ({config.heartbeat.interval_seconds:g}): "
            "one lost heartbeat can let a lease lapse"
        )
    return warnings
