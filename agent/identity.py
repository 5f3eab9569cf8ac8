"""The machine's own identity key (SPEC §17.7 ``identity new`` / ``identity sign``).

The key lives on the machine and never leaves it: ``mmctl machines register`` sends the challenge
message here to be signed and only the signature goes back. ``eth_account`` is imported lazily, so
the daemon does not pay its memory for a command it never runs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from agent.token import check_secret_file


class IdentityError(Exception):
    """A key file that cannot be created or used (exit 1)."""


@dataclass(frozen=True, slots=True)
class Identity:
    address: str  # EIP-55 checksummed

    @property
    def did(self) -> str:
        return f"did:peaq:{self.address.lower()}"


def new_key(out: Path) -> Identity:
    """Create a secp256k1 key file (``0x`` + 64 hex, mode 0600); never overwrite an existing one."""
    from eth_account import Account

    account = Account.create()
    try:
        fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    except FileExistsError:
        raise IdentityError(f"{out}: already exists; refusing to overwrite a key") from None
    except OSError as exc:
        raise IdentityError(f"{out}: cannot create: {exc.strerror}") from None
    with os.fdopen(fd, "w") as handle:
        os.fchmod(handle.fileno(), 0o600)
        handle.write("0x" + bytes(account.key).hex() + "\n")
    return Identity(address=str(account.address))


def _load_key(key_file: Path) -> bytes:
    check_secret_file(key_file)  # a key readable by others is refused like a token (exit 78)
    text = key_file.read_text(encoding="ascii", errors="replace").strip()
    hex_text = text[2:] if text.lower().startswith("0x") else text
    try:
        key = bytes.fromhex(hex_text)
    except ValueError:
        raise IdentityError(f"{key_file}: not a hex private key") from None
    if len(key) != 32:
        raise IdentityError(f"{key_file}: a private key is 32 bytes (64 hex characters)")
    return key


def identity_of(key_file: Path) -> Identity:
    from eth_account import Account

    return Identity(address=str(Account.from_key(_load_key(key_file)).address))


def sign_message_file(key_file: Path, message_file: Path) -> str:
    """EIP-191 ``personal_sign`` of the file's exact bytes: ``0x`` + 130 hex characters."""
    from eth_account import Account
    from eth_account.messages import encode_defunct

    key = _load_key(key_file)
    try:
        message = message_file.read_bytes()
    except OSError as exc:
        raise IdentityError(f"{message_file}: cannot read: {exc.strerror}") from None
    signed = Account.sign_message(encode_defunct(primitive=message), private_key=key)
    return "0x" + bytes(signed.signature).hex()
