"""The catalogue of skills and services (SPEC §9): a YAML file, validated once, read from memory.

The file uses the wire spelling. :func:`load_catalogue` parses it into pydantic models, applies the
defaults of §9.3, runs the cross-record checks and precomputes every wire view, so the read routes
and discovery never touch the file again. Every problem is reported, each naming its entry
(``services[2] 'qvac-local-inference': operations: ...``). :class:`CatalogueHolder` keeps the
catalogue in force and swaps it on ``SIGHUP`` only when the new file is valid.
"""

from __future__ import annotations

import asyncio
import bisect
import datetime as dt
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    model_validator,
)
from pydantic.alias_generators import to_camel

from controlplane.errors import NotFound
from controlplane.http import PageRequest
from controlplane.services.machine_gate import find_machine
from controlplane.services.policies import PolicyRecord, load_machine_policies
from controlplane.services.policy_rules import first_violation
from controlplane.settings import ConfigError
from controlplane.store.base import Store
from shared.endpoints import PROVIDER_KEY_RE
from shared.logs import get_logger
from shared.timeutil import parse_iso, to_iso
from shared.validation import Amount, error_path

log = get_logger("controlplane.catalogue")
M = TypeVar("M", bound=BaseModel)

DEFAULT_PATH = Path(__file__).resolve().parent.parent / "catalogue" / "default.yaml"

KEY_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,127}$")
SERVICE_TYPE_RE = re.compile(r"^[a-z0-9]+(\.[a-z0-9-]+)+$")
OPERATION_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")

ExecutionMode = Literal["native", "external-handoff"]
IntegrationStatus = Literal[
    "native",
    "credentials-required",
    "partner-required",
    "local-config-required",
    "setup-required",
    "docs-only",
]
SkillAuthType = Literal["none", "api-key", "bearer", "wallet", "local"]
AccessMode = Literal["public", "credentialed", "partner-approved", "whitelisted", "local"]
Distribution = Literal["peaq-native", "clawhub", "openapi", "mcp", "docs-only"]
Maturity = Literal["reference", "beta", "production"]
Kind = Literal["runtime", "reference"]
PaymentRailType = Literal[
    "not-required",
    "wallet",
    "x402",
    "xvv42",
    "vault-stripe",
    "wdk-usdt-transfer",
    "escrow",
    "offchain-record",
    "external",
    "onchain-escrow",
]


class CatalogueError(ConfigError):
    """The file is invalid; ``problems`` lists every problem, each naming its entry."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        super().__init__(f"catalogue {source} is invalid: " + "; ".join(problems))


# ---------------------------------------------------------------- field types


def _pattern(regex: re.Pattern[str]) -> Callable[[str], str]:
    def check(value: str) -> str:
        if not regex.match(value):
            raise ValueError(f"must match {regex.pattern}")
        return value

    return check


def _not_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("must contain a non-whitespace character")
    return value


def _timestamp(value: Any) -> Any:
    """YAML turns unquoted timestamps into datetimes; both forms become the wire's ISO text."""
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=dt.UTC)
        return to_iso(int(value.timestamp() * 1000))
    if isinstance(value, str):
        try:
            return to_iso(parse_iso(value))
        except ValueError:
            raise ValueError("must be an ISO-8601 timestamp with a zone offset") from None
    raise ValueError("must be an ISO-8601 timestamp with a zone offset")


def _json_value(value: Any, depth: int = 1) -> None:
    if depth > 32:
        raise ValueError("nesting deeper than 32 levels")
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise ValueError(f"key {key!r} is not a string")
            _json_value(item, depth + 1)
    elif isinstance(value, list):
        for item in value:
            _json_value(item, depth + 1)
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError("numbers must be finite")
    elif not (value is None or isinstance(value, str | int | bool)):
        raise ValueError(f"{type(value).__name__} values are not JSON (quote them)")


def _json_object(value: dict[str, Any]) -> dict[str, Any]:
    _json_value(value)
    return value


Text = Annotated[str, AfterValidator(_not_blank)]
SkillKey = Annotated[str, AfterValidator(_pattern(KEY_RE))]
ServiceId = Annotated[str, AfterValidator(_pattern(KEY_RE))]
ProviderKey = Annotated[str, AfterValidator(_pattern(PROVIDER_KEY_RE))]
ServiceType = Annotated[str, AfterValidator(_pattern(SERVICE_TYPE_RE))]
Operation = Annotated[str, AfterValidator(_pattern(OPERATION_RE))]
Timestamp = Annotated[str, BeforeValidator(_timestamp)]
JsonObject = Annotated[dict[str, Any], AfterValidator(_json_object)]


