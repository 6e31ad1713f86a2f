"""`python -m services.gateway` as a real process: settings, health, metrics, graceful SIGTERM."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from libs.testing.process import ManagedProcess, free_port
from tests.services.gateway.conftest import Stack
from tests.services.gateway.fake_router import GOOD_KEY

ROOT = Path(__file__).resolve().parents[3]


async def _until(check: object, timeout_s: float, proc: ManagedProcess) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while asyncio.get_running_loop().time() < deadline:
        if not proc.alive():
            raise RuntimeError(f"gateway exited early:\n{proc.log_tail()}")
        try:
            if await check():  # type: ignore[operator]
                return
        except httpx.HTTPError:
            pass
        await asyncio.sleep(0.05)
    raise TimeoutError(f"gateway not ready:\n{proc.log_tail()}")


@pytest.mark.asyncio(loop_scope="session")
async def test_sigterm_drains_in_flight_requests(stack: Stack, tmp_path: Path) -> None:
    port, metrics_port = free_port(), free_port()
    proc = ManagedProcess(
        name="gateway",
        argv=[sys.executable, "-m", "services.gateway"],
        log_path=tmp_path / "gateway.log",
        env={
            "LLMESH_GATEWAY_PORT": str(port),
            "LLMESH_GATEWAY_METRICS_PORT": str(metrics_port),
            "LLMESH_GATEWAY_ROUTER_ADDR": f"127.0.0.1:{stack.router_port}",
            "LLMESH_GATEWAY_GRACE_PERIOD_S": "5",
            "LLMESH_GATEWAY_DRAIN_DELAY_S": "1",
            "OTEL_TRACES_EXPORTER": "none",
        },
        cwd=ROOT,
    ).start()
    try:
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{port}", headers={"authorization": f"Bearer {GOOD_KEY}"}, timeout=10
        ) as http:

            async def healthy() -> bool:
                return (await http.get("/healthz")).status_code == 200

            await _until(healthy, 30, proc)
            body = {"model": "wait", "messages": [{"role": "user", "content": "hi"}]}
            in_flight = asyncio.create_task(http.post("/v1/chat/completions", json=body))
            await asyncio.sleep(0.4)  # the router is now holding the request for ~1 s
            metrics = (await http.get(f"http://127.0.0.1:{metrics_port}/metrics")).text
            assert 'llmesh_gateway_http_in_flight{route="/v1/chat/completions"} 1.0' in metrics
            proc.signal(signal.SIGTERM)

            async def draining() -> bool:
                r = await http.get("/healthz")
                return r.status_code == 503 and r.json()["status"] == "draining"

            await _until(draining, 1.0, proc)  # not ready, yet still answering during the drain delay
            reply = await in_flight
            assert reply.status_code == 200, reply.text
            assert reply.json()["model"] == "wait"
        for _ in range(100):
            if not proc.alive():
                break
            await asyncio.sleep(0.05)
        assert proc.popen is not None and proc.popen.wait(timeout=5) == 0
        log = proc.log_path.read_text()
        assert '"msg": "draining"' in log and '"msg": "stopped"' in log
        assert GOOD_KEY not in log
    finally:
        proc.stop(grace_s=5)


def test_bad_settings_exit_with_a_clear_message() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "services.gateway"],
        env={"LLMESH_GATEWAY_ROUTER_ADDR": "no-port", "PATH": "/usr/bin:/bin"},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 2
    assert "LLMESH_GATEWAY_ROUTER_ADDR" in out.stderr and "host:port" in out.stderr
