"""Continuous-batching generation engine over a genai-built ONNX decoder.

One dedicated thread owns the ONNX Runtime session and runs the loop: at every step it admits a
few queued requests (each prefilled on its own, into its own KV slot), then decodes one token for
every running sequence in a single batched call. Sequences join and leave the batch between
steps; a finished or cancelled sequence frees its slot immediately. Callers submit from any
thread with a sink callback, or use :meth:`Engine.generate` from asyncio.

With the prefix cache on, a prompt whose first blocks are cached gets their KV copied into its
slot and prefills only the rest (see prefix_cache); greedy output is the same token for token.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import secrets
import threading
import time
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass, field

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

from libs.runtime.errors import FailedPrecondition, ResourceExhausted, Unavailable
from services.inference.generation import Delta, FinishReason, GenerationRequest, Usage, max_new_tokens
from services.inference.kv_slots import KvSlots
from services.inference.metrics import EngineMetrics, RequestSpan
from services.inference.model_info import ModelFolder
from services.inference.prefix_cache import PrefixCache
from services.inference.sampling import Sampler
from services.inference.text_stream import IncrementalDetokenizer, StopMatcher

log = logging.getLogger("llmesh.inference.engine")

Sink = Callable[[Delta], object]


@dataclass(frozen=True)
class EngineConfig:
    """Engine limits; the service settings map onto these."""

    max_batch: int = 16
    max_queue: int = 64
    threads: int = 2
    max_context: int = 2048
    default_max_tokens: int = 256
    prefills_per_step: int = 2
    # ONNX Runtime execution providers in priority order. The KV slots live in host memory, so
    # a GPU provider works but copies the cache each step; the CPU provider is what ships tested.
    # A requested provider the session does not run on is logged and counted at start; with
    # strict_providers the start fails instead.
    providers: tuple[str, ...] = ("CPUExecutionProvider",)
    strict_providers: bool = False
    # Prompt-prefix KV cache: tokens held (0 turns it off) and tokens per block.
    prefix_cache_tokens: int = 4096
    prefix_block_tokens: int = 16


@dataclass(eq=False)
class _Sequence:
    request: GenerationRequest
    sink: Sink
    max_new: int
    sampler: Sampler
    detok: IncrementalDetokenizer
    stops: StopMatcher
    submitted: float
    admitted: float = 0.0
    last_token_at: float = 0.0
    first_token_ms: float = 0.0
    slot: int = -1
    length: int = 0
    reused: int = 0
    last_token: int = 0
    batch: int = 1
    step: int = 0
    emitted: bool = False
    generated: list[int] = field(default_factory=list)
    cancelled: bool = False
    done: bool = False
    gone: Callable[[], bool] | None = None

    def caller_gone(self) -> bool:
        return self.cancelled or (self.gone is not None and self.gone())


class Ticket:
    """Handle of a submitted request; ``cancel`` frees its queue entry or slot."""

    def __init__(self, engine: Engine, seq: _Sequence) -> None:
        self._engine = engine
        self._seq = seq

    def cancel(self) -> None:
        self._engine._cancel(self._seq)


class Engine:
    """Serves one model folder with continuous batching."""

    def __init__(
        self, folder: ModelFolder, config: EngineConfig, metrics: EngineMetrics, served_name: str = ""
    ) -> None:
        self.folder = folder
        self.config = config
        self.name = served_name or folder.manifest.served_name
        self.context_length = min(folder.manifest.context_length, config.max_context)
        self._metrics = metrics
        self._eos = frozenset(folder.manifest.eos_token_ids)
        self._cond = threading.Condition()
        self._pending: collections.deque[_Sequence] = collections.deque()
        self._running: list[_Sequence] = []
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._session: ort.InferenceSession | None = None
        self._kv: KvSlots | None = None
        self._tokenizer = Tokenizer.from_file(str(folder.path / "tokenizer.json"))
        self._service_s = 1.0
        self._steps = 0
        # Names this engine's step counter: responses relayed from several engines stay apart.
        self.instance_id = secrets.randbits(63)
        # Execution providers the session runs on, and requested ones it does not (set by start).
        self.providers: tuple[str, ...] = ()
        self.missing_providers: tuple[str, ...] = ()
        blocks = config.prefix_cache_tokens // config.prefix_block_tokens
        self.prefix_cache = PrefixCache(config.prefix_block_tokens, blocks) if blocks > 0 else None

    # ----------------------------------------------------------------- lifecycle

    def start(self) -> None:
        """Load the session, warm it up and start the engine thread (blocking; call off-loop)."""
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = self.config.threads
        opts.inter_op_num_threads = 1
        self._session = ort.InferenceSession(
            str(self.folder.graph), opts, providers=list(self.config.providers)
        )
        self._check_providers(self._session.get_providers())
        self._kv = KvSlots(self.folder.layout, self.config.max_batch, self.context_length)
        self._forward(np.array([[self.folder.manifest.eos_token_ids[0]] * 4], np.int64), [4], 0)
        self._thread = threading.Thread(target=self._loop, name=f"engine-{self.name}", daemon=True)
        self._thread.start()
        log.info(
            "engine %s ready: context %d, max batch %d", self.name, self.context_length, self.config.max_batch
        )

    def _check_providers(self, active: list[str]) -> None:
        """Log the providers the session runs on; a requested one it lacks is never silent."""
        self.providers = tuple(active)
        self.missing_providers = tuple(p for p in self.config.providers if p not in active)
        self._metrics.providers(self.name, self.providers, self.missing_providers)
        log.info(
            "engine %s: ONNX Runtime runs on %s (requested %s)",
            self.name, ",".join(active), ",".join(self.config.providers),
        )  # fmt: skip
        if self.missing_providers:
            message = (
                f"engine {self.name}: requested execution provider(s) {','.join(self.missing_providers)} "
                f"not in use (this onnxruntime offers {','.join(ort.get_available_providers())}); "
                f"running on {','.join(active)}"
            )
            if self.config.strict_providers:
                raise FailedPrecondition(message)
            log.warning(message)

    def stop(self) -> None:
        """Stop the loop; every queued or running request ends with an Unavailable error."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        for seq in [*self._pending, *self._running]:
            seq.sink(Delta([], "", error=Unavailable(f"model {self.name} is shutting down")))
        self._pending.clear()
        self._running.clear()

    @property
    def ready(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def running(self) -> int:
        return len(self._running)

    @property
    def queued(self) -> int:
        return len(self._pending)

    # ----------------------------------------------------------------- submission

    def validate(self, request: GenerationRequest) -> int:
        """Check a request against the model; return its max new tokens."""
        return max_new_tokens(
            request, self.context_length, self.folder.layout.vocab_size, self.config.default_max_tokens
        )

    def submit(
        self, request: GenerationRequest, sink: Sink, gone: Callable[[], bool] | None = None
    ) -> Ticket:
        """Queue a request; ``sink`` receives its deltas on the engine thread.

        ``gone`` tells whether the caller has left without cancelling its ticket (Triton's
        response sender): such a request is dropped at admission instead of prefilled, and a full
        queue drops those before refusing anyone."""
        max_new = self.validate(request)
        seq = _Sequence(
            request=request,
            sink=sink,
            max_new=max_new,
            sampler=Sampler(request.sampling),
            detok=IncrementalDetokenizer(self._tokenizer),
            stops=StopMatcher(request.sampling.stop),
            submitted=time.perf_counter(),
            gone=gone,
        )
        with self._cond:
            if self._stopping or not self.ready:
                raise FailedPrecondition(f"model {self.name} is not running")
            if len(self._pending) >= self.config.max_queue:
                self._drop_gone()
            if len(self._pending) >= self.config.max_queue:
                self._metrics.rejected.labels(self.name).inc()
                waves = (len(self._pending) + len(self._running)) / self.config.max_batch
                raise ResourceExhausted(
                    f"model {self.name}: {len(self._pending)} requests queued "
                    f"(limit {self.config.max_queue})",
                    retry_after_s=round(max(0.1, waves * self._service_s), 2),
                )
            self._pending.append(seq)
            self._metrics.queued.labels(self.name).set(len(self._pending))
            self._cond.notify_all()
        return Ticket(self, seq)

    async def generate(self, request: GenerationRequest) -> AsyncGenerator[Delta, None]:
        """Stream deltas of one request; leaving the iteration early cancels it."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Delta] = asyncio.Queue()
        ticket = self.submit(request, lambda d: loop.call_soon_threadsafe(queue.put_nowait, d))
        span = RequestSpan(self.name)
        finished = False
        try:
            while True:
                delta = await queue.get()
                if delta.error is not None:
                    finished = True
                    raise delta.error
                span.record(delta)
                finished = delta.finished
                yield delta
                if finished:
                    return
        finally:
            if not finished:
                ticket.cancel()

    def _drop_gone(self) -> None:
        """Remove queued requests whose caller has gone (lock held)."""
        for seq in [s for s in self._pending if s.caller_gone()]:
            self._pending.remove(seq)
            seq.done = True
            self._metrics.finished.labels(self.name, FinishReason.CANCELLED.value).inc()
        self._metrics.queued.labels(self.name).set(len(self._pending))

    def _cancel(self, seq: _Sequence) -> None:
        with self._cond:
            seq.cancelled = True
            if seq in self._pending:
                self._pending.remove(seq)
                seq.done = True
                self._metrics.finished.labels(self.name, FinishReason.CANCELLED.value).inc()
                self._metrics.queued.labels(self.name).set(len(self._pending))
            self._cond.notify_all()

    # ----------------------------------------------------------------- engine thread

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._running and not self._pending and not self._stopping:
                    self._cond.wait()
                if self._stopping:
                    return
                room = self.config.max_batch - len(self._running)
                admitted = [
                    self._pending.popleft()
                    for _ in range(min(room, self.config.prefills_per_step, len(self._pending)))
                ]
                self._metrics.queued.labels(self.name).set(len(self._pending))
            try:
                self._step(admitted)
            except Exception as exc:  # a failed run is logged and reported to every caller
                log.exception("engine %s step failed", self.name)
                for seq in [*admitted, *self._running]:
                    if not seq.done:
                        seq.done = True
                        seq.sink(Delta([], "", error=Unavailable(f"model {self.name} failed: {exc}")))
                self._running.clear()
            self._metrics.running.labels(self.name).set(len(self._running))

    def _step(self, admitted: list[_Sequence]) -> None:
        for seq in [s for s in self._running if s.cancelled]:
            self._finish(seq, FinishReason.CANCELLED)
        for seq in admitted:
            if seq.cancelled:
                continue
            if seq.caller_gone():
                seq.done = True
                self._metrics.finished.labels(self.name, FinishReason.CANCELLED.value).inc()
                continue
            self._prefill(seq)
        if self._running:
            self._decode()

    def _prefill(self, seq: _Sequence) -> None:
        now = time.perf_counter()
        seq.admitted = now
        self._metrics.queue_wait.labels(self.name).observe(now - seq.submitted)
        seq.slot = len(self._running)
        self._running.append(seq)
        prompt = seq.request.prompt_token_ids
        seq.reused = self._reuse_prefix(seq)
        logits = self._forward(np.array([prompt[seq.reused :]], np.int64), [len(prompt)], seq.slot)
        seq.length = len(prompt)
        if self.prefix_cache is not None:
            kv, slot = self._kv, seq.slot
            assert kv is not None
            self.prefix_cache.insert(prompt, lambda start, stop: kv.read(slot, start, stop))
            self._metrics.prefix_cache_tokens.labels(self.name).set(self.prefix_cache.tokens)
        seq.batch, seq.step = 1, 0
        self._accept(seq, seq.sampler(logits[0, -1]))

    def _reuse_prefix(self, seq: _Sequence) -> int:
        """Copy the longest cached prefix of the prompt into the sequence's slot; its length."""
        if self.prefix_cache is None:
            return 0
        assert self._kv is not None
        blocks = self.prefix_cache.lookup(seq.request.prompt_token_ids)
        if not blocks:
            self._metrics.prefix_cache_misses.labels(self.name).inc()
            return 0
        size = self.prefix_cache.block_size
        for k, block in enumerate(blocks):
            self._kv.write(seq.slot, k * size, block.keys, block.values)
        reused = len(blocks) * size
        self._metrics.prefix_cache_hits.labels(self.name).inc()
        self._metrics.prefix_reused_tokens.labels(self.name).inc(reused)
        return reused

    def _decode(self) -> None:
        batch = list(self._running)
        self._metrics.batch_size.labels(self.name).observe(len(batch))
        ids = np.array([[s.last_token] for s in batch], np.int64)
        logits = self._forward(ids, [s.length + 1 for s in batch], 0)
        self._steps += 1
        # Every row's cache grew by one before any sequence can leave and move slots.
        for seq in batch:
            seq.length += 1
            seq.batch, seq.step = len(batch), self._steps
        for i, seq in enumerate(batch):
            self._accept(seq, seq.sampler(logits[i, -1]))

    def _forward(self, input_ids: np.ndarray, totals: list[int], first_slot: int) -> np.ndarray:
        """Run the decoder on slots ``first_slot..`` with ``totals[i]`` tokens in row i after this step."""
        assert self._session is not None and self._kv is not None
        mask = np.zeros((len(totals), max(totals)), np.int64)
        for row, total in enumerate(totals):
            mask[row, :total] = 1
        binding = self._session.io_binding()
        lay = self.folder.layout
        binding.bind_cpu_input(lay.input_ids, input_ids)
        binding.bind_cpu_input(lay.attention_mask, mask)
        binding.bind_output(lay.logits)
        self._kv.bind(binding, first_slot, len(totals))
        self._session.run_with_iobinding(binding)
        logits: np.ndarray = binding.get_outputs()[0].numpy()
        return logits

    def _accept(self, seq: _Sequence, token: int) -> None:
        now = time.perf_counter()
        first = not seq.generated and seq.first_token_ms == 0.0
        if first:
            seq.first_token_ms = (now - seq.admitted) * 1000
            self._metrics.ttft.labels(self.name).observe(now - seq.submitted)
        else:
            self._metrics.inter_token.labels(self.name).observe(now - seq.last_token_at)
        seq.last_token_at = now
        self._metrics.tokens.labels(self.name).inc()
        if token in self._eos:
            self._finish(seq, FinishReason.STOP)
            return
        seq.generated.append(token)
        seq.last_token = token
        text = seq.stops.push(seq.detok.push(token))
        if seq.stops.matched:
            self._finish(seq, FinishReason.STOP, [token], text)
        elif len(seq.generated) >= seq.max_new:
            self._finish(seq, FinishReason.LENGTH, [token], text)
        else:
            seq.sink(self._delta(seq, [token], text))

    def _delta(self, seq: _Sequence, tokens: list[int], text: str) -> Delta:
        delta = Delta(tokens, text, batch_size=seq.batch, step=seq.step)
        if not seq.emitted:
            seq.emitted = delta.first = True
            delta.queue_ms = (seq.admitted - seq.submitted) * 1000
            delta.ttft_ms = seq.first_token_ms
            delta.cached_tokens = seq.reused
        return delta

    def _finish(
        self, seq: _Sequence, reason: FinishReason, tokens: list[int] | None = None, text: str = ""
    ) -> None:
        if not seq.stops.matched:
            text += seq.stops.flush()
        self._release(seq)
        seq.done = True
        self._metrics.finished.labels(self.name, reason.value).inc()
        elapsed = time.perf_counter() - seq.submitted
        self._service_s = 0.9 * self._service_s + 0.1 * elapsed
        if reason is FinishReason.CANCELLED:
            return
        delta = self._delta(seq, tokens or [], text)
        delta.finish_reason = reason
        delta.usage = Usage(len(seq.request.prompt_token_ids), len(seq.generated))
        seq.sink(delta)

    def _release(self, seq: _Sequence) -> None:
        """Free the sequence's slot, moving the last running sequence into it."""
        assert self._kv is not None
        slot = seq.slot
        last = self._running[-1]
        if last is not seq:
            self._kv.move(last.slot, slot, last.length)
            last.slot = slot
            self._running[slot] = last
        self._running.pop()
        seq.slot = -1