class _Model(BaseModel):
    """Wire spelling, strict types; ``null`` means absent (the default applies)."""

    model_config = ConfigDict(
        alias_generator=to_camel, extra="ignore", strict=True, frozen=True, populate_by_name=False
    )

    @model_validator(mode="before")
    @classmethod
    def _null_means_absent(cls, data: Any) -> Any:
        if isinstance(data, dict):
            return {k: v for k, v in data.items() if v is not None}
        return data


# ---------------------------------------------------------------- file models


class Handoff(_Model):
    label: Text
    url: Text
    notes: list[str] = Field(default_factory=list)


class ManifestInput(_Model):
    key: Text
    type: Text
    required: bool = False
    description: str = ""


class ManifestOutput(_Model):
    key: Text
    type: Text
    description: str = ""


class Manifest(_Model):
    summary: str | None = None
    inputs: list[ManifestInput] = Field(default_factory=list)
    outputs: list[ManifestOutput] = Field(default_factory=list)


class SkillEntry(_Model):
    key: SkillKey
    provider_key: ProviderKey
    label: Text
    description: Text
    direction: Literal["machine-offers", "machine-consumes"] = "machine-offers"
    scope: Literal["core-product", "bootstrap-reference", "ecosystem"] = "core-product"
    source: Literal["peaq", "partner", "clawhub", "external-marketplace", "operator"] = "operator"
    listed_by: str = "operator"
    last_verified_at: Timestamp | None = None
    kind: Kind = "runtime"
    service_types: list[ServiceType] = Field(default_factory=list)
    operations: list[Operation] = Field(default_factory=list)
    auth_type: SkillAuthType = "none"
    auth_state: Literal["unconfigured", "configured", "expired", "invalid", "restricted"] | None = (
        None
    )
    access_mode: AccessMode = "local"
    distribution: Distribution = "openapi"
    maturity: Maturity = "beta"
    execution_mode: ExecutionMode = "native"
    integration_status: IntegrationStatus = "native"
    required_env: list[str] = Field(default_factory=list)
    requires_human_enablement: bool = False
    reference_url: str | None = None
    artifact_url: str | None = None
    handoff: Handoff | None = None
    manifest: Manifest | None = None


class FieldSpec(_Model):
    key: Text
    type: Text
    description: str | None = None


class ProviderRequest(_Model):
    method: Literal["GET", "POST", "PUT", "PATCH", "DELETE"]
    path: Annotated[str, AfterValidator(_pattern(re.compile(r"^/")))]


class OperationContract(_Model):
    operation: Operation
    input_fields: list[FieldSpec] = Field(default_factory=list)
    output_fields: list[FieldSpec] = Field(default_factory=list)
    example_input: JsonObject = Field(default_factory=dict)
    provider_request: ProviderRequest | None = None
    summary: str | None = None
    notes: list[str] = Field(default_factory=list)


class Pricing(_Model):
    mode: Literal["provider-defined", "fixed", "quote-required"] = "provider-defined"
    amount: Amount | None = None
    currency: str | None = None
    rate: str | None = None
    notes: list[str] = Field(default_factory=list)


class Payment(_Model):
    default_rail: PaymentRailType = "not-required"
    supported_rails: list[PaymentRailType] = Field(
        default_factory=lambda: list[PaymentRailType](["not-required"])
    )
    required: bool = False
    notes: list[str] = Field(default_factory=list)
    provider: str | None = None
    chain: str | None = None
    token: str | None = None
    token_address: str | None = None
    token_mint: str | None = None
    wallet_address: str | None = None
    external_url: str | None = None
    payer_address: str | None = None
    payee_address: str | None = None


