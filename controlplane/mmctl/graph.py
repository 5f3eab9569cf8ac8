"""``mmctl graph show MACHINE``: the machine's graph as two readable tables (SPEC §18)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from controlplane.mmctl.output import print_json, print_table


def _data(value: dict[str, Any]) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")) if value else "-"


async def show(args: argparse.Namespace, ctx: Any) -> int:
    graph = (await ctx.client.call("GET", f"/machines/{args.machine}/graph"))["item"]
    if ctx.json:
        print_json(graph)
        return 0
    nodes = graph["nodes"]
    names = {n["id"]: f"{n['kind']}:{n['key']}" if n["key"] else n["label"] for n in nodes}
    sys.stdout.write(f"Nodes ({len(nodes)})\n")
    print_table(
        [{**n, "dataText": _data(n["data"])} for n in nodes],
        [("id", "id"), ("kind", "kind"), ("key", "key"), ("label", "label"),
         ("status", "status"), ("data", "dataText")],
    )  # fmt: skip
    edges = graph["edges"]
    sys.stdout.write(f"\nEdges ({len(edges)})\n")
    print_table(
        [
            {
                **e,
                "from": names.get(e["fromNodeId"], e["fromNodeId"]),
                "to": names.get(e["toNodeId"], e["toNodeId"]),
                "dataText": _data(e["data"]),
            }
            for e in edges
        ],
        [("id", "id"), ("from", "from"), ("kind", "kind"), ("to", "to"), ("label", "label"),
         ("status", "status"), ("data", "dataText")],
    )  # fmt: skip
    return 0


def register(sub: Any) -> None:
    group = sub.add_parser("graph", help="a machine's graph of nodes and edges")
    commands = group.add_subparsers(dest="command", required=True)
    cmd = commands.add_parser("show", help="print the nodes and edges of a machine")
    cmd.add_argument("machine", metavar="MACHINE")
    cmd.set_defaults(func=show)
