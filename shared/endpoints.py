"""Runtime endpoint field rules shared by PUT, the heartbeat and the agent's config (SPEC §4.2)."""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import AfterValidator, BeforeValidator, Field
from pydantic.config import JsonDict

from shared.validation import WHITESPACE_CLASS

EndpointAuthType = Literal["none", "api-key", "bearer"]
EndpointNetworkScope = Literal["loopback", "lan", "vpn", "public"]
EndpointHealthStatus = Literal["active", "degraded", "unreachable"]

# Checked with ``fullmatch``: ``$`` in a plain ``match`` would also take a final newline.
PROVIDER_KEY_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
AUTH_TOKEN_RE = re.compile(r"^[\x21-\x7E]{1,4096}$")
_PROBE_PATH_RE = re.compile(r"^/\S{0,511}$")

# The same rules as JSON Schema patterns for the OpenAPI document. A key is lower-cased before
# it is checked, so upper case passes, and so does U+212A KELVIN SIGN, the one non-ASCII
# character whose lower case is ASCII ("k").
PROVIDER_KEY_PATTERN = "^[A-Za-z0-9\u212a][A-Za-z0-9\u212a._-]{0,63}$"
_PORT = r"(?:6553[0-5]|655[0-2][0-9]|65[0-4][0-9]{2}|6[0-4][0-9]{3}|[1-5][0-9]{4}|[0-9]{1,4})"
# http(s), a host name or IPv4 address, an optional port, anything after the origin (dropped).
# Bracketed IPv6 literals are accepted as well; the pattern leaves them out.
BASE_URL_PATTERN = (
    r"^[Hh][Tt][Tt][Pp][Ss]?://[A-Za-z0-9._~%!$&'()*+,;=-]+(?::" + _PORT + r")?(?:[/?#].*)?$"
)


# authType "none" cannot carry a non-empty authToken (SPEC §4.2), as a JSON Schema for the models
# that check it (``json_schema_extra``).
AUTH_CONSISTENCY_SCHEMA: JsonDict = {
    "anyOf": [
        {"properties": {"authType": {"not": {"const": "none"}}}},
        {"properties": {"authToken": {"enum": [None, ""]}}},
    ]
}


def normalize_provider_key(value: str) -> str:
    key = value.lower()
    if not PROVIDER_KEY_RE.fullmatch(key):
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
    if value and not AUTH_TOKEN_RE.fullmatch(value):
        raise ValueError("must be visible ASCII without spaces, at most 4096 characters")
    return value


def _probe_path(value: str) -> str:
    if not _PROBE_PATH_RE.fullmatch(value):
        raise ValueError("must start with '/', contain no whitespace and be at most 512 characters")
    return value


def _lower_first(value: object) -> object:
    return value.lower() if isinstance(value, str) else value


ProviderKey = Annotated[
    str,
    BeforeValidator(_lower_first),
    AfterValidator(normalize_provider_key),
    Field(json_schema_extra={"pattern": PROVIDER_KEY_PATTERN}),
]
BaseUrl = Annotated[
    str,
    AfterValidator(normalize_base_url),
    Field(max_length=2048, json_schema_extra={"pattern": BASE_URL_PATTERN}),
]
AuthToken = Annotated[
    str,
    AfterValidator(_auth_token),
    Field(json_schema_extra={"pattern": "^(?:[!-~]{1,4096})?$"}),  # "" clears the token
]
ProbePath = Annotated[
    str,
    AfterValidator(_probe_path),
    Field(json_schema_extra={"pattern": f"^/[^{WHITESPACE_CLASS}]{{0,511}}$"}),
]
EndpointLabel = Annotated[str, Field(min_length=1, max_length=200)]
ModelAlias = Annotated[str, Field(min_length=1, max_length=200)]
HealthError = Annotated[str, Field(max_length=500)]