class ServiceEntry(_Model):
    id: ServiceId
    skill_key: SkillKey
    provider_key: ProviderKey
    service_type: ServiceType
    name: Text
    description: Text
    operations: Annotated[list[Operation], Field(min_length=1)]
    provider_id: str | None = None
    provider_label: str | None = None
    auth_type: SkillAuthType | None = None
    access_mode: AccessMode | None = None
    execution_mode: ExecutionMode | None = None
    integration_status: IntegrationStatus | None = None
    distribution: Distribution | None = None
    maturity: Maturity | None = None
    kind: Kind | None = None
    capabilities: list[str] = Field(default_factory=list)
    region: Text = "local"
    freshness_seconds: Annotated[int, Field(ge=0)] = 300
    requires_human_enablement: bool = False
    metadata: JsonObject = Field(default_factory=dict)
    updated_at: Timestamp | None = None
    reference_url: str | None = None
    artifact_url: str | None = None
    handoff: Handoff | None = None
    operation_contracts: list[OperationContract] = Field(default_factory=list)
    pricing: Pricing = Field(default_factory=Pricing)
    payment: Payment = Field(default_factory=Payment)


# ---------------------------------------------------------------- resolved records


@dataclass(frozen=True)
class Skill:
    key: str
    provider_key: str
    view: dict[str, Any]  # SkillSummary
    manifest: dict[str, Any]  # SkillManifest


@dataclass(frozen=True)
class Service:
    """What discovery, execution and policy checks read, plus the precomputed ``MarketService``."""

    id: str
    skill_key: str
    provider_key: str
    service_type: str
    operations: tuple[str, ...]
    capabilities: tuple[str, ...]
    region: str
    execution_mode: str
    integration_status: str
    maturity: str
    handoff: dict[str, Any] | None
    provider_requests: dict[str, dict[str, str] | None]  # operation → providerRequest
    view: dict[str, Any]

    @property
    def native(self) -> bool:
        return self.execution_mode == "native"


@dataclass(frozen=True)
class Catalogue:
    source: str
    skills: dict[str, Skill]  # ascending by key
    services: dict[str, Service]  # ascending by id


def _number(value: Decimal | None) -> int | float | None:
    if value is None:
        return None
    return int(value) if value == value.to_integral_value() else float(value)


def _handoff_view(handoff: Handoff | None) -> dict[str, Any] | None:
    if handoff is None:
        return None
    return {"label": handoff.label, "url": handoff.url, "notes": list(handoff.notes)}


def _skill_record(entry: SkillEntry) -> Skill:
    auth_state = entry.auth_state or ("configured" if entry.auth_type == "none" else "unconfigured")
    view = {
        "key": entry.key,
        "providerKey": entry.provider_key,
        "label": entry.label,
        "description": entry.description,
        "direction": entry.direction,
        "scope": entry.scope,
        "source": entry.source,
        "listedBy": entry.listed_by,
        "lastVerifiedAt": entry.last_verified_at,
        "kind": entry.kind,
        "serviceTypes": list(dict.fromkeys(entry.service_types)),
        "operations": list(dict.fromkeys(entry.operations)),
        "authType": entry.auth_type,
        "authState": auth_state,
        "accessMode": entry.access_mode,
        "distribution": entry.distribution,
        "maturity": entry.maturity,
        "executionMode": entry.execution_mode,
        "integrationStatus": entry.integration_status,
        "requiredEnv": list(entry.required_env),
        "requiresHumanEnablement": entry.requires_human_enablement,
        "referenceUrl": entry.reference_url,
        "artifactUrl": entry.artifact_url,
        "handoff": _handoff_view(entry.handoff),
    }
    manifest = entry.manifest or Manifest()
    manifest_view = {
        "key": entry.key,
        "providerKey": entry.provider_key,
        "label": entry.label,
        "summary": manifest.summary if manifest.summary is not None else entry.description,
        "inputs": [
            {"key": i.key, "type": i.type, "required": i.required, "description": i.description}
            for i in manifest.inputs
        ],
        "outputs": [
            {"key": o.key, "type": o.type, "description": o.description} for o in manifest.outputs
        ],
    }
    return Skill(entry.key, entry.provider_key, view, manifest_view)


def _fields(specs: list[FieldSpec]) -> list[dict[str, Any]]:
    return [{"key": f.key, "type": f.type, "description": f.description} for f in specs]


def _contract_view(contract: OperationContract) -> dict[str, Any]:
    request = contract.provider_request
    return {
        "operation": contract.operation,
        "inputFields": _fields(contract.input_fields),
        "outputFields": _fields(contract.output_fields),
        "exampleInput": contract.example_input,
        "providerRequest": None
        if request is None
        else {"method": request.method, "path": request.path},
        "summary": contract.summary,
        "notes": list(contract.notes),
    }


