"""``POST /v1/chat/completions`` on the ingress and egress listeners.

Request side: check the body (400 on anything malformed, nothing forwarded), let the listener's
router decide where it goes (egress: :func:`choose_provider`; ingress: the prompt pipeline), and
tell Envoy through ``x-sidegate-upstream`` plus a route-cache clear. Response side: stream SSE
bodies chunk by chunk (reading ``usage`` and time to first token on the way), buffer the rest.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

from ext_proc import telemetry
from ext_proc.chat.cache import CacheEntry, Collector, ResponseCacheService, context_key
from ext_proc.chat.conversations import Conversations
from ext_proc.chat.output_guard import AnswerGuard, Leak, StreamGuard, replacement, system_prompts
from ext_proc.chat.preferences import PreferenceRouter
from ext_proc.chat.providers import body_for, choose_provider, passthrough_key, provider_for_model, routable
from ext_proc.chat.ratelimit import Charge, RateLimiter
from ext_proc.chat.translate import Exchange
from ext_proc.config import Config, Listener, LlmProvider
from ext_proc.errors import MalformedRequest, MethodNotAllowed, SidegateError, UpstreamError
from ext_proc.metrics import Metrics
from ext_proc.names import ATTEMPT_HEADER, CACHE_HEADER, GUARD_HEADER, OUTPUT_BLOCKED, PROVIDER_HEADER, ROUTE_HEADER, UPSTREAM_HEADER
from ext_proc.processor import CONTINUE, Continue, Immediate, PassThrough, Reply
from ext_proc.wire import sigv4
from ext_proc.wire.openai import ChatRequest, chat_completion, parse_chat_request, sse_frames

__all__ = ["ChatProcessor", "Decision", "Forward", "Router", "egress_router", "preference_egress_router", "request_problem",
           "request_span", "synthesized"]

# ATTEMPT_HEADER on answers of providers with fallbacks: attempt n = chain member (n-1) % len


def request_span(name: str, listener: str, headers: dict[str, str]) -> Any:
    """The SERVER span of a request on ``listener`` (joined to the trace its headers carry)."""
    return telemetry.start_span(
        name, telemetry.extract(headers), kind="SERVER",
        attributes={"http.request.method": headers.get(":method", ""), "url.path": headers.get(":path", ""),
                    "sidegate.listener": listener, "sidegate.request_id": headers.get("x-request-id", "")},
    )


def request_problem(headers: dict[str, str], end_of_stream: bool) -> SidegateError | None:
    """What is wrong with a chat request's headers alone (a method other than POST, no body), if anything."""
    if headers.get(":method", "").upper() != "POST":
        return MethodNotAllowed(f"{headers.get(':method')} is not allowed on {headers.get(':path')}: use POST")
    if end_of_stream:
        return MalformedRequest("request body is empty: send a JSON chat-completions request", code="empty_body")
    return None


@dataclass(frozen=True, kw_only=True)
class Forward:
    """Send the request to ``provider`` (with ``body`` instead of the client's, when given)."""

    provider: LlmProvider
    body: bytes | None = None
    response_metadata: dict[str, Any] | None = None  # merged into the provider's answer's `metadata`
    route: str | None = None  # the routing preference that chose ``provider`` (x-sidegate-route), None: none did


# A router answers the request itself (Immediate) or forwards it to a provider.
Decision = Immediate | Forward
Router = Callable[[Config, dict[str, str], ChatRequest], Awaitable[Decision]]


async def egress_router(cfg: Config, headers: dict[str, str], req: ChatRequest) -> Decision:
    """Egress (app → LLM): hint header, model name, default provider."""
    choice = choose_provider(cfg, headers, req)
    return Forward(provider=choice.provider, body=choice.body)


def preference_egress_router(preferences: PreferenceRouter) -> Router:
    """Egress with ``routing_preferences``: hint header, model name, else the provider whose
    preference fits the conversation (:class:`PreferenceRouter`), else the default provider. With
    ``overrides.route_named_models`` the preference decides before the model name, and the model
    name's provider takes what fits no preference."""
    async def route(cfg: Config, headers: dict[str, str], req: ChatRequest) -> Decision:
        if not preferences.active or not routable(cfg, headers, req):
            return await egress_router(cfg, headers, req)
        named = provider_for_model(cfg, req.model) if req.model else None
        found = await preferences.route(req, fallback=named[0] if named is not None else None)
        if found.preference is None and named is not None:
            return Forward(provider=named[0], body=body_for(named[0], req, model=named[1]))
        return Forward(provider=found.provider, body=body_for(found.provider, req), route=found.preference)
    return route


