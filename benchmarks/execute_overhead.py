"""Execute overhead benchmark (issue 5): what the control plane adds to a runtime call.

In one run, against the same fake runtime (a small aiohttp process on loopback that answers
``POST /v1/chat/completions`` with a fixed JSON body):

1. starts ``python -m controlplane serve`` on a fresh data dir (SQLite by default, or
   ``--database-url postgresql://...``) with every network scope allowed, creates and activates a
   machine and registers the runtime as its ``qvac`` endpoint (bearer token, model alias);
2. for each of ``--iterations`` rounds (default 300, after ``--warmup`` 20): creates a task,
   discovers and resolves it (not timed), then times ``POST .../execute`` and, right after, a
   direct ``POST /v1/chat/completions`` to the runtime with the same body and headers;
3. prints p50/p95/p99 of both and the p50 difference (the control-plane overhead: two write
   transactions, the policy and catalogue checks, the address rule, result decoding and
   serialisation). Target: ≤ 5 ms p50 added.

Run it::

    python benchmarks/execute_overhead.py
    python benchmarks/execute_overhead.py --iterations 1000 --json figures.json
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

API_KEY = "mmk_benchmark_key_0123456789abcdef"
FERNET_KEY = "u4kvGv2u1JdPZ6T9xLkJfu0O9Rf0vQ5XqkW0bYtq9mI="
TOKEN = "benchmark-runtime-token"  # noqa: S105 - a fake runtime's test token
INPUT = {
    "messages": [{"role": "user", "content": "Summarise the dock schedule."}],
    "max_tokens": 64,
}

RUNTIME = r"""
import sys
from aiohttp import web
BODY = ('{"id":"chatcmpl-7f3a","object":"chat.completion","created":1748854929,"model":"my-llm",'
        '"choices":[{"index":0,"message":{"role":"assistant","content":"Three inbound trucks."},'
        '"finish_reason":"stop"}],"usage":{"prompt_tokens":24,"completion_tokens":19,"total_tokens":43}}')
async def chat(request):
    await request.read()
    return web.Response(text=BODY, content_type="application/json")
app = web.Application()
app.router.add_post("/v1/chat/completions", chat)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None, access_log=None)
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def wait_healthy(
    session: aiohttp.ClientSession, url: str, proc: subprocess.Popen[bytes]
) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{url}: process exited {proc.returncode}")
        with contextlib.suppress(aiohttp.ClientError, OSError):
            async with session.get(url) as resp:
                if resp.status < 500:
                    return
        await asyncio.sleep(0.05)
    raise RuntimeError(f"{url} did not come up")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


async def call(session: aiohttp.ClientSession, method: str, url: str, body: Any = None) -> Any:
    async with session.request(method, url, json=body, headers={"x-api-key": API_KEY}) as resp:
        data = await resp.json()
        if resp.status >= 300:
            raise RuntimeError(f"{method} {url}: {resp.status} {data}")
        return data


async def measure(args: argparse.Namespace, api: str, runtime: str) -> dict[str, Any]:
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        await wait_healthy(session, api.replace("/api/v1", "") + "/health", args.cp_proc)
        await wait_healthy(session, runtime + "/v1/models", args.rt_proc)
        machine = await call(
            session,
            "POST",
            f"{api}/machines",
            {
                "displayName": "bench",
                "ownerId": "bench",
                "machineType": "robot",
                "runtimeProfile": "linux",
                "identityRef": "did:peaq:0x00000000000000000000000000000000000000aa",
            },
        )
        mid = machine["item"]["id"]
        await call(session, "PATCH", f"{api}/machines/{mid}", {"status": "active"})
        await call(
            session,
            "PUT",
            f"{api}/machines/{mid}/runtime-endpoints/qvac",
            {"endpointBaseUrl": runtime, "authToken": TOKEN, "modelAlias": "my-llm"},
        )
        direct_body = json.dumps({**INPUT, "model": "my-llm"}).encode()
        direct_headers = {
            "accept": "application/json",
            "content-type": "application/json",
            "authorization": f"Bearer {TOKEN}",
            "x-request-id": "bench",
        }
        execute_ms: list[float] = []
        direct_ms: list[float] = []
        for index in range(args.warmup + args.iterations):
            task = await call(
                session,
                "POST",
                f"{api}/machines/{mid}/tasks",
                {"skillKey": "qvac.inference", "operation": "chat", "input": INPUT},
            )
            tid = task["item"]["id"]
            await call(session, "POST", f"{api}/machines/{mid}/tasks/{tid}/discover")
            await call(session, "POST", f"{api}/machines/{mid}/tasks/{tid}/resolve")

            started = time.perf_counter()
            async with session.post(
                f"{api}/machines/{mid}/tasks/{tid}/execute", headers={"x-api-key": API_KEY}
            ) as resp:
                await resp.read()
                assert resp.status == 200, resp.status
            execute = (time.perf_counter() - started) * 1000

            started = time.perf_counter()
            async with session.post(
                f"{runtime}/v1/chat/completions", data=direct_body, headers=direct_headers
            ) as resp:
                await resp.read()
                assert resp.status == 200, resp.status
            direct = (time.perf_counter() - started) * 1000

            if index >= args.warmup:
                execute_ms.append(execute)
                direct_ms.append(direct)

    def summary(values: list[float]) -> dict[str, float]:
        return {
            "p50": round(statistics.median(values), 3),
            "p95": round(percentile(values, 0.95), 3),
            "p99": round(percentile(values, 0.99), 3),
            "mean": round(statistics.fmean(values), 3),
        }

    figures = {
        "iterations": args.iterations,
        "database": args.database_url or "sqlite (data dir)",
        "execute_ms": summary(execute_ms),
        "direct_ms": summary(direct_ms),
    }
    figures["overhead_p50_ms"] = round(
        figures["execute_ms"]["p50"] - figures["direct_ms"]["p50"], 3
    )
    figures["target_met"] = figures["overhead_p50_ms"] <= 5.0
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--database-url", help="postgresql://... (default: SQLite in a temp dir)")
    parser.add_argument("--log-level", default="info")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="mm-exec-bench-") as tmp:
        cp_port, rt_port = free_port(), free_port()
        env = {
            **os.environ,
            "MM_AUTH_API_KEYS": API_KEY,
            "MM_SECURITY_SECRET_KEY": FERNET_KEY,
            "MM_PAIRING_JWT_SECRET": "benchmark-pairing-secret",
            "MM_IDENTITY_VERIFICATION_MODE": "operator",
            "MM_EXECUTION_ALLOWED_SCOPES": "loopback,lan,vpn,public",
            "MM_LOG_LEVEL": args.log_level,
            "MM_LOG_FORMAT": "json",
        }
        if args.database_url:
            env["MM_DATABASE_URL"] = args.database_url
        log = Path(tmp, "controlplane.log").open("wb")  # noqa: SIM115 - closed below
        args.cp_proc = subprocess.Popen(
            [sys.executable, "-m", "controlplane", "serve", "--port", str(cp_port),
             "--data-dir", str(Path(tmp, "data"))],
            env=env, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        args.rt_proc = subprocess.Popen([sys.executable, "-c", RUNTIME, str(rt_port)])
        try:
            figures = asyncio.run(
                measure(args, f"http://127.0.0.1:{cp_port}/api/v1", f"http://127.0.0.1:{rt_port}")
            )
        finally:
            for proc in (args.cp_proc, args.rt_proc):
                proc.terminate()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(15)
            log.close()

    print(json.dumps(figures, indent=2))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return 0 if figures["target_met"] else 1


if __name__ == "__main__":
    sys.exit(main())
