"""Machine identity (SPEC §3.2): references, controller addresses, challenges and EIP-191 proofs."""

from __future__ import annotations

import asyncio
import re
import secrets
from typing import TYPE_CHECKING, Annotated, Literal

from eth_account import Account
from eth_account.messages import encode_defunct
from eth_utils.address import to_checksum_address
from pydantic import AfterValidator, Field

from controlplane.errors import (
    MachineIdentityProofExpired,
    MachineIdentityProofInvalid,
    PeaqosIdentityUnavailable,
    ValidationFailed,
)
from controlplane.store import audit, challenges
from shared.ids import new_id
from shared.timeutil import now_ms, to_iso
from shared.validation import NonBlank, RequestModel, WireModel

if TYPE_CHECKING:
    from controlplane.services.identity_registry import ControllerResolver, Controllers
    from controlplane.settings import Settings
    from controlplane.store.base import Connection, Store

ResolutionSource = Literal["peaqos-mcr", "self-controlled-did", "operator-config"]

_DID_HEX = re.compile(r"^did:peaq:0x([0-9a-fA-F]{40})$")
_DID_DEC = re.compile(r"^did:peaq:(0|[1-9][0-9]*)$")
_PEAQOS = re.compile(r"^peaqos:machine:(0|[1-9][0-9]*)$")
_ADDRESS = re.compile(r"^0x[0-9a-fA-F]{40}$")
_MAX_ID = 2**256 - 1


def normalize_identity_ref(value: str) -> str:
    """The stored form of an identity reference; ``ValueError`` for any other form."""
    if match := _DID_HEX.fullmatch(value):
        return "did:peaq:0x" + match.group(1).lower()
    for pattern in (_DID_DEC, _PEAQOS):
        if match := pattern.fullmatch(value):
            number = match.group(1)
            if len(number) > 78 or int(number) > _MAX_ID:
                raise ValueError("identity number exceeds 2^256 − 1")
            return f"did:peaq:{number}"
    raise ValueError("must be did:peaq:0x<40 hex>, did:peaq:<decimal> or peaqos:machine:<decimal>")


def embedded_address(identity_ref: str) -> str | None:
    """The EIP-55 address a self-controlled ``did:peaq:0x…`` names, if it names one."""
    match = _DID_HEX.fullmatch(identity_ref)
    return to_checksum_address("0x" + match.group(1)) if match else None


# The accepted forms as one JSON Schema pattern for the OpenAPI document. Numbers go up to
# 2^256 − 1, which has 78 digits; the pattern admits the 77 digits every such number fits in.
IDENTITY_REF_PATTERN = (
    "^(?:did:peaq:0x[0-9a-fA-F]{40}|(?:did:peaq|peaqos:machine):(?:0|[1-9][0-9]{0,76}))$"
)

# An identity reference in any accepted form, validated and normalised to the stored form.
IdentityRef = Annotated[
    str,
    Field(max_length=1024, json_schema_extra={"pattern": IDENTITY_REF_PATTERN}),
    AfterValidator(normalize_identity_ref),
]


def parse_address(value: str) -> str:
    if not _ADDRESS.fullmatch(value):
        raise ValueError(f"{value!r} is not 0x followed by 40 hex digits")
    return str(to_checksum_address(value))


# ---------------------------------------------------------------- challenges and proofs

_SIGNATURE = re.compile(r"^0x[0-9a-fA-F]{130}$")


class MachineIdentityProofInput(RequestModel):
    challenge_id: NonBlank
    signature: str  # any string: a malformed one fails verification, not validation (SPEC §3.1)


class CreateMachineIdentityChallengeRequest(RequestModel):
    identity_ref: IdentityRef


class MachineIdentityChallenge(WireModel):
    challenge_id: str
    identity_ref: str
    message: str
    expires_at: str
    verification_method: Literal["eip191"] = "eip191"
    controller_addresses: list[str]


class MachineIdentityProof(WireModel):
    method: Literal["eip191"] = "eip191"
    identity_ref: str
    verified_at: str
    signer_address: str
    challenge_id: str
    challenge_expires_at: str
    controller_addresses: list[str]
    resolution_source: ResolutionSource


class MachineIdentityAttestation(WireModel):
    method: Literal["operator"] = "operator"
    attested_by: str
    verified_at: str


