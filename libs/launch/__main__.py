"""`make up`: serve the whole mesh on fixed ports until Ctrl-C, then stop it gracefully.

Settings (environment): LLMESH_PORT (Envoy listener, 8080), LLMESH_ADMIN_PORT (Envoy admin,
9901), LLMESH_DEV_API_KEY (the development key to install; generated and printed when unset),
LLMESH_REDIS_URL (use an existing Redis instead of starting one), LLMESH_RUN_DIR (logs,
build/run), LLMESH_TRITON (1 = serve the model through the bundled Triton server),
REPLICAS_INFERENCE / REPLICAS_ROUTER (replica counts, 1 each), OTEL_EXPORTER_OTLP_ENDPOINT
(send every component's spans there).
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import threading
from pathlib import Path

from libs.launch.mesh import Mesh, MeshConfig

DEFAULT_PORTS = {
    "router-0": 50051, "tokenizer": 50052, "safety": 50053, "cache": 50054, "inference-0": 50055,
    "gateway": 8081, "router-0-metrics": 9101, "tokenizer-metrics": 9102, "safety-metrics": 9103,
    "cache-metrics": 9104, "inference-0-metrics": 9105, "gateway-metrics": 9106, "redis": 6379,
    "triton-http": 8000, "triton-grpc": 8001, "triton-metrics": 8002,
}  # fmt: skip


async def install_dev_key(redis_url: str, key: str | None) -> str:
    """Install the development API key (tenant `dev`, all models) and return it."""
    from libs.keys import KeyStore

    store = KeyStore.from_url(redis_url)
    try:
        plaintext, _record = await store.create("dev", plaintext=key or None)
    finally:
        await store.close()
    return plaintext


def main() -> None:
    port = int(os.environ.get("LLMESH_PORT", "8080"))
    ports = dict(DEFAULT_PORTS)
    cfg = MeshConfig(
        workdir=Path(os.environ.get("LLMESH_RUN_DIR", "build/run")),
        envoy_port=port,
        envoy_admin_port=int(os.environ.get("LLMESH_ADMIN_PORT", "9901")),
        ports={**ports, "envoy": port, "envoy-admin": int(os.environ.get("LLMESH_ADMIN_PORT", "9901"))},
        inference_replicas=int(os.environ.get("REPLICAS_INFERENCE", "1")),
        router_replicas=int(os.environ.get("REPLICAS_ROUTER", "1")),
        with_triton=os.environ.get("LLMESH_TRITON", "0") == "1",
        redis_url=os.environ.get("LLMESH_REDIS_URL", ""),
        otlp_endpoint=os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT", ""),
        envoy_base_id=int(os.environ.get("LLMESH_ENVOY_BASE_ID", "8080")),
    )
    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    mesh = Mesh(cfg)
    print(f"starting llmesh (logs in {cfg.workdir}/) ...", flush=True)
    try:
        mesh.start()
        key = asyncio.run(install_dev_key(mesh.redis_url, os.environ.get("LLMESH_DEV_API_KEY")))
        print(f"llmesh ready at {mesh.url}  (OpenAI base URL {mesh.url}/v1)", flush=True)
        print(f"  API key: {key}", flush=True)
        print(
            f'  try: curl -s {mesh.url}/v1/chat/completions -H "Authorization: Bearer {key}" '
            f"-H 'content-type: application/json' "
            '-d \'{"model":"smollm2","messages":[{"role":"user","content":"Hi!"}]}\'',
            flush=True,
        )
        print("Ctrl-C stops everything.", flush=True)
        stop.wait()
    except (RuntimeError, TimeoutError) as exc:
        print(f"llmesh failed to start: {exc}", file=sys.stderr, flush=True)
        raise SystemExit(1) from None
    finally:
        print("stopping llmesh ...", flush=True)
        mesh.stop()
        print("stopped.", flush=True)


if __name__ == "__main__":
    main()
