"""``mmctl endpoints``: a machine's runtime endpoints — list, get, put (manual), delete (SPEC §4)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from controlplane.mmctl.output import print_json, show_item, show_list

if TYPE_CHECKING:
    from controlplane.mmctl.main import Context

COLUMNS = [
    ("key", "providerKey"),
    ("source", "source"),
    ("status", "status"),
    ("live", "live"),
    ("url", "endpointBaseUrl"),
    ("scope", "networkScope"),
    ("token", "hasAuthToken"),
    ("agent", "agentId"),
    ("lease until", "leaseExpiresAt"),
]


def read_token_file(path: str) -> str:
    """The token from a file (``-`` = stdin); one trailing newline is not part of it."""
    text = sys.stdin.read() if path == "-" else Path(path).read_text()
    return text.rstrip("\r\n")


async def _list(args: argparse.Namespace, ctx: Context) -> int:
    params = {"source": args.source, "status": args.status}
    items = await ctx.client.walk(f"/machines/{args.machine}/runtime-endpoints", params)
    show_list(ctx.json, items, COLUMNS)
    return 0


async def _get(args: argparse.Namespace, ctx: Context) -> int:
    reply = await ctx.client.call("GET", f"/machines/{args.machine}/runtime-endpoints/{args.key}")
    show_item(ctx.json, reply)
    return 0


async def _put(args: argparse.Namespace, ctx: Context) -> int:
    body: dict[str, Any] = {"endpointBaseUrl": args.endpoint_url}
    for field, value in (
        ("label", args.label),
        ("authType", args.auth_type),
        ("modelAlias", args.model_alias),
        ("networkScope", args.scope),
        ("probePath", args.probe_path),
        ("status", args.status),
    ):
        if value is not None:
            body[field] = value
    if args.token_file is not None:
        try:
            body["authToken"] = read_token_file(args.token_file)
        except OSError as exc:
            print(f"mmctl: --token-file: {exc.strerror or exc}: {args.token_file}", file=sys.stderr)
            return 2
    path = f"/machines/{args.machine}/runtime-endpoints/{args.key}"
    reply = await ctx.client.call("PUT", path, body)
    show_item(ctx.json, reply)
    return 0


async def _delete(args: argparse.Namespace, ctx: Context) -> int:
    await ctx.client.call("DELETE", f"/machines/{args.machine}/runtime-endpoints/{args.key}")
    if ctx.json:
        print_json({"machineId": args.machine, "providerKey": args.key, "deleted": True})
    else:
        print(f"deleted runtime endpoint {args.key} of {args.machine}")
    return 0


def register(sub: Any) -> None:
    """Add this group's commands to the top-level subparsers."""
    group = sub.add_parser("endpoints", help="runtime endpoints of a machine")
    commands = group.add_subparsers(dest="command", required=True)

    listing = commands.add_parser("list", help="list a machine's runtime endpoints")
    listing.add_argument("machine", help="machine id")
    listing.add_argument("--source", choices=["manual", "agent"])
    listing.add_argument("--status", choices=["active", "degraded", "unreachable"])
    listing.set_defaults(func=_list)

    get = commands.add_parser("get", help="show one runtime endpoint")
    get.add_argument("machine", help="machine id")
    get.add_argument("key", help="provider key")
    get.set_defaults(func=_get)

    put = commands.add_parser("put", help="create or update a manual runtime endpoint")
    put.add_argument("machine", help="machine id")
    put.add_argument("key", help="provider key")
    # dest differs from the global --url (the API's address), which it would otherwise replace.
    put.add_argument(
        "--url", dest="endpoint_url", required=True, help="runtime base URL (reduced to its origin)"
    )
    put.add_argument("--label")
    put.add_argument("--auth-type", choices=["none", "api-key", "bearer"])
    put.add_argument(
        "--token-file",
        help="file holding the runtime's token ('-' = stdin; an empty file clears the token)",
    )
    put.add_argument("--model-alias")
    put.add_argument("--scope", choices=["loopback", "lan", "vpn", "public"])
    put.add_argument("--probe-path")
    put.add_argument("--status", choices=["active", "degraded", "unreachable"])
    put.set_defaults(func=_put)

    delete = commands.add_parser("delete", help="delete a runtime endpoint")
    delete.add_argument("machine", help="machine id")
    delete.add_argument("key", help="provider key")
    delete.set_defaults(func=_delete)
