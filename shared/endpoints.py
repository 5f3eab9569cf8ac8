"""Runtime endpoint field rules shared by PUT, the heartbeat and the agent's config (SPEC §4.2)."""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import AfterValidator, BeforeValidator, Field

EndpointAuthType = Literal["none", "api-key", "bearer"]
EndpointNetworkScope = Literal["loopback", "lan", "vpn", "public"]
EndpointHealthStatus = Literal["active", "degraded", "unreachable"]

PROVIDER_KEY_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
AUTH_TOKEN_RE = re.compile(r"^[\x21-\x7E]{1,4096}$")
_PROBE_PATH_RE = re.compile(r"^/\S{0,511}$")


def normalize_provider_key(value: str) -> str:
    key = value.lower()
    if not PROVIDER_KEY_RE.match(key):
        raise ValueError("must match ^[a-z0-9][a-z0-9._-]{0,63}$ after lower-casing")
    return key


def normalize_base_url(value: str) -> str:
    """Reduce a runtime URL to ``scheme://host[:port]``; raise ``ValueError`` when it is not one."""
    if len(value) > 2048:
        raise ValueError("must be at most 2048 characters")
    try:
        parts = urlsplit(value.strip())
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"is not a valid URL: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise ValueError("scheme must be http or https")
    if "@" in parts.netloc:
        raise ValueError("must not contain user information")
    host = parts.hostname
    if not host:
        raise ValueError("must include a host")
    host = host.lower()
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        if not re.match(r"^[a-z0-9._~%!$&'()*+,;=-]+$", host):
            raise ValueError("host is not valid") from None
    else:
        if address.version == 6:
            host = f"[{address.compressed}]"
    if port is not None and not (
        (scheme == "http" and port == 80) or (scheme == "https" and port == 443)
    ):
        return f"{scheme}://{host}:{port}"
    return f"{scheme}://{host}"


def url_host(base_url: str) -> str:
    host = urlsplit(base_url).hostname
    return host or ""


def derive_network_scope(base_url: str) -> EndpointNetworkScope:
    host = url_host(base_url)
    if host == "localhost":
        return "loopback"
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return "public"
    if address.is_loopback:
        return "loopback"
    lan_nets = ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7")
    if any(address in ipaddress.ip_network(net) for net in lan_nets):
        return "lan"
    return "public"


def default_probe_path(provider_key: str) -> str:
    if provider_key == "ollama":
        return "/api/version"
    if provider_key in ("qvac", "vllm"):
        return "/v1/models"
    return "/health"


def default_label(provider_key: str) -> str:
    return f"{provider_key.upper()} runtime"


def _auth_token(value: str) -> str:
    if value and not AUTH_TOKEN_RE.match(value):
        raise ValueError("must be visible ASCII without spaces, at most 4096 characters")
    return value


def _probe_path(value: str) -> str:
    if not _PROBE_PATH_RE.match(value):
        raise ValueError("must start with '/', contain no whitespace and be at most 512 characters")
    return value


def _lower_first(value: object) -> object:
    return value.lower() if isinstance(value, str) else value


ProviderKey = Annotated[str, BeforeValidator(_lower_first), AfterValidator(normalize_provider_key)]
BaseUrl = Annotated[str, AfterValidator(normalize_base_url)]
AuthToken = Annotated[str, AfterValidator(_auth_token)]
ProbePath = Annotated[str, AfterValidator(_probe_path)]
EndpointLabel = Annotated[str, Field(min_length=1, max_length=200)]
ModelAlias = Annotated[str, Field(min_length=1, max_length=200)]
HealthError = Annotated[str, Field(max_length=500)]
