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

An address written `dns:///name:port` (a headless Kubernetes Service) stands for every address
the name resolves to: each becomes a replica of its own (own channel, own `GetLoad` poll, own
circuit breaker key), so load and prefix affinity see every pod. The name is resolved again every
`resolve_s`: new addresses join, vanished ones retire, and a retired replica keeps its channel
until the calls already running on it finish. An answer that fails or is empty keeps the last
known replicas (with a log line): a DNS hiccup does not empty the pool. Plain `host:port`
addresses are one replica each, as written.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import logging
import socket
import struct
from collections.abc import AsyncGenerator, Awaitable, Callable, Collection, Sequence
from dataclasses import dataclass, field

import grpc
from llmesh.common.v1 import generation_pb2 as gen_pb
from llmesh.inference.v1 import inference_service_pb2 as pb
from llmesh.inference.v1 import inference_service_pb2_grpc as pb_grpc

from libs.runtime import telemetry
from libs.runtime.channels import make_channel
from libs.runtime.errors import Unavailable
from services.router.backends import BackendRequest, GenDelta, Target
from services.router.clients import upstream_error
from services.router.metrics import REPLICA_LOAD
from services.router.registry import ModelSpec

log = logging.getLogger(__name__)
SERVICE = pb.DESCRIPTOR.services_by_name["InferenceService"].full_name
IDEMPOTENT = ("ListModels", "GetLoad")
# Registry backends that ask for one engine on the inference replicas.
ENGINES = ("triton", "embedded")

Resolver = Callable[[str, int], Awaitable[Sequence[str]]]
"""(host, port) -> the IP addresses the host resolves to."""


async def resolve_host(host: str, port: int) -> list[str]:
    """The addresses `host` resolves to, sorted: the IPv4 ones when there are any, else IPv6.

    One family only, because a dual-stack pod has an address in each and must stay one replica.
    """
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    v4 = {str(info[4][0]) for info in infos if info[0] == socket.AF_INET}
    v6 = {str(info[4][0]) for info in infos if info[0] == socket.AF_INET6}
    return sorted(v4 or v6)


@dataclass(frozen=True)
class DnsName:
    """A `dns:///host:port` address: one replica per address the host resolves to."""

    host: str
    port: int

    @property
    def authority(self) -> str:
        """`host:port`: the `:authority` of calls and the name TLS certificates are checked against."""
        return f"{self.host}:{self.port}"

    def address(self, ip: str) -> str:
        """The replica address for one resolved IP."""
        return f"[{ip}]:{self.port}" if ":" in ip else f"{ip}:{self.port}"


def parse_dns_name(addr: str) -> DnsName | None:
    """The name to resolve for `dns:///host:port` (or `dns:host:port`); None for any other address."""
    if not addr.startswith("dns:"):
        return None
    rest = addr.removeprefix("dns:")
    if rest.startswith("//"):
        authority, _, rest = rest[2:].partition("/")
        if authority:
            raise ValueError(f"{addr!r}: a DNS server in the address is not supported; use dns:///host:port")
    host, sep, port = rest.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"{addr!r}: write a DNS inference address as dns:///host:port")
    return DnsName(host, int(port))


