"""Fuzz the whole API with schemathesis against a real control-plane process.

The harness starts ``python -m controlplane serve`` (SQLite, a configured API key, operator
identity mode, every network scope allowed), a fake runtime on loopback, and then sets up over
HTTP what deep paths need: active machines, policies, an enrolled agent that has heartbeated, a
manual runtime endpoint, a task taken through execute (so routes, runs and outcomes exist) and a
graph. Real ids go to the path parameters through the schemathesis config; operations that
destroy what others need (archive, revoke, delete, patch status) get spare records of their own.

It then runs the schemathesis CLI with its default checks (``not_a_server_error``,
``response_schema_conformance`` and the rest of its default set) and reports the figures.

The bounded pass runs in the normal suite (``tests/fuzz/test_schemathesis.py``); a longer run::

    python -m tests.fuzz.harness --max-examples 500 --seed 7
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from tests.process import ControlPlaneProcess

ROOT = Path(__file__).resolve().parents[2]
API_KEY = "mmk_fuzz_admin_key_0123456789abcdef"
SEED = 20250602
MAX_EXAMPLES = 30


# ---------------------------------------------------------------- a runtime to execute against


class _RuntimeHandler(BaseHTTPRequestHandler):
    """Answers every request with a small JSON body, as an OpenAI-compatible runtime would."""

    def _answer(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        if length:
            self.rfile.read(length)
        body = b'{"object":"list","data":[{"id":"fuzz-llm","object":"model"}]}'
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _answer

    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextlib.contextmanager
def fake_runtime() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _RuntimeHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


# ---------------------------------------------------------------- setup over HTTP


def call(base: str, method: str, path: str, body: Any = None, key: str | None = API_KEY) -> Any:
    headers = {"content-type": "application/json"}
    if key is not None:
        headers["x-api-key"] = key
    data = None if body is None else json.dumps(body).encode()
    url = base + (path if path.startswith("/health") else f"/api/v1{path}")
    request = urllib.request.Request(url, data=data, method=method, headers=headers)  # noqa: S310
    try:
        with urllib.request.urlopen(request, timeout=30) as resp:  # noqa: S310
            text = resp.read()
    except urllib.error.HTTPError as exc:
        raise RuntimeError(f"{method} {path}: {exc.code} {exc.read()!r}") from None
    return json.loads(text) if text else None


@dataclass
class Fixtures:
    """Ids of the records the fuzzer's path parameters point at."""

    values: dict[str, str] = field(default_factory=dict)
    agent_token: str = ""
    spare: dict[str, str] = field(default_factory=dict)


