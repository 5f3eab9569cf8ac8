"""One settings model for the control plane (SPEC §19), validated once at start.

Precedence, highest first: command-line flags, environment (``MM_<SECTION>_<KEY>``), the TOML file
named by ``--config`` / ``MM_CONFIG``, defaults. Any invalid value is a configuration error: the
process exits 78 with a message naming the setting.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator

from shared.endpoints import normalize_provider_key

Scope = Literal["loopback", "lan", "vpn", "public"]


class ConfigError(Exception):
    """A setting is invalid; the message names it. ``mm-controlplane`` exits 78."""


def _comma_list(value: Any) -> Any:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


CommaList = Annotated[list[str], BeforeValidator(_comma_list)]
_API_KEY_RE = re.compile(r"^[\x21-\x2B\x2D-\x7E]{16,256}$")  # visible ASCII except ','


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ServerSettings(_Section):
    host: str = "127.0.0.1"
    port: int = Field(default=8700, ge=0, le=65535)
    name: str = Field(default="Machine Markets control plane", min_length=1)
    max_body_bytes: int = Field(default=1_048_576, ge=1024)


class DatabaseSettings(_Section):
    url: str | None = None
    pool_size: int = Field(default=10, ge=1, le=200)


class AuthSettings(_Section):
    required: bool = True
    api_keys: CommaList = Field(default_factory=list)

    @model_validator(mode="after")
    def _check_keys(self) -> AuthSettings:
        for index, key in enumerate(self.api_keys):
            if not _API_KEY_RE.match(key):
                raise ValueError(
                    f"api_keys[{index}] must be 16..256 visible ASCII characters other than ','"
                )
        return self


class SecuritySettings(_Section):
    secret_key: CommaList = Field(default_factory=list)


class IdentitySettings(_Section):
    verification_mode: Literal["eip191", "operator"] = "eip191"
    controllers: dict[str, list[str]] = Field(default_factory=dict)
    registry_url: str | None = None
    challenge_ttl_seconds: int = Field(default=300, ge=1)

    @model_validator(mode="before")
    @classmethod
    def _controllers_from_json(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("controllers"), str):
            try:
                data = {**data, "controllers": json.loads(data["controllers"])}
            except json.JSONDecodeError as exc:
                raise ValueError(f"controllers is not a JSON object: {exc}") from None
        if isinstance(data, dict) and data.get("registry_url") == "":
            data = {**data, "registry_url": None}
        return data

    @model_validator(mode="after")
    def _normalise_controllers(self) -> IdentitySettings:
        # Imported here: identity depends on eth-account, which settings users need not load.
        from controlplane.services.identity import normalize_identity_ref, parse_address

        normalised: dict[str, list[str]] = {}
        for ref, addresses in self.controllers.items():
            try:
                key = normalize_identity_ref(ref)
            except ValueError as exc:
                raise ValueError(f"controllers key {ref!r}: {exc}") from None
            checked = []
            for address in addresses:
                try:
                    checked.append(parse_address(address))
                except ValueError as exc:
                    raise ValueError(f"controllers[{ref!r}]: {exc}") from None
            normalised.setdefault(key, [])
            normalised[key] += [a for a in checked if a not in normalised[key]]
        object.__setattr__(self, "controllers", normalised)
        return self


class AgentsSettings(_Section):
    default_allowed_provider_keys: CommaList = Field(default_factory=lambda: ["qvac"])
    enrollment_ttl_seconds: int = Field(default=86_400, ge=1)

    @model_validator(mode="after")
    def _keys(self) -> AgentsSettings:
        keys = [normalize_provider_key(k) for k in self.default_allowed_provider_keys]
        if not keys:
            raise ValueError("default_allowed_provider_keys must name at least one key")
        object.__setattr__(self, "default_allowed_provider_keys", list(dict.fromkeys(keys)))
        return self


class LeaseSettings(_Section):
    default_seconds: int = Field(default=45, ge=1)
    min_seconds: int = Field(default=5, ge=1)
    max_seconds: int = Field(default=3600, ge=1)
    sweep_interval_seconds: float = Field(default=2, gt=0)
    grace_after_start_seconds: float | None = Field(default=None, ge=0)
    storm_guard: bool = True
    storm_guard_ratio: float = Field(default=0.5, ge=0, le=1)
    storm_guard_min_endpoints: int = Field(default=20, ge=0)
    storm_guard_max_suspension_seconds: float | None = Field(default=None, ge=0)
    expired_retention_days: int = Field(default=7, ge=0)

    @model_validator(mode="after")
    def _derived(self) -> LeaseSettings:
        if self.min_seconds > self.max_seconds:
            raise ValueError("min_seconds must not exceed max_seconds")
        if self.grace_after_start_seconds is None:
            object.__setattr__(self, "grace_after_start_seconds", min(60, self.max_seconds))
        if self.storm_guard_max_suspension_seconds is None:
            object.__setattr__(self, "storm_guard_max_suspension_seconds", self.default_seconds)
        return self

    @property
    def grace_seconds(self) -> float:
        return float(self.grace_after_start_seconds or 0)

    @property
    def max_suspension_seconds(self) -> float:
        return float(self.storm_guard_max_suspension_seconds or 0)


class HeartbeatSettings(_Section):
    rate_limit_per_second: int = Field(default=10, ge=1)


class CatalogueSettings(_Section):
    path: Path | None = None


class ExecutionSettings(_Section):
    timeout_seconds: float = Field(default=30, gt=0)
    max_response_bytes: int = Field(default=10_485_760, ge=1)
    max_stored_result_bytes: int = Field(default=1_048_576, ge=1)
    allowed_scopes: Annotated[list[Scope], BeforeValidator(_comma_list)] = Field(
        default_factory=lambda: list[Scope](["lan", "vpn", "public"])
    )


class AuditSettings(_Section):
    retention_days: int = Field(default=0, ge=0)


class MetricsSettings(_Section):
    public: bool = False


class LogSettings(_Section):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["json", "text", "auto"] = "json"


class PairingSettings(_Section):
    jwt_secret: str | None = None
    session_ttl_seconds: int = 86_400
    challenge_ttl_seconds: int = 300
    require_proof: bool = True


class MarketSettings(_Section):
    quote_ttl_seconds: int = 600


class PaymentsSettings(_Section):
    evm_rpc_url: str | None = None


class Settings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    data_dir: Path | None = None
    server: ServerSettings = Field(default_factory=ServerSettings)
    database: DatabaseSettings = Field(default_factory=DatabaseSettings)
    auth: AuthSettings = Field(default_factory=AuthSettings)
    security: SecuritySettings = Field(default_factory=SecuritySettings)
    identity: IdentitySettings = Field(default_factory=IdentitySettings)
    agents: AgentsSettings = Field(default_factory=AgentsSettings)
    lease: LeaseSettings = Field(default_factory=LeaseSettings)
    heartbeat: HeartbeatSettings = Field(default_factory=HeartbeatSettings)
    catalogue: CatalogueSettings = Field(default_factory=CatalogueSettings)
    execution: ExecutionSettings = Field(default_factory=ExecutionSettings)
    audit: AuditSettings = Field(default_factory=AuditSettings)
    metrics: MetricsSettings = Field(default_factory=MetricsSettings)
    log: LogSettings = Field(default_factory=LogSettings)
    pairing: PairingSettings = Field(default_factory=PairingSettings)
    market: MarketSettings = Field(default_factory=MarketSettings)
    payments: PaymentsSettings = Field(default_factory=PaymentsSettings)

    @model_validator(mode="after")
    def _cross_checks(self) -> Settings:
        if not self.auth.required and not is_loopback_host(self.server.host):
            raise ValueError(
                "auth.required = false is accepted only with a loopback server.host "
                "(127.0.0.0/8, ::1 or localhost)"
            )
        if self.database_url.startswith("postgresql") and not self.security.secret_key:
            raise ValueError("security.secret_key is required with PostgreSQL")
        if self.database_url.startswith("postgresql") and not self.pairing.jwt_secret:
            raise ValueError("pairing.jwt_secret is required with PostgreSQL")
        if not (self.database_url.startswith(("sqlite:///", "postgresql://", "postgres://"))):
            raise ValueError("database.url must be sqlite:///PATH or postgresql://...")
        return self

    @property
    def resolved_data_dir(self) -> Path:
        if self.data_dir is not None:
            return self.data_dir
        state = os.environ.get("STATE_DIRECTORY")
        if state:
            return Path(state.split(":")[0])
        return Path("mm-data")

    @property
    def database_url(self) -> str:
        return self.database.url or f"sqlite:///{self.resolved_data_dir / 'mm.sqlite3'}"

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite:///")


def is_loopback_host(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _env_overrides(environ: dict[str, str]) -> dict[str, Any]:
    """``MM_<SECTION>_<KEY>`` for every known setting; unknown ``MM_`` variables are ignored."""
    out: dict[str, Any] = {}
    for name, field in Settings.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            for key in annotation.model_fields:
                env = f"MM_{name}_{key}".upper()
                if env in environ:
                    out.setdefault(name, {})[key] = environ[env]
        else:
            env = f"MM_{name}".upper()
            if env in environ:
                out[name] = environ[env]
    return out


def _merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def load_settings(
    config_file: Path | None = None,
    overrides: dict[str, Any] | None = None,
    environ: dict[str, str] | None = None,
) -> Settings:
    """Build the settings from file, environment and flags; raise :class:`ConfigError` if invalid."""
    environ = dict(os.environ) if environ is None else environ
    if config_file is None and environ.get("MM_CONFIG"):
        config_file = Path(environ["MM_CONFIG"])
    data: dict[str, Any] = {}
    if config_file is not None:
        try:
            data = tomllib.loads(config_file.read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"{config_file}: {exc}") from None
    data = _merge(data, _env_overrides(environ))
    data = _merge(data, overrides or {})
    try:
        return Settings.model_validate(data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors(include_url=False):
            where = ".".join(str(p) for p in err["loc"]) or "settings"
            problems.append(f"{where}: {err['msg'].removeprefix('Value error, ')}")
        raise ConfigError("; ".join(problems)) from None
