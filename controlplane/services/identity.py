"""Machine identity references and controller addresses (SPEC §3.2)."""

from __future__ import annotations

import re

from eth_utils.address import to_checksum_address

_DID_HEX = re.compile(r"^did:peaq:0x([0-9a-fA-F]{40})$")
_DID_DEC = re.compile(r"^did:peaq:(0|[1-9][0-9]*)$")
_PEAQOS = re.compile(r"^peaqos:machine:(0|[1-9][0-9]*)$")
_ADDRESS = re.compile(r"^0x[0-9a-fA-F]{40}$")
_MAX_ID = 2**256 - 1


def normalize_identity_ref(value: str) -> str:
    """The stored form of an identity reference; ``ValueError`` for any other form."""
    if match := _DID_HEX.match(value):
        return "did:peaq:0x" + match.group(1).lower()
    for pattern in (_DID_DEC, _PEAQOS):
        if match := pattern.match(value):
            number = match.group(1)
            if len(number) > 78 or int(number) > _MAX_ID:
                raise ValueError("identity number exceeds 2^256 − 1")
            return f"did:peaq:{number}"
    raise ValueError("must be did:peaq:0x<40 hex>, did:peaq:<decimal> or peaqos:machine:<decimal>")


def embedded_address(identity_ref: str) -> str | None:
    """The EIP-55 address a self-controlled ``did:peaq:0x…`` names, if it names one."""
    match = _DID_HEX.match(identity_ref)
    return to_checksum_address("0x" + match.group(1)) if match else None


def parse_address(value: str) -> str:
    if not _ADDRESS.match(value):
        raise ValueError(f"{value!r} is not 0x followed by 40 hex digits")
    return str(to_checksum_address(value))