def set_up(base: str, runtime_url: str) -> Fixtures:
    fx = Fixtures()
    machine_body = {
        "displayName": "Fuzz dock",
        "ownerId": "fuzz",
        "machineType": "robot",
        "runtimeProfile": "linux",
    }
    policy = call(base, "POST", "/policies", {"name": "fuzz"})["item"]
    spare_policy = call(base, "POST", "/policies", {"name": "spare"})["item"]
    machine = call(
        base,
        "POST",
        "/machines",
        {**machine_body, "identityRef": "did:peaq:1001", "policyIds": [policy["id"]]},
    )["item"]
    mid = machine["id"]
    call(base, "PATCH", f"/machines/{mid}", {"status": "active"})
    spare_machine = call(
        base, "POST", "/machines", {**machine_body, "identityRef": "did:peaq:1002"}
    )
    call(base, "PATCH", f"/machines/{spare_machine['item']['id']}", {"status": "active"})

    call(base, "PUT", f"/machines/{mid}/runtime-endpoints/ollama", {"endpointBaseUrl": runtime_url})
    call(base, "PUT", f"/machines/{mid}/runtime-endpoints/spare", {"endpointBaseUrl": runtime_url})
    enrolment = call(
        base,
        "POST",
        f"/machines/{mid}/agents/enrollment",
        {"label": "fuzz agent", "allowedProviderKeys": ["qvac", "vllm", "llamacpp"]},
    )
    agent, fx.agent_token = enrolment["item"], enrolment["agentToken"]
    spare_agent = call(base, "POST", f"/machines/{mid}/agents/enrollment", {"label": "spare"})
    call(
        base,
        "POST",
        "/machine-agents/heartbeat",
        {
            "machineId": mid,
            "agentId": agent["id"],
            "agentToken": fx.agent_token,
            "endpoints": [{"providerKey": "qvac", "endpointBaseUrl": runtime_url}],
            "leaseSeconds": 3600,
        },
        key=None,
    )

    task = call(
        base,
        "POST",
        f"/machines/{mid}/tasks",
        {"skillKey": "ollama.inference", "operation": "models"},
    )["item"]
    call(base, "POST", f"/machines/{mid}/tasks/{task['id']}/discover")
    call(base, "POST", f"/machines/{mid}/tasks/{task['id']}/resolve")
    execution = call(base, "POST", f"/machines/{mid}/tasks/{task['id']}/execute")
    fuzz_task, ready_task = (
        call(base, "POST", f"/machines/{mid}/tasks", {"skillKey": key, "operation": "models"})[
            "item"
        ]
        for key in ("qvac.inference", "ollama.inference")
    )
    # Resolved, so that the fuzzer's first execute runs it (200) before the state conflicts begin.
    call(base, "POST", f"/machines/{mid}/tasks/{ready_task['id']}/discover")
    call(base, "POST", f"/machines/{mid}/tasks/{ready_task['id']}/resolve")

    nodes = [
        call(base, "POST", f"/machines/{mid}/graph/nodes", {"kind": "skill", "label": label})
        for label in ("a", "b", "spare-a", "spare-b")
    ]
    a, b, c, d = (n["item"]["id"] for n in nodes)
    edge = call(
        base,
        "POST",
        f"/machines/{mid}/graph/edges",
        {"fromNodeId": a, "toNodeId": b, "kind": "uses"},
    )["item"]
    spare_edge = call(
        base,
        "POST",
        f"/machines/{mid}/graph/edges",
        {"fromNodeId": c, "toNodeId": d, "kind": "uses"},
    )["item"]

    fx.values = {
        "machineId": mid,
        "agentId": agent["id"],
        "providerKey": "ollama",
        "policyId": policy["id"],
        "taskId": fuzz_task["id"],
        "routeId": execution["route"]["id"],
        "runId": execution["run"]["id"],
        "outcomeId": execution["outcome"]["id"],
        "nodeId": a,
        "edgeId": edge["id"],
        "skillKey": "qvac.inference",
        "serviceId": "qvac-local-inference",
    }
    fx.spare = {
        "machineId": spare_machine["item"]["id"],
        "agentId": spare_agent["item"]["id"],
        "providerKey": "spare",
        "policyId": spare_policy["id"],
        "taskId": ready_task["id"],
        "nodeId": c,
        "edgeId": spare_edge["id"],
    }
    return fx


# ---------------------------------------------------------------- schemathesis configuration

# Operations that would take away what the others need run against spare records.
SPARE_OPERATIONS = {
    "updateMachine": ("machineId",),
    "archiveMachine": ("machineId",),
    "updatePolicy": ("policyId",),  # the main machine's policy must keep allowing execution
    "deletePolicy": ("policyId",),
    "execute": ("taskId",),
    "updateAgent": ("agentId",),
    "deleteAgent": ("agentId",),
    "rotateToken": ("agentId",),
    "putEndpoint": ("providerKey",),
    "deleteEndpoint": ("providerKey",),
    "deleteNode": ("nodeId",),
    "deleteEdge": ("edgeId",),
}


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{json.dumps(k)} = {_toml(v)}" for k, v in value.items()) + " }"
    raise TypeError(value)


def config_text(fx: Fixtures, *, seed: int, max_examples: int) -> str:
    lines = [
        f"seed = {seed}",
        "",
        "[generation]",
        f"max-examples = {max_examples}",
        # SPEC §1.2 refuses U+0000 in every request string; the document says so once rather than
        # on each string schema, so positive data must not contain it (negative data still may).
        "allow-x00 = false",
        'database = "none"',
        "",
        "[parameters]",
        *(f'"path.{k}" = {_toml(v)}' for k, v in fx.values.items()),
        "",
        "[auth.openapi.apiKey]",
        f"api_key = {_toml(API_KEY)}",
        "",
        "[auth.openapi.agentTokenHeader]",
        f"api_key = {_toml(fx.agent_token)}",
        "",
    ]
    for operation_id, names in SPARE_OPERATIONS.items():
        params = {f"path.{n}": fx.spare[n] for n in names}
        lines += [
            "[[operations]]",
            f"include-operation-id = {_toml(operation_id)}",
            f"parameters = {_toml(params)}",
            "",
        ]
    return "\n".join(lines)


