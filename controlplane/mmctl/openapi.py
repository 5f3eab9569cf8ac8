"""``mmctl openapi``: print the server's OpenAPI document (SPEC §2), e.g. for client generators."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from controlplane.mmctl.output import print_json

if TYPE_CHECKING:
    from controlplane.mmctl.main import Context


async def show(args: argparse.Namespace, ctx: Context) -> int:
    print_json(await ctx.client.call("GET", "/openapi.json"))
    return 0


def register(sub: Any) -> None:
    cmd = sub.add_parser("openapi", help="print the server's OpenAPI 3.1 document (JSON)")
    cmd.set_defaults(func=show)
