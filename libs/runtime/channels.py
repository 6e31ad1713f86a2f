"""Client channels with load balancing, retry policy, trace propagation and optional mutual TLS.

Policy lives in the gRPC service config next to the client:

- `round_robin` over every address the target resolves to. Services are headless on Kubernetes,
  so `dns:///tokenizer:50052` resolves to one address per ready pod and each call goes to the next
  pod, instead of every call riding the one connection `pick_first` would keep. The resolver asks
  DNS again whenever a connection to a pod closes (at most every `DNS_MIN_RESOLVE_MS`), so pods
  that leave stop getting calls; pods that join are seen at the next re-resolution.
- Only the methods named idempotent are retried, on UNAVAILABLE or DEADLINE_EXCEEDED returned by
  the server, with a small exponential backoff. The caller's deadline bounds every attempt
  together: once it runs out, nothing is retried.

Deadlines are per call: every caller passes one derived from its own, so a dying service never
hangs it. The service config carries no `timeout`: with grpcio 1.85 a method-config timeout under
about 1.6 s fails every call at once with DEADLINE_EXCEEDED.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Sequence

import grpc

from libs.runtime.interceptors import client_interceptors

RETRYABLE_CODES = ("UNAVAILABLE", "DEADLINE_EXCEEDED")
LOAD_BALANCING = "round_robin"
DNS_MIN_RESOLVE_MS = 5_000
"""Shortest time between two DNS resolutions of one channel (gRPC's default is 30 s)."""

ChannelOption = tuple[str, str | int]


def service_config(service: str, *, idempotent_methods: Sequence[str] = (), max_attempts: int = 3) -> str:
    """A gRPC service config JSON: round-robin over the resolved addresses, retrying the
    idempotent methods of `service` on UNAVAILABLE and DEADLINE_EXCEEDED."""
    configs: list[dict[str, object]] = [{"name": [{"service": service}]}]
    if idempotent_methods:
        configs.insert(
            0,
            {
                "name": [{"service": service, "method": m} for m in idempotent_methods],
                "retryPolicy": {
                    "maxAttempts": max_attempts,
                    "initialBackoff": "0.02s",
                    "maxBackoff": "0.2s",
                    "backoffMultiplier": 2,
                    "retryableStatusCodes": list(RETRYABLE_CODES),
                },
            },
        )
    return json.dumps({"loadBalancingConfig": [{LOAD_BALANCING: {}}], "methodConfig": configs})


def channel_options(
    service: str,
    *,
    idempotent_methods: Sequence[str] = (),
    max_message_mb: int = 8,
    authority: str | None = None,
) -> list[ChannelOption]:
    """The options of every llmesh client channel (also given to clients that build their own).

    `authority` names the service when the target is one of its pods' addresses: it is the
    `:authority` of each call and the name the server's TLS certificate is checked against.
    """
    options: list[ChannelOption] = [
        ("grpc.service_config", service_config(service, idempotent_methods=idempotent_methods)),
        # The config above, never one published in DNS TXT records.
        ("grpc.service_config_disable_resolution", 1),
        ("grpc.enable_retries", 1),
        ("grpc.dns_min_time_between_resolutions_ms", DNS_MIN_RESOLVE_MS),
        ("grpc.max_receive_message_length", max_message_mb * 1024 * 1024),
        ("grpc.max_send_message_length", max_message_mb * 1024 * 1024),
        ("grpc.keepalive_time_ms", 30_000),
        ("grpc.keepalive_timeout_ms", 5_000),
        ("grpc.http2.max_pings_without_data", 0),
        ("grpc.initial_reconnect_backoff_ms", 100),
        ("grpc.max_reconnect_backoff_ms", 2_000),
    ]
    if authority:
        options.append(("grpc.default_authority", authority))
    return options


def make_channel(
    target: str,
    service: str,
    *,
    idempotent_methods: Sequence[str] = (),
    max_message_mb: int = 8,
    credentials: grpc.ChannelCredentials | None = None,
    authority: str | None = None,
) -> grpc.aio.Channel:
    """An aio channel to `target` for `service` (full proto name): balanced, retrying, traced.

    Pass a deadline (`timeout=`) on every call made on it.

    `credentials` (from `libs.runtime.tls.channel_credentials`) makes it a mutual-TLS channel;
    `authority` is described in `channel_options`.
    """
    options = channel_options(
        service, idempotent_methods=idempotent_methods, max_message_mb=max_message_mb, authority=authority
    )
    if credentials is not None:
        return grpc.aio.secure_channel(
            target, credentials, options=options, interceptors=client_interceptors()
        )
    return grpc.aio.insecure_channel(target, options=options, interceptors=client_interceptors())


def _ip_family(host: str) -> str:
    try:
        address = ipaddress.ip_address(host.removeprefix("[").removesuffix("]"))
    except ValueError:
        return ""
    return f"ipv{address.version}"


def grpc_target(addrs: str) -> str:
    """The gRPC target for `host:port[,host:port...]`; raises ValueError on a malformed list.

    One address is used as given (a DNS name, or `dns:///name:port`, resolving to several
    replicas is balanced too); more than one must be IP literals of one family, the only way a
    gRPC target lists addresses: `ipv4:10.0.0.1:50051,10.0.0.2:50051`. Calls then go round
    robin over them (`service_config`).
    """
    parts = [a.strip() for a in addrs.split(",")]
    if len(parts) == 1 and parts[0].startswith("dns:"):
        return parts[0]
    for part in parts:
        host, sep, port = part.rpartition(":")
        if not sep or not host or not port.isdigit():
            raise ValueError(f"expected host:port, got {part!r}")
    if len(parts) == 1:
        return parts[0]
    families = {_ip_family(p.rpartition(":")[0]) for p in parts}
    if len(families) != 1 or "" in families:
        raise ValueError(
            "several addresses must all be IPv4 or all IPv6 literals (host:port,host:port); "
            "give one DNS name that resolves to every replica instead"
        )
    return f"{families.pop()}:{','.join(parts)}"