@dataclass
class Result:
    returncode: int
    output: str
    seconds: float
    documented: int  # operations in the served document
    operations: int | None  # operations schemathesis tested
    examples: int | None  # test cases it generated and sent


_OPERATIONS = re.compile(r"^\s*Tested:\s*(\d+)", re.MULTILINE)
_CASES = re.compile(r"^\s*(\d+) generated", re.MULTILINE)


def run(
    *,
    seed: int = SEED,
    max_examples: int = MAX_EXAMPLES,
    phases: str = "examples,coverage,fuzzing",
    # One worker: CPython 3.11's ``ast.parse`` keeps its recursion counter in module state, and
    # two threads parsing at once (Hypothesis describing lambdas) fail with "AST constructor
    # recursion depth mismatch". A single worker is as fast here: the server is the bottleneck.
    workers: int = 1,
    extra_args: list[str] | None = None,
    keep: Path | None = None,
) -> Result:
    """Start everything, fuzz, stop everything; ``keep`` saves the config and reports there."""
    with tempfile.TemporaryDirectory(prefix="mm-fuzz-") as tmp, fake_runtime() as runtime_url:
        work = keep or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith("MM_")}
        env.update(
            {
                "MM_AUTH_API_KEYS": API_KEY,
                "MM_IDENTITY_VERIFICATION_MODE": "operator",
                "MM_EXECUTION_ALLOWED_SCOPES": "loopback,lan,vpn,public",
                "MM_LOG_LEVEL": "warning",
            }
        )
        server = ControlPlaneProcess(Path(tmp) / "data", env=env)
        server.start()
        try:
            fx = set_up(server.url, runtime_url)
            document = call(server.url, "GET", "/openapi.json", key=None)
            documented = sum(
                1
                for item in document["paths"].values()
                for method in item
                if method != "parameters"
            )
            config = work / "schemathesis.toml"
            config.write_text(config_text(fx, seed=seed, max_examples=max_examples))
            cmd = [
                sys.executable,
                "-m",
                "schemathesis.cli",
                "--config-file",
                str(config),
                "run",
                f"{server.url}/api/v1/openapi.json",
                "--url",
                server.url,
                "--phases",
                phases,
                "--workers",
                str(workers),
                "--no-color",
                # Without a filter schemathesis leaves out the operation serving the document it
                # loaded; this one selects every operation, that one included.
                "--include-path-regex",
                ".*",
                "--report",
                "junit",
                "--report-dir",
                str(work / "report"),
                *(extra_args or []),
            ]
            hook_env = {
                **env,
                "PYTHONPATH": str(ROOT),
                "SCHEMATHESIS_HOOKS": "tests.fuzz.hooks",
                "FUZZ_MACHINE_ID": fx.values["machineId"],
                "FUZZ_AGENT_ID": fx.values["agentId"],
            }
            started = time.monotonic()
            proc = subprocess.run(
                cmd, env=hook_env, cwd=work, capture_output=True, text=True, check=False
            )
            seconds = time.monotonic() - started
        finally:
            server.stop()
        output = proc.stdout + proc.stderr
        if server.proc is not None and server.proc.returncode not in (0, None):
            output += f"\ncontrol plane exited {server.proc.returncode}:\n{server.output()[-5000:]}"
        ops = _OPERATIONS.search(output)
        cases = _CASES.search(output)
        return Result(
            proc.returncode,
            output,
            seconds,
            documented,
            int(ops.group(1)) if ops else None,
            int(cases.group(1)) if cases else None,
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Fuzz the control plane with schemathesis.")
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument("--max-examples", type=int, default=MAX_EXAMPLES)
    parser.add_argument("--phases", default="examples,coverage,fuzzing")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--keep", type=Path, help="keep the config and reports in this directory")
    args, extra = parser.parse_known_args(argv)
    result = run(
        seed=args.seed,
        max_examples=args.max_examples,
        phases=args.phases,
        workers=args.workers,
        extra_args=extra,
        keep=args.keep,
    )
    print(result.output)
    print(
        f"fuzz: {result.operations} of {result.documented} operations, {result.examples} test"
        f" cases, {result.seconds:.0f} s, schemathesis exit {result.returncode}"
    )
    return result.returncode


if __name__ == "__main__":
    sys.exit(main())