def _service_record(entry: ServiceEntry, skill: SkillEntry, mtime_iso: str) -> Service:
    execution_mode = entry.execution_mode or skill.execution_mode
    integration_status = entry.integration_status or skill.integration_status
    maturity = entry.maturity or skill.maturity
    pricing, payment = entry.pricing, entry.payment
    view: dict[str, Any] = {
        "id": entry.id,
        "skillKey": entry.skill_key,
        "providerKey": entry.provider_key,
        "providerId": entry.provider_id if entry.provider_id is not None else entry.provider_key,
        "providerLabel": entry.provider_label if entry.provider_label is not None else skill.label,
        "serviceType": entry.service_type,
        "name": entry.name,
        "description": entry.description,
        "operations": list(entry.operations),
        "authType": entry.auth_type or skill.auth_type,
        "accessMode": entry.access_mode or skill.access_mode,
        "executionMode": execution_mode,
        "integrationStatus": integration_status,
        "distribution": entry.distribution or skill.distribution,
        "maturity": maturity,
        "kind": entry.kind or skill.kind,
        "capabilities": list(dict.fromkeys(entry.capabilities)),
        "region": entry.region,
        "freshnessSeconds": entry.freshness_seconds,
        "requiresHumanEnablement": entry.requires_human_enablement,
        "metadata": entry.metadata,
        "updatedAt": entry.updated_at or mtime_iso,
        "referenceUrl": entry.reference_url,
        "artifactUrl": entry.artifact_url,
        "handoff": _handoff_view(entry.handoff),
        "operationContracts": [_contract_view(c) for c in entry.operation_contracts],
        "pricing": {
            "mode": pricing.mode,
            "amount": _number(pricing.amount),
            "currency": pricing.currency,
            "rate": pricing.rate,
            "notes": list(pricing.notes),
        },
        "payment": {
            "defaultRail": payment.default_rail,
            "supportedRails": list(dict.fromkeys(payment.supported_rails)),
            "required": payment.required,
            "notes": list(payment.notes),
            "provider": payment.provider,
            "chain": payment.chain,
            "token": payment.token,
            "tokenAddress": payment.token_address,
            "tokenMint": payment.token_mint,
            "walletAddress": payment.wallet_address,
            "externalUrl": payment.external_url,
            "payerAddress": payment.payer_address,
            "payeeAddress": payment.payee_address,
        },
    }
    requests: dict[str, dict[str, str] | None] = {}
    for contract in entry.operation_contracts:
        pr = contract.provider_request
        requests[contract.operation] = (
            None if pr is None else {"method": pr.method, "path": pr.path}
        )
    return Service(
        id=entry.id,
        skill_key=entry.skill_key,
        provider_key=entry.provider_key,
        service_type=entry.service_type,
        operations=tuple(entry.operations),
        capabilities=tuple(view["capabilities"]),
        region=entry.region,
        execution_mode=execution_mode,
        integration_status=integration_status,
        maturity=maturity,
        handoff=view["handoff"],
        provider_requests=requests,
        view=view,
    )


# ---------------------------------------------------------------- validation


def _entry_label(section: str, index: int, record: Any) -> str:
    """``skills[0] 'qvac.inference'``: the position, and the key or id when there is one."""
    label = f"{section}[{index}]"
    ident = record.get("key" if section == "skills" else "id") if isinstance(record, dict) else None
    return f"{label} {ident!r}" if isinstance(ident, str) else label


def _join(entry: str, where: str, message: str) -> str:
    return ": ".join(part for part in (entry, where, message) if part)


def _model_problems(exc: ValidationError, entry: str) -> list[str]:
    problems = []
    for err in exc.errors(include_url=False):
        loc = [
            p
            for p in err["loc"]
            if not (isinstance(p, str) and ("[" in p or p.startswith("function")))
        ]
        message = str(err["msg"]).removeprefix("Value error, ")
        if err["type"] == "missing":
            message = "required key is missing"
        problems.append(_join(entry, error_path(loc), message))
    return problems


def _entries(
    raw: dict[str, Any], section: str, model: type[M], problems: list[str]
) -> list[tuple[str, M]]:
    """Validate each record on its own, so one bad record does not hide the others' problems."""
    records = raw.get(section)
    if records is None:
        return []
    if not isinstance(records, list):
        problems.append(f"{section}: must be a list")
        return []
    valid = []
    for index, record in enumerate(records):
        entry = _entry_label(section, index, record)
        try:
            valid.append((entry, model.model_validate(record)))
        except ValidationError as exc:
            problems.extend(_model_problems(exc, entry))
    return valid


