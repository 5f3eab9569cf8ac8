"""Secrets at rest: the Fernet keys that encrypt runtime endpoint tokens (SPEC §16)."""

from __future__ import annotations

from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from controlplane.services.auth import write_secret_file
from controlplane.settings import ConfigError, Settings
from shared.logs import get_logger

log = get_logger("controlplane.secrets")
SECRET_KEY_FILE = "secret-key"  # noqa: S105 - a file name, not a secret


class TokenCipher:
    """The first key encrypts; every listed key decrypts, so keys rotate by listing the new one first."""

    def __init__(self, keys: list[str]) -> None:
        try:
            self._fernet = MultiFernet([Fernet(k.encode()) for k in keys])
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"security.secret_key: not a list of Fernet keys ({exc})") from None

    def encrypt(self, token: str) -> str:
        return self._fernet.encrypt(token.encode()).decode()

    def decrypt(self, stored: str) -> str | None:
        """The token, or ``None`` when no listed key decrypts it (never raises)."""
        try:
            return self._fernet.decrypt(stored.encode()).decode()
        except (InvalidToken, ValueError):
            return None


def load_cipher(settings: Settings) -> TokenCipher:
    """From ``security.secret_key``; on SQLite a missing key is generated into the data dir."""
    if settings.security.secret_key:
        return TokenCipher(list(settings.security.secret_key))
    path: Path = settings.resolved_data_dir / SECRET_KEY_FILE
    if path.exists():
        return TokenCipher([path.read_text().strip()])
    write_secret_file(path, Fernet.generate_key().decode() + "\n")
    log.info("secret_key_generated", path=str(path))
    return TokenCipher([path.read_text().strip()])
