"""How a failed call to another service reads to the router."""

from __future__ import annotations

import grpc
from grpc.aio import AioRpcError, Metadata

from libs.runtime.errors import InvalidArgument, Unavailable
from services.router.backends import retryable
from services.router.clients import upstream_error


def _error(code: grpc.StatusCode, details: str) -> AioRpcError:
    return AioRpcError(code, Metadata(), Metadata(), details=details)


def test_a_callee_that_drops_the_call_is_unavailable_and_retried_elsewhere() -> None:
    exc = upstream_error(
        _error(grpc.StatusCode.CANCELLED, "CANCELLED"), "inference inference-1 (10.0.0.7:50055)"
    )
    assert isinstance(exc, Unavailable) and exc.reason == "UPSTREAM_CANCELLED"
    assert exc.message.startswith("inference inference-1 (10.0.0.7:50055): dropped the call")
    assert retryable(exc)


def test_other_codes_keep_their_meaning_and_name_the_callee() -> None:
    exc = upstream_error(_error(grpc.StatusCode.INVALID_ARGUMENT, "prompt too long"), "tokenizer (t:1)")
    assert isinstance(exc, InvalidArgument) and not retryable(exc)
    assert exc.message == "tokenizer (t:1): prompt too long"
