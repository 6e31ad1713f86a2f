"""OpenAI-shaped errors: `{"error": {"message", "type", "code", "param"}}` with an HTTP status.

`from_status` maps a router failure (a gRPC status code name, its message, the ErrorInfo reason
and the retry-after hint) to the status and error type an OpenAI client expects.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

# gRPC status code name -> (HTTP status, OpenAI error type, default code)
_BY_GRPC_CODE: dict[str, tuple[int, str, str]] = {
    "INVALID_ARGUMENT": (400, "invalid_request_error", "invalid_request"),
    "FAILED_PRECONDITION": (400, "invalid_request_error", "failed_precondition"),
    "OUT_OF_RANGE": (400, "invalid_request_error", "out_of_range"),
    "UNAUTHENTICATED": (401, "authentication_error", "invalid_api_key"),
    "PERMISSION_DENIED": (403, "permission_error", "permission_denied"),
    "NOT_FOUND": (404, "not_found_error", "not_found"),
    "ALREADY_EXISTS": (409, "invalid_request_error", "conflict"),
    "ABORTED": (409, "api_error", "aborted"),
    "RESOURCE_EXHAUSTED": (429, "rate_limit_error", "rate_limit_exceeded"),
    "CANCELLED": (499, "api_error", "cancelled"),
    "UNIMPLEMENTED": (501, "api_error", "not_implemented"),
    "UNAVAILABLE": (503, "service_unavailable_error", "service_unavailable"),
    "DEADLINE_EXCEEDED": (504, "timeout_error", "timeout"),
}


@dataclass
class ApiError(Exception):
    """An error answered to the client in OpenAI's shape."""

    status: int
    message: str
    type: str = "invalid_request_error"
    code: str | None = None
    param: str | None = None
    headers: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        super().__init__(self.message)

    def body(self) -> dict[str, Any]:
        """The JSON body."""
        return {"error": {"message": self.message, "type": self.type, "code": self.code, "param": self.param}}

    def json(self) -> str:
        """The JSON body as text."""
        return json.dumps(self.body(), ensure_ascii=False)


def invalid(message: str, param: str | None = None, code: str = "invalid_request") -> ApiError:
    """A 400 about the request itself."""
    return ApiError(400, message, "invalid_request_error", code, param)


def from_status(
    code_name: str,
    message: str,
    *,
    reason: str = "",
    retry_after_s: float | None = None,
    param: str | None = None,
) -> ApiError:
    """The OpenAI error for a router status; RESOURCE_EXHAUSTED gets a Retry-After header."""
    status, kind, default_code = _BY_GRPC_CODE.get(code_name, (500, "api_error", "internal_error"))
    err = ApiError(status, message or code_name, kind, reason.lower() or default_code, param)
    if status == 429:
        wait = 1.0 if retry_after_s is None else retry_after_s
        err.headers["Retry-After"] = str(max(1, math.ceil(wait)))
    return err