def synthesized(
    req: ChatRequest, content: str, *, model: str, headers: dict[str, str] | None = None, metadata: dict[str, Any] | None = None
) -> Immediate:
    """A 200 answer written by sidegate, as JSON or as SSE chunks ending in ``[DONE]`` (``stream``)."""
    if req.stream:
        body = b"".join(sse_frames(content, model=model, metadata=metadata))
        ctype = "text/event-stream"
    else:
        body = json.dumps(chat_completion(content, model=model, metadata=metadata)).encode()
        ctype = "application/json"
    return Immediate(status=200, body=body, headers={"content-type": ctype, **(headers or {})}, details="sidegate_answer")


class ChatProcessor(PassThrough):
    """Implements :class:`~ext_proc.processor.Processor` for chat completions."""

    def __init__(
        self, *, cfg: Config, listener: str, router: Router, metrics: Metrics, log: logging.LoggerAdapter[logging.Logger],
        ratelimits: RateLimiter | None = None, api: str = "openai", cache: ResponseCacheService | None = None,
        conversations: Conversations | None = None,
    ) -> None:
        self.cfg = cfg
        self.exchange = Exchange(api)  # the client's API (openai | anthropic) and the provider's
        self.ratelimits = ratelimits
        self.charge: Charge | None = None
        self.listener = listener
        self.router = router
        self.metrics = metrics
        self.log = log
        self.headers: dict[str, str] = {}
        self.provider: LlmProvider | None = None
        self.response_metadata: dict[str, Any] | None = None
        self.route: str | None = None  # the routing preference that chose the provider (x-sidegate-route)
        self.outcome = "incomplete"
        self.forwarded_at = 0.0
        self.first_chunk_seen = False
        self.streaming = False
        self.span: Any = None  # this request's span (tracing on only), child of Envoy's
        self.llm_span: Any = None  # the provider call: from forwarding to the end of the response
        self.cache = cache  # the response cache (None: not configured)
        self.conversations = conversations  # the Responses API's stored responses (None: state_storage off)
        self.cache_result = "bypass"  # hit | miss | bypass: the x-sidegate-cache header when the cache is on
        self.cache_key: str | None = None  # after a miss: where this answer is stored
        self.collector: Collector | None = None  # gathers the answer to store after a miss
        self.semantic: tuple[str, str, Any] | None = None  # after a miss with similarity: (context key, the turn, its embedding)
        self.answer_guard: AnswerGuard | None = None  # prompt_guards.output_guards for this request (None: not configured)
        self.stream_guard: StreamGuard | None = None  # the output guards on this request's SSE answer

    def _error(self, exc: SidegateError) -> Immediate:
        self.outcome = f"error_{exc.status}"
        self.metrics.errors.labels(self.listener, exc.code).inc()
        self.log.info("answered %d %s: %s", exc.status, exc.code, exc.message)
        return self._tagged(Immediate.from_error(self.exchange.error(exc, request_id=self.headers.get("x-request-id", "")), details=exc.code))

    def _tagged(self, reply: Immediate) -> Immediate:
        """``reply`` with x-sidegate-cache (bypass: an answer sidegate wrote) when the cache is on."""
        if self.cache is None:
            return reply
        return Immediate(status=reply.status, body=reply.body, headers={**reply.headers, CACHE_HEADER: self.cache_result},
                         details=reply.details)

    async def request_headers(self, headers: dict[str, str], end_of_stream: bool) -> Reply:
        self.headers = headers
        if telemetry.enabled():
            self.span = request_span(f"sidegate.{self.listener}", self.listener, headers)
        problem = request_problem(headers, end_of_stream)
        return CONTINUE if problem is None else self._error(problem)

    async def request_body(self, body: bytes, end_of_stream: bool) -> Reply:
        try:
            req = await self.exchange.read(body, self.conversations)
            with telemetry.use(self.span):
                decision = await self.router(self.cfg, self.headers, req)
            if isinstance(decision, Immediate):
                self.outcome = "answered"
                return self._tagged(await self._present_answer(self.exchange.answer(decision)))
            sent = req  # what goes upstream: the router's body, parsed once when something here reads it
            if decision.body is not None and (self.ratelimits or decision.provider.fallbacks or self.cache):
                sent = parse_chat_request(decision.body)
            if self.cache is not None:
                hit = await self._cache_lookup(decision.provider, sent)
                if hit is not None:
                    return hit
            # the provider's body first: a request it cannot take (400) takes nothing from the rate limits
            out, path = self.exchange.upstream_body(sent, decision.body, decision.provider,  # output guards read chat's shape
                                                    native_ok=self.cfg.output_guards is None and not decision.provider.fallbacks)
            if self.ratelimits:
                self.charge = await self.ratelimits.admit(decision.provider, self.headers, sent.messages)
        except SidegateError as exc:
            return self._error(exc)
        self.provider, self.response_metadata = decision.provider, decision.response_metadata
        self.route = decision.route
        if self.cfg.output_guards is not None:
            self.answer_guard = AnswerGuard(settings=self.cfg.output_guards, prompts=system_prompts(self.cfg, req, sent))
        if decision.route is not None:
            telemetry.set_attributes(self.span, {"sidegate.route": decision.route})
        self.outcome = "forwarded"
        self.forwarded_at = time.perf_counter()
        if self.span is not None:
            self.llm_span = telemetry.start_span("llm", telemetry.child_context(self.span), kind="CLIENT", attributes={
                "gen_ai.operation.name": "chat",
                "gen_ai.system": self.provider.interface,
                "gen_ai.provider.name": self.provider.interface,
                "gen_ai.request.model": self.provider.model or req.model or "",
                "gen_ai.request.stream": req.stream,
                "sidegate.provider": self.provider.name,
                "sidegate.request_body_size": len(decision.body if decision.body is not None else body),
            })
        self.log.debug("to provider %s (cluster %s)", self.provider.name, self.provider.route_cluster)
        headers = {UPSTREAM_HEADER: self.provider.cluster}
        if self.provider.passthrough_auth:
            headers.update(passthrough_key(self.provider, self.headers))
        if path is not None:  # the provider speaks the other API
            headers[":path"] = path
        if self.provider.fallbacks and self.provider.wire == "openai":  # Envoy's failover rewrites "model" per attempt: it must come first
            out = json.dumps({"model": sent.model or self.provider.model or "", **sent.body}).encode()
        if out is not None:  # Envoy refuses a replaced body whose content-length is stale
            headers["content-length"] = str(len(out))
        if self.provider.aws is not None and out is not None and path is not None:  # Bedrock with IAM keys
            assert self.provider.aws_region is not None
            headers.update(sigv4.sign(method="POST", host=self.provider.host_header, path=path, body=out,
                                      credentials=self.provider.aws, region=self.provider.aws_region, service="bedrock"))
        return Continue(set_headers=headers, body=out, clear_route_cache=True)

    async def _present_answer(self, reply: Immediate) -> Immediate:
        """An answer held whole, in a Responses client's shape (stored for later references), else as it is."""
        presented = self.exchange.present_answer(reply)
        await self._remember()
        return presented

    async def _remember(self) -> None:
        response = self.exchange.to_remember()
        if response is not None and self.conversations is not None:
            await self.conversations.remember(self.exchange.request, response)

    async def _cache_lookup(self, provider: LlmProvider, sent: ChatRequest) -> Immediate | None:
        """The cached answer to this request (None: a miss or a bypass, remembered for the response)."""
        assert self.cache is not None
        where: dict[str, Any] = {"listener": self.listener, "client_api": self.exchange.client, "provider": provider.name,
                 "model": provider.model or sent.model, "body": sent.body}
        key = self.cache.key(**where)
        found = await self.cache.lookup(key, self.headers)
        if found.result == "miss" and self.cache.models is not None:
            context = context_key(prefix=self.cache.prefix, **where)
            vec = await self.cache.embed(context[1]) if context is not None else None
            if context is not None and vec is not None:
                self.semantic = (context[0], context[1], vec)
                found = await self.cache.semantic_lookup(context[0], context[1], vec)
        self.cache_result = found.result
        self.metrics.cache_lookups.labels(self.listener, "semantic_hit" if found.similarity is not None else found.result).inc()
        if found.reason:
            self.metrics.cache_bypasses.labels(found.reason).inc()
        telemetry.set_attributes(self.span, {"sidegate.cache": found.result})
        if found.entry is not None:
            self.outcome = "cache_hit"
            self.log.debug("answered from the response cache (provider %s)", found.entry.provider)
            return await self._present_answer(Immediate(status=200, body=found.entry.body, details="cache_hit", headers={
                "content-type": found.entry.content_type, CACHE_HEADER: "hit", PROVIDER_HEADER: found.entry.provider}))
        if found.result == "miss":
            self.cache_key = key
        return None

    async def response_headers(self, headers: dict[str, str], end_of_stream: bool) -> Reply:
        status = headers.get(":status", "")
        if self.provider is None:
            return CONTINUE
        fallback = self._served_by(headers.get(ATTEMPT_HEADER, "")) if self.provider.fallbacks else None
        if fallback is not None:
            self.log.info("provider %s failed over to %s", self.provider.name, fallback.name)
            self.metrics.failovers.labels(self.provider.name, fallback.name).inc()
            telemetry.set_attributes(self.llm_span, {"sidegate.provider": fallback.name, "sidegate.failover_from": self.provider.name})
            self.provider = fallback
        self.metrics.upstream_status.labels(self.provider.name, status[:1] + "xx" if status else "none").inc()
        self.outcome = f"upstream_{status}"
        self.streaming = self.exchange.is_stream(headers.get("content-type", ""))
        # a JSON answer larger than Envoy may buffer goes to the client untouched (not read here: no
        # usage, metadata or cache entry), unless it needs translating into the client's API
        listener = getattr(self.cfg, self.listener, None)
        size = headers.get("content-length", "")
        pass_through = (not self.streaming and not end_of_stream and size.isdigit() and isinstance(listener, Listener)
                        and int(size) > listener.max_body_bytes and not self.exchange.translating)
        self.exchange.start_response(status=status, streaming=self.streaming, error_type=headers.get("x-amzn-errortype"))
        self.exchange.start_presenting(streaming=self.streaming)
        guarded = self.answer_guard is not None and status.startswith("2") and not end_of_stream
        if guarded and pass_through:  # too large to buffer, so it cannot be checked: never sent unchecked
            assert isinstance(listener, Listener)
            return self._error(UpstreamError(
                f"the provider's answer is {size} bytes, more than the output guards can check (listeners.{self.listener}_traffic."
                f"max_body_bytes: {listener.max_body_bytes}): raise max_body_bytes, or ask for a shorter answer (max_tokens) "
                "or a stream", code="output_guard_unchecked", status=502))
        if guarded and self.streaming:
            assert self.answer_guard is not None
            self.stream_guard = self.answer_guard.stream(api=self.exchange.client, model=self.exchange.model or "")
        telemetry.set_attributes(self.llm_span, {"http.response.status_code": int(status) if status.isdigit() else 0})
        if not status.startswith("2"):
            telemetry.set_error(self.llm_span, f"{self.provider.name} answered {status}")
        if end_of_stream:
            self._end_llm_span()
        set_headers = {PROVIDER_HEADER: self.provider.name}
        if self.exchange.translating and self.streaming:  # e.g. Bedrock's event stream, sent on as SSE
            set_headers["content-type"] = "text/event-stream"
        if self.route is not None:
            set_headers[ROUTE_HEADER] = self.route
        if self.cache is not None:
            set_headers[CACHE_HEADER] = self.cache_result
            if self.cache_key is not None:
                if status != "200" or end_of_stream:
                    self._not_stored("status")
                elif pass_through:
                    self._not_stored("too_large")
                elif self.exchange.native:  # the cache holds chat completions; this answer is the provider's Responses one
                    self._not_stored("native_responses")
                else:
                    self.collector = Collector(client_api=self.exchange.client, streaming=self.streaming,
                                               max_bytes=self.cache.settings.max_entry_bytes)
        return Continue(
            set_headers=set_headers,
            # a translated or guarded stream, or an error an Anthropic client gets in its shape, has
            # another length: Envoy sends it chunked
            remove_headers=("content-length",) if (self.exchange.reshaping or self.stream_guard or self._anthropic_error())
            and not end_of_stream else (),
            response_body_mode="STREAMED" if self.streaming else ("NONE" if end_of_stream or pass_through or not self._reads_json_body()
                                                                  else "BUFFERED"),
        )

    def _reads_json_body(self) -> bool:
        """Whether anything here reads this request's JSON answer: token counting
        (ext_proc.count_tokens), a rate-limit charge to settle, the response cache filling after a
        miss, an Anthropic translation, a Responses client's answer, x-arch-state metadata, an error an Anthropic client must get
        in its shape (Envoy's own, when the provider is down). If not, Envoy is told not to send it
        (one gRPC round trip less; ext_proc's stream ends with the response headers)."""
        return (self.cfg.ext_proc.count_tokens or self.charge is not None or self.collector is not None
                or self.exchange.reshaping or bool(self.response_metadata)
                or self.answer_guard is not None or self._anthropic_error())

    def _anthropic_error(self) -> bool:
        """An error answer to an Anthropic client: Envoy's own (provider down) is rewritten in Anthropic's shape."""
        return self.exchange.client == "anthropic" and not self.outcome.startswith("upstream_2")

    def _served_by(self, attempt: str) -> LlmProvider | None:
        """The fallback that answered (None: the provider itself), as Envoy's failover chain assigns attempts."""
        assert self.provider is not None
        chain = self.provider.chain
        if not attempt.isdigit() or int(attempt) < 1:
            return None
        name = chain[(int(attempt) - 1) % len(chain)]
        return None if name == self.provider.name else self.cfg.provider(name)

    async def response_body(self, body: bytes, end_of_stream: bool) -> Reply:
        reply = await self._response_body(body, end_of_stream)
        if self.provider is None or not self.exchange.presenting:
            return reply
        # a Responses API client: everything above (translation, output guards, cache) saw chat completions
        chat = reply.body if isinstance(reply, Continue) and reply.body is not None else body
        try:
            presented = self.exchange.present(chat, streaming=self.streaming, end_of_stream=end_of_stream)
        except SidegateError as exc:  # a chat answer that cannot be presented (no choices)
            return self._error(exc)
        if presented is None:
            return reply
        await self._remember()  # before the bytes that end the response go: the client's next request may refer to it
        assert isinstance(reply, Continue)
        headers = {k: v for k, v in reply.set_headers.items() if k != "content-length"}
        return Continue(body=presented, set_headers=headers, remove_headers=reply.remove_headers)

    async def _response_body(self, body: bytes, end_of_stream: bool) -> Reply:
        if self.provider is None:
            return CONTINUE
        if self.streaming:
            if not self.first_chunk_seen and body:
                self.first_chunk_seen = True
                ttft = time.perf_counter() - self.forwarded_at
                self.metrics.ttft_seconds.labels(self.provider.name).observe(ttft)
                telemetry.set_attributes(self.llm_span, {"sidegate.time_to_first_token_ms": ttft * 1000.0})
        usage = self.exchange.usage(body, streaming=self.streaming)
        if usage:
            self._count_tokens(usage)
            if self.charge is not None and isinstance(usage.get("total_tokens"), int):
                assert self.ratelimits is not None
                await self.ratelimits.settle(self.charge, usage["total_tokens"])
                self.charge = None
        if end_of_stream:
            self._end_llm_span()
        translated = self.exchange.response(body, streaming=self.streaming, end_of_stream=end_of_stream)
        if translated is not None:
            body = translated
        reply: Reply = CONTINUE if translated is None else Continue(body=translated)
        if self.answer_guard is not None and self.ok:
            guarded = self._guard_answer(body, end_of_stream)
            if guarded is not None:
                if isinstance(guarded, Continue):  # the answer was replaced: nothing else to add, nothing to cache
                    if self.collector is not None:
                        self.collector = None
                        self._not_stored("output_guard")
                    return guarded
                body, reply = guarded, Continue(body=guarded)
        if self.response_metadata and self.ok and self.exchange.client == "openai":
            reply = self._with_metadata(body)
            if reply is CONTINUE and translated is not None:  # no metadata added to this chunk: the translation still goes out
                reply = Continue(body=translated)
        if self.collector is not None:
            self.collector.feed(reply.body if isinstance(reply, Continue) and reply.body is not None else body)
            if end_of_stream or (self.streaming and self.collector.ended()):
                await self._store()
        return reply

    def _guard_answer(self, body: bytes, end_of_stream: bool) -> bytes | Continue | None:
        """The output guards on the answer as the client gets it: None when it passes unchanged, the
        bytes to send on (a stream: what is safe so far), or a Continue replacing a blocked answer."""
        assert self.answer_guard is not None
        if self.stream_guard is not None:
            out = self.stream_guard.feed(body, end_of_stream=end_of_stream)
            leak = self.stream_guard.leak
            if leak is not None:  # the stop chunk, then nothing more
                if self.outcome != "output_blocked":
                    self._blocked(leak)
                return Continue(body=out)
            if end_of_stream and self.stream_guard.dropped_bytes:
                self.log.info("dropped %d bytes of an SSE event the provider cut off", self.stream_guard.dropped_bytes)
            return None if out == body else out
        if not end_of_stream:
            return None
        leak = self.answer_guard.check_json(body, api=self.exchange.client)
        if leak is None:
            return None
        self._blocked(leak)
        answer = replacement(leak, model=self.exchange.model or "")
        new = self.exchange.answer(Immediate(status=200, body=json.dumps(answer).encode(), headers={"content-type": "application/json"})).body
        return Continue(body=new, set_headers={"content-length": str(len(new)), GUARD_HEADER: OUTPUT_BLOCKED})

    def _blocked(self, leak: Leak) -> None:
        self.outcome = "output_blocked"
        self.metrics.output_guard_blocks.labels(self.listener, leak.guard).inc()
        self.log.info("answer blocked by output guard %s", leak.guard)
        telemetry.set_attributes(self.span, {"sidegate.output_guard": leak.guard})

    def _not_stored(self, reason: str) -> None:
        self.metrics.cache_not_stored.labels(reason).inc()
        self.cache_key = None

    async def _store(self) -> None:
        """After a miss: the whole answer as the client saw it, into the cache when it may be stored."""
        assert self.collector is not None and self.cache is not None and self.provider is not None
        collector, key, self.collector = self.collector, self.cache_key, None
        answer = collector.finish()
        if answer is None or key is None:
            self._not_stored(collector.refused or "incomplete")
            return
        ctype = "text/event-stream" if self.streaming else "application/json"
        if await self.cache.put(key, CacheEntry(body=answer, content_type=ctype, provider=self.provider.name)):
            self.metrics.cache_stored.labels(self.listener).inc()
            self.metrics.cache_stored_bytes.labels(self.listener).inc(len(answer))
            if self.semantic is not None:
                await self.cache.remember(*self.semantic, key=key)
        else:
            self._not_stored("store_error")

    @property
    def ok(self) -> bool:
        return self.outcome in ("upstream_200", "output_blocked")

    def _with_metadata(self, body: bytes) -> Reply:
        """Add ``metadata`` (x-arch-state) to the provider's answer: the JSON body, or an SSE event before [DONE]."""
        assert self.response_metadata is not None
        if self.streaming:
            done = body.find(b"data: [DONE]")
            if done < 0:
                return CONTINUE
            event = {"object": "chat.completion.chunk", "choices": [], "metadata": self.response_metadata}
            return Continue(body=body[:done] + b"data: " + json.dumps(event).encode() + b"\n\n" + body[done:])
        try:
            answer = json.loads(body)
        except ValueError:
            return CONTINUE
        if not isinstance(answer, dict):
            return CONTINUE
        answer["metadata"] = {**(answer.get("metadata") or {}), **self.response_metadata}
        new = json.dumps(answer).encode()
        return Continue(body=new, set_headers={"content-length": str(len(new))})

    def _count_tokens(self, usage: dict[str, int]) -> None:
        assert self.provider is not None
        for key, direction in (("prompt_tokens", "input"), ("completion_tokens", "output")):
            value = usage.get(key)
            if isinstance(value, int) and value >= 0:
                self.metrics.tokens.labels(self.provider.name, direction).inc(value)
                telemetry.set_attributes(self.llm_span, {f"gen_ai.usage.{direction}_tokens": value})

    def _end_llm_span(self) -> None:
        if self.llm_span is not None:
            self.llm_span.set_attribute("sidegate.latency_ms", (time.perf_counter() - self.forwarded_at) * 1000.0)
            self.llm_span.end()
            self.llm_span = None

    def finish(self) -> None:
        api = {"anthropic": "messages", "responses": "responses"}.get(self.exchange.presented, "chat_completions")
        self.metrics.requests.labels(self.listener, api, self.outcome).inc()
        if self.span is not None:
            self._end_llm_span()
            self.span.set_attribute("sidegate.outcome", self.outcome)
            if self.outcome.startswith(("error_5", "upstream_5")):  # 4xx are the client's doing, not a server error
                telemetry.set_error(self.span, self.outcome)
            self.span.end()
            self.span = None
