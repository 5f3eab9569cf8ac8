"""Heartbeat load benchmark (issue 3): one control-plane process on SQLite against wrk.

What it does, in one run:

1. starts ``python -m controlplane serve`` on a fresh data dir (SQLite, operator verification,
   restart grace 0 so the sweeper works from the start, sweep interval 2 s);
2. creates ``--agents`` machines (10,000), activates them and enrols one agent on each with two
   allowed provider keys (``qvac``, ``ollama``), then sends each agent's first heartbeat (two
   endpoints each: 20,000 agent endpoints), all over the real API;
3. drives heartbeats with ``wrk`` (``--connections`` 64, one thread), a Lua script rotating
   through the agents' bodies (consecutive requests name different agents, two endpoints each,
   no ``sequence``, so every one is a plain renewal), and, with the same wrk command and
   bodies, a bare aiohttp handler that parses the same JSON and answers a small item:
   ``--rounds`` (3) interleaved rounds of ``--duration`` (10) seconds each, heartbeat then bare,
   so that a noisy neighbour slows both alike. Each round reports requests/s, p50/p99,
   non-2xx answers (from wrk) and the server's CPU per request (``/proc/<pid>/stat``); the
   figures are the median rounds and the ratio of their throughputs (target ≥ 0.35), with the
   ratio of each round beside it;
4. measures expiry lateness: 50 agents send one heartbeat with a 5 s lease and stop; their
   ``runtime-endpoint.lease-expired`` events are read back and ``createdAt - leaseExpiredAt``
   is reported (target ≤ sweep interval + 1 s);
5. reads the control plane's peak RSS (``VmHWM``, target ≤ 200 MB) and, from ``/metrics``, its
   sweep durations while under load and the mean group-commit batch;
6. stops the server and times sweeps over a copy of the 20,000-endpoint database in this
   process: with nothing to expire (target ≤ 50 ms), and expiring all 20,000 at once (storm
   guard off; one audit event each).

Run it (wrk from Debian: ``apt-get update && apt-get install -y wrk``), from the repository root
with the project installed, on an otherwise idle machine (it prints the load average it saw)::

    python benchmarks/heartbeat_load.py                  # the issue's configuration (~4 min)
    python benchmarks/heartbeat_load.py --agents 2000 --rounds 1     # a quick look
    python benchmarks/heartbeat_load.py --log-level debug   # with an access line per heartbeat

Figures go to stdout; ``--json FILE`` also writes them as JSON.

On a shared (virtual) machine the throughput of both targets moves by ±20 % from one run to the
next; compare the per-round ratios and the CPU per request rather than single throughputs.
``--pin`` keeps each server (control plane or bare handler, with all their threads) on CPU 0 and
wrk on CPU 1, so the load generator never shares a core with a server and the heartbeat's event
loop and SQLite writer thread hand the GIL over on one core. In this project's runs it did not
remove the variation between rounds (heartbeat CPU per request 150-210 µs either way).

Choices on the heartbeat path that come from this benchmark (figures in issue 3's notes):

- successful heartbeats are access-logged at DEBUG, not INFO (``controlplane/middleware.py``):
  an INFO line per request cost about a third of the throughput;
- the heartbeat cleanup context raises CPython's young-generation GC threshold
  (``controlplane/api/heartbeat.py``): with the default, full collections stalled the loop for
  ~30 ms several times a second, which alone doubled p99;
- on SQLite a batch's rows are read and written as one JSON document each and the batch runs in
  one trip to the writer's thread (``controlplane/store/bulk.py``, ``SqliteStore.run_write``):
  the driver's GIL hand-off per row had left the writer waiting more than working;
- request bodies are parsed and responses encoded with orjson (``controlplane/http.py``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

API_KEY = "mmk_benchmark_key_0123456789abcdef"
FERNET_KEY = "u4kvGv2u1JdPZ6T9xLkJfu0O9Rf0vQ5XqkW0bYtq9mI="
HEARTBEAT = "/api/v1/machine-agents/heartbeat"
SWEEP_INTERVAL = 2.0

LUA = r"""
local bodies = {}
local counter = 0
local threads = 0
function setup(thread)
  thread:set("index", threads)
  threads = threads + 1
