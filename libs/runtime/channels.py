"""Client channels with retry policy, trace propagation and optional mutual TLS.

Retry policy lives in the gRPC service config next to the client: only the methods named
idempotent are retried, only on UNAVAILABLE, with a small exponential backoff. Deadlines are
per call: every caller passes one derived from its own, so a dying service never hangs it. The
service config carries no `timeout`: with grpcio 1.85 a method-config timeout under about 1.6 s
fails every call at once with DEADLINE_EXCEEDED.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import grpc

from libs.runtime.interceptors import client_interceptors


def service_config(service: str, *, idempotent_methods: Sequence[str] = (), max_attempts: int = 3) -> str:
    """A gRPC service config JSON retrying the idempotent methods of `service` on UNAVAILABLE."""
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
                    "retryableStatusCodes": ["UNAVAILABLE"],
                },
            },
        )
    return json.dumps({"methodConfig": configs})


def make_channel(
    target: str,
    service: str,
    *,
    idempotent_methods: Sequence[str] = (),
    max_message_mb: int = 8,
    credentials: grpc.ChannelCredentials | None = None,
) -> grpc.aio.Channel:
    """An aio channel to `target` for `service` (full proto name) with retries and tracing.

    Pass a deadline (`timeout=`) on every call made on it.

    `credentials` (from `libs.runtime.tls.channel_credentials`) makes it a mutual-TLS channel.
    """
    options = [
        (
            "grpc.service_config",
            service_config(service, idempotent_methods=idempotent_methods),
        ),
        ("grpc.enable_retries", 1),
        ("grpc.max_receive_message_length", max_message_mb * 1024 * 1024),
        ("grpc.max_send_message_length", max_message_mb * 1024 * 1024),
        ("grpc.keepalive_time_ms", 30_000),
        ("grpc.keepalive_timeout_ms", 5_000),
        ("grpc.http2.max_pings_without_data", 0),
        ("grpc.initial_reconnect_backoff_ms", 100),
        ("grpc.max_reconnect_backoff_ms", 2_000),
    ]
    if credentials is not None:
        return grpc.aio.secure_channel(
            target, credentials, options=options, interceptors=client_interceptors()
        )
    return grpc.aio.insecure_channel(target, options=options, interceptors=client_interceptors())
