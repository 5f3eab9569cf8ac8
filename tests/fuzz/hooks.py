"""schemathesis hooks for the fuzz harness (loaded through ``SCHEMATHESIS_HOOKS``).

Two things a JSON Schema cannot say are handled here, narrowly:

* The heartbeat authenticates an agent of one machine, named in its body: positive heartbeat
  cases get the real ``machineId``/``agentId`` (the token comes from the auth config), so the
  fuzzer reaches the checks after authentication instead of stopping at ``404``.
* Some ``400 VALIDATION_ERROR`` answers depend on state, not on the request's shape (a cursor
  this server issued, a policy id that exists, a catalogue key, a node of this machine). Schema-
  valid data rejected for those reasons is no schema gap, so ``positive_data_acceptance`` drops
  exactly those failures: every reported field must be one of the operation's state-dependent
  fields below; any other ``400`` on schema-valid data still fails the run.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any

import schemathesis
from schemathesis import Case, HookContext, Response
from schemathesis.core.failures import Failure

_INDEX = re.compile(r"\[\d+\]")

# operationId → wire fields whose validity depends on stored state or configuration, or on a
# rule about a whole value that JSON Schema cannot state (serialised size, nesting depth, two
# fields compared). Sections of the SPEC in the comments.
STATE_DEPENDENT: dict[str, frozenset[str]] = {
    "createChallenge": frozenset({"identityRef"}),  # controllers must be known (§3.2)
    "createMachine": frozenset({"policyIds"}),  # every id must name a policy (§3.3)
    "updateMachine": frozenset({"policyIds", "identityProof"}),  # ... and a stored identityRef
    "createTask": frozenset({"skillKey", "serviceId", "input"}),  # catalogue keys; depth ≤ 32
    "resolveTask": frozenset({"serviceId"}),  # one of the task's candidates (§11.5)
    "createNode": frozenset({"data"}),  # ≤ 16 KiB serialised, depth ≤ 32 (§8.1)
    "updateNode": frozenset({"data"}),
    "createEdge": frozenset({"fromNodeId", "toNodeId", "data"}),  # nodes of this machine
    "updateEdge": frozenset({"data"}),
    "heartbeat": frozenset({""}),  # unique providerKeys, leaseSeconds = leaseTtlSeconds (§6.1)
}
# Every list: a cursor is only valid when this server issued it for this route (§1.5).
PAGED = frozenset({"cursor"})
# A proof names a challenge this server issued (§3.2): its codes depend on state too.
PROOF_CODES = frozenset({"MACHINE_IDENTITY_PROOF_INVALID", "MACHINE_IDENTITY_PROOF_EXPIRED"})
PROOF_OPERATIONS = frozenset({"createMachine", "updateMachine"})


def _operation_id(case: Case) -> str:
    definition = case.operation.definition.raw
    return str(definition.get("operationId", "")) if isinstance(definition, dict) else ""


@schemathesis.hook
def map_case(context: HookContext, case: Case) -> Case:
    meta = case.meta
    if (
        _operation_id(case) == "heartbeat"
        and meta is not None
        and meta.generation.mode.is_positive
        and isinstance(case.body, dict)
    ):
        case.body["machineId"] = os.environ["FUZZ_MACHINE_ID"]
        case.body["agentId"] = os.environ["FUZZ_AGENT_ID"]
        case.body.pop("agentToken", None)  # the header carrier from the auth config is the one
    return case


def _error(response: Response) -> dict[str, Any] | None:
    try:
        body: Any = json.loads(response.content or b"")
    except ValueError:
        return None
    error = body.get("error") if isinstance(body, dict) else None
    return error if isinstance(error, dict) else None


def _fields(error: dict[str, Any]) -> set[str] | None:
    if error.get("code") != "VALIDATION_ERROR":
        return None
    details = error.get("details")
    if not isinstance(details, list):
        return None
    return {_INDEX.sub("", str(d.get("field", ""))) for d in details if isinstance(d, dict)}


@schemathesis.hook
def filter_failure(context: HookContext, failure: Failure, case: Case, response: Response) -> bool:
    """Keep every failure except a positive case refused only on state-dependent fields."""
    if type(failure).__name__ != "RejectedPositiveData" or response.status_code != 400:
        return True
    error = _error(response)
    if error is None:
        return True
    operation = _operation_id(case)
    if error.get("code") in PROOF_CODES and operation in PROOF_OPERATIONS:
        return False
    fields = _fields(error)
    if not fields:
        return True
    allowed = STATE_DEPENDENT.get(operation, frozenset()) | PAGED
    return not fields <= allowed
