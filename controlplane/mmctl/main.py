"""mmctl entry point: global options, one module per command group, exit codes 0 / 1 / 2."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Awaitable, Callable
from types import ModuleType
from typing import Any

from controlplane.mmctl import (
    admin,
    agents,
    audit,
    catalogue,
    endpoints,
    graph,
    machines,
    openapi,
    policies,
    tasks,
)
from controlplane.mmctl.client import ApiCallError, Client, UsageError

# Each group module defines ``register(subparsers)``; its commands set ``func`` (an async callable
# taking ``(args, ctx)``). Add a group by importing it here.
GROUPS: list[ModuleType] = [
    machines,
    agents,
    endpoints,
    graph,
    tasks,
    policies,
    audit,
    catalogue,
    openapi,
    admin,
]

EXIT_OK, EXIT_API, EXIT_USAGE = 0, 1, 2

Command = Callable[[argparse.Namespace, "Context"], Awaitable[int | None]]


class Context:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.json = bool(args.json)
        self.client = Client(args.url, args.api_key, args.timeout)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mmctl", description="Machine Markets operator CLI")
    parser.add_argument("--url", default=os.environ.get("MM_URL", "http://127.0.0.1:8700"))
    parser.add_argument("--api-key", default=os.environ.get("MM_API_KEY"))
    parser.add_argument("--json", action="store_true", help="print raw API JSON")
    parser.add_argument("--timeout", type=float, default=30.0)
    sub = parser.add_subparsers(dest="group", required=True)
    for group in GROUPS:
        group.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Any = getattr(args, "func", None)
    if func is None:
        parser.print_usage(sys.stderr)
        return EXIT_USAGE
    try:
        result = asyncio.run(func(args, Context(args)))
    except ApiCallError as exc:
        print(f"{exc.code}: {exc.message}", file=sys.stderr)
        return EXIT_API
    except UsageError as exc:
        print(f"mmctl: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
