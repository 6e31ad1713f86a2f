"""Typed errors carry rich status details; bad settings stop a service with a clear message."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import grpc
from google.rpc import error_details_pb2

from libs.runtime.channels import service_config
from libs.runtime.errors import (
    InvalidArgument,
    ResourceExhausted,
    error_info,
    status_from_metadata,
    trailing_metadata_for,
)

ROOT = Path(__file__).resolve().parents[3]


def test_resource_exhausted_carries_retry_info_and_retry_after() -> None:
    err = ResourceExhausted("queue full", retry_after_s=2.2, reason="QUEUE_FULL")
    md = trailing_metadata_for(err)
    assert ("retry-after", "3") in md
    status = status_from_metadata(md)
    assert status is not None and status.code == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
    info = error_info(status)
    assert info is not None and info.reason == "QUEUE_FULL"
    retry = [d for d in status.details if d.Is(error_details_pb2.RetryInfo.DESCRIPTOR)]
    assert len(retry) == 1


def test_invalid_argument_has_no_retry_hint() -> None:
    md = dict(trailing_metadata_for(InvalidArgument("bad")))
    assert "retry-after" not in md


def test_service_config_retries_only_idempotent_methods() -> None:
    import json

    cfg = json.loads(service_config("a.B", idempotent_methods=["Get"]))
    retrying = [c for c in cfg["methodConfig"] if "retryPolicy" in c]
    assert len(retrying) == 1 and retrying[0]["name"] == [{"service": "a.B", "method": "Get"}]
    assert retrying[0]["retryPolicy"]["retryableStatusCodes"] == ["UNAVAILABLE", "DEADLINE_EXCEEDED"]
    assert all("timeout" not in c for c in cfg["methodConfig"]), "per-call deadlines only (grpcio 1.85)"


def test_invalid_setting_exits_2_naming_the_variable() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "services.tokenizer"],
        env={"LLMESH_TOKENIZER_PORT": "seventy", "PATH": "/usr/bin:/bin"},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "LLMESH_TOKENIZER_PORT" in proc.stderr and "seventy" in proc.stderr
