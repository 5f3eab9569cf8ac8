"""``mmctl policies``: list, get, create, update, delete (fields as flags or ``--body JSON``)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from controlplane.mmctl.output import print_json, print_table, show_item

if TYPE_CHECKING:
    from controlplane.mmctl.main import Context

COLUMNS = [
    ("id", "id"),
    ("name", "name"),
    ("allowed skills", "allowedSkillKeys"),
    ("denied skills", "deniedSkillKeys"),
    ("budget", "budgetCap"),
    ("native only", "nativeOnly"),
    ("handoff", "handoffAllowed"),
]

# flag dest → wire field of the repeatable string-list flags.
_LISTS = {
    "allow_skill": "allowedSkillKeys",
    "deny_skill": "deniedSkillKeys",
    "allow_provider": "allowedProviderKeys",
    "deny_provider": "deniedProviderKeys",
    "region": "regionRules",
    "require_capability": "requiredCapabilities",
}


def _budget(text: str) -> dict[str, str]:
    currency, sep, amount = text.partition(":")
    if not sep or not currency or not amount:
        raise argparse.ArgumentTypeError(f"expected CURRENCY:AMOUNT (e.g. USD:12.50), got {text!r}")
    return {"currency": currency, "amount": amount}


def _json_object(text: str) -> dict[str, Any]:
    """``--body`` value: a JSON object, or ``@FILE`` holding one."""
    if text.startswith("@"):
        try:
            text = Path(text[1:]).read_text()
        except OSError as exc:
            raise argparse.ArgumentTypeError(f"{text[1:]}: {exc.strerror or exc}") from None
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"--body is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("--body must be a JSON object")
    return value


def _field_options(parser: argparse.ArgumentParser, *, update: bool) -> None:
    parser.add_argument("--body", type=_json_object, help="request body as JSON (or @FILE)")
    parser.add_argument("--name", help="policy name")
    for dest, wire in _LISTS.items():
        parser.add_argument(
            "--" + dest.replace("_", "-"),
            dest=dest,
            action="append",
            help=f"{wire} entry (repeatable; replaces the whole list)",
        )
    parser.add_argument("--budget-cap", type=_budget, help="CURRENCY:AMOUNT, e.g. USD:12.50")
    if update:
        parser.add_argument("--clear-budget-cap", action="store_true", help="remove the cap")
    parser.add_argument("--native-only", action=argparse.BooleanOptionalAction, default=None)
    parser.add_argument("--handoff-allowed", action=argparse.BooleanOptionalAction, default=None)


def _body(args: argparse.Namespace) -> dict[str, Any]:
    """``--body`` first, then each flag that was given overrides its field."""
    body: dict[str, Any] = dict(args.body or {})
    if args.name is not None:
        body["name"] = args.name
    for dest, wire in _LISTS.items():
        values = getattr(args, dest)
        if values is not None:
            body[wire] = values
    if args.budget_cap is not None:
        body["budgetCap"] = args.budget_cap
    if getattr(args, "clear_budget_cap", False):
        body["budgetCap"] = None
    if args.native_only is not None:
        body["nativeOnly"] = args.native_only
    if args.handoff_allowed is not None:
        body["handoffAllowed"] = args.handoff_allowed
    return body


def _show(ctx: Context, reply: Any) -> None:
    show_item(ctx.json, reply)


async def _list(args: argparse.Namespace, ctx: Context) -> int:
    items = await ctx.client.walk("/policies")
    if ctx.json:
        print_json({"items": items, "nextCursor": None})
    else:
        rows = []
        for policy in items:
            cap = policy.get("budgetCap")
            budget = f"{cap['amount']} {cap['currency']}" if cap else None
            rows.append({**policy, "budgetCap": budget})
        print_table(rows, COLUMNS)
    return 0


async def _get(args: argparse.Namespace, ctx: Context) -> int:
    _show(ctx, await ctx.client.call("GET", f"/policies/{args.id}"))
    return 0


async def _create(args: argparse.Namespace, ctx: Context) -> int:
    _show(ctx, await ctx.client.call("POST", "/policies", _body(args)))
    return 0


async def _update(args: argparse.Namespace, ctx: Context) -> int:
    _show(ctx, await ctx.client.call("PATCH", f"/policies/{args.id}", _body(args)))
    return 0


async def _delete(args: argparse.Namespace, ctx: Context) -> int:
    await ctx.client.call("DELETE", f"/policies/{args.id}")
    if ctx.json:
        print_json({"id": args.id, "deleted": True})
    else:
        print(f"deleted {args.id}")
    return 0


def register(sub: Any) -> None:
    """Add this group's commands to the top-level subparsers."""
    group = sub.add_parser("policies", help="machine policies")
    commands = group.add_subparsers(dest="command", required=True)

    commands.add_parser("list", help="list policies").set_defaults(func=_list)

    create = commands.add_parser("create", help="create a policy")
    _field_options(create, update=False)
    create.set_defaults(func=_create)

    update = commands.add_parser("update", help="change a policy (lists replace whole values)")
    update.add_argument("id", help="policy id")
    _field_options(update, update=True)
    update.set_defaults(func=_update)

    for name, func, text in (
        ("get", _get, "show one policy"),
        ("delete", _delete, "delete a policy no machine names"),
    ):
        command = commands.add_parser(name, help=text)
        command.add_argument("id", help="policy id")
        command.set_defaults(func=func)
