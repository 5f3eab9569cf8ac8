"""``mmctl catalogue validate FILE``: the server's own catalogue validation, offline (SPEC §9.3)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from controlplane.services.catalogue import CatalogueError, load_catalogue


async def validate(args: argparse.Namespace, ctx: Any) -> int:
    try:
        catalogue = load_catalogue(Path(args.file))
    except CatalogueError as exc:
        print(f"{args.file}: invalid catalogue ({len(exc.problems)} problems)", file=sys.stderr)
        for problem in exc.problems:
            print(f"  - {problem}", file=sys.stderr)
        return 1
    print(
        f"{args.file}: valid catalogue ({len(catalogue.skills)} skills,"
        f" {len(catalogue.services)} services)"
    )
    return 0


def register(sub: Any) -> None:
    group = sub.add_parser("catalogue", help="catalogue files (local)")
    commands = group.add_subparsers(dest="command", required=True)
    cmd = commands.add_parser("validate", help="validate a catalogue file; exit 0 valid, 1 invalid")
    cmd.add_argument("file", help="catalogue YAML file")
    cmd.set_defaults(func=validate)
