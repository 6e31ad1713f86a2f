"""Output screening: model output goes through safety's ScreenOutput stream chunk by chunk.

Each chunk is written and the answer read before the next one, so what reaches the caller is
always what safety released (safety holds back only a short suffix that could still complete a
match). A blocked answer ends the generation. When safety fails mid-stream the key's fail mode
decides: closed → the request fails with UNAVAILABLE; open → the rest goes out unscreened, with
a log line and the `llmesh_router_safety_fail_open_total{direction="output"}` metric.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import dataclass

from llmesh.safety.v1 import safety_service_pb2 as safety_pb

from libs.runtime.errors import LlmeshError, Unavailable
from services.router.metrics import SAFETY_BLOCKED, SAFETY_FAIL_OPEN
from services.router.ports import OutputScreen, Safety

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Released:
    """What a chunk releases to the caller."""

    text: str
    blocked: bool = False
    reason: str = ""


class OutputScreener:
    """One generation's output screen."""

    def __init__(
        self,
        safety: Safety,
        *,
        tenant: str,
        request_id: str,
        restore: Mapping[str, str],
        fail_open: bool,
        chunk_timeout_s: float,
        stream_timeout_s: float,
    ):
        self.safety = safety
        self.tenant, self.request_id, self.restore = tenant, request_id, dict(restore)
        self.fail_open = fail_open
        self.chunk_timeout_s = chunk_timeout_s
        self.stream_timeout_s = stream_timeout_s
        self._screen: OutputScreen | None = None
        self._raw: list[str] = []
        self._released: list[str] = []
        self.bypassed = False
        self.findings: list[str] = []

    async def _exchange(self, request: safety_pb.ScreenOutputRequest) -> safety_pb.ScreenOutputResponse:
        if self._screen is None:
            self._screen = self.safety.screen_output(self.stream_timeout_s)
            request.tenant, request.request_id = self.tenant, self.request_id
            request.restore.update(self.restore)
        screen = self._screen

        async def exchange() -> safety_pb.ScreenOutputResponse:
            await screen.write(request)
            resp = await screen.read()
            if resp is None:
                raise Unavailable("safety closed the output stream early", reason="SAFETY_STREAM_CLOSED")
            return resp

        try:
            return await asyncio.wait_for(exchange(), self.chunk_timeout_s)
        except TimeoutError:
            raise Unavailable(
                f"safety did not answer an output chunk within {self.chunk_timeout_s:.2f}s",
                reason="SAFETY_TIMEOUT",
            ) from None

    def _bypass(self, exc: LlmeshError) -> str:
        """Switch to unscreened output; returns the raw text that safety still held back."""
        if not self.fail_open:
            raise Unavailable(
                f"output safety screening is unavailable ({exc.message}); this key fails closed",
                reason="SAFETY_UNAVAILABLE",
            ) from exc
        self.bypassed = True
        self.close()
        SAFETY_FAIL_OPEN.labels("output").inc()
        log.warning(
            "output safety unavailable; releasing unscreened output (key fails open)",
            extra={"fields": {"request_id": self.request_id, "error": exc.message}},
        )
        raw, released = "".join(self._raw), "".join(self._released)
        return raw[len(released) :] if raw.startswith(released) else self._raw[-1] if self._raw else ""

    def _answer(self, resp: safety_pb.ScreenOutputResponse) -> Released:
        self.findings.extend(f.type for f in resp.findings)
        if resp.action == safety_pb.ACTION_BLOCK:
            SAFETY_BLOCKED.labels("output").inc()
            self.close()
            return Released(
                text="", blocked=True, reason=resp.reason or "output blocked by the safety policy"
            )
        self._released.append(resp.text)
        return Released(text=resp.text)

    async def feed(self, chunk: str) -> Released:
        """Screen the next chunk of output."""
        if not chunk:
            return Released(text="")
        self._raw.append(chunk)
        if self.bypassed:
            return Released(text=chunk)
        try:
            resp = await self._exchange(safety_pb.ScreenOutputRequest(chunk=chunk))
        except LlmeshError as exc:
            return Released(text=self._bypass(exc))
        return self._answer(resp)

    async def finish(self) -> Released:
        """Flush what safety held back at the end of the output."""
        if self.bypassed or self._screen is None:
            return Released(text="")
        try:
            resp = await self._exchange(safety_pb.ScreenOutputRequest(end_of_stream=True))
        except LlmeshError as exc:
            return Released(text=self._bypass(exc))
        result = self._answer(resp)
        await self._end()
        return result

    async def _end(self) -> None:
        """Half-close and read the server's end of stream, so the call ends with OK, not CANCELLED."""
        screen, self._screen = self._screen, None
        if screen is None:
            return
        try:
            await asyncio.wait_for(screen.done_writing(), self.chunk_timeout_s)
            while await asyncio.wait_for(screen.read(), self.chunk_timeout_s) is not None:
                pass
        except (LlmeshError, TimeoutError) as exc:
            log.info("output screen did not close cleanly", extra={"fields": {"error": repr(exc)}})
            screen.cancel()

    def close(self) -> None:
        """End the stream (idempotent)."""
        if self._screen is not None:
            self._screen.cancel()
            self._screen = None
