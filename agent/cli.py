"""The ``mm-agent`` command line (SPEC §17.7).

Exit codes: 0 success, 1 unexpected error, 2 usage, 78 configuration error or revoked agent.
Commands other than ``run`` print for humans (or JSON with ``--json``) on stdout and problems on
stderr; none of them ever prints a token.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from pydantic import ValidationError

from agent import __version__
from agent.config import DEFAULT_CONFIG_PATH, AgentConfig, config_warnings, load_config
from agent.daemon import load_setup, probe_session
from agent.daemon import run as run_daemon
from agent.errors import EXIT_CONFIG, EXIT_FAILURE, EXIT_OK, ConfigError
from agent.identity import IdentityError, new_key, sign_message_file
from agent.runtimes import Observation, RuntimeSecrets, observe
from agent.state import STATE_FILE, AgentState
from agent.token import UNIT_CREDENTIAL_SOURCE, check_runtime_secrets
from shared.logs import configure_logging
from shared.timeutil import now_ms, parse_iso

DEFAULT_STATE_DIR = Path("/var/lib/mm-agent")


def _print_problems(problems: Sequence[str], prefix: str = "error") -> None:
    for problem in problems:
        print(f"{prefix}: {problem}", file=sys.stderr)


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )


def _cmd_run(args: argparse.Namespace) -> int:
    return run_daemon(args.config)


async def _probe_once(config: AgentConfig) -> list[Observation]:
    async with probe_session() as session:
        return await observe(config, session, RuntimeSecrets(), allowed=None)


def _cmd_probe(args: argparse.Namespace) -> int:
    configure_logging("warning", "auto")
    try:
        config = load_config(args.config)
        check_runtime_secrets(config)
    except ConfigError as exc:
        _print_problems(exc.problems)
        return EXIT_CONFIG
    observations = asyncio.run(_probe_once(config))
    if args.json:
        document = [
            {
                "providerKey": o.runtime.provider_key,
                "kind": o.runtime.kind,
                "endpointBaseUrl": o.runtime.endpoint_base_url,
                "probePath": o.runtime.probe_path,
                "source": o.runtime.source,
                "status": o.result.status,
                "latencyMs": o.result.latency_ms,
                "healthError": o.result.health_error,
            }
            for o in observations
        ]
        print(json.dumps(document, indent=2))
        return EXIT_OK
    if not observations:
        print("no runtimes configured or discovered")
        return EXIT_OK
    rows = [["PROVIDER", "KIND", "URL", "STATUS", "LATENCY", "ERROR"]]
    for o in observations:
        latency = "-" if o.result.latency_ms is None else f"{o.result.latency_ms} ms"
        url = o.runtime.endpoint_base_url + o.runtime.probe_path
        rows.append(
            [
                o.runtime.provider_key,
                o.runtime.kind,
                url,
                o.result.status,
                latency,
                o.result.health_error or "",
            ]
        )
    print(_table(rows))
    return EXIT_OK


def _cmd_check_config(args: argparse.Namespace) -> int:
    configure_logging("warning", "auto")
    try:
        setup = load_setup(args.config, prepare_state=False, unit_credential=UNIT_CREDENTIAL_SOURCE)
    except ConfigError as exc:
        _print_problems(exc.problems)
        return EXIT_CONFIG
    _print_problems(config_warnings(setup.config), prefix="warning")
    cp = setup.config.control_plane
    print(
        f"{args.config}: OK (control plane {cp.url}, machine {cp.machine_id}, agent {cp.agent_id}, "
        f"{len(setup.config.runtimes)} runtimes, token from {setup.token.source})"
    )
    return EXIT_OK


def _age(iso: str | None) -> str:
    if iso is None:
        return "never"
    try:
        seconds = max(0, (now_ms() - parse_iso(iso)) // 1000)
    except ValueError:
        return iso
    return f"{iso} ({seconds} s ago)"


def _cmd_status(args: argparse.Namespace) -> int:
    path = args.state_dir / STATE_FILE
    try:
        state = AgentState.model_validate_json(path.read_bytes())
    except FileNotFoundError:
        print(f"{path}: no state file (has mm-agent run here yet?)", file=sys.stderr)
        return EXIT_FAILURE
    except OSError as exc:
        print(f"{path}: cannot read: {exc.strerror}", file=sys.stderr)
        return EXIT_FAILURE
    except ValidationError:
        print(f"{path}: not a valid state file", file=sys.stderr)
        return EXIT_FAILURE
    if args.json:
        print(state.model_dump_json(by_alias=True, indent=2))
        return EXIT_OK
    error = state.last_error
    lines = [
        f"machine         {state.machine_id}",
        f"agent           {state.agent_id}",
        f"sequence        {state.sequence if state.sequence is not None else '-'}",
        f"last heartbeat  {_age(state.last_heartbeat_at)}",
        f"last success    {_age(state.last_success_at)}",
        f"last error      {f'{error.code}: {error.message} (at {error.at})' if error else 'none'}",
    ]
    print("\n".join(lines))
    if state.runtimes:
        rows = [["PROVIDER", "URL", "STATUS", "SOURCE", "ERROR"]]
        rows += [
            [r.provider_key, r.endpoint_base_url, r.status, r.source, r.health_error or ""]
            for r in state.runtimes
        ]
        print()
        print(_table(rows))
    return EXIT_OK


def _cmd_identity_new(args: argparse.Namespace) -> int:
    try:
        identity = new_key(args.out)
    except IdentityError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    print(f"address: {identity.address}")
    print(f"did: {identity.did}")
    return EXIT_OK


def _cmd_identity_sign(args: argparse.Namespace) -> int:
    try:
        print(sign_message_file(args.key, args.message_file))
    except ConfigError as exc:
        _print_problems(exc.problems)
        return EXIT_CONFIG
    except IdentityError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mm-agent",
        description="Machine Markets agent: heartbeats local inference runtimes to the control plane.",
    )
    parser.add_argument("--version", action="version", version=f"mm-agent {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def with_config(sub: argparse.ArgumentParser) -> None:
        sub.add_argument(
            "--config",
            type=Path,
            default=DEFAULT_CONFIG_PATH,
            metavar="PATH",
            help=f"configuration file (default {DEFAULT_CONFIG_PATH})",
        )

    run = commands.add_parser("run", help="run the daemon")
    with_config(run)
    run.set_defaults(handler=_cmd_run)

    probe = commands.add_parser("probe", help="probe every runtime once; no heartbeat")
    with_config(probe)
    probe.add_argument("--json", action="store_true", help="print JSON instead of a table")
    probe.set_defaults(handler=_cmd_probe)

    check = commands.add_parser(
        "check-config", help="validate the configuration and token permissions"
    )
    with_config(check)
    check.set_defaults(handler=_cmd_check_config)

    status = commands.add_parser("status", help="print the daemon's state file")
    status.add_argument(
        "--state-dir",
        type=Path,
        default=DEFAULT_STATE_DIR,
        metavar="DIR",
        help=f"state directory (default {DEFAULT_STATE_DIR})",
    )
    status.add_argument("--json", action="store_true", help="print JSON")
    status.set_defaults(handler=_cmd_status)

    identity = commands.add_parser("identity", help="the machine's secp256k1 identity key")
    identity_commands = identity.add_subparsers(
        dest="identity_command", required=True, metavar="COMMAND"
    )
    new = identity_commands.add_parser("new", help="create a key file (mode 0600)")
    new.add_argument("--out", type=Path, required=True, metavar="FILE")
    new.set_defaults(handler=_cmd_identity_new)
    sign = identity_commands.add_parser(
        "sign", help="EIP-191 personal_sign a message file's exact bytes"
    )
    sign.add_argument("--key", type=Path, required=True, metavar="FILE")
    sign.add_argument("--message-file", type=Path, required=True, metavar="FILE")
    sign.set_defaults(handler=_cmd_identity_sign)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code: int = args.handler(args)
    except KeyboardInterrupt:
        return 130
    except ValidationError as exc:  # its text can quote input values: print only locations
        where = ", ".join(".".join(str(p) for p in err["loc"]) for err in exc.errors())
        print(f"mm-agent: unexpected validation error at {where}", file=sys.stderr)
        return EXIT_FAILURE
    except Exception as exc:  # the last line of defence: exit 1, never a traceback dump
        print(f"mm-agent: unexpected error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    return code
