"""Mutual TLS from the TLS_* settings: a caller with a CA-signed certificate gets through; a
caller without one, or speaking plaintext, does not."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import grpc
import pytest
from llmesh.tokenizer.v1 import tokenizer_service_pb2 as pb
from llmesh.tokenizer.v1 import tokenizer_service_pb2_grpc as pb_grpc

from libs.runtime.channels import make_channel
from libs.runtime.settings import ServiceSettings
from libs.runtime.tls import channel_credentials, server_credentials
from services.router.clients import TokenizerClient
from services.tokenizer.server import build_server
from services.tokenizer.settings import TokenizerSettings

MODELS = Path(__file__).resolve().parents[3] / "build" / "models"
SERVICE = "llmesh.tokenizer.v1.TokenizerService"


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def _issue(dir_: Path, name: str) -> None:
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-subj", f"/CN={name}",
             "-out", f"{name}.csr", cwd=dir_)  # fmt: skip
    (dir_ / f"{name}.ext").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
             "-days", "2", "-extfile", f"{name}.ext", "-out", f"{name}.crt", cwd=dir_)  # fmt: skip


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("pki")
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt",
             "-days", "2", "-subj", "/CN=llmesh-test-ca", cwd=d)  # fmt: skip
    _issue(d, "tokenizer")
    _issue(d, "router")
    return d


def _tls(d: Path, name: str) -> dict[str, Any]:
    return {"tls_cert_file": str(d / f"{name}.crt"), "tls_key_file": str(d / f"{name}.key"),
            "tls_ca_file": str(d / "ca.crt")}  # fmt: skip


async def test_mutual_tls_admits_only_ca_signed_callers(pki: Path) -> None:
    service = build_server(
        TokenizerSettings(port=0, metrics_port=-1, models_dir=MODELS, **_tls(pki, "tokenizer"))
    )
    await service.start()
    target = f"localhost:{service.port}"
    try:
        client = ServiceSettings(**_tls(pki, "router"))
        async with make_channel(target, SERVICE, credentials=channel_credentials(client)) as ch:
            reply = await pb_grpc.TokenizerServiceStub(ch).Encode(
                pb.EncodeRequest(model="smollm2-135m", text="over TLS"), timeout=10
            )
            assert len(reply.token_ids) > 0

        no_cert = grpc.ssl_channel_credentials(root_certificates=(pki / "ca.crt").read_bytes())
        async with make_channel(target, SERVICE, credentials=no_cert) as ch:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await pb_grpc.TokenizerServiceStub(ch).Encode(
                    pb.EncodeRequest(model="smollm2-135m", text="x"), timeout=5
                )
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE

        async with make_channel(target, SERVICE) as ch:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await pb_grpc.TokenizerServiceStub(ch).Encode(
                    pb.EncodeRequest(model="smollm2-135m", text="x"), timeout=5
                )
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        await service.stop(grace_s=1)


async def test_the_routers_client_uses_the_credentials_it_is_given(pki: Path) -> None:
    """The router builds its tokenizer, safety and cache clients with its TLS settings: a client
    that dropped them would speak plaintext to a TLS-only service and fail."""
    service = build_server(
        TokenizerSettings(port=0, metrics_port=-1, models_dir=MODELS, **_tls(pki, "tokenizer"))
    )
    await service.start()
    target = f"localhost:{service.port}"
    client = TokenizerClient(target, channel_credentials(ServiceSettings(**_tls(pki, "router"))))
    try:
        assert await client.encode("smollm2-135m", "over TLS", timeout_s=10)
    finally:
        await client.close()
        await service.stop(grace_s=1)


def test_half_configured_tls_names_the_missing_setting(pki: Path) -> None:
    settings = TokenizerSettings(tls_cert_file=str(pki / "tokenizer.crt"))
    with pytest.raises(RuntimeError, match="LLMESH_TOKENIZER_TLS_KEY_FILE"):
        server_credentials(settings)
