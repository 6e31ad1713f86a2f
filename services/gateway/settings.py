"""Gateway settings (environment variables LLMESH_GATEWAY_*)."""

from __future__ import annotations

from pydantic import Field, field_validator
from pydantic_settings import SettingsConfigDict

from libs.runtime.channels import grpc_target
from libs.runtime.settings import ServiceSettings


class GatewaySettings(ServiceSettings):
    """Settings of the OpenAI-compatible HTTP gateway."""

    model_config = SettingsConfigDict(env_prefix="LLMESH_GATEWAY_", extra="ignore", frozen=True)

    port: int = Field(8081, ge=0, le=65535, description="HTTP port; 0 picks a free port.")
    metrics_port: int = Field(9106, ge=-1, le=65535, description="Prometheus port; 0 = free port, -1 = off.")
    router_addr: str = Field(
        "127.0.0.1:50051",
        description="Router gRPC address (host:port), or several IP addresses comma-separated "
        "(host:port,host:port); calls go round robin over every router.",
    )
    generate_timeout_s: float = Field(
        300.0, gt=0, description="Deadline of a non-streaming completion call to the router, seconds."
    )
    stream_timeout_s: float = Field(
        600.0, gt=0, description="Deadline of a whole streamed completion, seconds."
    )
    read_timeout_s: float = Field(
        10.0, gt=0, description="Deadline of /v1/models and /v1/usage calls, seconds."
    )
    health_timeout_s: float = Field(
        1.0, gt=0, description="How long /healthz waits for the router channel to become ready, seconds."
    )
    max_body_bytes: int = Field(
        1 << 20, gt=0, description="Largest request body accepted, bytes (413 above)."
    )

    @field_validator("router_addr")
    @classmethod
    def _addr(cls, value: str) -> str:
        grpc_target(value)
        return value

    @property
    def router_target(self) -> str:
        """The gRPC target naming every router address."""
        return grpc_target(self.router_addr)
