"""``mmctl audit``: follow new events (``tail``) or write them out as JSON lines (``export``)."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shared.timeutil import parse_iso, to_iso

if TYPE_CHECKING:
    from controlplane.mmctl.main import Context

POLL_SECONDS = 2.0
TAIL_BACKLOG = 10
# Events are stamped when their transaction starts and may commit a little later; every poll
# looks back this far and skips the ids it already printed, so such late commits still show.
OVERLAP_MS = 10_000


def _order(event: dict[str, Any]) -> tuple[int, str]:
    return parse_iso(event["createdAt"]), event["id"]


def _line(event: dict[str, Any], as_json: bool) -> str:
    if as_json:
        return json.dumps(event, ensure_ascii=False, separators=(",", ":"))
    payload = json.dumps(event["payload"], ensure_ascii=False, separators=(",", ":"))
    machine = event["machineId"] or "-"
    return (
        f"{event['createdAt']}  {event['type']}  {event['actor']}  "
        f"{event['resourceType']}/{event['resourceId']}  machine={machine}  {payload}"
    )


async def _tail(args: argparse.Namespace, ctx: Context) -> int:
    """Print the latest events, then poll every 2 s and print new ones, oldest first."""
    params = {"machineId": args.machine, "type": args.type}
    first = await ctx.client.call(
        "GET", "/audit-events", params={**params, "limit": str(TAIL_BACKLOG)}
    )
    backlog = sorted(first["items"], key=_order)
    seen: dict[str, int] = {}
    newest: int | None = None
    for event in backlog:
        print(_line(event, ctx.json))
        seen[event["id"]] = _order(event)[0]
        newest = _order(event)[0]
    sys.stdout.flush()
    while True:
        await asyncio.sleep(POLL_SECONDS)
        query = dict(params)
        if newest is not None:
            query["since"] = to_iso(newest - OVERLAP_MS)
        fresh = [e for e in await ctx.client.walk("/audit-events", query) if e["id"] not in seen]
        for event in sorted(fresh, key=_order):
            print(_line(event, ctx.json))
            at = _order(event)[0]
            seen[event["id"]] = at
            newest = at if newest is None else max(newest, at)
        sys.stdout.flush()
        if newest is not None:
            cutoff = newest - OVERLAP_MS
            seen = {k: v for k, v in seen.items() if v >= cutoff}


async def _export(args: argparse.Namespace, ctx: Context) -> int:
    """Every matching event, oldest first, one JSON object per line."""
    params = {"machineId": args.machine, "since": args.since, "until": args.until}
    events = await ctx.client.walk("/audit-events", params)
    events.reverse()  # the API lists newest first
    lines = "".join(json.dumps(e, ensure_ascii=False, separators=(",", ":")) + "\n" for e in events)
    if str(args.out) == "-":
        sys.stdout.write(lines)
    else:
        args.out.write_text(lines, encoding="utf-8")
        print(f"wrote {len(events)} events to {args.out}", file=sys.stderr)
    return 0


def register(sub: Any) -> None:
    """Add this group's commands to the top-level subparsers."""
    group = sub.add_parser("audit", help="audit events")
    commands = group.add_subparsers(dest="command", required=True)

    tail = commands.add_parser("tail", help="print new events every 2 s, oldest first")
    tail.add_argument("--machine", help="only events of this machine id")
    tail.add_argument("--type", help="event type, or a prefix ending in .* (machine.*)")
    tail.set_defaults(func=_tail)

    export = commands.add_parser("export", help="write events as JSON lines, oldest first")
    export.add_argument("--machine", help="only events of this machine id")
    export.add_argument("--since", help="ISO-8601 time with offset (inclusive)")
    export.add_argument("--until", help="ISO-8601 time with offset (exclusive)")
    export.add_argument("--out", required=True, type=Path, help="output file ('-' for stdout)")
    export.set_defaults(func=_export)
