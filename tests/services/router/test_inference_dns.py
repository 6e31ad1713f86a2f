"""The router's inference replicas from `dns:///localhost:port`, against a real gRPC server.

The real resolver turns the name into a replica per address that is polled over its own channel;
a replica that leaves DNS mid-stream finishes that stream on its real channel; with mutual TLS a
replica dialled by IP address still checks the certificate against the name it was resolved from.
"""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import grpc
import pytest
from llmesh.common.v1 import generation_pb2 as gen_pb
from llmesh.inference.v1 import inference_service_pb2 as pb
from llmesh.inference.v1 import inference_service_pb2_grpc as pb_grpc

from services.router.backends import BackendRequest
from services.router.inference_client import InferenceReplicas
from services.router.registry import ModelSpec

pytestmark = pytest.mark.asyncio(loop_scope="session")
MODEL = "smollm2-135m-int8"
SPEC = ModelSpec(name="smol", backend_model=MODEL, context_length=2048, input_price_per_1k=0,
                 output_price_per_1k=0, tier=1)  # fmt: skip
REQUEST = BackendRequest(prompt_token_ids=[1, 2, 3], sampling=gen_pb.SamplingParams(), request_id="r")


class _Inference(pb_grpc.InferenceServiceServicer):
    """Serves one model; each GenerateStream sends "a", waits for `release`, then sends "b"."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.load_polls = 0

    async def ListModels(
        self, request: pb.ListModelsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListModelsResponse:
        return pb.ListModelsResponse(models=[pb.ModelInfo(name=MODEL, version="v1")])

    async def GetLoad(
        self, request: pb.GetLoadRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetLoadResponse:
        self.load_polls += 1
        return pb.GetLoadResponse(running=3)

    async def Generate(
        self, request: pb.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> pb.GenerateResponse:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "the router streams")
        raise AssertionError("abort raises")

    async def GenerateStream(
        self, request: pb.GenerateStreamRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.GenerateStreamResponse]:
        yield pb.GenerateStreamResponse(text="a")
        await self.release.wait()
        yield pb.GenerateStreamResponse(text="b", finish_reason=gen_pb.FINISH_REASON_STOP)


async def _serve(
    credentials: grpc.ServerCredentials | None = None,
) -> tuple[grpc.aio.Server, _Inference, int]:
    server = grpc.aio.server()
    servicer = _Inference()
    pb_grpc.add_InferenceServiceServicer_to_server(servicer, server)
    if credentials is None:
        port = server.add_insecure_port("127.0.0.1:0")
    else:
        port = server.add_secure_port("127.0.0.1:0", credentials)
    await server.start()
    return server, servicer, port


class _Answers:
    def __init__(self, *ips: str) -> None:
        self.ips = list(ips)

    async def __call__(self, host: str, port: int) -> Sequence[str]:
        return list(self.ips)


async def test_a_dns_name_is_resolved_and_each_address_polled() -> None:
    server, servicer, port = await _serve()
    backend = InferenceReplicas([f"dns:///localhost:{port}"], poll_s=60)
    try:
        await backend.start()
        (replica,) = backend.replicas
        assert replica.addr == f"127.0.0.1:{port}"
        assert replica.reachable and replica.models == {MODEL: f"{MODEL}@v1"} and replica.load == 3
        assert servicer.load_polls == 1
        assert backend.model_version(SPEC) == f"{MODEL}@v1"
    finally:
        await backend.stop()
        await server.stop(None)


async def test_a_stream_on_a_replica_that_left_dns_runs_to_its_end() -> None:
    server, servicer, port = await _serve()
    answers = _Answers("127.0.0.1")
    backend = InferenceReplicas([f"dns:///llmesh-inference.test:{port}"], resolver=answers, poll_s=60)
    try:
        await backend.start()
        (replica,) = backend.replicas
        stream = backend.stream(SPEC, replica.target, REQUEST, 10.0)
        assert (await anext(stream)).text == "a"
        answers.ips = ["127.0.0.2"]  # the pod left; another took its place
        await backend.resolve_once()
        assert [r.addr for r in backend.replicas] == [f"127.0.0.2:{port}"]
        servicer.release.set()
        last = await anext(stream)
        assert last.text == "b" and last.finish_reason == gen_pb.FINISH_REASON_STOP
        with pytest.raises(StopAsyncIteration):
            await anext(stream)
        await asyncio.sleep(0)
        assert replica.channel.get_state() == grpc.ChannelConnectivity.SHUTDOWN
    finally:
        await backend.stop()
        await server.stop(None)


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CA and a server certificate for the name `localhost` only (no IP address in it)."""
    d = tmp_path_factory.mktemp("pki")
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt",
             "-days", "2", "-subj", "/CN=llmesh-test-ca", cwd=d)  # fmt: skip
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-subj", "/CN=localhost",
             "-out", "server.csr", cwd=d)  # fmt: skip
    (d / "server.ext").write_text("subjectAltName=DNS:localhost\n")
    _openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
             "-days", "2", "-extfile", "server.ext", "-out", "server.crt", cwd=d)  # fmt: skip
    return d


async def test_tls_checks_the_resolved_name_not_the_pod_address(pki: Path) -> None:
    creds = grpc.ssl_server_credentials(
        [((pki / "server.key").read_bytes(), (pki / "server.crt").read_bytes())]
    )
    server, servicer, port = await _serve(creds)
    client = grpc.ssl_channel_credentials(root_certificates=(pki / "ca.crt").read_bytes())
    backend = InferenceReplicas([f"dns:///localhost:{port}"], poll_s=60, credentials=client)
    try:
        await backend.start()
        (replica,) = backend.replicas
        assert replica.addr == f"127.0.0.1:{port}"
        assert replica.reachable and servicer.load_polls == 1
    finally:
        await backend.stop()
        await server.stop(None)