def _service_problems(entry: str, service: ServiceEntry, skill: SkillEntry | None) -> list[str]:
    problems: list[str] = []
    if len(set(service.operations)) != len(service.operations):
        problems.append(f"{entry}: operations: operations must be unique")
    contracts: dict[str, OperationContract] = {}
    for index, contract in enumerate(service.operation_contracts):
        if contract.operation in contracts:
            problems.append(
                f"{entry}: operationContracts[{index}]: a second contract for operation"
                f" {contract.operation!r}"
            )
        contracts.setdefault(contract.operation, contract)
    mode = service.execution_mode or (skill.execution_mode if skill else "native")
    if mode == "native":
        for operation in dict.fromkeys(service.operations):
            found = contracts.get(operation)
            if found is None or found.provider_request is None:
                problems.append(
                    f"{entry}: operationContracts: a native service needs a contract with a"
                    f" providerRequest for operation {operation!r}"
                )
    elif service.handoff is None:
        problems.append(f"{entry}: handoff: an external-handoff service needs a handoff")
    if service.payment.default_rail not in service.payment.supported_rails:
        problems.append(f"{entry}: payment.defaultRail: must be one of payment.supportedRails")
    if service.pricing.mode == "fixed" and (
        service.pricing.amount is None or service.pricing.currency is None
    ):
        problems.append(f"{entry}: pricing: fixed pricing needs an amount and a currency")
    return problems


def parse_catalogue(text: str, *, source: str, mtime_ms: int) -> Catalogue:
    """Validate catalogue YAML text; raise :class:`CatalogueError` listing every problem."""
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise CatalogueError(source, [f"not valid YAML: {' '.join(str(exc).split())}"]) from None
    if not isinstance(raw, dict):
        raise CatalogueError(source, ["the top level must be a mapping with version: 1"])
    problems: list[str] = []
    if "version" not in raw:
        problems.append("version: required key is missing")
    elif raw["version"] != 1 or isinstance(raw["version"], bool):
        problems.append("version: must be 1")
    skill_entries = _entries(raw, "skills", SkillEntry, problems)
    service_entries = _entries(raw, "services", ServiceEntry, problems)

    raw_skill_keys = {r.get("key") for r in raw.get("skills") or [] if isinstance(r, dict)}
    skills: dict[str, SkillEntry] = {}
    for entry, skill in skill_entries:
        if skill.key in skills:
            problems.append(f"{entry}: key: duplicate skill key")
        skills.setdefault(skill.key, skill)
    services: dict[str, ServiceEntry] = {}
    for entry, service in service_entries:
        if service.id in services:
            problems.append(f"{entry}: id: duplicate service id")
        services.setdefault(service.id, service)
        owner = skills.get(service.skill_key)
        if owner is None and service.skill_key not in raw_skill_keys:
            problems.append(f"{entry}: skillKey: no skill {service.skill_key!r} in the catalogue")
        problems += _service_problems(entry, service, owner)
    if problems:
        raise CatalogueError(source, problems)

    mtime_iso = to_iso(mtime_ms)
    return Catalogue(
        source=source,
        skills={k: _skill_record(skills[k]) for k in sorted(skills)},
        services={
            i: _service_record(services[i], skills[services[i].skill_key], mtime_iso)
            for i in sorted(services)
        },
    )


def load_catalogue(path: Path | None) -> Catalogue:
    """Read and validate the file (``None``: the shipped one). Blocking file I/O."""
    path = path or DEFAULT_PATH
    try:
        text = path.read_text(encoding="utf-8")
        mtime_ms = int(path.stat().st_mtime * 1000)
    except (OSError, UnicodeDecodeError) as exc:
        raise CatalogueError(str(path), [f"cannot read the file: {exc}"]) from None
    return parse_catalogue(text, source=str(path), mtime_ms=mtime_ms)


