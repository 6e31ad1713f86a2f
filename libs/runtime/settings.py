"""Settings every service shares, read from environment variables.

Each service subclasses `ServiceSettings` with its own `env_prefix` (`LLMESH_<NAME>_`) and
default port; every field has a default and a docstring, and the README's settings table is
generated from these classes (`python -m libs.runtime.settings_doc`).
"""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class ServiceSettings(BaseSettings):
    """Settings common to every llmesh gRPC service."""

    model_config = SettingsConfigDict(env_prefix="LLMESH_", extra="ignore", frozen=True)

    host: str = Field("127.0.0.1", description="Address the gRPC server binds to.")
    port: int = Field(0, ge=0, le=65535, description="gRPC port; 0 picks a free port.")
    metrics_port: int = Field(
        0, ge=-1, le=65535, description="Prometheus /metrics port; 0 picks a free port, -1 disables."
    )
    metrics_host: str = Field("127.0.0.1", description="Address the metrics endpoint binds to.")
    log_level: str = Field("INFO", description="Log level: DEBUG, INFO, WARNING or ERROR.")
    grace_period_s: float = Field(
        10.0, gt=0, description="Seconds in-flight calls get to finish after SIGTERM."
    )
    drain_delay_s: float = Field(
        0.5,
        ge=0,
        description="Seconds between reporting NOT_SERVING and refusing new calls on SIGTERM, so load "
        "balancers and probes notice before the port closes.",
    )
    max_message_mb: int = Field(8, gt=0, description="Largest gRPC message accepted or sent, MiB.")
    tls_cert_file: str = Field(
        "", description="PEM certificate of this service; with the key, serve gRPC over TLS."
    )
    tls_key_file: str = Field("", description="PEM private key of tls_cert_file.")
    tls_ca_file: str = Field(
        "",
        description="PEM CA bundle: with TLS on, callers must present a certificate it signed (mutual "
        "TLS), and this service's own clients verify their peers with it.",
    )
    max_concurrent_rpcs: int = Field(
        1024, gt=0, description="Calls served at once; more are refused with RESOURCE_EXHAUSTED."
    )
    max_connection_age_s: float = Field(
        300.0,
        ge=0,
        description="Seconds after which a client connection is asked to reconnect (running calls "
        "finish first), so clients resolve the service again and spread over new replicas; 0 = never.",
    )
