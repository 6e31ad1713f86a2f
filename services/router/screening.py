"""Output screening: model output goes through safety's ScreenOutput stream, pipelined.

A writer task reads the generation and writes each chunk to the bidi stream as soon as it
arrives; the reader (the caller of `OutputScreener.screen`) takes safety's answers in order and
releases exactly the text safety released, in order. Safety answers every request with one
response, so the n-th answer belongs to the n-th chunk; the last chunk carries `end_of_stream`
(safety flushes what it held back in the same answer). The writer never waits for an answer, so
reading the next token from inference overlaps with screening the previous one.

A blocked answer ends the generation: nothing more is released (the writer is stopped and the
stream cancelled, whatever it had already sent). When safety fails mid-stream (an error, the
stream ending early, or no answer within the chunk timeout) the key's fail mode decides:
closed → the request fails with UNAVAILABLE; open → what safety still held back and every chunk
it has not answered go out unscreened, in order, followed by the rest of the generation, with a
log line and the `llmesh_router_safety_fail_open_total{direction="output"}` metric.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator, Callable, Mapping
from dataclasses import dataclass

from llmesh.safety.v1 import safety_service_pb2 as safety_pb

from libs.runtime.errors import LlmeshError, Unavailable
from services.router.metrics import SAFETY_BLOCKED, SAFETY_FAIL_OPEN
from services.router.ports import OutputScreen, Safety

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Released:
    """Text that may go to the caller (or the block that ends the output)."""

    text: str
    blocked: bool = False
    reason: str = ""


@dataclass(frozen=True)
class _Sent:
    """A chunk the writer handed on: written to safety unless `screened` is False."""

    text: str
    screened: bool
    at: float


# Put on the queue when the writer stops (last, after every chunk it handed on).
_END = None


class OutputScreener:
    """One generation's output screen; see the module docstring."""

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
        on_wait: Callable[[float], None] | None = None,
    ):
        self.safety = safety
        self.tenant, self.request_id, self.restore = tenant, request_id, dict(restore)
        self.fail_open = fail_open
        self.chunk_timeout_s = chunk_timeout_s
        self.stream_timeout_s = stream_timeout_s
        self.on_wait = on_wait
        self._screen: OutputScreen | None = None
        self._closed = False
        self._write_error: LlmeshError | None = None
        self._answered_raw: list[str] = []
        self._released: list[str] = []
        self.bypassed = False
        self.findings: list[str] = []
        # The strictest outcome so far: "allow", "redact", "block" or "unscreened" (failed open).
        self.outcome = "allow"
        self.block_reason = ""

    # -- the writer ----------------------------------------------------------------------------
    async def _write(self, request: safety_pb.ScreenOutputRequest) -> None:
        if self._closed:
            return
        if self._screen is None:
            self._screen = self.safety.screen_output(self.stream_timeout_s)
            request.tenant, request.request_id = self.tenant, self.request_id
            request.restore.update(self.restore)
        try:
            await self._screen.write(request)
        except LlmeshError as exc:
            self._write_error = exc

    async def _writer(
        self, chunks: AsyncGenerator[tuple[str, bool], None], queue: asyncio.Queue[_Sent | None]
    ) -> None:
        """Hand every chunk to safety (and the reader), the last one with end_of_stream."""
        sent_any = ended = False
        try:
            async for text, last in chunks:
                if ended:
                    continue  # nothing is screened after the last chunk
                screened = not self.bypassed and self._write_error is None
                if screened and (text or (last and sent_any)):
                    await self._write(safety_pb.ScreenOutputRequest(chunk=text, end_of_stream=last))
                    sent_any = True
                    queue.put_nowait(_Sent(text, True, time.perf_counter()))
                elif text:
                    queue.put_nowait(_Sent(text, False, time.perf_counter()))
                if last:
                    ended = True  # the generation may still read its call's end
            if not ended and sent_any and not self.bypassed and self._write_error is None:
                await self._write(safety_pb.ScreenOutputRequest(end_of_stream=True))
                queue.put_nowait(_Sent("", True, time.perf_counter()))
        finally:
            queue.put_nowait(_END)
            await chunks.aclose()

    # -- the reader ----------------------------------------------------------------------------
    async def _answer(self, sent: _Sent, since: float) -> safety_pb.ScreenOutputResponse:
        """Safety's answer to `sent`, due `chunk_timeout_s` after it could first be answered."""
        if self._write_error is not None:
            raise self._write_error
        assert self._screen is not None
        started = time.perf_counter()
        timeout = max(sent.at, since) + self.chunk_timeout_s - started
        try:
            async with asyncio.timeout(max(timeout, 0.0)):  # no task per chunk, unlike wait_for
                resp = await self._screen.read()
        except TimeoutError:
            raise Unavailable(
                f"safety did not answer an output chunk within {self.chunk_timeout_s:.2f}s",
                reason="SAFETY_TIMEOUT",
            ) from None
        finally:
            if self.on_wait is not None:
                self.on_wait(time.perf_counter() - started)
        if resp is None:
            raise Unavailable("safety closed the output stream early", reason="SAFETY_STREAM_CLOSED")
        return resp

    def _bypass(self, exc: LlmeshError) -> str:
        """Switch to unscreened output; returns the answered raw text that safety still held back."""
        if not self.fail_open:
            raise Unavailable(
                f"output safety screening is unavailable ({exc.message}); this key fails closed",
                reason="SAFETY_UNAVAILABLE",
            ) from exc
        self.bypassed = True
        self.outcome = "unscreened"
        self.close()
        SAFETY_FAIL_OPEN.labels("output").inc()
        log.warning(
            "output safety unavailable; releasing unscreened output (key fails open)",
            extra={"fields": {"request_id": self.request_id, "error": exc.message}},
        )
        raw, released = "".join(self._answered_raw), "".join(self._released)
        return raw[len(released) :] if raw.startswith(released) else ""

    def _released_by(self, sent: _Sent, resp: safety_pb.ScreenOutputResponse) -> Released:
        self.findings.extend(f.type for f in resp.findings)
        if resp.action == safety_pb.ACTION_BLOCK:
            SAFETY_BLOCKED.labels("output").inc()
            self.close()
            self.outcome = "block"
            self.block_reason = resp.reason or "output blocked by the safety policy"
            return Released(text="", blocked=True, reason=self.block_reason)
        if resp.action == safety_pb.ACTION_REDACT:
            self.outcome = "redact"
        self._answered_raw.append(sent.text)
        self._released.append(resp.text)
        return Released(text=resp.text)

    async def screen(self, chunks: AsyncGenerator[tuple[str, bool], None]) -> AsyncGenerator[Released, None]:
        """What safety releases of `chunks` ((text, is_last) pairs), in order.

        After its last chunk `chunks` may go on running (to read its call's end, say); the
        output ends when it returns, so it is never cut off there.

        Ends after a block (the last item is the block), or once the output is flushed and the
        stream closed. A failure of `chunks` is raised here, after the text released before it.
        """
        queue: asyncio.Queue[_Sent | None] = asyncio.Queue()
        writer = asyncio.create_task(self._writer(chunks, queue), name="output-screen-writer")
        since = time.perf_counter()
        try:
            while True:
                item = await queue.get()
                if item is None:  # the writer stopped
                    await writer  # raises the generation's failure, if it failed
                    break
                if not item.screened or self.bypassed:
                    yield Released(text=item.text)
                    continue
                try:
                    resp = await self._answer(item, since)
                except LlmeshError as exc:
                    held = self._bypass(exc)
                    yield Released(text=held + item.text)
                    continue
                since = time.perf_counter()
                released = self._released_by(item, resp)
                if released.text or released.blocked:
                    yield released
                if released.blocked:
                    return
            await self._end()
        finally:
            writer.cancel()
            await asyncio.wait([writer])
            if not writer.cancelled():
                writer.exception()  # retrieved: a failure raised above or superseded by the reader's
            self.close()

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
        """End the stream (idempotent); nothing more is written to safety."""
        self._closed = True
        if self._screen is not None:
            self._screen.cancel()
            self._screen = None
