"""`llmesh keys ...` end to end against a real redis-server, and the command dispatcher."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from libs.cli import main as cli_main
from libs.keys import apikey
from libs.testing.redis_server import RedisServer


def llmesh(redis: RedisServer, *args: str, command: str = "keys") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "libs.cli.main", command, "--redis-url", redis.url, *args],
        capture_output=True,
        text=True,
        timeout=30,
        env={"LLMESH_KEY_PEPPER": "cli-test", "PATH": "/usr/bin:/bin"},
        check=False,
    )


def test_create_list_revoke(redis_proc: RedisServer) -> None:
    created = llmesh(redis_proc, "create", "--tenant", "clitest", "--models", "a,b", "--rpm", "7")
    assert created.returncode == 0, created.stderr
    key = created.stdout.strip()
    parsed = apikey.parse(key)
    assert "shown only once" in created.stderr

    listed = llmesh(redis_proc, "list", "--tenant", "clitest", "--json")  # options after the action too
    rows = json.loads(listed.stdout)
    assert [r["key_id"] for r in rows] == [parsed.key_id]
    assert rows[0]["models"] == ["a", "b"] and rows[0]["rpm"] == 7 and not rows[0]["revoked"]
    assert parsed.secret not in listed.stdout

    table = llmesh(redis_proc, "list", "--tenant", "clitest")
    assert parsed.key_id in table.stdout and "active" in table.stdout

    revoked = llmesh(redis_proc, "revoke", parsed.key_id)
    assert revoked.returncode == 0 and "revoked" in revoked.stdout
    rows = json.loads(llmesh(redis_proc, "--json", "list", "--tenant", "clitest").stdout)
    assert rows[0]["revoked"] is True


def test_revoke_unknown_fails_cleanly(redis_proc: RedisServer) -> None:
    out = llmesh(redis_proc, "revoke", "0123456789abcdef")
    assert out.returncode == 1
    assert "no API key with id" in out.stderr and "Traceback" not in out.stderr


def test_dispatch_unknown_and_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main.main(["nope"]) == 2
    assert "unknown command" in capsys.readouterr().err
    assert cli_main.main(["--help"]) == 0
    assert "keys" in capsys.readouterr().out


def test_tenants_set_and_show(redis_proc: RedisServer) -> None:
    def tenants(*args: str) -> subprocess.CompletedProcess[str]:
        return llmesh(redis_proc, *args, command="tenants")

    assert (
        json.loads(tenants("show", "--tenant", "clitenant", "--json").stdout)["safety_fail_mode"] == "inherit"
    )
    changed = tenants("set", "--tenant", "clitenant", "--safety-fail-mode", "open")
    assert changed.returncode == 0, changed.stderr
    assert "safety_fail_mode=open" in changed.stdout
    assert json.loads(tenants("show", "--tenant", "clitenant", "--json").stdout)["safety_fail_mode"] == "open"
    refused = tenants("set", "--tenant", "two words", "--safety-fail-mode", "open")
    assert refused.returncode == 1 and "tenant must be" in refused.stderr
