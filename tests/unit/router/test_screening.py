"""OutputScreener against an in-memory ScreenOutput stream: order, pipelining, block, fail modes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Sequence

import pytest
from llmesh.safety.v1 import safety_service_pb2 as safety_pb

from libs.runtime.errors import LlmeshError, Unavailable
from services.router.screening import OutputScreener, Released


class FakeScreen:
    """Holds back the trailing word of what it was sent; 'KEY' blocks; answers when let through."""

    def __init__(
        self,
        answer_after: int = 0,
        fail_read_at: int | None = None,
        silent: bool = False,
        fail_write_at: int | None = None,
    ):
        self.requests: list[safety_pb.ScreenOutputRequest] = []
        self.answers: asyncio.Queue[safety_pb.ScreenOutputResponse | None] = asyncio.Queue()
        self.pending = ""
        self.answer_after = answer_after  # answer nothing until this many requests were written
        self.fail_read_at = fail_read_at
        self.silent = silent
        self.fail_write_at = fail_write_at
        self.reads = 0
        self.done = False
        self.cancelled = False
        self._backlog: list[safety_pb.ScreenOutputRequest] = []

    def _respond(self, request: safety_pb.ScreenOutputRequest) -> None:
        self.pending += request.chunk
        if "KEY" in self.pending:
            self.answers.put_nowait(
                safety_pb.ScreenOutputResponse(action=safety_pb.ACTION_BLOCK, reason="key")
            )
            return
        if request.end_of_stream:
            text, self.pending = self.pending, ""
        else:
            cut = self.pending.rfind(" ") + 1
            text, self.pending = self.pending[:cut], self.pending[cut:]
        self.answers.put_nowait(safety_pb.ScreenOutputResponse(text=text, action=safety_pb.ACTION_ALLOW))

    async def write(self, request: safety_pb.ScreenOutputRequest) -> None:
        if self.cancelled:
            raise Unavailable("safety: the call was cancelled")
        if self.fail_write_at is not None and len(self.requests) + 1 >= self.fail_write_at:
            raise Unavailable("safety: the output stream has already ended")
        self.requests.append(request)
        if self.silent:
            return
        self._backlog.append(request)
        if len(self.requests) >= self.answer_after:
            for r in self._backlog:
                self._respond(r)
            self._backlog.clear()

    async def done_writing(self) -> None:
        self.done = True
        self.answers.put_nowait(None)

    async def read(self) -> safety_pb.ScreenOutputResponse | None:
        self.reads += 1
        if self.fail_read_at is not None and self.reads >= self.fail_read_at:
            raise Unavailable("safety: connection reset")
        return await self.answers.get()

    def cancel(self) -> None:
        self.cancelled = True


class FakeSafety:
    def __init__(self, screen: FakeScreen):
        self.screen = screen
        self.opened = 0

    async def screen_input(self, *args: object) -> safety_pb.ScreenInputResponse:
        raise AssertionError("not used")

    def screen_output(self, timeout_s: float) -> FakeScreen:
        self.opened += 1
        return self.screen


class Generation:
    """The (text, is_last) chunks a generation yields, failing after them when told."""

    def __init__(self, chunks: Sequence[str], fail: LlmeshError | None = None, finish: bool = True):
        self.chunks, self.fail, self.finish = list(chunks), fail, finish
        self.read = 0
        self.closed = False
        self.exhausted = False

    async def __call__(self) -> AsyncGenerator[tuple[str, bool], None]:
        try:
            for i, text in enumerate(self.chunks):
                self.read += 1
                yield text, self.finish and self.fail is None and i == len(self.chunks) - 1
                await asyncio.sleep(0)
            if self.fail is not None:
                raise self.fail
            self.exhausted = True
        finally:
            self.closed = True


def screener(screen: FakeScreen, fail_open: bool = False, chunk_timeout_s: float = 5.0) -> OutputScreener:
    return OutputScreener(
        FakeSafety(screen),
        tenant="acme",
        request_id="r1",
        restore={"[EMAIL_1]": "a@b.c"},
        fail_open=fail_open,
        chunk_timeout_s=chunk_timeout_s,
        stream_timeout_s=30.0,
    )


async def collect(s: OutputScreener, gen: Generation) -> list[Released]:
    return [r async for r in s.screen(gen())]


async def test_releases_what_safety_released_in_order_and_closes_cleanly() -> None:
    screen = FakeScreen()
    s = screener(screen)
    gen = Generation(["The ", "sea", " is", " wide."])
    out = await asyncio.wait_for(collect(s, gen), 5)
    assert "".join(r.text for r in out) == "The sea is wide."
    # One request per chunk, the last one carries end_of_stream (no separate flush message).
    assert [r.chunk for r in screen.requests] == ["The ", "sea", " is", " wide."]
    assert [r.end_of_stream for r in screen.requests] == [False, False, False, True]
    first = screen.requests[0]
    assert (first.tenant, first.request_id, dict(first.restore)) == ("acme", "r1", {"[EMAIL_1]": "a@b.c"})
    assert screen.done and not screen.cancelled
    assert not s.bypassed and s.outcome == "allow" and not s.block_reason
    # The generation ran to its end after the last chunk (it was not closed from outside).
    assert gen.exhausted


async def test_next_chunk_is_written_before_the_previous_answer_arrives() -> None:
    # Safety answers nothing until it has three chunks: a screener that waited for each answer
    # before writing the next chunk would never finish.
    screen = FakeScreen(answer_after=3)
    s = screener(screen)
    out = await asyncio.wait_for(collect(s, Generation(["one ", "two ", "three ", "four"])), 5)
    assert "".join(r.text for r in out) == "one two three four"


async def test_generation_without_finish_reason_is_flushed_with_end_of_stream() -> None:
    screen = FakeScreen()
    s = screener(screen)
    out = await asyncio.wait_for(collect(s, Generation(["a b", " c"], finish=False)), 5)
    assert "".join(r.text for r in out) == "a b c"
    assert [(r.chunk, r.end_of_stream) for r in screen.requests] == [
        ("a b", False),
        (" c", False),
        ("", True),
    ]


async def test_block_releases_nothing_more_and_stops_the_generation() -> None:
    screen = FakeScreen()
    s = screener(screen)
    gen = Generation(["safe words ", "my KEY ", "more ", "and more ", "text"])
    out = await asyncio.wait_for(collect(s, gen), 5)
    assert out[-1].blocked and out[-1].reason == "key"
    assert s.outcome == "block" and s.block_reason == "key"
    assert "".join(r.text for r in out) == "safe words "
    assert screen.cancelled and not screen.done
    assert gen.closed
    assert all("more" not in r.text for r in out)


async def test_fail_open_releases_held_back_and_unanswered_text_unscreened() -> None:
    screen = FakeScreen(fail_read_at=2)
    s = screener(screen, fail_open=True)
    out = await asyncio.wait_for(collect(s, Generation(["alpha be", "ta gamma", " delta"])), 5)
    assert "".join(r.text for r in out) == "alpha beta gamma delta"
    assert s.bypassed and screen.cancelled and s.outcome == "unscreened"


async def test_fail_closed_raises_unavailable() -> None:
    screen = FakeScreen(fail_read_at=2)
    s = screener(screen, fail_open=False)
    released: list[str] = []
    with pytest.raises(Unavailable) as err:
        async for r in s.screen(Generation(["alpha be", "ta gamma", " delta"])()):
            released.append(r.text)
    assert err.value.reason == "SAFETY_UNAVAILABLE"
    assert released == ["alpha "]
    assert screen.cancelled


async def test_silent_safety_times_out_and_fails_open() -> None:
    screen = FakeScreen(silent=True)
    s = screener(screen, fail_open=True, chunk_timeout_s=0.05)
    out = await asyncio.wait_for(collect(s, Generation(["x y", " z"])), 5)
    assert "".join(r.text for r in out) == "x y z"
    assert s.bypassed


async def test_generation_failure_is_raised_after_the_text_released_before_it() -> None:
    screen = FakeScreen()
    s = screener(screen)
    released: list[str] = []
    gen = Generation(["first part ", "second"], fail=Unavailable("inference-0: gone"))
    with pytest.raises(Unavailable, match="gone"):
        async for r in s.screen(gen()):
            released.append(r.text)
    assert "".join(released) == "first part "
    assert screen.cancelled


async def test_consumer_leaving_early_stops_the_writer_and_the_generation() -> None:
    screen = FakeScreen()
    s = screener(screen)
    gen = Generation([f"w{i} " for i in range(50)])
    stream = s.screen(gen())
    first = await anext(stream)
    await stream.aclose()
    assert first.text == "w0 "
    assert gen.closed and gen.read < 50
    assert screen.cancelled


async def test_empty_generation_opens_no_stream() -> None:
    screen = FakeScreen()
    safety = FakeSafety(screen)
    s = OutputScreener(
        safety, tenant="t", request_id="r", restore={}, fail_open=False, chunk_timeout_s=1, stream_timeout_s=1
    )
    assert [r async for r in s.screen(Generation([""])())] == []
    assert safety.opened == 0


async def test_failed_write_fails_open_with_every_chunk_released_once_in_order() -> None:
    screen = FakeScreen(fail_write_at=2)
    s = screener(screen, fail_open=True)
    out = await asyncio.wait_for(collect(s, Generation(["one tw", "o three", " four"])), 5)
    assert "".join(r.text for r in out) == "one two three four"
    assert s.bypassed and len(screen.requests) == 1


async def test_failed_write_fails_closed() -> None:
    screen = FakeScreen(fail_write_at=1)
    s = screener(screen, fail_open=False)
    with pytest.raises(Unavailable) as err:
        await collect(s, Generation(["one", " two"]))
    assert err.value.reason == "SAFETY_UNAVAILABLE"
