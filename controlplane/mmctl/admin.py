"""Local admin commands (SPEC §18): ``db migrate|copy`` and ``api-keys create|list|revoke``.

They open the control plane's own database, found from the same settings the server reads
(environment, ``--config`` / ``MM_CONFIG``, ``--data-dir``, ``--database-url``). They never invent
a database: with nothing configured and no ``$STATE_DIRECTORY`` they use the systemd unit's state
directory if it exists and otherwise stop (exit 2); they never fall back to ``./mm-data``.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from controlplane.mmctl.output import print_json, print_table
from controlplane.services.auth import create_api_key
from controlplane.settings import ConfigError, Settings, load_settings
from controlplane.store import Store, api_keys, migrate, open_store_url
from controlplane.store.copy import CopyError, copy_database
from controlplane.store.migrations import current_version
from shared.timeutil import now_ms, to_iso, to_iso_opt

if TYPE_CHECKING:
    from controlplane.mmctl.main import Context

UNIT_STATE_DIR = Path("/var/lib/mm-controlplane")
Command = Callable[[argparse.Namespace, "Context"], Awaitable[int]]


class LocalUsageError(Exception):
    """The local command cannot tell which database to open, or was given bad words: exit 2."""


def _local(command: Command) -> Command:
    """Print a :class:`LocalUsageError` as ``mmctl: …`` and exit 2.

    Handled here rather than by ``main``'s ``UsageError``: under ``python -m`` the entry module is
    ``__main__``, so its exception class is not the one an imported module would raise.
    """

    @functools.wraps(command)
    async def run(args: argparse.Namespace, ctx: Context) -> int:
        try:
            return await command(args, ctx)
        except LocalUsageError as exc:
            print(f"mmctl: {exc}", file=sys.stderr)
            return 2

    return run


def _local_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, help="control-plane TOML settings (or MM_CONFIG)")
    parser.add_argument("--data-dir", type=Path, help="the control plane's data_dir")
    parser.add_argument("--database-url", help="sqlite:///PATH or postgresql://...")


def _load(args: argparse.Namespace, extra: dict[str, Any] | None = None) -> Settings:
    overrides: dict[str, Any] = dict(extra or {})
    if args.data_dir is not None:
        overrides["data_dir"] = args.data_dir
    if args.database_url is not None:
        overrides.setdefault("database", {})["url"] = args.database_url
    try:
        return load_settings(args.config, overrides)
    except ConfigError as exc:
        raise LocalUsageError(f"configuration error: {exc}") from None


def database_url(args: argparse.Namespace) -> str:
    """The server's database URL, or a usage error naming the missing setting."""
    settings = _load(args)
    if (
        settings.database.url is None
        and settings.data_dir is None
        and not os.environ.get("STATE_DIRECTORY")
    ):
        if not UNIT_STATE_DIR.is_dir():
            raise LocalUsageError(
                "no database configured: set database.url (MM_DATABASE_URL or --database-url) "
                f"or data_dir (MM_DATA_DIR or --data-dir); {UNIT_STATE_DIR} does not exist"
            )
        settings = _load(args, {"data_dir": UNIT_STATE_DIR})
    return settings.database_url


@asynccontextmanager
async def _opened(url: str) -> AsyncIterator[Store]:
    store = await open_store_url(url, pool_size=1)
    print(f"database: {store.description}", file=sys.stderr)
    try:
        yield store
    finally:
        await store.close()


@_local
async def _migrate(args: argparse.Namespace, ctx: Context) -> int:
    async with _opened(database_url(args)) as store:
        applied = await migrate(store)
    if applied:
        print(f"applied migrations: {', '.join(str(v) for v in applied)}", file=sys.stderr)
    else:
        print("schema is up to date", file=sys.stderr)
    return 0


def _missing_sqlite_file(url: str) -> str | None:
    """The path of a SQLite database file that does not exist yet (``api-keys`` refuses it)."""
    if url.startswith("sqlite:///"):
        path = Path(url[len("sqlite:///") :])
        if not path.is_file():
            return str(path)
    return None


@asynccontextmanager
async def _key_store(args: argparse.Namespace) -> AsyncIterator[Store | None]:
    """The existing, migrated database; ``None`` (after printing why) when there is none."""
    url = database_url(args)
    missing = _missing_sqlite_file(url)
    if missing is not None:
        print(
            f"NOT_FOUND: {missing} does not exist; start the control plane or "
            "run `mmctl db migrate` first",
            file=sys.stderr,
        )
        yield None
        return
    async with _opened(url) as store:
        try:
            async with store.read() as conn:
                version = await current_version(conn)
        except Exception:  # no schema_migrations table: a database nobody migrated
            version = 0
        if version == 0:
            print("NOT_FOUND: the database has no schema; run `mmctl db migrate`", file=sys.stderr)
            yield None
            return
        yield store


