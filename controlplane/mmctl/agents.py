"""``mmctl agents``: enrol, list, get, revoke, rotate-token (SPEC §5, §18).

A new agent token is printed exactly once, with a notice, because the server keeps only its digest.
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Any

from controlplane.mmctl.output import print_json, print_record, show_item, show_list

if TYPE_CHECKING:
    from controlplane.mmctl.main import Context

COLUMNS = [
    ("id", "id"),
    ("label", "label"),
    ("status", "status"),
    ("online", "online"),
    ("allowed keys", "allowedProviderKeys"),
    ("last seen", "lastSeenAt"),
]

NOTICE = (
    "This is the only time the agent token is shown: the control plane keeps only its digest.\n"
    "Store it now (for mm-agent: the token file, mode 0600, or a systemd credential).\n"
    "Lost it? Run `mmctl agents rotate-token AGENT` for a new one."
)


def _show_token(token: str) -> None:
    """The token on stdout (scripts capture it), the notice on stderr (humans read it)."""
    print(f"\n{NOTICE}\n", file=sys.stderr)
    print(f"agent token: {token}")


async def _enroll(args: argparse.Namespace, ctx: Context) -> int:
    body: dict[str, Any] = {}
    if args.label is not None:
        body["label"] = args.label
    if args.allow:
        body["allowedProviderKeys"] = args.allow
    reply = await ctx.client.call("POST", f"/machines/{args.machine}/agents/enrollment", body)
    if ctx.json:
        print_json(reply)
        return 0
    agent = {k: v for k, v in reply["item"].items() if k not in ("agentToken", "provisioningToken")}
    print_record(agent)
    _show_token(reply["agentToken"])
    return 0


async def _list(args: argparse.Namespace, ctx: Context) -> int:
    items = await ctx.client.walk(f"/machines/{args.machine}/agents", {"status": args.status})
    show_list(ctx.json, items, COLUMNS)
    return 0


async def _get(args: argparse.Namespace, ctx: Context) -> int:
    reply = await ctx.client.call("GET", f"/machines/{args.machine}/agents/{args.agent}")
    show_item(ctx.json, reply)
    return 0


async def _revoke(args: argparse.Namespace, ctx: Context) -> int:
    await ctx.client.call("DELETE", f"/machines/{args.machine}/agents/{args.agent}")
    if ctx.json:
        print_json({"id": args.agent, "status": "revoked"})
    else:
        print(f"revoked {args.agent}; its endpoints are unreachable now")
    return 0


async def _rotate(args: argparse.Namespace, ctx: Context) -> int:
    body = {"reason": args.reason} if args.reason is not None else {}
    reply = await ctx.client.call("POST", f"/machine-agents/{args.agent}/rotate-token", body)
    if ctx.json:
        print_json(reply)
        return 0
    rotation = reply["item"]
    print(f"rotated the token of {rotation['agentId']} at {rotation['rotatedAt']}")
    print("the previous token no longer authenticates")
    _show_token(rotation["agentToken"])
    return 0


def register(sub: Any) -> None:
    """Add this group's commands to the top-level subparsers."""
    group = sub.add_parser("agents", help="machine agents (mm-agent enrolments)")
    commands = group.add_subparsers(dest="command", required=True)

    enroll = commands.add_parser("enroll", help="enrol an agent; prints its token once")
    enroll.add_argument("machine", help="machine id")
    enroll.add_argument("--label", help='agent label (default "machine agent")')
    enroll.add_argument(
        "--allow",
        action="append",
        default=[],
        metavar="KEY",
        help="allowed provider key (repeatable; default: the server's default keys)",
    )
    enroll.set_defaults(func=_enroll)

    listing = commands.add_parser("list", help="list a machine's agents")
    listing.add_argument("machine", help="machine id")
    listing.add_argument("--status", choices=["provisioned", "active", "revoked"])
    listing.set_defaults(func=_list)

    get = commands.add_parser("get", help="show one agent")
    get.add_argument("machine", help="machine id")
    get.add_argument("agent", help="agent id")
    get.set_defaults(func=_get)

    revoke = commands.add_parser("revoke", help="revoke an agent (its endpoints go unreachable)")
    revoke.add_argument("machine", help="machine id")
    revoke.add_argument("agent", help="agent id")
    revoke.set_defaults(func=_revoke)

    rotate = commands.add_parser("rotate-token", help="issue a new token; prints it once")
    rotate.add_argument("agent", help="agent id")
    rotate.add_argument("--reason", help="why (kept in the audit log, ≤ 500 chars)")
    rotate.set_defaults(func=_rotate)
