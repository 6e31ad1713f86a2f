"""The request pipeline: one generation from an authenticated key to accounted, screened output.

    rate limit → input safety ∥ (token ids (chat template) → choose model → budget hold)
      → cache lookup ∥ re-tokenizing a redacted prompt → [cache hit: replay] | inference
      → output safety, pipelined (writer ∥ reader) → usage accounting; cache store in the background

Input safety reads only the messages, so it starts right after the rate limit and runs while the
prompt is tokenized, the model chosen and the budget held. Its verdict is awaited before anything
else uses the prompt: no token ids reach inference, and the cache is asked only for a prompt that
safety allowed (so a blocked prompt never reaches the cache or takes its single-flight lease; a
verdict that arrives before the budget hold skips the hold too). A redacted prompt is re-tokenized
from the redacted messages while the cache is asked. The model is chosen before the cache lookup
because the cache key includes the model (an answer of one model never serves another). Every
step runs under a deadline derived from the caller's. Failures follow policy: a cache failure is
a miss; safety down follows the key's fail mode; inference failures retry and fall back before
the first token (see `dispatch`).

`generate` yields `Started` (model, route reason, cache outcome) before any text, then
`TextDelta`s, then `Finished` with usage and the route. One audit event per request goes to
the `llmesh.audit` logger, with step latencies and outcomes, never the prompt or the key.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator, Sequence
from typing import Any

from llmesh.cache.v1 import cache_service_pb2 as cache_pb
from llmesh.common.v1 import generation_pb2 as gen_pb
from llmesh.safety.v1 import safety_service_pb2 as safety_pb
from redis.exceptions import RedisError

from libs.keys import KeyRecord
from libs.runtime.errors import InvalidArgument, LlmeshError, Unavailable
from services.router import metrics as m
from services.router.accounting import Accounting, Reservation, hold_usd
from services.router.audit import RequestAudit, emit
from services.router.backends import Backend, BackendRequest
from services.router.deadline import Deadline
from services.router.dispatch import AttemptLog, Dispatcher, Opened
from services.router.generation import (
    Event,
    Finished,
    GenerationInput,
    Limiter,
    PipelineConfig,
    Route,
    Started,
    TextDelta,
)
from services.router.ports import Cache, Safety, Tokenizer
from services.router.registry import AUTO, ModelRegistry, ModelSpec
from services.router.routing import choose
from services.router.screening import OutputScreener

log = logging.getLogger(__name__)


def _add_step(audit: RequestAudit, name: str, seconds: float) -> None:
    """Time spent on a step outside `audit.step` (e.g. waiting for output safety's answers)."""
    audit.steps[name] = audit.steps.get(name, 0.0) + seconds
    m.STEP_LATENCY.labels(name).observe(seconds)


async def _cancel(tasks: Sequence[asyncio.Task[Any]]) -> None:
    """Cancel the helper tasks a request did not wait for, and collect their outcomes."""
    pending = [t for t in tasks if not t.done()]
    for task in pending:
        task.cancel()
    if pending:
        await asyncio.wait(pending)
    for task in tasks:
        if not task.cancelled():
            task.exception()  # retrieved, so an unawaited failure is not reported as lost


class Pipeline:
    """Runs generations; see the module docstring."""

    def __init__(
        self,
        *,
        registry: ModelRegistry,
        tokenizer: Tokenizer,
        safety: Safety,
        cache: Cache,
        backends: dict[str, Backend],
        dispatcher: Dispatcher,
        accounting: Accounting,
        limiter: Limiter,
        config: PipelineConfig,
    ):
        self.registry = registry
        self.tokenizer = tokenizer
        self.safety = safety
        self.cache = cache
        self.backends = backends
        self.dispatcher = dispatcher
        self.accounting = accounting
        self.limiter = limiter
        self.cfg = config
        self._background: set[asyncio.Task[None]] = set()

    # -- steps ---------------------------------------------------------------------------------
    async def _token_ids(
        self,
        spec: ModelSpec,
        req: GenerationInput,
        messages: Sequence[gen_pb.ChatMessage],
        deadline: Deadline,
    ) -> list[int]:
        if not spec.tokenizer_model:
            return []
        timeout = deadline.step(self.cfg.tokenizer_timeout_s, "tokenization")
        if req.is_chat:
            return await self.tokenizer.chat_token_ids(spec.tokenizer_model, messages, timeout)
        text = messages[0].content if messages else req.prompt or ""
        return await self.tokenizer.encode(spec.tokenizer_model, text, timeout)

    @staticmethod
    def _prompt_count(spec: ModelSpec, ids: Sequence[int], req: GenerationInput) -> int:
        return len(ids) if spec.tokenizer_model else max(1, req.char_count() // 4)

    async def _screen_input(
        self, key: KeyRecord, request_id: str, req: GenerationInput, deadline: Deadline, audit: RequestAudit
    ) -> safety_pb.ScreenInputResponse | None:
        """The screening verdict, or None when safety is down and the key fails open."""
        try:
            timeout = deadline.step(self.cfg.safety_timeout_s, "input safety screening")
            with audit.step("input_safety"):
                return await self.safety.screen_input(key.tenant, request_id, req.screen_messages(), timeout)
        except InvalidArgument:
            raise
        except LlmeshError as exc:
            if not self._fails_open(key):
                raise Unavailable(
                    f"input safety screening is unavailable ({exc.message}); this API key fails closed, "
                    "so the request was not run; retry later",
                    reason="SAFETY_UNAVAILABLE",
                ) from exc
            m.SAFETY_FAIL_OPEN.labels("input").inc()
            log.warning(
                "input safety unavailable; proceeding unscreened (key fails open)",
                extra={"fields": {"request_id": request_id, "key_id": key.key_id, "error": exc.message}},
            )
            return None

    def _fails_open(self, key: KeyRecord) -> bool:
        """Whether to serve unscreened when safety is down: the key's setting, else its tenant's
        (both resolved by the key store), else the router's."""
        return (key.safety_fail_mode or self.cfg.safety_fail_mode) == "open"

    @staticmethod
    def _admit_input(screened: safety_pb.ScreenInputResponse | None, audit: RequestAudit) -> None:
        """Record input safety's findings; raise PROMPT_BLOCKED when it blocked the prompt."""
        if screened is None:
            return
        audit.findings = [f.type for f in screened.findings]
        if screened.action != safety_pb.ACTION_BLOCK:
            return
        m.SAFETY_BLOCKED.labels("input").inc()
        kinds = ", ".join(sorted({f"{f.type} ({f.rule})" if f.rule else f.type for f in screened.findings}))
        raise InvalidArgument(
            f"prompt blocked by the safety policy: {screened.reason or 'policy violation'}"
            + (f"; findings: {kinds}" if kinds else ""),
            reason="PROMPT_BLOCKED",
            metadata={"findings": kinds},
        )

    async def _verdict_if_ready(
        self, task: asyncio.Task[safety_pb.ScreenInputResponse | None], audit: RequestAudit
    ) -> None:
        """Stop early when input safety already refused the prompt (or failed for a closed key),
        so that no budget hold is taken for a request that cannot run."""
        if task.done():
            self._admit_input(await task, audit)

    async def _lookup(
        self, request: cache_pb.LookupRequest, deadline: Deadline
    ) -> cache_pb.LookupResponse | None:
        """A cache lookup; any failure or timeout is a miss (logged and counted)."""
        try:
            timeout = deadline.step(self.cfg.cache_timeout_s + self.cfg.cache_wait_ms / 1000, "cache lookup")
            return await asyncio.wait_for(self.cache.lookup(request, timeout), timeout)
        except (LlmeshError, TimeoutError) as exc:
            m.CACHE.labels("error").inc()
            log.info("cache lookup failed; treating as a miss", extra={"fields": {"error": repr(exc)}})
            return None

    def _store_later(self, request: cache_pb.StoreRequest) -> None:
        async def store() -> None:
            try:
                await self.cache.store(request, self.cfg.cache_timeout_s * 3)
            except LlmeshError as exc:
                m.CACHE.labels("store_error").inc()
                log.info("cache store failed", extra={"fields": {"error": exc.message}})

        task = asyncio.create_task(store())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def drain(self, timeout_s: float = 5.0) -> None:
        """Wait for background cache stores (on shutdown)."""
        if self._background:
            await asyncio.wait(set(self._background), timeout=timeout_s)

    # -- the pipeline --------------------------------------------------------------------------
    def _resolve(self, req: GenerationInput, key: KeyRecord) -> ModelSpec | None:
        if req.model in ("", AUTO):
            return None
        spec = self.registry.get(req.model)
        self.registry.check_allowed(spec, key.models)
        return spec

    def _effective_sampling(
        self, req: GenerationInput, spec: ModelSpec, prompt_tokens: int
    ) -> gen_pb.SamplingParams:
        sampling = gen_pb.SamplingParams()
        sampling.CopyFrom(req.sampling)
        room = spec.context_length - prompt_tokens
        if sampling.HasField("max_tokens"):
            if sampling.max_tokens > room:
                raise InvalidArgument(
                    f"prompt ({prompt_tokens} tokens) + max_tokens ({sampling.max_tokens}) exceeds the "
                    f"context window of {spec.name} ({spec.context_length}); lower max_tokens to "
                    f"{max(room, 0)} or shorten the prompt",
                    reason="CONTEXT_TOO_LONG",
                )
        else:
            if room < 1:
                raise InvalidArgument(
                    f"the prompt ({prompt_tokens} tokens) fills the context window of {spec.name} "
                    f"({spec.context_length}); shorten it",
                    reason="CONTEXT_TOO_LONG",
                )
            sampling.max_tokens = min(self.cfg.default_max_tokens, room)
        return sampling

    async def generate(
        self, req: GenerationInput, key: KeyRecord, deadline: Deadline, request_id: str, trace_id: str = ""
    ) -> AsyncGenerator[Event, None]:
        """Run one generation; see the module docstring."""
        audit = RequestAudit(key=key, request_id=request_id, user=req.user)
        route = Route(trace_id=trace_id)
        reservation: Reservation | None = None
        produced = False
        tasks: list[asyncio.Task[Any]] = []
        m.INFLIGHT.inc()
        try:
            max_tokens_hint = (
                req.sampling.max_tokens
                if req.sampling.HasField("max_tokens")
                else self.cfg.default_max_tokens
            )
            with audit.step("rate_limit"):
                await self.limiter.acquire(key, tokens=req.char_count() // 4 + max_tokens_hint)
            audit.limited_tokens = req.char_count() // 4 + max_tokens_hint
            safety_task = asyncio.create_task(self._screen_input(key, request_id, req, deadline, audit))
            tasks.append(safety_task)

            spec = self._resolve(req, key)
            allowed = self.registry.allowed(key.models)
            count_spec = (
                spec
                or next(
                    (s for s in sorted(allowed, key=lambda s: s.input_price_per_1k) if s.tokenizer_model),
                    None,
                )
                or (allowed[0] if allowed else None)
            )
            if count_spec is None:
                raise InvalidArgument("this API key may not use any model", reason="NO_MODEL_ALLOWED")
            with audit.step("tokenize"):
                ids = await self._token_ids(count_spec, req, req.screen_messages(), deadline)
            prompt_tokens = self._prompt_count(count_spec, ids, req)
            if spec is None:
                decision = choose(allowed, req.routing_text(), prompt_tokens, max_tokens_hint)
                spec, route.reason = decision.model, decision.reason
                if spec.tokenizer_model != count_spec.tokenizer_model:
                    with audit.step("tokenize"):
                        ids = await self._token_ids(spec, req, req.screen_messages(), deadline)
                    prompt_tokens = self._prompt_count(spec, ids, req)
            else:
                route.reason = f"requested {req.model!r}" + (
                    f" (alias of {spec.name})" if req.model != spec.name else ""
                )
            sampling = self._effective_sampling(req, spec, prompt_tokens)
            chain = [
                s
                for s in self.registry.fallback_chain(spec, key.models)
                if s.context_length >= prompt_tokens + sampling.max_tokens
            ]
            audit.prompt_tokens = prompt_tokens

            hold = max(
                hold_usd(prompt_tokens, sampling.max_tokens, s.input_price_per_1k, s.output_price_per_1k)
                for s in chain
            )
            await self._verdict_if_ready(safety_task, audit)
            with audit.step("budget"):
                reservation = await self.accounting.reserve(
                    key.key_id, hold, key.budget_day_usd, key.budget_month_usd
                )

            use_cache = key.cache_allowed and req.cache_mode != cache_pb.CACHE_MODE_BYPASS and bool(ids)
            lookup_req = cache_pb.LookupRequest(
                key=cache_pb.CacheKey(
                    tenant=key.tenant,
                    model=spec.name,
                    model_version=self.backends[spec.backend].model_version(spec),
                    sampling=sampling,
                    prompt_token_ids=ids,
                ),
                mode=req.cache_mode,
                wait_ms=self.cfg.cache_wait_ms,
            )
            t_wait = time.perf_counter()
            screened = await safety_task
            audit.steps["input_safety_wait"] = time.perf_counter() - t_wait
            self._admit_input(screened, audit)
            if self.cfg.cache_semantic and screened is not None and screened.action == safety_pb.ACTION_ALLOW:
                # Only a prompt safety screened and passed unchanged is matched by meaning. A
                # redacted one (or one safety could not screen) uses the exact cache only, whose
                # key holds its original tokens: its answer may carry personal data (restored
                # from placeholders) that a similar prompt about someone else must never get,
                # and its raw text must not be stored in Redis to be embedded.
                lookup_req.semantic = True
                lookup_req.key.semantic_text = req.semantic_text()
                lookup_req.key.context_digest = req.context_digest()
            # Allowed: the cache lookup runs while a redacted prompt is re-tokenized.
            t_parallel = time.perf_counter()
            cache_task = asyncio.create_task(self._lookup(lookup_req, deadline)) if use_cache else None
            if cache_task is not None:
                tasks.append(cache_task)
            restore: dict[str, str] = {}
            model_ids = ids
            if screened is None:
                route.safety = "unscreened"
            else:
                route.safety = "redact" if screened.action == safety_pb.ACTION_REDACT else "allow"
                restore = dict(screened.restore)
                if screened.action == safety_pb.ACTION_REDACT:
                    with audit.step("tokenize"):
                        model_ids = await self._token_ids(spec, req, list(screened.messages), deadline)
            lookup = await cache_task if cache_task is not None else None
            audit.steps["cache_lookup"] = time.perf_counter() - t_parallel if cache_task else 0.0

            if not use_cache:
                route.cache = "bypass"
            elif lookup is not None and lookup.hit:
                route.cache = "hit"
            elif lookup is not None and lookup.skipped_reason in ("bypass", "nondeterministic"):
                route.cache = "bypass"
            else:
                route.cache = "miss"
            m.CACHE.labels(route.cache).inc()

            if lookup is not None and lookup.hit:
                route.model = spec.name
                route.attempts = ["cache:" + spec.name + ":hit"]
                yield Started(spec.name, route.reason, route.cache)
                m.TTFT.labels(spec.name, "hit").observe(time.perf_counter() - audit.started)
                text = lookup.response.text
                step = self.cfg.stream_chunk_chars
                for i in range(0, len(text), step):
                    produced = True
                    yield TextDelta(text[i : i + step])
                audit.completion_tokens = lookup.response.usage.completion_tokens
                hit_usage = gen_pb.Usage(
                    prompt_tokens=prompt_tokens,
                    completion_tokens=audit.completion_tokens,
                    total_tokens=prompt_tokens + audit.completion_tokens,
                )
                await self._settle(key, reservation, spec.name, hit_usage, 0.0, audit)
                yield Finished(lookup.response.finish_reason or gen_pb.FINISH_REASON_STOP, hit_usage, route)
                return

            messages = list(screened.messages) if screened is not None and req.is_chat else list(req.messages)
            prompt_text = (
                (
                    screened.messages[0].content
                    if screened is not None and screened.messages
                    else req.prompt or ""
                )
                if not req.is_chat
                else ""
            )
            breq = BackendRequest(
                prompt_token_ids=model_ids,
                sampling=sampling,
                request_id=request_id,
                messages=messages if req.is_chat else (),
                prompt=prompt_text,
            )
            attempts = AttemptLog()
            try:
                with audit.step("first_token"):
                    opened = await self.dispatcher.open(chain, breq, deadline, attempts)
            finally:
                route.attempts = attempts.hops
            route.model = opened.spec.name
            if attempts.fallback_used:
                route.reason += f"; fell back to {opened.spec.name} after {spec.name} failed"
            yield Started(opened.spec.name, route.reason, route.cache)
            screener = OutputScreener(
                self.safety,
                tenant=key.tenant,
                request_id=request_id,
                restore=restore,
                fail_open=self._fails_open(key) or screened is None,
                chunk_timeout_s=self.cfg.safety_timeout_s,
                stream_timeout_s=max(deadline.remaining(), 0.001),
                on_wait=lambda waited: _add_step(audit, "output_safety", waited),
            )
            parts: list[str] = []
            finish: gen_pb.FinishReason.ValueType = gen_pb.FINISH_REASON_UNSPECIFIED
            usage: gen_pb.Usage | None = None
            gen = self._stream(opened, screener, audit)
            try:
                async for item in gen:
                    if isinstance(item, str):
                        if not produced:
                            m.TTFT.labels(opened.spec.name, route.cache).observe(
                                time.perf_counter() - audit.started
                            )
                        produced = True
                        parts.append(item)
                        yield TextDelta(item)
                    else:
                        finish, usage = item
            finally:
                await gen.aclose()
                screener.close()
            audit.findings.extend(screener.findings)
            route.output_safety, route.output_blocked_reason = screener.outcome, screener.block_reason
            completion = usage.completion_tokens if usage is not None else audit.completion_tokens
            prompt_used = usage.prompt_tokens if usage is not None and usage.prompt_tokens else prompt_tokens
            final_usage = gen_pb.Usage(
                prompt_tokens=prompt_used, completion_tokens=completion, total_tokens=prompt_used + completion
            )
            route.cost_usd = opened.spec.cost_usd(prompt_used, completion)
            await self._settle(key, reservation, opened.spec.name, final_usage, route.cost_usd, audit)
            if (
                use_cache
                and opened.spec is spec
                and lookup is not None
                and not screener.bypassed
                and finish in (gen_pb.FINISH_REASON_STOP, gen_pb.FINISH_REASON_LENGTH)
            ):
                self._store_later(
                    cache_pb.StoreRequest(
                        key=lookup_req.key,
                        mode=req.cache_mode,
                        lease=lookup.lease,
                        response=cache_pb.CachedResponse(
                            text="".join(parts),
                            finish_reason=finish,
                            usage=final_usage,
                            created_unix=int(time.time()),
                        ),
                    )
                )
            yield Finished(finish or gen_pb.FINISH_REASON_STOP, final_usage, route)
        except LlmeshError as exc:
            audit.status = exc.code.name
            raise
        except (asyncio.CancelledError, GeneratorExit):
            audit.status = "CANCELLED"
            raise
        finally:
            await _cancel(tasks)
            m.INFLIGHT.dec()
            if not audit.settled:
                await self._unwind(key, reservation, route, audit, produced)
            emit(audit, route)

    async def _stream(
        self, opened: Opened, screener: OutputScreener, audit: RequestAudit
    ) -> AsyncGenerator[str | tuple[gen_pb.FinishReason.ValueType, gen_pb.Usage | None], None]:
        """Released text of an opened generation, then (finish_reason, usage).

        The generation is read and handed to output safety by the screener's writer task while
        this generator yields what safety released, so screening one chunk overlaps with reading
        the next from inference.
        """
        finish, usage, ok = gen_pb.FINISH_REASON_UNSPECIFIED, None, True

        async def chunks() -> AsyncGenerator[tuple[str, bool], None]:
            nonlocal finish, usage, ok
            delta = opened.first
            while True:
                audit.completion_tokens += delta.tokens
                usage = delta.usage or usage
                finish = delta.finish_reason or finish
                yield delta.text, bool(delta.finish_reason)
                if delta.finish_reason:
                    # Read the call's end while safety screens the last chunk, so inference sees
                    # the call finish cleanly instead of a cancellation.
                    try:
                        async for extra in opened.rest:
                            log.info(
                                "inference sent a delta after the finish reason; dropped",
                                extra={"fields": {"chars": len(extra.text)}},
                            )
                    except LlmeshError as exc:
                        log.info(
                            "inference failed after the last token", extra={"fields": {"error": exc.message}}
                        )
                    return
                try:
                    delta = await anext(opened.rest)
                except StopAsyncIteration:
                    return
                except LlmeshError:
                    ok = False
                    raise

        released_stream = screener.screen(chunks())
        try:
            async for released in released_stream:
                if released.text:
                    yield released.text
                if released.blocked:
                    finish = gen_pb.FINISH_REASON_CONTENT_FILTER
                    log.info("output blocked", extra={"fields": {"reason": released.reason}})
            yield (finish, usage)
        finally:
            await released_stream.aclose()
            await opened.rest.aclose()
            await self.dispatcher.finished(opened, ok)

    async def _settle(
        self,
        key: KeyRecord,
        res: Reservation | None,
        model: str,
        usage: gen_pb.Usage,
        cost: float,
        audit: RequestAudit,
    ) -> None:
        """Commit usage and cost, settle the rate limit (failures are logged: the answer was sent).

        The audit event reports exactly what was billed (a redacted prompt is billed at the
        length the model saw)."""
        audit.settled = True
        audit.prompt_tokens, audit.completion_tokens = usage.prompt_tokens, usage.completion_tokens
        with audit.step("accounting"):
            try:
                if res is not None:
                    await self.accounting.commit(
                        res, model, usage.prompt_tokens, usage.completion_tokens, cost
                    )
                if audit.limited_tokens:
                    await self.limiter.adjust(key, audit.limited_tokens, usage.total_tokens)
            except (LlmeshError, RedisError) as exc:
                log.error(
                    "usage accounting failed", extra={"fields": {"key_id": key.key_id, "error": repr(exc)}}
                )
            m.TOKENS.labels(key.tenant, model, "prompt").inc(usage.prompt_tokens)
            m.TOKENS.labels(key.tenant, model, "completion").inc(usage.completion_tokens)
            m.COST.labels(key.tenant, model).inc(cost)

    async def _unwind(
        self, key: KeyRecord, res: Reservation | None, route: Route, audit: RequestAudit, produced: bool
    ) -> None:
        """A request that ended early: bill what was produced, or give the holds back."""
        audit.settled = True
        try:
            if produced and route.model:
                spec = self.registry.get(route.model)
                cost = spec.cost_usd(audit.prompt_tokens, audit.completion_tokens)
                route.cost_usd = cost
                usage = gen_pb.Usage(
                    prompt_tokens=audit.prompt_tokens,
                    completion_tokens=audit.completion_tokens,
                    total_tokens=audit.prompt_tokens + audit.completion_tokens,
                )
                await self._settle(key, res, route.model, usage, cost, audit)
                return
            if res is not None:
                await self.accounting.release(res)
            if audit.limited_tokens:
                await self.limiter.refund(key, audit.limited_tokens)
        except (LlmeshError, RedisError) as exc:
            log.error(
                "could not release a budget hold",
                extra={"fields": {"key_id": key.key_id, "error": repr(exc)}},
            )