def challenge_message(
    server_name: str,
    *,
    identity_ref: str,
    challenge_id: str,
    nonce: str,
    issued_at: int,
    expires_at: int,
) -> str:
    """The exact text a controller signs (SPEC §3.2): lines joined by ``\\n``, no trailing newline."""
    return "\n".join(
        [
            f"{server_name} identity challenge",
            f"identityRef: {identity_ref}",
            f"challengeId: {challenge_id}",
            f"nonce: {nonce}",
            f"issuedAt: {to_iso(issued_at)}",
            f"expiresAt: {to_iso(expires_at)}",
        ]
    )


def recover_signer(message: str, signature: str) -> str | None:
    """The EIP-55 address that ``personal_sign``-ed ``message``, or ``None`` if not recoverable."""
    if not _SIGNATURE.fullmatch(signature):
        return None
    try:
        signer = Account.recover_message(encode_defunct(text=message), signature=signature)
    except Exception:  # eth-account raises several types for out-of-range r/s/v values
        return None
    return str(signer)


async def create_challenge(
    store: Store,
    resolver: ControllerResolver,
    settings: Settings,
    identity_ref: str,
    *,
    actor: str,
) -> MachineIdentityChallenge:
    """Resolve the controllers (before any transaction), then store a single-use challenge."""
    controllers = await resolver.resolve(identity_ref)
    if controllers.registry_failed:
        raise PeaqosIdentityUnavailable()
    addresses = controllers.addresses
    if not addresses:
        raise ValidationFailed.field(
            "identityRef", "no controller addresses are known for this identity"
        )
    now = now_ms()
    expires_at = now + settings.identity.challenge_ttl_seconds * 1000
    challenge_id = new_id("mic")
    message = challenge_message(
        settings.server.name,
        identity_ref=identity_ref,
        challenge_id=challenge_id,
        nonce=secrets.token_hex(16),
        issued_at=now,
        expires_at=expires_at,
    )
    async with store.write() as conn:
        await challenges.insert(
            conn,
            challenge_id=challenge_id,
            identity_ref=identity_ref,
            message=message,
            controller_addresses=addresses,
            created_at=now,
            expires_at=expires_at,
        )
        await audit.insert_event(
            conn,
            actor=actor,
            type="machine-identity.challenge-created",
            resource_type="machine_identity_challenge",
            resource_id=challenge_id,
            machine_id=None,
            payload={"identityRef": identity_ref, "expiresAt": to_iso(expires_at)},
            at=now,
        )
    return MachineIdentityChallenge(
        challenge_id=challenge_id,
        identity_ref=identity_ref,
        message=message,
        expires_at=to_iso(expires_at),
        controller_addresses=addresses,
    )


async def verify_proof(
    conn: Connection,
    proof: MachineIdentityProofInput,
    identity_ref: str,
    controllers: Controllers,
    now: int,
) -> MachineIdentityProof:
    """Proof verification steps 1–4 of SPEC §3.2, inside the transaction of the machine write.

    The challenge row is locked and consumed here; if the machine write fails afterwards the whole
    transaction rolls back and the challenge stays usable.
    """
    challenge = await challenges.get_locked(conn, proof.challenge_id)
    if (
        challenge is None
        or challenge["consumed_at"] is not None
        or challenge["identity_ref"] != identity_ref
    ):
        raise MachineIdentityProofInvalid(
            "challenge is unknown, already used, or issued for another identityRef"
        )
    if now >= int(challenge["expires_at"]):
        raise MachineIdentityProofExpired()
    signer = await asyncio.to_thread(recover_signer, challenge["message"], proof.signature)
    if signer is None:
        raise MachineIdentityProofInvalid("signature is not a 65-byte EIP-191 signature")
    source = controllers.source_of(signer)
    if source is None:
        if controllers.registry_failed:
            raise PeaqosIdentityUnavailable()
        raise MachineIdentityProofInvalid("the signer is not a controller of this identity")
    if not await challenges.consume(conn, proof.challenge_id, now):
        raise MachineIdentityProofInvalid("challenge already used")
    return MachineIdentityProof(
        identity_ref=identity_ref,
        verified_at=to_iso(now),
        signer_address=signer,
        challenge_id=proof.challenge_id,
        challenge_expires_at=to_iso(int(challenge["expires_at"])),
        controller_addresses=controllers.addresses,
        resolution_source=source,
    )
