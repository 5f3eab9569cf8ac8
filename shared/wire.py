"""Wire models of the heartbeat (SPEC §6.1): what the agent sends and what the control plane answers."""

from __future__ import annotations

from typing import Any

from pydantic import ConfigDict, Field, model_validator

from shared.endpoints import (
    AUTH_CONSISTENCY_SCHEMA,
    AuthToken,
    BaseUrl,
    EndpointAuthType,
    EndpointHealthStatus,
    EndpointLabel,
    EndpointNetworkScope,
    HealthError,
    ModelAlias,
    ProbePath,
    ProviderKey,
)
from shared.validation import JsonInt, NonBlank, RequestModel, WireModel

_SNAKE_ALIASES = {
    "provider_key": "providerKey",
    "endpoint_base_url": "endpointBaseUrl",
    "auth_type": "authType",
    "auth_token": "authToken",
    "model_alias": "modelAlias",
    "network_scope": "networkScope",
    "probe_path": "probePath",
    "health_error": "healthError",
}

MAX_SEQUENCE = 2**53 - 1


class HeartbeatEndpointEntry(RequestModel):
    model_config = ConfigDict(json_schema_extra=AUTH_CONSISTENCY_SCHEMA)

    provider_key: ProviderKey
    endpoint_base_url: BaseUrl
    label: EndpointLabel | None = None
    auth_type: EndpointAuthType | None = None
    auth_token: AuthToken | None = Field(default=None, repr=False)
    model_alias: ModelAlias | None = None
    network_scope: EndpointNetworkScope | None = None
    probe_path: ProbePath | None = None
    status: EndpointHealthStatus = "active"
    health_error: HealthError | None = None

    @model_validator(mode="before")
    @classmethod
    def _accept_snake_case(cls, data: Any) -> Any:
        """Some clients send snake_case keys; either spelling is accepted, never two that differ."""
        if not isinstance(data, dict):
            return data
        merged = {k: v for k, v in data.items() if k not in _SNAKE_ALIASES}
        for snake, camel in _SNAKE_ALIASES.items():
            snake_value, camel_value = data.get(snake), data.get(camel)
            if snake_value is not None and camel_value is not None and snake_value != camel_value:
                raise ValueError(f"{snake} and {camel} are both sent with different values")
            value = camel_value if camel_value is not None else snake_value
            if value is not None:
                merged[camel] = value
            elif camel in data:
                merged.pop(camel, None)
        return merged

    @model_validator(mode="after")
    def _consistent_auth(self) -> HeartbeatEndpointEntry:
        if self.auth_type == "none" and self.auth_token:
            raise ValueError("authType 'none' cannot carry an authToken")
        return self


class HeartbeatRequest(RequestModel):
    machine_id: NonBlank
    agent_id: NonBlank
    agent_token: str | None = Field(default=None, repr=False)
    endpoints: list[HeartbeatEndpointEntry] = Field(max_length=64)
    lease_seconds: JsonInt | None = Field(default=None, ge=1)
    lease_ttl_seconds: JsonInt | None = Field(default=None, ge=1)
    sequence: JsonInt | None = Field(default=None, ge=0, le=MAX_SEQUENCE)

    @model_validator(mode="after")
    def _unique_and_consistent(self) -> HeartbeatRequest:
        keys = [entry.provider_key for entry in self.endpoints]
        duplicates = sorted({k for k in keys if keys.count(k) > 1})
        if duplicates:
            raise ValueError(f"providerKey repeated within one heartbeat: {', '.join(duplicates)}")
        if (
            self.lease_seconds is not None
            and self.lease_ttl_seconds is not None
            and self.lease_seconds != self.lease_ttl_seconds
        ):
            raise ValueError("leaseSeconds and leaseTtlSeconds differ")
        return self


class HeartbeatEndpointState(WireModel):
    provider_key: str
    endpoint_base_url: str
    status: EndpointHealthStatus
    lease_expires_at: str
    health_error: str | None
    has_auth_token: bool


class HeartbeatResult(WireModel):
    machine_id: str
    agent_id: str
    lease_ttl_seconds: int
    lease_seconds: int
    observed_at: str
    next_heartbeat_seconds: int
    applied: bool
    last_sequence: int | None
    allowed_provider_keys: list[str]
    endpoints: list[HeartbeatEndpointState]