def _is(r: Replica, addr: str) -> bool:
    """Whether replica `r` is (or was resolved from) the configured address `addr`."""
    name = parse_dns_name(addr)
    return r.source == name if name is not None else r.source is None and r.addr == addr


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
    engines: dict[str, str] = field(default_factory=dict)
    """Model -> the engine serving it there ("embedded" or "triton"), from ListModels."""
    prefixes: dict[str, CachedPrefixes] = field(default_factory=dict)
    source: DnsName | None = None
    """The DNS name this replica was resolved from (None: an address given as is)."""
    retired: bool = False
    """Gone from DNS: offered to no new call, closed once its running calls finish."""

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
        resolve_s: float = 5.0,
        resolver: Resolver = resolve_host,
        credentials: grpc.ChannelCredentials | None = None,
        affinity_slack: int = 2,
        affinity_min_tokens: int = 64,
        prefix_digests_per_poll: int = 512,
    ):
        if not addrs:
            raise ValueError("at least one inference replica address is needed")
        self.poll_s = poll_s
        self.resolve_s = resolve_s
        self.affinity_slack = affinity_slack
        self.affinity_min_tokens = affinity_min_tokens
        self.prefix_digests_per_poll = prefix_digests_per_poll
        self._resolver = resolver
        self._credentials = credentials
        self.replicas: list[Replica] = []
        """The replicas new calls may go to, in the order they joined."""
        self._by_name: dict[str, Replica] = {}
        """Every replica whose channel is open: the serving ones and retired ones still busy."""
        self._names: list[DnsName] = []
        self._closing: set[asyncio.Task[None]] = set()
        for i, addr in enumerate(dict.fromkeys(addrs)):
            name = parse_dns_name(addr)
            if name is None:
                self._join(f"inference-{i}", addr, None)
            elif name not in self._names:
                self._names.append(name)
        self._task: asyncio.Task[None] | None = None
        self._rr = itertools.count()

    def _join(self, name: str, addr: str, source: DnsName | None) -> None:
        known = self._by_name.get(name)
        if known is not None:  # back in DNS before its last call finished
            known.retired = False
            self.replicas.append(known)
            return
        channel = make_channel(
            addr,
            SERVICE,
            idempotent_methods=IDEMPOTENT,
            credentials=self._credentials,
            authority=source.authority if source else None,
        )
        r = Replica(
            name=name, addr=addr, stub=pb_grpc.InferenceServiceStub(channel), channel=channel, source=source
        )
        self.replicas.append(r)
        self._by_name[name] = r

    def _retire(self, r: Replica) -> None:
        self.replicas.remove(r)
        r.retired = True
        REPLICA_LOAD.remove(r.name)
        if r.pending == 0:
            self._close(r)

    def _close(self, r: Replica) -> None:
        del self._by_name[r.name]
        task = asyncio.create_task(r.channel.close(), name=f"close-{r.name}")
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def start(self) -> None:
        """Resolve DNS names and poll once (failures are fine: the replica is marked unreachable),
        then do both in the background."""
        await self.resolve_once()
        await self.poll_once()
        self._task = asyncio.create_task(self._poll_forever(), name="inference-load-poll")

    async def stop(self) -> None:
        """Stop polling and close the channels."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for r in list(self._by_name.values()):
            await r.channel.close()
        self._by_name.clear()
        self.replicas.clear()
        if self._closing:
            await asyncio.gather(*self._closing)

    async def _poll_forever(self) -> None:
        loop = asyncio.get_running_loop()
        resolve_at = loop.time() + self.resolve_s
        while True:
            await asyncio.sleep(self.poll_s)
            if self._names and loop.time() >= resolve_at:
                await self.resolve_once()
                # With no replica at all, ask again at the polling pace rather than waiting.
                resolve_at = loop.time() + (self.resolve_s if self.replicas else self.poll_s)
            await self.poll_once()

    async def resolve_once(self) -> None:
        """Resolve every DNS name: new addresses join, vanished ones retire."""
        for name in self._names:
            try:
                ips = await asyncio.wait_for(self._resolver(name.host, name.port), self._resolve_timeout)
            except (OSError, UnicodeError, TimeoutError) as exc:
                log.warning(
                    "inference replicas not resolved; keeping the last known ones",
                    extra={"fields": {"name": name.authority, "error": str(exc) or type(exc).__name__}},
                )
                continue
            if not ips:
                log.warning(
                    "inference replicas resolved to no address; keeping the last known ones",
                    extra={"fields": {"name": name.authority}},
                )
                continue
            wanted = {name.address(ip) for ip in ips}
            current = {r.addr: r for r in self.replicas if r.source == name}
            for addr in sorted(wanted - current.keys()):
                self._join(f"inference-{addr}", addr, name)
                log.info("inference replica joined", extra={"fields": {"name": name.authority, "addr": addr}})
            for addr in sorted(current.keys() - wanted):
                r = current[addr]
                log.info(
                    "inference replica left; retiring it",
                    extra={"fields": {"name": name.authority, "addr": addr, "running_calls": r.pending}},
                )
                self._retire(r)

    @property
    def _resolve_timeout(self) -> float:
        return max(0.5, min(2.0, self.resolve_s))

    async def poll_once(self) -> None:
        """Ask every replica for its load (and its models when they are not known yet)."""
        await asyncio.gather(*(self._poll(r) for r in list(self.replicas)))

    async def _poll(self, r: Replica) -> None:
        timeout = max(0.2, min(1.0, 2 * self.poll_s))
        try:
            with telemetry.untraced():
                if not r.reachable or not r.models:
                    listed = await r.stub.ListModels(pb.ListModelsRequest(), timeout=timeout)
                    r.models = {m.name: f"{m.name}@{m.version}" for m in listed.models}
                    r.engines = {m.name: m.backend for m in listed.models}
                pending = r.pending
                load = await r.stub.GetLoad(
                    pb.GetLoadRequest(max_prefix_digests=self.prefix_digests_per_poll), timeout=timeout
                )
        except grpc.aio.AioRpcError as err:
            if r.reachable and not r.retired:
                log.warning(
                    "inference replica unreachable",
                    extra={"fields": {"replica": r.name, "addr": r.addr, "code": err.code().name}},
                )
            r.reachable = False
            return
        if r.retired:
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
        serving = [r for r in self.replicas if self._serves(r, spec, model)]
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

    @staticmethod
    def _serves(r: Replica, spec: ModelSpec, model: str) -> bool:
        """Whether `r` may take `spec`: one of its replicas (when the registry names them), listing
        the model (or not having said yet), through the engine the registry asks for."""
        if spec.replicas and not any(_is(r, addr) for addr in spec.replicas):
            return False
        if r.models and model not in r.models:
            return False
        engine = r.engines.get(model)
        return spec.backend not in ENGINES or engine is None or engine == spec.backend

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
        r = self._by_name.get(target.name)
        if r is None:
            raise Unavailable(f"inference {target.name} has left", reason="REPLICA_GONE")
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
            if r.retired and r.pending == 0 and self._by_name.get(r.name) is r:
                self._close(r)
