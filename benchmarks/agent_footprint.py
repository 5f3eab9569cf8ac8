"""Footprint of ``mm-agent``: memory and CPU of the real daemon doing its normal job.

The agent runs as a real process with its default settings (15 s interval, autodiscovery on) and
four runtimes, against the fake control plane and fake runtimes of ``tests/agent/fakes.py``, all on
loopback. RSS and CPU time are sampled from ``/proc`` once a second. A bare
``python -c "import asyncio; asyncio.run(asyncio.sleep(N))"`` is measured alongside as a baseline:
the part of the figure that any asyncio Python process costs.

Targets (issue 4): peak RSS ≤ 50 MB and ≤ 1 % of one core on average. Exit status 0 when both hold.

    /tmp/venv/bin/python benchmarks/agent_footprint.py --seconds 300
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.agent.fakes import FakeControlPlane, FakeRuntime  # noqa: E402

RSS_TARGET_MB = 50.0
CPU_TARGET_PERCENT = 1.0
TICKS = os.sysconf("SC_CLK_TCK")


@dataclass
class Samples:
    name: str
    pid: int
    started: float = field(default_factory=time.monotonic)
    rss_kb: list[int] = field(default_factory=list)
    current_kb: list[int] = field(default_factory=list)
    pss_kb: list[int] = field(default_factory=list)
    cpu: list[tuple[float, float]] = field(default_factory=list)  # (wall, cpu seconds)

    def sample(self) -> None:
        try:
            stat = Path(f"/proc/{self.pid}/stat").read_text()
            status = Path(f"/proc/{self.pid}/status").read_text()
            rollup = Path(f"/proc/{self.pid}/smaps_rollup").read_text()
        except (FileNotFoundError, ProcessLookupError):
            return
        fields = stat.rsplit(")", 1)[1].split()
        cpu_seconds = (int(fields[11]) + int(fields[12])) / TICKS  # utime + stime
        self.cpu.append((time.monotonic(), cpu_seconds))
        for line in status.splitlines():
            if line.startswith("VmHWM:"):  # the kernel's own peak RSS
                self.rss_kb.append(int(line.split()[1]))
            elif line.startswith("VmRSS:"):
                self.current_kb.append(int(line.split()[1]))
        for line in rollup.splitlines():
            if line.startswith("Pss:"):
                self.pss_kb.append(int(line.split()[1]))

    def cpu_percent(self, skip_seconds: float) -> float:
        """Average CPU % of one core after the first ``skip_seconds`` (start-up imports)."""
        steady = [(w, c) for w, c in self.cpu if w - self.started >= skip_seconds]
        if len(steady) < 2:
            return float("nan")
        (w0, c0), (w1, c1) = steady[0], steady[-1]
        return 100.0 * (c1 - c0) / (w1 - w0)

    def total_cpu_seconds(self) -> float:
        return self.cpu[-1][1] if self.cpu else float("nan")

    @property
    def peak_rss_mb(self) -> float:
        return max(self.rss_kb, default=0) / 1024

    @property
    def last_rss_mb(self) -> float:
        return (self.current_kb[-1] if self.current_kb else 0) / 1024

    @property
    def peak_pss_mb(self) -> float:
        return max(self.pss_kb, default=0) / 1024


def write_config(workdir: Path, cp: FakeControlPlane, runtimes: dict[str, tuple[str, str]]) -> Path:
    token = workdir / "agent-token"
    token.write_text(cp.token + "\n")
    token.chmod(0o600)
    lines = [
        "[control_plane]",
        f'url = "{cp.url}"',
        f'machine_id = "{cp.machine_id}"',
        f'agent_id = "{cp.agent_id}"',
        f'token_file = "{token}"',
        "[state]",
        f'dir = "{workdir / "state"}"',
    ]
    for key, (kind, url) in runtimes.items():
        lines += ["[[runtimes]]", f'provider_key = "{key}"', f'kind = "{kind}"']
        lines.append(f'endpoint_base_url = "{url}"')
    path = workdir / "agent.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


async def measure(seconds: float, warmup: float) -> int:
    cp = FakeControlPlane(allowed_provider_keys=["qvac", "ollama", "vllm", "llamacpp"])
    await cp.start()
    servers = {
        "qvac": ("qvac", await FakeRuntime("openai").start()),
        "ollama": ("ollama", await FakeRuntime("ollama").start()),
        "vllm": ("openai", await FakeRuntime("openai").start()),
        "llamacpp": ("llamacpp", await FakeRuntime("llamacpp").start()),
    }
    with tempfile.TemporaryDirectory(prefix="mm-agent-footprint-") as tmp:
        workdir = Path(tmp)
        config = write_config(
            workdir, cp, {key: (kind, server.url) for key, (kind, server) in servers.items()}
        )
        env = {k: v for k, v in os.environ.items() if not k.startswith(("MM_AGENT_", "NOTIFY_"))}
        with (workdir / "agent.err").open("wb") as err:
            agent = subprocess.Popen(
                [sys.executable, "-m", "agent", "run", "--config", str(config)],
                stdout=subprocess.DEVNULL,
                stderr=err,
                env=env,
            )
        baseline = subprocess.Popen(
            [sys.executable, "-c", f"import asyncio; asyncio.run(asyncio.sleep({seconds + 30}))"]
        )
        measured = [Samples("mm-agent", agent.pid), Samples("baseline", baseline.pid)]
        deadline = time.monotonic() + seconds
        try:
            while time.monotonic() < deadline:
                for samples in measured:
                    samples.sample()
                if agent.poll() is not None:
                    print((workdir / "agent.err").read_text(), file=sys.stderr)
                    raise SystemExit(f"mm-agent exited early with {agent.returncode}")
                await asyncio.sleep(1.0)
        finally:
            agent.send_signal(signal.SIGTERM)
            baseline.kill()
            await asyncio.to_thread(agent.wait, 10)
            await asyncio.to_thread(baseline.wait, 10)
        for server in (s for _, s in servers.values()):
            await server.stop()
        await cp.stop()

    agent_samples, base_samples = measured
    applied = sum(1 for hb in cp.heartbeats if hb.applied)
    rows = [
        ("", "mm-agent", "baseline"),
        ("peak RSS (MB)", f"{agent_samples.peak_rss_mb:.1f}", f"{base_samples.peak_rss_mb:.1f}"),
        (
            "RSS at the end (MB)",
            f"{agent_samples.last_rss_mb:.1f}",
            f"{base_samples.last_rss_mb:.1f}",
        ),
        ("peak PSS (MB)", f"{agent_samples.peak_pss_mb:.1f}", f"{base_samples.peak_pss_mb:.1f}"),
        (
            f"avg CPU after {warmup:g} s (% of one core)",
            f"{agent_samples.cpu_percent(warmup):.3f}",
            f"{base_samples.cpu_percent(warmup):.3f}",
        ),
        (
            "CPU seconds incl. start-up",
            f"{agent_samples.total_cpu_seconds():.2f}",
            f"{base_samples.total_cpu_seconds():.2f}",
        ),
    ]
    width = max(len(r[0]) for r in rows)
    print(f"mm-agent footprint over {seconds:g} s, 4 runtimes, default 15 s interval")
    for label, a, b in rows:
        print(f"  {label.ljust(width)}  {a:>10}  {b:>10}")
    print(f"  heartbeats applied: {applied} (runtimes per heartbeat: {len(servers)})")
    ok_rss = agent_samples.peak_rss_mb <= RSS_TARGET_MB
    ok_cpu = agent_samples.cpu_percent(warmup) <= CPU_TARGET_PERCENT
    print(f"  target RSS ≤ {RSS_TARGET_MB:g} MB: {'met' if ok_rss else 'MISSED'}")
    print(f"  target CPU ≤ {CPU_TARGET_PERCENT:g} %: {'met' if ok_cpu else 'MISSED'}")
    return 0 if ok_rss and ok_cpu and applied > 0 else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--seconds", type=float, default=300.0, help="measurement time (300)")
    parser.add_argument(
        "--warmup", type=float, default=5.0, help="seconds of start-up left out of the CPU average"
    )
    args = parser.parse_args()
    return asyncio.run(measure(args.seconds, args.warmup))


if __name__ == "__main__":
    raise SystemExit(main())