class CatalogueHolder:
    """The catalogue in force; :meth:`reload` swaps it only for a valid file."""

    def __init__(self, path: Path | None, catalogue: Catalogue) -> None:
        self.path = path
        self.current = catalogue
        self._reloading: asyncio.Task[bool] | None = None

    @classmethod
    def load(cls, path: Path | None) -> CatalogueHolder:
        catalogue = load_catalogue(path)
        log.info(
            "catalogue_loaded",
            source=catalogue.source,
            skills=len(catalogue.skills),
            services=len(catalogue.services),
        )
        return cls(path, catalogue)

    async def reload(self) -> bool:
        """Re-read the file off the event loop; keep the old catalogue (and log ERROR) if invalid."""
        loop = asyncio.get_running_loop()
        try:
            catalogue = await loop.run_in_executor(None, load_catalogue, self.path)
        except CatalogueError as exc:
            log.error("catalogue_reload_failed", source=exc.source, problems=exc.problems)
            return False
        self.current = catalogue
        log.info(
            "catalogue_reloaded",
            source=catalogue.source,
            skills=len(catalogue.skills),
            services=len(catalogue.services),
        )
        return True

    def schedule_reload(self) -> None:
        """For a signal handler: start a reload unless one is already running."""
        if self._reloading is None or self._reloading.done():
            self._reloading = asyncio.get_running_loop().create_task(self.reload())


# ---------------------------------------------------------------- reads (SPEC §9.2)


def _after(keys: list[str], page: PageRequest) -> int:
    """Index of the first key after the cursor position (lists are sorted by key / id)."""
    if page.after is None:
        return 0
    return bisect.bisect_right(keys, str(page.after[0]))


def list_skills(
    catalogue: Catalogue,
    page: PageRequest,
    *,
    scope: str | None = None,
    direction: str | None = None,
    source: str | None = None,
) -> list[Skill]:
    """Up to ``limit + 1`` skills after the cursor, ascending by key."""
    keys = list(catalogue.skills)
    out: list[Skill] = []
    for key in keys[_after(keys, page) :]:
        skill = catalogue.skills[key]
        view = skill.view
        if (
            (scope is None or view["scope"] == scope)
            and (direction is None or view["direction"] == direction)
            and (source is None or view["source"] == source)
        ):
            out.append(skill)
            if len(out) > page.limit:
                break
    return out


def get_skill(catalogue: Catalogue, skill_key: str) -> Skill:
    skill = catalogue.skills.get(skill_key)
    if skill is None:
        raise NotFound(f"skill {skill_key} not found")
    return skill


@dataclass(frozen=True)
class ServiceFilter:
    machine_id: str | None = None
    service_type: str | None = None
    execution_mode: str | None = None
    provider_key: str | None = None
    skill_key: str | None = None
    operation: str | None = None

    def matches(self, service: Service) -> bool:
        return (
            (self.service_type is None or service.service_type == self.service_type)
            and (self.execution_mode is None or service.execution_mode == self.execution_mode)
            and (self.provider_key is None or service.provider_key == self.provider_key)
            and (self.skill_key is None or service.skill_key == self.skill_key)
            and (self.operation is None or self.operation in service.operations)
        )


async def _machine_policies(store: Store, machine_id: str) -> list[PolicyRecord]:
    """``404`` for an unknown machine (archived ones are found); its policies otherwise."""
    async with store.read() as conn:
        machine = await find_machine(conn, machine_id)
        return await load_machine_policies(conn, machine)


async def list_services(
    store: Store, catalogue: Catalogue, flt: ServiceFilter, page: PageRequest
) -> list[Service]:
    """Up to ``limit + 1`` services after the cursor, ascending by id; with ``machineId`` only
    those its policies allow (rules 1–7; endpoint liveness is not considered)."""
    policies = None
    if flt.machine_id is not None:
        policies = await _machine_policies(store, flt.machine_id)
    ids = list(catalogue.services)
    out: list[Service] = []
    for service_id in ids[_after(ids, page) :]:
        service = catalogue.services[service_id]
        if not flt.matches(service):
            continue
        if policies is not None and first_violation(policies, service) is not None:
            continue
        out.append(service)
        if len(out) > page.limit:
            break
    return out


async def get_service(
    store: Store, catalogue: Catalogue, service_id: str, *, machine_id: str | None
) -> Service:
    policies = None
    if machine_id is not None:
        policies = await _machine_policies(store, machine_id)
    service = catalogue.services.get(service_id)
    if service is None or (policies is not None and first_violation(policies, service)):
        raise NotFound(f"service {service_id} not found")
    return service
