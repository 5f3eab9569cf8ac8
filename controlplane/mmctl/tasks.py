"""``mmctl tasks`` (create, list, get, discover, resolve, execute), ``mmctl runs``, ``mmctl outcomes``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from controlplane.mmctl.output import print_json, print_record, print_table, show_item

if TYPE_CHECKING:
    from controlplane.mmctl.main import Context

TASK_COLUMNS = [
    ("id", "id"),
    ("status", "status"),
    ("operation", "operation"),
    ("skill", "skillKey"),
    ("service type", "serviceType"),
    ("route", "routeId"),
    ("run", "runId"),
    ("error", "errorMessage"),
]
RUN_COLUMNS = [
    ("id", "id"),
    ("task", "taskId"),
    ("status", "status"),
    ("service", "serviceId"),
    ("attempt", "attempt"),
    ("http", "httpStatus"),
    ("ms", "durationMs"),
    ("started", "startedAt"),
    ("error", "errorMessage"),
]
OUTCOME_COLUMNS = [
    ("id", "id"),
    ("task", "taskId"),
    ("run", "runId"),
    ("status", "status"),
    ("service", "serviceId"),
    ("external", "externalRef"),
    ("error", "errorMessage"),
    ("created", "createdAt"),
]


def json_object(text: str) -> dict[str, Any]:
    """``--input``: a JSON object, inline or ``@FILE``."""
    if text.startswith("@"):
        try:
            text = Path(text[1:]).read_text(encoding="utf-8")
        except OSError as exc:
            raise argparse.ArgumentTypeError(f"cannot read {text[1:]}: {exc.strerror}") from None
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("must be a JSON object")
    return value


def _show_task(ctx: Context, reply: Any) -> None:
    if ctx.json:
        print_json(reply)
        return
    task = reply["item"]
    print_record({k: v for k, v in task.items() if k != "candidates"})
    if task["candidates"]:
        sys.stdout.write("\nCandidates\n")
        print_table(
            [{**c, "why": "; ".join(c["reasons"])} for c in task["candidates"]],
            [("service", "serviceId"), ("mode", "executionMode"), ("score", "score"),
             ("endpoint", "runtimeEndpointId"), ("reasons", "why")],
        )  # fmt: skip


def _task_path(args: argparse.Namespace) -> str:
    return f"/machines/{args.machine}/tasks/{args.task}"


async def _create(args: argparse.Namespace, ctx: Context) -> int:
    body: dict[str, Any] = {"operation": args.operation}
    for key, value in (
        ("skillKey", args.skill),
        ("serviceType", args.service_type),
        ("serviceId", args.service),
    ):
        if value is not None:
            body[key] = value
    if args.input is not None:
        body["input"] = args.input
    _show_task(ctx, await ctx.client.call("POST", f"/machines/{args.machine}/tasks", body))
    return 0


async def _list(args: argparse.Namespace, ctx: Context) -> int:
    items = await ctx.client.walk(f"/machines/{args.machine}/tasks", {"status": args.status})
    if ctx.json:
        print_json(items)
    else:
        print_table(items, TASK_COLUMNS)
    return 0


async def _get(args: argparse.Namespace, ctx: Context) -> int:
    _show_task(ctx, await ctx.client.call("GET", _task_path(args)))
    return 0


async def _discover(args: argparse.Namespace, ctx: Context) -> int:
    _show_task(ctx, await ctx.client.call("POST", _task_path(args) + "/discover"))
    return 0


async def _resolve(args: argparse.Namespace, ctx: Context) -> int:
    body = {"serviceId": args.service} if args.service else None
    reply = await ctx.client.call("POST", _task_path(args) + "/resolve", body)
    if ctx.json:
        print_json(reply)
    else:
        print_record(reply["item"]["route"])
    return 0


async def _execute(args: argparse.Namespace, ctx: Context) -> int:
    reply = await ctx.client.call("POST", _task_path(args) + "/execute")
    if ctx.json:
        print_json(reply)
        return 0
    run, outcome = reply["run"], reply["outcome"]
    print_record(
        {
            "task": reply["task"]["id"],
            "status": reply["task"]["status"],
            "run": run["id"],
            "attempt": run["attempt"],
            "httpStatus": run["httpStatus"],
            "durationMs": run["durationMs"],
            "outcome": outcome["id"],
            "externalRef": outcome["externalRef"],
        }
    )
    if outcome["result"] is not None:
        sys.stdout.write("\nResult\n")
        print_json(outcome["result"])
    return 0


async def _runs_list(args: argparse.Namespace, ctx: Context) -> int:
    items = await ctx.client.walk(
        "/runs", {"machineId": args.machine, "taskId": args.task, "status": args.status}
    )
    if ctx.json:
        print_json(items)
    else:
        print_table(items, RUN_COLUMNS)
    return 0


async def _runs_get(args: argparse.Namespace, ctx: Context) -> int:
    reply = await ctx.client.call("GET", f"/runs/{args.run}")
    show_item(ctx.json, reply)
    return 0


async def _outcomes_list(args: argparse.Namespace, ctx: Context) -> int:
    items = await ctx.client.walk(
        f"/machines/{args.machine}/outcomes", {"taskId": args.task, "status": args.status}
    )
    if ctx.json:
        print_json(items)
    else:
        print_table(items, OUTCOME_COLUMNS)
    return 0


async def _outcomes_get(args: argparse.Namespace, ctx: Context) -> int:
    reply = await ctx.client.call("GET", f"/machines/{args.machine}/outcomes/{args.outcome}")
    if ctx.json:
        print_json(reply)
        return 0
    outcome = reply["item"]
    print_record({k: v for k, v in outcome.items() if k != "result"})
    sys.stdout.write("\nResult\n")
    print_json(outcome["result"])
    return 0


def _machine_task(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("machine", metavar="MACHINE")
    parser.add_argument("task", metavar="TASK")


def register(sub: Any) -> None:
    group = sub.add_parser("tasks", help="tasks: create, discover, resolve, execute")
    commands = group.add_subparsers(dest="command", required=True)

    cmd = commands.add_parser("create", help="create a task")
    cmd.add_argument("machine", metavar="MACHINE")
    cmd.add_argument("--operation", required=True)
    cmd.add_argument("--skill", help="skill key")
    cmd.add_argument("--service-type", help="service type, e.g. compute.inference")
    cmd.add_argument("--service", help="service id")
    cmd.add_argument("--input", type=json_object, help="input as JSON or @FILE")
    cmd.set_defaults(func=_create)

    cmd = commands.add_parser("list", help="list a machine's tasks")
    cmd.add_argument("machine", metavar="MACHINE")
    cmd.add_argument("--status")
    cmd.set_defaults(func=_list)

    for name, func, text in (
        ("get", _get, "show a task"),
        ("discover", _discover, "rank the services that can serve the task"),
        ("execute", _execute, "execute the task's route"),
    ):
        cmd = commands.add_parser(name, help=text)
        _machine_task(cmd)
        cmd.set_defaults(func=func)

    cmd = commands.add_parser("resolve", help="choose a candidate (the best unless --service)")
    _machine_task(cmd)
    cmd.add_argument("--service", help="service id among the candidates")
    cmd.set_defaults(func=_resolve)

    runs = sub.add_parser("runs", help="execution runs")
    run_commands = runs.add_subparsers(dest="command", required=True)
    cmd = run_commands.add_parser("list", help="list a machine's runs")
    cmd.add_argument("machine", metavar="MACHINE")
    cmd.add_argument("--task")
    cmd.add_argument("--status")
    cmd.set_defaults(func=_runs_list)
    cmd = run_commands.add_parser("get", help="show a run")
    cmd.add_argument("run", metavar="RUN")
    cmd.set_defaults(func=_runs_get)

    outcomes = sub.add_parser("outcomes", help="execution outcomes")
    outcome_commands = outcomes.add_subparsers(dest="command", required=True)
    cmd = outcome_commands.add_parser("list", help="list a machine's outcomes")
    cmd.add_argument("machine", metavar="MACHINE")
    cmd.add_argument("--task")
    cmd.add_argument("--status")
    cmd.set_defaults(func=_outcomes_list)
    cmd = outcome_commands.add_parser("get", help="show an outcome and its result")
    cmd.add_argument("machine", metavar="MACHINE")
    cmd.add_argument("outcome", metavar="OUTCOME")
    cmd.set_defaults(func=_outcomes_get)
