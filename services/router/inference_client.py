"""The llmesh inference replicas as a router backend: load-aware choice, streaming over gRPC.

Each replica's `GetLoad` is polled in the background; targets are ordered by reported load
(running + queued) plus the calls this router started since that report, so a burst between two
polls still spreads out. A replica that does not answer the poll goes last (its circuit breaker
decides whether it is tried at all). Models and versions come from `ListModels`, refreshed
whenever a replica comes back.

Prefix affinity is the tie-break: `GetLoad` also reports the digests of the prompt-prefix blocks
each replica's prefix cache holds. Given the prompt's token ids, among the reachable replicas
whose score is within `affinity_slack` of the lowest, the one holding the longest prefix of the
prompt goes first (it skips prefilling those tokens) when that saves at least
`affinity_min_tokens` over the load-order choice; every other replica keeps its load order. The
minimum keeps short shared prefixes (the chat template's default system prompt, which every
replica holds) from pinning identical small prompts to one replica: round-robin still spreads them,
and a replica coming back still gets the calls that close its circuit breaker.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import logging
import struct
from collections.abc import AsyncGenerator, Collection, Sequence
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


@dataclass(frozen=True)
class CachedPrefixes:
    """The prefix-cache blocks one replica reported for one model."""

    block_size: int
    digests: frozenset[int]


def prefix_digests(token_ids: Sequence[int], block_size: int) -> list[int]:
    """The 64-bit chain digests of the full blocks of a prompt, as inference replicas report them.

    d[k] = BLAKE2b-128(d[k-1] || block k's token ids as little-endian int32), d[-1] empty; the
    reported value is d[k]'s first 8 bytes, little-endian (see PrefixCacheSummary).
    """
    out: list[int] = []
    parent = b""
    for k in range(len(token_ids) // block_size):
        block = token_ids[k * block_size : (k + 1) * block_size]
        data = struct.pack(f"<{block_size}i", *block)
        parent = hashlib.blake2b(parent + data, digest_size=16).digest()
        out.append(int.from_bytes(parent[:8], "little"))
    return out


def cached_prefix_tokens(prompt_digests: Sequence[int], block_size: int, held: Collection[int]) -> int:
    """Tokens of the longest prompt prefix whose last block's digest is in ``held``."""
    for k in range(len(prompt_digests) - 1, -1, -1):
        if prompt_digests[k] in held:
            return (k + 1) * block_size
    return 0


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
    prefixes: dict[str, CachedPrefixes] = field(default_factory=dict)

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
        affinity_slack: int = 2,
        affinity_min_tokens: int = 64,
        prefix_digests_per_poll: int = 512,
    ):
        if not addrs:
            raise ValueError("at least one inference replica address is needed")
        self.replicas = [self._replica(f"inference-{i}", addr, credentials) for i, addr in enumerate(addrs)]
        self._by_name = {r.name: r for r in self.replicas}
        self.poll_s = poll_s
        self.affinity_slack = affinity_slack
        self.affinity_min_tokens = affinity_min_tokens
        self.prefix_digests_per_poll = prefix_digests_per_poll
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
            load = await r.stub.GetLoad(
                pb.GetLoadRequest(max_prefix_digests=self.prefix_digests_per_poll), timeout=timeout
            )
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
        r.prefixes = {
            c.model: CachedPrefixes(c.block_size, frozenset(c.block_digests))
            for c in load.prefix_caches
            if c.block_size > 0
        }
        REPLICA_LOAD.labels(r.name).set(r.load)

    def targets(self, spec: ModelSpec, prompt_token_ids: Sequence[int] = ()) -> list[Target]:
        """Replicas that serve the model (or have not said yet), least loaded first.

        With the prompt's token ids, the replica holding the longest cached prefix of it goes
        first among those whose load is within `affinity_slack` of the least loaded.
        """
        model = spec.upstream_model
        serving = [r for r in self.replicas if not r.models or model in r.models]
        start = next(self._rr)
        n = len(serving)
        ordered = [
            serving[i]
            for i in sorted(
                range(n), key=lambda i: (not serving[i].reachable, serving[i].score, (i - start) % n)
            )
        ]
        if prompt_token_ids:
            ordered = self._prefer_cached_prefix(ordered, model, prompt_token_ids)
        return [r.target for r in ordered]

    def _prefer_cached_prefix(
        self, ordered: list[Replica], model: str, prompt_token_ids: Sequence[int]
    ) -> list[Replica]:
        """Move the near-least-loaded replica holding the longest prompt prefix to the front."""
        if not ordered or not ordered[0].reachable:
            return ordered
        limit = ordered[0].score + self.affinity_slack
        digests: dict[int, list[int]] = {}
        matched: list[int] = []
        for r in ordered:
            if not r.reachable or r.score > limit:
                break
            held = r.prefixes.get(model)
            if held is None:
                matched.append(0)
                continue
            if held.block_size not in digests:
                digests[held.block_size] = prefix_digests(prompt_token_ids, held.block_size)
            matched.append(cached_prefix_tokens(digests[held.block_size], held.block_size, held.digests))
        best_tokens = max(matched)
        best = matched.index(best_tokens)  # the first in load order among equal matches
        if best == 0 or best_tokens - matched[0] < self.affinity_min_tokens:
            return ordered
        log.debug(
            "prefix affinity",
            extra={"fields": {"replica": ordered[best].name, "cached_prefix_tokens": best_tokens}},
        )
        return [ordered[best], *ordered[:best], *ordered[best + 1 :]]

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
