"""The llmesh inference replicas as a router backend: load-aware choice, streaming over gRPC.

Each replica's `GetLoad` is polled in the background; targets are ordered by reported load
(running + queued) plus the calls this router started since that report, so a burst between two
polls still spreads out. A replica that does not answer the poll goes last (its circuit breaker
decides whether it is tried at all). Models and versions come from `ListModels`, refreshed
whenever a replica comes back.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass, field

import grpc
from llmesh.common.v1 import generation_pb2 as gen_pb
from llmesh.inference.v1 import inference_service_pb2 as pb
from llmesh.inference.v1 import inference_service_pb2_grpc as pb_grpc

from services.router.backends import BackendRequest, GenDelta, Target
from services.router.clients import channel as make_router_channel
from services.router.clients import upstream_error
from services.router.metrics import REPLICA_LOAD
from services.router.registry import ModelSpec

log = logging.getLogger(__name__)
SERVICE = pb.DESCRIPTOR.services_by_name["InferenceService"].full_name


@dataclass
class Replica:
    """One inference replica and what the router knows about it."""

    name: str
    addr: str
    stub: pb_grpc.InferenceServiceStub
    channel: grpc.aio.Channel
    reachable: bool = True
    load: int = 0
    pending: int = 0
    pending_at_poll: int = 0
    models: dict[str, str] = field(default_factory=dict)

    @property
    def score(self) -> int:
        """Reported load plus the calls started here since the report."""
        return self.load + max(0, self.pending - self.pending_at_poll)

    @property
    def target(self) -> Target:
        return Target(name=self.name, breaker_key=f"llmesh:{self.addr}", info={"addr": self.addr})


def _usage(msg: pb.GenerateStreamResponse) -> gen_pb.Usage | None:
    if not msg.HasField("usage"):
        return None
    usage = gen_pb.Usage()
    usage.CopyFrom(msg.usage)
    return usage


class InferenceReplicas:
    """Backend `llmesh`: the inference service replicas."""

    def __init__(
        self,
        addrs: Sequence[str],
        *,
        poll_s: float = 0.5,
        credentials: grpc.ChannelCredentials | None = None,
    ):
        if not addrs:
            raise ValueError("at least one inference replica address is needed")
        self.replicas = [self._replica(f"inference-{i}", addr, credentials) for i, addr in enumerate(addrs)]
        self._by_name = {r.name: r for r in self.replicas}
        self.poll_s = poll_s
        self._task: asyncio.Task[None] | None = None
        self._rr = itertools.count()

    @staticmethod
    def _replica(name: str, addr: str, credentials: grpc.ChannelCredentials | None) -> Replica:
        channel = make_router_channel(addr, SERVICE, ["ListModels", "GetLoad"], credentials)
        return Replica(name=name, addr=addr, stub=pb_grpc.InferenceServiceStub(channel), channel=channel)

    async def start(self) -> None:
        """First poll (failures are fine: the replica is marked unreachable), then poll in the background."""
        await self.poll_once()
        self._task = asyncio.create_task(self._poll_forever(), name="inference-load-poll")

    async def stop(self) -> None:
        """Stop polling and close the channels."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for r in self.replicas:
            await r.channel.close()

    async def _poll_forever(self) -> None:
        while True:
            await asyncio.sleep(self.poll_s)
            await self.poll_once()

    async def poll_once(self) -> None:
        """Ask every replica for its load (and its models when they are not known yet)."""
        await asyncio.gather(*(self._poll(r) for r in self.replicas))

    async def _poll(self, r: Replica) -> None:
        timeout = max(0.2, min(1.0, 2 * self.poll_s))
        try:
            if not r.reachable or not r.models:
                listed = await r.stub.ListModels(pb.ListModelsRequest(), timeout=timeout)
                r.models = {m.name: f"{m.name}@{m.version}" for m in listed.models}
            pending = r.pending
            load = await r.stub.GetLoad(pb.GetLoadRequest(), timeout=timeout)
        except grpc.aio.AioRpcError as err:
            if r.reachable:
                log.warning(
                    "inference replica unreachable",
                    extra={"fields": {"replica": r.name, "addr": r.addr, "code": err.code().name}},
                )
            r.reachable = False
            return
        if not r.reachable:
            log.info("inference replica reachable again", extra={"fields": {"replica": r.name}})
        r.reachable = True
        r.load, r.pending_at_poll = load.running + load.queued, pending
        REPLICA_LOAD.labels(r.name).set(r.load)

    def targets(self, spec: ModelSpec) -> list[Target]:
        """Replicas that serve the model (or have not said yet), least loaded first."""
        model = spec.upstream_model
        serving = [r for r in self.replicas if not r.models or model in r.models]
        start = next(self._rr)
        n = len(serving)
        ordered = sorted(
            range(n), key=lambda i: (not serving[i].reachable, serving[i].score, (i - start) % n)
        )
        return [serving[i].target for i in ordered]

    def model_version(self, spec: ModelSpec) -> str:
        """The version reported by the replicas ('' before any replica answered)."""
        for r in self.replicas:
            version = r.models.get(spec.upstream_model)
            if version:
                return version
        return ""

    async def stream(
        self, spec: ModelSpec, target: Target, request: BackendRequest, timeout_s: float
    ) -> AsyncGenerator[GenDelta, None]:
        """GenerateStream on one replica; closing the iterator cancels the call (freeing its slot)."""
        r = self._by_name[target.name]
        call = r.stub.GenerateStream(
            pb.GenerateStreamRequest(
                model=spec.upstream_model,
                prompt_token_ids=list(request.prompt_token_ids),
                sampling=request.sampling,
                request_id=request.request_id,
            ),
            timeout=timeout_s,
        )
        r.pending += 1
        try:
            async for msg in call:
                yield GenDelta(
                    text=msg.text,
                    tokens=len(msg.token_ids),
                    finish_reason=msg.finish_reason,
                    usage=_usage(msg),
                    model_version=msg.model_version,
                )
        except grpc.aio.AioRpcError as err:
            raise upstream_error(err, f"inference {r.name} ({r.addr})") from None
        finally:
            r.pending -= 1
            call.cancel()
