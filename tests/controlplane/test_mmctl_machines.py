"""mmctl as a real subprocess against a real ``python -m controlplane serve`` (SPEC §18)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from eth_account import Account

pytestmark = pytest.mark.slow

API_KEY = "mmk_cli_test_key_0123456789abcdef"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _clean_env(**extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("MM_") and k not in ("STATE_DIRECTORY", "NOTIFY_SOCKET")
    }
    env.update(extra)
    return env


@dataclass
class Server:
    url: str
    data_dir: Path
    workdir: Path

    def mmctl(
        self, *args: str, key: str | None = API_KEY, **env: str
    ) -> subprocess.CompletedProcess[str]:
        extra = {"MM_URL": self.url, **env}
        if key is not None:
            extra["MM_API_KEY"] = key
        return subprocess.run(
            [sys.executable, "-m", "controlplane.mmctl.main", *args],
            env=_clean_env(**extra),
            cwd=self.workdir,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("cli")
    data_dir = root / "data"
    workdir = root / "work"
    workdir.mkdir()
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "controlplane", "serve"]
    with (
        (root / "server.log").open("w") as log,
        subprocess.Popen(
            [*command, "--port", str(port), "--data-dir", str(data_dir)],
            env=_clean_env(MM_AUTH_API_KEYS=API_KEY, MM_LOG_FORMAT="json"),
            cwd=workdir,
            stdout=log,
            stderr=subprocess.STDOUT,
        ) as proc,
    ):
        try:
            _wait_until_healthy(url, proc)
        except RuntimeError:
            proc.kill()
            pytest.fail("server did not start: " + (root / "server.log").read_text())
        try:
            yield Server(url, data_dir, workdir)
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()


def _wait_until_healthy(url: str, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 20
    while True:
        try:
            # A fixed http:// URL on loopback, built by the fixture.
            with urllib.request.urlopen(f"{url}/health", timeout=1) as resp:  # noqa: S310
                if resp.status == 200:
                    return
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError("server did not start")
        time.sleep(0.1)


def test_register_with_a_key_file_then_list_and_get_as_json(server: Server, tmp_path: Path) -> None:
    account = Account.create()
    key_file = tmp_path / "identity.key"
    key_file.write_text("0x" + bytes(account.key).hex() + "\n")
    reply = server.mmctl(
        "--json",
        "machines",
        "register",
        "--identity-key",
        str(key_file),
        "--name",
        "Dock robot 7",
        "--owner",
        "ops",
        "--type",
        "robot",
        "--profile",
        "linux-docker",
        "--label",
        "site=berlin",
        "--capability",
        "llm.chat",
    )
    assert reply.returncode == 0, reply.stderr
    machine = json.loads(reply.stdout)["item"]
    assert machine["status"] == "active"
    assert machine["identityRef"] == "did:peaq:0x" + account.address[2:].lower()
    assert machine["identityProof"]["signerAddress"] == account.address
    assert machine["identityProof"]["resolutionSource"] == "self-controlled-did"
    assert machine["labels"] == {"site": "berlin"}

    listed = server.mmctl("--json", "machines", "list", "--status", "active")
    assert listed.returncode == 0, listed.stderr
    assert machine["id"] in [m["id"] for m in json.loads(listed.stdout)["items"]]

    got = server.mmctl("--json", "machines", "get", machine["id"])
    assert got.returncode == 0
    assert json.loads(got.stdout)["item"] == machine

    table = server.mmctl("machines", "list")
    assert table.returncode == 0
    assert table.stdout.splitlines()[0].split()[:3] == ["ID", "NAME", "STATUS"]
    assert machine["id"] in table.stdout

    archived = server.mmctl("machines", "archive", machine["id"])
    assert archived.returncode == 0, archived.stderr
    assert server.mmctl("--json", "machines", "get", machine["id"]).stdout.count('"archived"') == 1


def test_create_activate_and_audit_export(server: Server, tmp_path: Path) -> None:
    created = server.mmctl(
        "--json",
        "machines",
        "create",
        "--name",
        "n",
        "--owner",
        "o",
        "--type",
        "t",
        "--profile",
        "p",
    )
    assert created.returncode == 0, created.stderr
    machine_id = json.loads(created.stdout)["item"]["id"]
    # The server runs in eip191 mode: no identity, so activation is refused with the API's code.
    refused = server.mmctl("machines", "activate", machine_id)
    assert refused.returncode == 1
    assert refused.stderr.startswith("MACHINE_NOT_ACTIVATED: ")

    out = tmp_path / "audit.jsonl"
    exported = server.mmctl("audit", "export", "--machine", machine_id, "--out", str(out))
    assert exported.returncode == 0, exported.stderr
    events = [json.loads(line) for line in out.read_text().splitlines()]
    assert [e["type"] for e in events] == ["machine.created"]
    assert events[0]["machineId"] == machine_id


def test_api_errors_exit_1_with_code_and_message(server: Server) -> None:
    missing = server.mmctl("machines", "get", "mach_missing")
    assert missing.returncode == 1
    assert missing.stderr.strip() == "NOT_FOUND: machine mach_missing not found"
    unauthenticated = server.mmctl("machines", "list", key="mmk_wrong_key_0123456789abcdef")
    assert unauthenticated.returncode == 1
    assert unauthenticated.stderr.startswith("AUTH_INVALID: ")
    offline = server.mmctl("--url", f"http://127.0.0.1:{_free_port()}", "machines", "list")
    assert offline.returncode == 1
    assert offline.stderr.startswith("CONNECTION_ERROR: ")


def test_usage_errors_exit_2(server: Server, tmp_path: Path) -> None:
    bad_key = tmp_path / "bad.key"
    bad_key.write_text("not a key")
    for args in (
        ("machines",),
        ("machines", "list", "--status", "bogus"),
        ("machines", "create", "--owner", "o", "--type", "t", "--profile", "p"),
        (
            "machines",
            "create",
            "--name",
            "n",
            "--owner",
            "o",
            "--type",
            "t",
            "--profile",
            "p",
            "--label",
            "novalue",
        ),
        (
            "machines",
            "register",
            "--identity-key",
            str(bad_key),
            "--name",
            "n",
            "--owner",
            "o",
            "--type",
            "t",
            "--profile",
            "p",
        ),
        ("policies", "create", "--body", "[1]"),
    ):
        reply = server.mmctl(*args)
        assert reply.returncode == 2, (args, reply.stdout, reply.stderr)


def test_policies_commands(server: Server) -> None:
    created = server.mmctl(
        "--json",
        "policies",
        "create",
        "--body",
        '{"name": "from-body", "regionRules": ["eu"]}',
        "--allow-skill",
        "qvac.inference",
        "--budget-cap",
        "USD:12.50",
        "--no-handoff-allowed",
    )
    assert created.returncode == 0, created.stderr
    policy = json.loads(created.stdout)["item"]
    assert policy["name"] == "from-body"
    assert policy["regionRules"] == ["eu"]
    assert policy["allowedSkillKeys"] == ["qvac.inference"]
    assert policy["budgetCap"] == {"currency": "USD", "amount": 12.5}
    assert policy["handoffAllowed"] is False

    updated = server.mmctl(
        "--json", "policies", "update", policy["id"], "--clear-budget-cap", "--name", "renamed"
    )
    assert updated.returncode == 0, updated.stderr
    assert json.loads(updated.stdout)["item"]["budgetCap"] is None
    assert json.loads(updated.stdout)["item"]["name"] == "renamed"

    invalid = server.mmctl("policies", "create", "--name", "x", "--budget-cap", "usd:1")
    assert invalid.returncode == 1
    assert invalid.stderr.startswith("VALIDATION_ERROR: ")

    listed = server.mmctl("policies", "list")
    assert "renamed" in listed.stdout
    assert server.mmctl("policies", "delete", policy["id"]).returncode == 0
    assert server.mmctl("policies", "get", policy["id"]).stderr.startswith("NOT_FOUND: ")


def test_api_keys_create_list_revoke_and_a_created_key_authenticates(server: Server) -> None:
    data = ("--data-dir", str(server.data_dir))
    created = server.mmctl("--json", "api-keys", "create", "--label", "ci", *data, key=None)
    assert created.returncode == 0, created.stderr
    assert f"database: sqlite:///{server.data_dir / 'mm.sqlite3'}" in created.stderr
    new_key = json.loads(created.stdout)
    assert new_key["id"].startswith("key_")
    assert new_key["key"].startswith("mmk_")
    assert new_key["key"] not in created.stderr

    works = server.mmctl("machines", "list", key=new_key["key"])
    assert works.returncode == 0, works.stderr

    doomed = json.loads(
        server.mmctl("--json", "api-keys", "create", "--label", "doomed", *data).stdout
    )
    revoked = server.mmctl("api-keys", "revoke", doomed["id"], *data)
    assert revoked.returncode == 0, revoked.stderr
    refused = server.mmctl("machines", "list", key=doomed["key"])
    assert refused.returncode == 1
    assert refused.stderr.startswith("AUTH_INVALID: ")
    again = server.mmctl("api-keys", "revoke", doomed["id"], *data)
    assert again.returncode == 1
    assert again.stderr.splitlines()[-1].startswith("NOT_FOUND: ")

    # Through the environment this time, as an operator shell with MM_DATA_DIR would.
    listed = server.mmctl("--json", "api-keys", "list", MM_DATA_DIR=str(server.data_dir))
    assert listed.returncode == 0, listed.stderr
    rows = {k["id"]: k for k in json.loads(listed.stdout)["items"]}
    assert rows[new_key["id"]]["revokedAt"] is None
    assert rows[doomed["id"]]["revokedAt"] is not None
    assert new_key["key"] not in listed.stdout


def test_api_keys_refuse_a_database_that_does_not_exist(server: Server, tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    reply = server.mmctl("api-keys", "create", "--label", "x", "--data-dir", str(missing))
    assert reply.returncode == 1
    assert "does not exist" in reply.stderr
    assert not missing.exists()


@pytest.mark.skipif(Path("/var/lib/mm-controlplane").exists(), reason="unit state dir exists here")
def test_local_commands_never_fall_back_to_mm_data(server: Server) -> None:
    reply = server.mmctl("api-keys", "list")
    assert reply.returncode == 2
    assert "database.url" in reply.stderr
    assert "data_dir" in reply.stderr
    assert not (server.workdir / "mm-data").exists()


def test_db_migrate_creates_and_then_finds_nothing_to_do(server: Server, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'fresh' / 'mm.sqlite3'}"
    first = server.mmctl("db", "migrate", "--database-url", url)
    assert first.returncode == 0, first.stderr
    assert f"database: {url}" in first.stderr
    assert "applied migrations: 1" in first.stderr
    second = server.mmctl("db", "migrate", MM_DATABASE_URL=url)
    assert second.returncode == 0
    assert "up to date" in second.stderr
    listed = server.mmctl("--json", "api-keys", "list", "--database-url", url)
    assert listed.returncode == 0, listed.stderr
    assert json.loads(listed.stdout) == {"items": []}


def test_audit_tail_prints_new_events_oldest_first(server: Server) -> None:
    command = [sys.executable, "-m", "controlplane.mmctl.main", "--json", "audit", "tail"]
    with subprocess.Popen(
        [*command, "--type", "policy.*"],
        env=_clean_env(MM_URL=server.url, MM_API_KEY=API_KEY),
        cwd=server.workdir,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    ) as proc:
        try:
            time.sleep(1.5)  # let tail print its backlog and start polling
            names = [f"tail-{i}" for i in range(3)]
            for name in names:
                assert server.mmctl("policies", "create", "--name", name).returncode == 0
            seen: list[str] = []
            assert proc.stdout is not None
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline and not set(names) <= set(seen):
                line = proc.stdout.readline()
                if not line:
                    break
                event = json.loads(line)
                assert event["type"].startswith("policy.")
                if event["type"] == "policy.created":
                    seen.append(event["payload"]["name"])
            assert [n for n in seen if n in names] == names
        finally:
            proc.terminate()
            proc.wait(timeout=10)
