"""Typed domain errors and their gRPC mapping.

Domain code raises these; `libs.runtime.interceptors` turns them into the gRPC status with a
`google.rpc.Status` (ErrorInfo, RetryInfo) in `grpc-status-details-bin`, which Envoy's
transcoder turns into the matching HTTP status and a JSON body.
"""

from __future__ import annotations

from collections.abc import Mapping

import grpc
from google.protobuf import duration_pb2
from google.rpc import error_details_pb2, status_pb2

DOMAIN = "llmesh.dev"


class LlmeshError(Exception):
    """Base class: an error a caller can act on, with a stable machine-readable reason."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL
    default_reason = "INTERNAL"

    def __init__(self, message: str, *, reason: str = "", metadata: Mapping[str, str] | None = None):
        super().__init__(message)
        self.message = message
        self.reason = reason or self.default_reason
        self.metadata = dict(metadata or {})

    def retry_after_s(self) -> float | None:
        """Seconds the caller should wait before retrying, when that is known."""
        return None

    def to_status(self) -> status_pb2.Status:
        """This error as a google.rpc.Status with ErrorInfo (and RetryInfo when known)."""
        status = status_pb2.Status(code=self.code.value[0], message=self.message)
        info = error_details_pb2.ErrorInfo(reason=self.reason, domain=DOMAIN, metadata=self.metadata)
        status.details.add().Pack(info)
        retry = self.retry_after_s()
        if retry is not None:
            delay = duration_pb2.Duration()
            delay.FromNanoseconds(int(retry * 1e9))
            status.details.add().Pack(error_details_pb2.RetryInfo(retry_delay=delay))
        return status


class InvalidArgument(LlmeshError):
    """The request is malformed or out of range."""

    code = grpc.StatusCode.INVALID_ARGUMENT
    default_reason = "INVALID_ARGUMENT"


class NotFound(LlmeshError):
    """A named thing (model, tokenizer, entry) does not exist."""

    code = grpc.StatusCode.NOT_FOUND
    default_reason = "NOT_FOUND"


class Unauthenticated(LlmeshError):
    """No credentials, or credentials that are not valid."""

    code = grpc.StatusCode.UNAUTHENTICATED
    default_reason = "UNAUTHENTICATED"


class PermissionDenied(LlmeshError):
    """Valid credentials that may not do this (a model outside the key's list, a blocked prompt)."""

    code = grpc.StatusCode.PERMISSION_DENIED
    default_reason = "PERMISSION_DENIED"


class FailedPrecondition(LlmeshError):
    """The system is not in a state that allows the request (e.g. a model not loaded)."""

    code = grpc.StatusCode.FAILED_PRECONDITION
    default_reason = "FAILED_PRECONDITION"


class ResourceExhausted(LlmeshError):
    """A quota, rate limit, budget or queue is full; retry after `retry_after_s`."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    default_reason = "RESOURCE_EXHAUSTED"

    def __init__(
        self,
        message: str,
        *,
        retry_after_s: float = 1.0,
        reason: str = "",
        metadata: Mapping[str, str] | None = None,
    ):
        super().__init__(message, reason=reason, metadata=metadata)
        self._retry_after_s = max(0.0, retry_after_s)

    def retry_after_s(self) -> float | None:
        return self._retry_after_s


class Unavailable(LlmeshError):
    """A dependency is down; the request may succeed later."""

    code = grpc.StatusCode.UNAVAILABLE
    default_reason = "UNAVAILABLE"


class DeadlineExceeded(LlmeshError):
    """The request ran out of time."""

    code = grpc.StatusCode.DEADLINE_EXCEEDED
    default_reason = "DEADLINE_EXCEEDED"


class Cancelled(LlmeshError):
    """The caller went away."""

    code = grpc.StatusCode.CANCELLED
    default_reason = "CANCELLED"


STATUS_DETAILS_KEY = "grpc-status-details-bin"
RETRY_AFTER_KEY = "retry-after"


def trailing_metadata_for(error: LlmeshError) -> tuple[tuple[str, str | bytes], ...]:
    """Trailing metadata carrying the rich status (and retry-after) of an error."""
    md: list[tuple[str, str | bytes]] = [(STATUS_DETAILS_KEY, error.to_status().SerializeToString())]
    retry = error.retry_after_s()
    if retry is not None:
        md.append((RETRY_AFTER_KEY, str(max(1, round(retry + 0.499)))))
    return tuple(md)


def status_from_metadata(metadata: object) -> status_pb2.Status | None:
    """Decode the rich status from a call's trailing metadata, if present."""
    for key, value in metadata or ():  # type: ignore[attr-defined]
        if key == STATUS_DETAILS_KEY and isinstance(value, bytes):
            status = status_pb2.Status()
            status.ParseFromString(value)
            return status
    return None


def error_info(status: status_pb2.Status) -> error_details_pb2.ErrorInfo | None:
    """The ErrorInfo inside a rich status."""
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return info
    return None


_FROM_CODE: dict[grpc.StatusCode, type[LlmeshError]] = {
    cls.code: cls
    for cls in (
        InvalidArgument,
        NotFound,
        Unauthenticated,
        PermissionDenied,
        FailedPrecondition,
        Unavailable,
        DeadlineExceeded,
        Cancelled,
    )
}


def error_for_code(
    code: grpc.StatusCode, message: str, *, reason: str = "", retry_after_s: float | None = None
) -> LlmeshError:
    """The typed error for a status code (UNAVAILABLE for codes without a type of their own)."""
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        return ResourceExhausted(
            message, retry_after_s=1.0 if retry_after_s is None else retry_after_s, reason=reason
        )
    return _FROM_CODE.get(code, Unavailable)(message, reason=reason)


def from_rpc_error(err: grpc.aio.AioRpcError, *, upstream: str) -> LlmeshError:
    """Re-raise a downstream call's failure as a typed error, keeping its reason and retry hint."""
    md = err.trailing_metadata()
    status = status_from_metadata(md)
    info = error_info(status) if status else None
    reason = info.reason if info else ""
    message = err.details() or f"{upstream} failed with {err.code().name}"
    if err.code() not in _FROM_CODE and err.code() != grpc.StatusCode.RESOURCE_EXHAUSTED:
        message = f"{upstream}: {err.code().name}: {message}"
    retry = next((float(v) for k, v in md or () if k == RETRY_AFTER_KEY), None)
    return error_for_code(err.code(), message, reason=reason, retry_after_s=retry)
