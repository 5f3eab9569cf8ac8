"""``mmctl machines``: create, list, get, activate, archive, and register with an identity key."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from eth_account import Account
from eth_account.messages import encode_defunct
from eth_account.signers.local import LocalAccount

from controlplane.mmctl.output import print_json, print_table, show_item

if TYPE_CHECKING:
    from controlplane.mmctl.main import Context

COLUMNS = [
    ("id", "id"),
    ("name", "displayName"),
    ("status", "status"),
    ("owner", "ownerId"),
    ("type", "machineType"),
    ("identity", "identityRef"),
    ("verified", "verifiedBy"),
]


def _label(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, value


def _create_options(parser: argparse.ArgumentParser, *, identity_ref: bool) -> None:
    parser.add_argument("--name", required=True, help="display name")
    parser.add_argument("--owner", required=True, help="owner id")
    parser.add_argument("--type", required=True, dest="machine_type", help="machine type")
    parser.add_argument("--profile", required=True, help="runtime profile")
    if identity_ref:
        parser.add_argument("--identity-ref", help="did:peaq:… or peaqos:machine:…")
    parser.add_argument("--capability", action="append", default=[], help="capability (repeatable)")
    parser.add_argument(
        "--label", action="append", default=[], type=_label, help="label KEY=VALUE (repeatable)"
    )
    parser.add_argument("--policy", action="append", default=[], help="policy id (repeatable)")


def _create_body(args: argparse.Namespace) -> dict[str, Any]:
    body: dict[str, Any] = {
        "displayName": args.name,
        "ownerId": args.owner,
        "machineType": args.machine_type,
        "runtimeProfile": args.profile,
        "capabilities": args.capability,
        "labels": dict(args.label),
        "policyIds": args.policy,
    }
    if getattr(args, "identity_ref", None):
        body["identityRef"] = args.identity_ref
    return body


def _show(ctx: Context, reply: Any) -> None:
    show_item(ctx.json, reply)


def _verified_by(machine: dict[str, Any]) -> str | None:
    for key in ("identityProof", "identityAttestation"):
        if machine.get(key):
            return str(machine[key]["method"])
    return None


async def _create(args: argparse.Namespace, ctx: Context) -> int:
    _show(ctx, await ctx.client.call("POST", "/machines", _create_body(args)))
    return 0


async def _list(args: argparse.Namespace, ctx: Context) -> int:
    items = await ctx.client.walk("/machines", {"status": args.status, "ownerId": args.owner})
    if ctx.json:
        print_json({"items": items, "nextCursor": None})
    else:
        print_table([{**m, "verifiedBy": _verified_by(m)} for m in items], COLUMNS)
    return 0


async def _get(args: argparse.Namespace, ctx: Context) -> int:
    _show(ctx, await ctx.client.call("GET", f"/machines/{args.id}"))
    return 0


async def _activate(args: argparse.Namespace, ctx: Context) -> int:
    _show(ctx, await ctx.client.call("PATCH", f"/machines/{args.id}", {"status": "active"}))
    return 0


async def _archive(args: argparse.Namespace, ctx: Context) -> int:
    await ctx.client.call("DELETE", f"/machines/{args.id}")
    if ctx.json:
        print_json({"id": args.id, "status": "archived"})
    else:
        print(f"archived {args.id}")
    return 0


def load_identity_key(path: Path) -> LocalAccount | str:
    """A secp256k1 private key file (64 hex digits, optionally ``0x``-prefixed), or why not."""
    try:
        text = path.read_text().strip()
    except OSError as exc:
        return f"--identity-key: {exc.strerror or exc}: {path}"
    try:
        account: LocalAccount = Account.from_key(text)
    except Exception:  # eth-account raises several types for a malformed key
        return f"--identity-key: {path} does not hold a secp256k1 private key (64 hex digits)"
    return account


async def _register(args: argparse.Namespace, ctx: Context) -> int:
    """Challenge for ``did:peaq:0x<key address>`` → sign → create with the proof → activate."""
    account = load_identity_key(args.identity_key)
    if isinstance(account, str):
        print(f"mmctl: {account}", file=sys.stderr)
        return 2
    identity_ref = "did:peaq:0x" + account.address[2:].lower()
    client = ctx.client
    reply = await client.call("POST", "/machine-identity/challenges", {"identityRef": identity_ref})
    challenge = reply["item"]
    signed = account.sign_message(encode_defunct(text=challenge["message"]))
    body = _create_body(args)
    body["identityRef"] = identity_ref
    body["identityProof"] = {
        "challengeId": challenge["challengeId"],
        "signature": "0x" + bytes(signed.signature).hex(),
    }
    machine = (await client.call("POST", "/machines", body))["item"]
    _show(ctx, await client.call("PATCH", f"/machines/{machine['id']}", {"status": "active"}))
    return 0


def register(sub: Any) -> None:
    """Add this group's commands to the top-level subparsers."""
    group = sub.add_parser("machines", help="machines and identity")
    commands = group.add_subparsers(dest="command", required=True)

    create = commands.add_parser("create", help="create a machine (draft)")
    _create_options(create, identity_ref=True)
    create.set_defaults(func=_create)

    listing = commands.add_parser("list", help="list machines")
    listing.add_argument("--status", choices=["draft", "active", "degraded", "blocked", "archived"])
    listing.add_argument("--owner", help="only machines of this owner id")
    listing.set_defaults(func=_list)

    for name, func, text in (
        ("get", _get, "show one machine"),
        ("activate", _activate, "set status active"),
        ("archive", _archive, "archive a machine (revokes its agents)"),
    ):
        command = commands.add_parser(name, help=text)
        command.add_argument("id", help="machine id")
        command.set_defaults(func=func)

    reg = commands.add_parser(
        "register",
        help="prove a secp256k1 identity key, create the machine and activate it in one step",
    )
    reg.add_argument(
        "--identity-key", required=True, type=Path, help="file with the machine's private key"
    )
    _create_options(reg, identity_ref=False)
    reg.set_defaults(func=_register)