end
function init(args)
  for line in io.lines(args[1]) do bodies[#bodies + 1] = line end
  local n = tonumber(args[2] or "1")
  counter = math.floor((index or 0) * #bodies / n)
end
request = function()
  counter = counter + 1
  if counter > #bodies then counter = 1 end
  return wrk.format("POST", "@PATH@", {["Content-Type"] = "application/json"}, bodies[counter])
end
""".replace("@PATH@", HEARTBEAT)
BARE = r"""
import json, sys
from aiohttp import web

async def heartbeat(request):
    data = json.loads(await request.read())
    body = {"item": {"agentId": data["agentId"], "applied": True, "leaseSeconds": 45}}
    return web.Response(body=json.dumps(body).encode(), content_type="application/json")

app = web.Application()
app.router.add_post("@PATH@", heartbeat)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None)
""".replace("@PATH@", HEARTBEAT)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_healthy(url: str, proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=1):  # noqa: S310 - local URL
                return
        except urllib.error.HTTPError:
            return  # it answers
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not come up")


def peak_rss_mb(pid: int) -> float:
    text = Path(f"/proc/{pid}/status").read_text()
    match = re.search(r"VmHWM:\s+(\d+) kB", text)
    return int(match.group(1)) / 1024 if match else float("nan")


def cpu_seconds(pid: int) -> float:
    """User + system CPU the process has used so far (``/proc/<pid>/stat``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def median_round(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """The round with the median throughput (the upper one of an even count)."""
    return sorted(rounds, key=lambda r: r["requestsPerSecond"])[len(rounds) // 2]


def wrk_command(url: str, script: Path, bodies: Path, connections: int, duration: int) -> list[str]:
    """One wrk thread posting the bodies of ``bodies`` (one JSON a line) round-robin to ``url``."""
    return [
        "wrk",
        "-t1",
        f"-c{connections}",
        f"-d{duration}s",
        "--latency",
        "-s",
        str(script),
        url + HEARTBEAT,
        "--",
        str(bodies),
        "1",
    ]


def pinned(cpu: int | None) -> Any:
    """A ``preexec_fn`` that keeps the child (and every thread it starts) on one CPU, or None."""
    if cpu is None:
        return None
    return lambda: os.sched_setaffinity(0, {cpu})


def run_wrk(
    url: str,
    script: Path,
    bodies: Path,
    connections: int,
    duration: int,
    cpu: int | None = None,
) -> dict[str, Any]:
    cmd = wrk_command(url, script, bodies, connections, duration)
    out = subprocess.run(
        cmd, capture_output=True, text=True, check=True, preexec_fn=pinned(cpu)
    ).stdout
    return parse_wrk(cmd, out)


def parse_wrk(cmd: list[str], out: str) -> dict[str, Any]:
    """wrk's report (with ``--latency``) as figures."""
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    latency = {
        p: _ms(re.search(rf"^\s+{p}%\s+([\d.]+\w+)", out, re.M).group(1))  # type: ignore[union-attr]
        for p in ("50", "99")
    }
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: (.*)", out)
    total = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    return {
        "command": " ".join(cmd),
        "requestsPerSecond": rps,
        "p50Ms": latency["50"],
        "p99Ms": latency["99"],
        "requests": total,
        "non2xx": int(bad.group(1)) if bad else 0,
        "socketErrors": errors.group(1) if errors else None,
        "raw": out,
    }


def _ms(text: str) -> float:
    value = float(re.match(r"[\d.]+", text).group(0))  # type: ignore[union-attr]
    if text.endswith("us"):
        return value / 1000
    if text.endswith("ms"):
        return value
    if text.endswith("s"):
        return value * 1000
    return value


class Setup:
    """Machines, agents and first heartbeats over the real API, with bounded concurrency."""

    def __init__(self, url: str, agents: int) -> None:
        self.url = url
        self.agents = agents
        self.headers = {"x-api-key": API_KEY}
        self.enrolled: list[dict[str, str]] = []

    async def run(self) -> None:
        connector = aiohttp.TCPConnector(limit=32)
        async with aiohttp.ClientSession(connector=connector) as session:
            self.session = session
            queue: asyncio.Queue[int] = asyncio.Queue()
            for i in range(self.agents):
                queue.put_nowait(i)
            await asyncio.gather(*(self._worker(queue) for _ in range(32)))

    async def _call(self, method: str, path: str, body: Any = None) -> Any:
        async with self.session.request(
            method, self.url + path, json=body, headers=self.headers
        ) as resp:
            data = await resp.json()
            if resp.status >= 300:
                raise RuntimeError(f"{method} {path}: {resp.status} {data}")
            return data

    async def _worker(self, queue: asyncio.Queue[int]) -> None:
        while not queue.empty():
            i = queue.get_nowait()
            machine = await self._call(
                "POST",
                "/api/v1/machines",
                {
                    "displayName": f"bench {i}",
                    "ownerId": "bench",
                    "machineType": "robot",
                    "runtimeProfile": "linux",
                    "identityRef": f"did:peaq:{1_000_000 + i}",
                },
            )
            machine_id = machine["item"]["id"]
            await self._call("PATCH", f"/api/v1/machines/{machine_id}", {"status": "active"})
            agent = await self._call(
                "POST",
                f"/api/v1/machines/{machine_id}/agents/enrollment",
                {"allowedProviderKeys": ["qvac", "ollama"]},
            )
            entry = {
                "machineId": machine_id,
                "agentId": agent["item"]["id"],
                "agentToken": agent["agentToken"],
            }
            self.enrolled.append(entry)
            await self._call("POST", HEARTBEAT, heartbeat_body(entry, i))


def heartbeat_body(agent: dict[str, str], i: int, lease: int = 45) -> dict[str, Any]:
    return {
        **agent,
        "leaseSeconds": lease,
        "endpoints": [
            {
                "providerKey": "qvac",
                "endpointBaseUrl": f"http://10.{i // 65536 % 256}.{i // 256 % 256}.{i % 256}:8080",
                "modelAlias": "my-llm",
                "probePath": "/v1/models",
                "status": "active",
            },
            {
                "providerKey": "ollama",
                "endpointBaseUrl": f"http://10.{i // 65536 % 256}.{i // 256 % 256}.{i % 256}:11434/",
                "probePath": "/api/version",
                "status": "active",
            },
        ],
    }


async def measure_lateness(url: str, agents: list[dict[str, str]]) -> dict[str, Any]:
    """One 5 s heartbeat from each agent, then read back their lease-expired events."""
    from shared.timeutil import now_ms, parse_iso

    headers = {"x-api-key": API_KEY}
    started = now_ms()
    async with aiohttp.ClientSession() as session:
        for i, agent in enumerate(agents):
            async with session.post(url + HEARTBEAT, json=heartbeat_body(agent, i, 5)) as resp:
                assert resp.status == 200, await resp.text()
        await asyncio.sleep(5 + SWEEP_INTERVAL + 2)
        ids = {a["agentId"] for a in agents}
        lateness = []
        params = {"type": "runtime-endpoint.lease-expired", "limit": "500"}
        async with session.get(
            url + "/api/v1/audit-events", params=params, headers=headers
        ) as resp:
            events = (await resp.json())["items"]
    for event in events:
        # Only this phase's leases (an agent may also have lapsed while the setup ran).
        if (
            event["payload"]["agentId"] in ids
            and parse_iso(event["payload"]["leaseExpiredAt"]) > started
        ):
            lateness.append(
                parse_iso(event["createdAt"]) - parse_iso(event["payload"]["leaseExpiredAt"])
            )
    return {
        "endpoints": len(agents) * 2,
        "expired": len(lateness),
        "maxLatenessMs": max(lateness) if lateness else None,
        "meanLatenessMs": round(sum(lateness) / len(lateness), 1) if lateness else None,
        "targetMs": int((SWEEP_INTERVAL + 1) * 1000),
    }


def sweep_histogram(metrics_text: str) -> dict[str, Any]:
    total = re.search(r"^mm_sweep_duration_seconds_sum ([\d.e+-]+)", metrics_text, re.M)
    count = re.search(r"^mm_sweep_duration_seconds_count ([\d.e+-]+)", metrics_text, re.M)
    buckets = re.findall(
        r'^mm_sweep_duration_seconds_bucket\{le="([^"]+)"\} ([\d.e+-]+)', metrics_text, re.M
    )
    n = float(count.group(1)) if count else 0
    worst = None
    for le, cumulative in buckets:
        if float(cumulative) >= n and n:
            worst = le
            break
    batch_sum = re.search(r"^mm_heartbeat_batch_size_sum ([\d.e+-]+)", metrics_text, re.M)
    batch_count = re.search(r"^mm_heartbeat_batch_size_count ([\d.e+-]+)", metrics_text, re.M)
    mean_batch = None
    if batch_sum and batch_count and float(batch_count.group(1)):
        mean_batch = round(float(batch_sum.group(1)) / float(batch_count.group(1)), 1)
    return {
        "sweeps": int(n),
        "meanMs": round(float(total.group(1)) / n * 1000, 2) if total and n else None,
        "allBelowSeconds": worst,
        "meanHeartbeatBatch": mean_batch,
    }


async def offline_sweeps(data_dir: Path) -> dict[str, Any]:
    """Time sweeps over a copy of the benchmark database, in this process."""
    from controlplane.services.sweeper import Sweeper
    from controlplane.settings import load_settings
    from controlplane.store import open_store

    copy = data_dir.parent / "sweep-copy"
    shutil.copytree(data_dir, copy)
    settings = load_settings(
        None,
        {
            "data_dir": str(copy),
            "security": {"secret_key": FERNET_KEY},
            "lease": {"grace_after_start_seconds": 0, "storm_guard": False},
        },
        environ={},
    )
    store = await open_store(settings)
    try:
        async with store.read() as conn:
            count = await conn.fetchval(
                "SELECT COUNT(*) FROM runtime_endpoints WHERE source = 'agent'"
            )
            latest = await conn.fetchval("SELECT MAX(lease_expires_at) FROM runtime_endpoints")
        sweeper = Sweeper(store, settings)
        timings = []
        for _ in range(5):
            started = time.perf_counter()
            await sweeper.sweep_once()
            timings.append((time.perf_counter() - started) * 1000)
        # Everything lapses: jump the sweep's clock past every lease.
        import controlplane.services.sweeper as sweeper_module

        real = sweeper_module.now_ms
        sweeper_module.now_ms = lambda: int(latest) + 1  # type: ignore[assignment]
        try:
            started = time.perf_counter()
            await sweeper.sweep_once()
            storm_ms = (time.perf_counter() - started) * 1000
        finally:
            sweeper_module.now_ms = real
        async with store.read() as conn:
            expired = await conn.fetchval(
                "SELECT COUNT(*) FROM audit_events WHERE type = 'runtime-endpoint.lease-expired'"
            )
    finally:
        await store.close()
        shutil.rmtree(copy, ignore_errors=True)
    return {
        "endpoints": int(count),
        "idleSweepMs": round(min(timings), 2),
        "idleSweepMaxMs": round(max(timings), 2),
        "expireAllSweepMs": round(storm_ms, 1),
        "expiredEvents": int(expired),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--agents", type=int, default=10_000)
    parser.add_argument(
        "--duration", type=int, default=10, help="seconds of load per target and round"
    )
    parser.add_argument(
        "--rounds", type=int, default=3, help="interleaved rounds (heartbeat, bare, ...)"
    )
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument(
        "--pin",
        action="store_true",
        help="servers (and their threads) on CPU 0, wrk on CPU 1",
    )
    parser.add_argument("--log-level", default=os.environ.get("MM_LOG_LEVEL", "info"))
    parser.add_argument("--keep", action="store_true", help="keep the data dir")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        print("wrk is required: apt-get install -y wrk", file=sys.stderr)
        return 2

    server_cpu, wrk_cpu = (0, 1) if args.pin else (None, None)
    work = Path(tempfile.mkdtemp(prefix="mm-bench-"))
    data_dir = work / "data"
    port, bare_port = free_port(), free_port()
    url = f"http://127.0.0.1:{port}"
    env = {
        **os.environ,
        "MM_AUTH_API_KEYS": API_KEY,
        "MM_SECURITY_SECRET_KEY": FERNET_KEY,
        "MM_IDENTITY_VERIFICATION_MODE": "operator",
        "MM_LEASE_GRACE_AFTER_START_SECONDS": "0",
        "MM_LEASE_SWEEP_INTERVAL_SECONDS": str(SWEEP_INTERVAL),
        "MM_LOG_LEVEL": args.log_level,
        "MM_LOG_FORMAT": "json",
    }
    env.pop("MM_DATABASE_URL", None)
    log_file = (work / "controlplane.log").open("wb")
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "controlplane",
            "serve",
            "--port",
            str(port),
            "--data-dir",
            str(data_dir),
        ],
        env=env,
        preexec_fn=pinned(server_cpu),
        stdout=log_file,
        stderr=subprocess.STDOUT,
    )
    bare = None
    figures: dict[str, Any] = {}
    try:
        wait_healthy(url + "/health", server)
        started = time.monotonic()
        setup = Setup(url, args.agents)
        asyncio.run(setup.run())
        figures["setupSeconds"] = round(time.monotonic() - started, 1)
        print(
            f"setup: {args.agents} agents enrolled, 2 endpoints each, in {figures['setupSeconds']} s"
        )

        bodies = work / "bodies.jsonl"
        with bodies.open("w") as out:
            for i, agent in enumerate(setup.enrolled):
                out.write(json.dumps(heartbeat_body(agent, i), separators=(",", ":")) + "\n")
        script = work / "heartbeat.lua"
        script.write_text(LUA)

        bare = subprocess.Popen(
            [sys.executable, "-c", BARE, str(bare_port)], preexec_fn=pinned(server_cpu)
        )
        wait_healthy(f"http://127.0.0.1:{bare_port}/", bare)
        figures["loadAverageBefore"] = os.getloadavg()[0]
        rounds: dict[str, list[dict[str, Any]]] = {"heartbeat": [], "bare": []}
        targets = {
            "heartbeat": (url, server.pid),
            "bare": (f"http://127.0.0.1:{bare_port}", bare.pid),
        }
        for _ in range(args.rounds):
            # Interleaved, so a noisy neighbour slows both targets alike rather than one.
            for name, (target, pid) in targets.items():
                cpu = cpu_seconds(pid)
                result = run_wrk(target, script, bodies, args.connections, args.duration, wrk_cpu)
                result["cpuUsPerRequest"] = round(
                    (cpu_seconds(pid) - cpu) / max(1, result["requests"]) * 1e6, 1
                )
                rounds[name].append({k: v for k, v in result.items() if k != "raw"})
        figures["heartbeatRounds"], figures["bareRounds"] = rounds["heartbeat"], rounds["bare"]
        figures["heartbeat"] = median_round(rounds["heartbeat"])
        figures["bare"] = median_round(rounds["bare"])
        figures["ratio"] = round(
            figures["heartbeat"]["requestsPerSecond"] / figures["bare"]["requestsPerSecond"], 3
        )
        figures["ratioPerRound"] = [
            round(h["requestsPerSecond"] / b["requestsPerSecond"], 3)
            for h, b in zip(rounds["heartbeat"], rounds["bare"], strict=True)
        ]
        figures["peakRssMb"] = round(peak_rss_mb(server.pid), 1)
        # Right after the load, while the other agents' leases (45 s) are still running.
        figures["lateness"] = asyncio.run(measure_lateness(url, setup.enrolled[:50]))
        import urllib.request

        request = urllib.request.Request(url + "/metrics", headers={"x-api-key": API_KEY})  # noqa: S310 - local URL
        with urllib.request.urlopen(request) as resp:  # noqa: S310 - local URL
            figures["sweepsDuringLoad"] = sweep_histogram(resp.read().decode())

        figures["peakRssMb"] = round(peak_rss_mb(server.pid), 1)
    finally:
        if bare is not None:
            bare.send_signal(signal.SIGINT)
            bare.wait(10)
        server.send_signal(signal.SIGTERM)
        server.wait(30)
        log_file.close()
    figures["offlineSweeps"] = asyncio.run(offline_sweeps(data_dir))
    figures["logLevel"] = args.log_level

    hbf, bf = figures["heartbeat"], figures["bare"]
    print(f"control plane: {hbf['command']}")
    for name, label in (("heartbeatRounds", "heartbeats/s"), ("bareRounds", "bare req/s  ")):
        for i, r in enumerate(figures[name], 1):
            print(
                f"  round {i} {label} {r['requestsPerSecond']:.0f}  p50 {r['p50Ms']:.2f} ms"
                f"  p99 {r['p99Ms']:.2f} ms  CPU {r['cpuUsPerRequest']} µs/request"
                f"  requests {r['requests']}  non-2xx {r['non2xx']}"
            )
    print(
        f"median rounds: heartbeats/s {hbf['requestsPerSecond']:.0f} (p99 {hbf['p99Ms']:.2f} ms,"
        f" {hbf['cpuUsPerRequest']} µs CPU each), bare aiohttp req/s {bf['requestsPerSecond']:.0f}"
        f" ({bf['cpuUsPerRequest']} µs CPU each)"
    )
    print(
        f"ratio {figures['ratio']:.3f} (per round: {figures['ratioPerRound']})"
        f"   peak RSS {figures['peakRssMb']} MB"
    )
    print(f"1-min load average before the load: {figures['loadAverageBefore']:.2f} (2 cores)")
    print(f"sweeps during load: {figures['sweepsDuringLoad']}")
    print(f"offline sweeps: {figures['offlineSweeps']}")
    print(f"expiry lateness: {figures['lateness']}")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    if args.keep:
        print(f"data kept in {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
