"""Versioned schema migrations, the same for SQLite and PostgreSQL.

Each migration is a module ``mNNNN_<name>.py`` with a ``SQL`` string in the portable subset; the
placeholders ``{money}`` become ``TEXT`` on SQLite and ``NUMERIC`` on PostgreSQL (SPEC §1.2, §16).
"""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass

from controlplane.store.base import Connection, Dialect

_TYPES: dict[Dialect, dict[str, str]] = {
    "sqlite": {"money": "TEXT"},
    "postgresql": {"money": "NUMERIC"},
}


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    def statements(self, dialect: Dialect) -> list[str]:
        text = self.sql.format(**_TYPES[dialect])
        lines = [line for line in text.splitlines() if not line.strip().startswith("--")]
        return [s.strip() for s in "\n".join(lines).split(";") if s.strip()]


def all_migrations() -> list[Migration]:
    found = []
    for info in pkgutil.iter_modules(__path__):
        if info.name.startswith("m") and info.name[1:5].isdigit():
            module = importlib.import_module(f"{__name__}.{info.name}")
            found.append(Migration(int(info.name[1:5]), info.name[6:], module.SQL))
    return sorted(found, key=lambda m: m.version)


LATEST = max(m.version for m in all_migrations())


class SchemaTooNew(Exception):
    """The database was migrated by a newer release; refusing to run on it (exit 78)."""


async def ensure_table(conn: Connection) -> None:
    await conn.execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations ("
        " version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at BIGINT NOT NULL)"
    )


async def current_version(conn: Connection) -> int:
    value = await conn.fetchval("SELECT MAX(version) FROM schema_migrations")
    return int(value or 0)


async def apply_pending(conn: Connection, now_ms: int) -> list[int]:
    """Inside one write transaction (held under the migration lock): apply what is missing."""
    await ensure_table(conn)
    version = await current_version(conn)
    if version > LATEST:
        raise SchemaTooNew(
            f"database schema version {version} is newer than this release ({LATEST})"
        )
    applied = []
    for migration in all_migrations():
        if migration.version <= version:
            continue
        for statement in migration.statements(conn.dialect):
            await conn.execute(statement)
        await conn.execute(
            "INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)",
            migration.version,
            migration.name,
            now_ms,
        )
        applied.append(migration.version)
    return applied
