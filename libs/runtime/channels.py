"""Client channels with deadlines, retry policy and trace propagation.

Retry policy lives in the gRPC service config next to the client: only the methods named
idempotent are retried, only on UNAVAILABLE, with a small exponential backoff; every method has a
default timeout so a dying service never hangs a caller (callers pass tighter per-call deadlines
derived from their own).
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import grpc

from libs.runtime.interceptors import client_interceptors


def service_config(
    service: str,
    *,
    timeout_s: float,
    idempotent_methods: Sequence[str] = (),
    max_attempts: int = 3,
) -> str:
    """A gRPC service config JSON: a default timeout for all methods, retries for idempotent ones."""
    configs: list[dict[str, object]] = [{"name": [{"service": service}], "timeout": f"{timeout_s:.3f}s"}]
    if idempotent_methods:
        configs.insert(
            0,
            {
                "name": [{"service": service, "method": m} for m in idempotent_methods],
                "timeout": f"{timeout_s:.3f}s",
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
    timeout_s: float = 5.0,
    idempotent_methods: Sequence[str] = (),
    max_message_mb: int = 8,
    credentials: grpc.ChannelCredentials | None = None,
) -> grpc.aio.Channel:
    """An aio channel to `target` for `service` (full proto name) with retries and tracing.

    `credentials` (from `libs.runtime.tls.channel_credentials`) makes it a mutual-TLS channel.
    """
    options = [
        (
            "grpc.service_config",
            service_config(service, timeout_s=timeout_s, idempotent_methods=idempotent_methods),
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
