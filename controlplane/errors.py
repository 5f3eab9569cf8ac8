"""Domain errors that carry their HTTP status, and the one place the error envelope is built.

Services raise these; the error middleware (``controlplane.middleware``) turns every failure into
``{"error": {"code", "message", "details", "requestId"}}`` (SPEC §1.4, §1.6).
"""

from __future__ import annotations

from typing import Any

from shared.errors import STATUS_BY_CODE, ErrorCode


class ApiError(Exception):
    code: ErrorCode = ErrorCode.INTERNAL_ERROR
    default_message = "internal error"

    def __init__(
        self,
        message: str | None = None,
        *,
        details: Any = None,
        status: int | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.message = message or self.default_message
        super().__init__(self.message)
        self.details = details
        self.status = status if status is not None else STATUS_BY_CODE[self.code]
        self.headers = headers or {}


def _error(code: ErrorCode, message: str) -> type[ApiError]:
    return type(
        "".join(part.title() for part in code.value.split("_")),
        (ApiError,),
        {"code": code, "default_message": message},
    )


class ValidationFailed(ApiError):
    code = ErrorCode.VALIDATION_ERROR
    default_message = "request validation failed"

    @classmethod
    def field(cls, field: str, message: str) -> ValidationFailed:
        return cls(details=[{"field": field, "message": message}])

    def __init__(self, message: str | None = None, *, details: Any = None, **kw: Any) -> None:
        if message is None and isinstance(details, list) and details:
            first = details[0]
            where = first.get("field") or "body"
            message = f"{where}: {first.get('message')}"
            if len(details) > 1:
                message += f" (and {len(details) - 1} more)"
        super().__init__(message, details=details, **kw)


NotFound = _error(ErrorCode.NOT_FOUND, "not found")
MethodNotAllowed = _error(ErrorCode.METHOD_NOT_ALLOWED, "method not allowed")
PayloadTooLarge = _error(ErrorCode.PAYLOAD_TOO_LARGE, "request body is too large")
AuthRequired = _error(ErrorCode.AUTH_REQUIRED, "an API key is required")
AuthInvalid = _error(ErrorCode.AUTH_INVALID, "the API key is not valid")
AgentAuthRequired = _error(ErrorCode.AGENT_AUTH_REQUIRED, "an agent token is required")
AgentAuthInvalid = _error(ErrorCode.AGENT_AUTH_INVALID, "the agent token is not valid")
AgentAuthExpired = _error(
    ErrorCode.AGENT_AUTH_EXPIRED, "the enrolment token expired before its first heartbeat"
)
AgentPairingInactive = _error(ErrorCode.AGENT_PAIRING_INACTIVE, "the machine agent is revoked")
AgentPolicyDenied = _error(
    ErrorCode.AGENT_POLICY_DENIED, "provider keys not allowed for this agent"
)
PolicyDenied = _error(ErrorCode.POLICY_DENIED, "denied by policy")
Conflict = _error(ErrorCode.CONFLICT, "conflict")
EndpointConflict = _error(ErrorCode.ENDPOINT_CONFLICT, "runtime endpoint owned by someone else")
MachineNotActive = _error(ErrorCode.MACHINE_NOT_ACTIVE, "machine is not active")
MachineNotActivated = _error(ErrorCode.MACHINE_NOT_ACTIVATED, "machine identity is not verified")
MachineIdentityExists = _error(
    ErrorCode.MACHINE_IDENTITY_EXISTS, "identityRef is used by another machine"
)
MachineIdentityImmutable = _error(
    ErrorCode.MACHINE_IDENTITY_IMMUTABLE, "identityRef cannot be changed once set"
)
MachineIdentityProofRequired = _error(
    ErrorCode.MACHINE_IDENTITY_PROOF_REQUIRED, "identityProof is required for identityRef"
)
MachineIdentityProofInvalid = _error(
    ErrorCode.MACHINE_IDENTITY_PROOF_INVALID, "identity proof is not valid"
)
MachineIdentityProofExpired = _error(
    ErrorCode.MACHINE_IDENTITY_PROOF_EXPIRED, "identity challenge has expired"
)
PeaqosIdentityUnavailable = _error(
    ErrorCode.PEAQOS_IDENTITY_UNAVAILABLE, "identity registry is unavailable"
)
RouteRequired = _error(ErrorCode.ROUTE_REQUIRED, "task has no route; resolve it first")
TaskStateConflict = _error(ErrorCode.TASK_STATE_CONFLICT, "action not allowed in this task state")
ExecutionUnsupported = _error(ErrorCode.EXECUTION_UNSUPPORTED, "the routed service cannot run")
SkillRuntimeUnreachable = _error(ErrorCode.SKILL_RUNTIME_UNREACHABLE, "runtime unreachable")
SkillRuntimeUnavailable = _error(ErrorCode.SKILL_RUNTIME_UNAVAILABLE, "runtime unavailable")
SkillRuntimeTimeout = _error(ErrorCode.SKILL_RUNTIME_TIMEOUT, "runtime timed out")
InternalError = _error(ErrorCode.INTERNAL_ERROR, "internal error")


class RateLimited(ApiError):
    code = ErrorCode.RATE_LIMITED
    default_message = "too many requests"

    def __init__(self, retry_after: int = 1, message: str | None = None) -> None:
        super().__init__(message, headers={"Retry-After": str(max(1, retry_after))})


class SkillRuntimeError(ApiError):
    """The one error whose status is the runtime's own (SPEC §11.6)."""

    code = ErrorCode.SKILL_RUNTIME_ERROR
    default_message = "runtime returned an error"

    def __init__(self, status: int, message: str | None = None, **kw: Any) -> None:
        super().__init__(message, status=status, **kw)


def envelope(code: str, message: str, details: Any, request_id: str) -> dict[str, Any]:
    body: dict[str, Any] = {"code": code, "message": message, "requestId": request_id}
    if details is not None:
        body["details"] = details
    return {"error": body}