@_local
async def _keys_create(args: argparse.Namespace, ctx: Context) -> int:
    if not args.label.strip():
        raise LocalUsageError("--label must not be blank")
    async with _key_store(args) as store:
        if store is None:
            return 1
        key_id, secret = await create_api_key(store, args.label)
    if ctx.json:
        print_json({"id": key_id, "label": args.label, "key": secret})
    else:
        print(f"id     {key_id}\nlabel  {args.label}\nkey    {secret}")
        print("the key is shown only once: store it now", file=sys.stderr)
    return 0


@_local
async def _keys_list(args: argparse.Namespace, ctx: Context) -> int:
    async with _key_store(args) as store:
        if store is None:
            return 1
        async with store.read() as conn:
            rows = await api_keys.list_all(conn)
    items = [
        {
            "id": row["id"],
            "label": row["label"],
            "createdAt": to_iso(int(row["created_at"])),
            "revokedAt": to_iso_opt(row["revoked_at"]),
        }
        for row in rows
    ]
    if ctx.json:
        print_json({"items": items})
    else:
        print_table(
            items,
            [("id", "id"), ("label", "label"), ("created", "createdAt"), ("revoked", "revokedAt")],
        )
    return 0


@_local
async def _keys_revoke(args: argparse.Namespace, ctx: Context) -> int:
    async with _key_store(args) as store:
        if store is None:
            return 1
        async with store.write() as conn:
            changed = await api_keys.revoke(conn, args.key_id, now_ms())
    if not changed:
        print(f"NOT_FOUND: no active API key {args.key_id}", file=sys.stderr)
        return 1
    if ctx.json:
        print_json({"id": args.key_id, "revoked": True})
    else:
        print(f"revoked {args.key_id} (every replica refuses it within 5 s)")
    return 0


@_local
async def _copy(args: argparse.Namespace, ctx: Context) -> int:
    for flag, url in (("--from", args.source), ("--to", args.target)):
        if not url.startswith(("sqlite:///", "postgresql://", "postgres://")):
            raise LocalUsageError(f"{flag} must be sqlite:///PATH or postgresql://...")
    missing = _missing_sqlite_file(args.source)
    if missing is not None:
        print(f"NOT_FOUND: {missing} does not exist", file=sys.stderr)
        return 1
    async with _opened(args.source) as source, _opened(args.target) as target:
        try:
            report = await copy_database(source, target)
        except CopyError as exc:
            print(f"CONFLICT: {exc}; nothing was copied", file=sys.stderr)
            return 1
    if ctx.json:
        print_json({"rows": report.rows})
    else:
        print_table(
            [{"table": t, "rows": n} for t, n in report.rows.items()],
            [("table", "table"), ("rows", "rows")],
        )
    return 0


def register(sub: Any) -> None:
    """Add the ``db`` and ``api-keys`` groups to the top-level subparsers."""
    db = sub.add_parser("db", help="local: the control plane's database")
    db_commands = db.add_subparsers(dest="command", required=True)
    migrate_cmd = db_commands.add_parser("migrate", help="apply pending schema migrations")
    _local_options(migrate_cmd)
    migrate_cmd.set_defaults(func=_migrate)
    copy_cmd = db_commands.add_parser(
        "copy", help="copy every table to another database (e.g. SQLite → PostgreSQL)"
    )
    copy_cmd.add_argument("--from", dest="source", required=True, metavar="URL")
    copy_cmd.add_argument("--to", dest="target", required=True, metavar="URL")
    copy_cmd.set_defaults(func=_copy)

    keys = sub.add_parser("api-keys", help="local: platform API keys in the database")
    key_commands = keys.add_subparsers(dest="command", required=True)
    create = key_commands.add_parser("create", help="create a key and print it once")
    create.add_argument("--label", required=True, help="what the key is for")
    _local_options(create)
    create.set_defaults(func=_keys_create)
    listing = key_commands.add_parser("list", help="list keys (never their values)")
    _local_options(listing)
    listing.set_defaults(func=_keys_list)
    revoke = key_commands.add_parser("revoke", help="revoke a key")
    revoke.add_argument("key_id", metavar="KEY_ID")
    _local_options(revoke)
    revoke.set_defaults(func=_keys_revoke)
