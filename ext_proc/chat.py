"""``POST /v1/chat/completions`` on the ingress and egress listeners.

Request side: check the body (400 on anything malformed, nothing forwarded), let the listener's
router decide where it goes (egress: :func:`choose_provider`; ingress: the prompt pipeline), and
tell Envoy through ``x-sidegate-upstream`` plus a route-cache clear. Response side: stream SSE
bodies chunk by chunk (reading ``usage`` and time to first token on the way), buffer the rest.
"""

from __future__ import annotations

import logging
import time
from typing import Awaitable, Callable

from .config import Config, LlmProvider
from .errors import MethodNotAllowed, MalformedRequest, SidegateError, render_error
from .metrics import Metrics
from .openai_wire import ChatRequest, parse_chat_request, usage_from_body, usage_from_sse
from .processor import CONTINUE, Continue, Immediate, PassThrough, Reply
from .providers import choose_provider

__all__ = ["ChatProcessor", "Decision", "Router", "UPSTREAM_HEADER", "egress_router"]

UPSTREAM_HEADER = "x-sidegate-upstream"
PROVIDER_HEADER = "x-sidegate-provider"

# A router answers the request itself (Immediate) or names the provider and the body to send.
Decision = Immediate | tuple[LlmProvider, bytes | None]
Router = Callable[[Config, dict[str, str], ChatRequest], Awaitable[Decision]]


async def egress_router(cfg: Config, headers: dict[str, str], req: ChatRequest) -> Decision:
    """Egress (app → LLM): hint header, model name, default provider."""
    choice = choose_provider(cfg, headers, req)
    return choice.provider, choice.body


class ChatProcessor(PassThrough):
    """Implements :class:`~ext_proc.processor.Processor` for chat completions."""

    def __init__(self, *, cfg: Config, listener: str, router: Router, metrics: Metrics, log: logging.LoggerAdapter) -> None:  # type: ignore[type-arg]
        self.cfg = cfg
        self.listener = listener
        self.router = router
        self.metrics = metrics
        self.log = log
        self.headers: dict[str, str] = {}
        self.provider: LlmProvider | None = None
        self.outcome = "incomplete"
        self.forwarded_at = 0.0
        self.first_chunk_seen = False
        self.sse_tail = b""
        self.streaming = False

    def _error(self, exc: SidegateError) -> Immediate:
        self.outcome = f"error_{exc.status}"
        self.metrics.errors.labels(self.listener, exc.code).inc()
        self.log.info("answered %d %s: %s", exc.status, exc.code, exc.message)
        return Immediate.from_error(render_error(exc, request_id=self.headers.get("x-request-id", "")), details=exc.code)

    async def request_headers(self, headers: dict[str, str], end_of_stream: bool) -> Reply:
        self.headers = headers
        if headers.get(":method", "").upper() != "POST":
            return self._error(MethodNotAllowed(f"{headers.get(':method')} is not allowed on {headers.get(':path')}: use POST"))
        if end_of_stream:
            return self._error(MalformedRequest("request body is empty: send a JSON chat-completions request", code="empty_body"))
        return CONTINUE

    async def request_body(self, body: bytes, end_of_stream: bool) -> Reply:
        try:
            req = parse_chat_request(body)
            decision = await self.router(self.cfg, self.headers, req)
        except SidegateError as exc:
            return self._error(exc)
        if isinstance(decision, Immediate):
            self.outcome = "answered"
            return decision
        self.provider, new_body = decision
        self.outcome = "forwarded"
        self.forwarded_at = time.perf_counter()
        self.log.debug("to provider %s (cluster %s)", self.provider.name, self.provider.cluster)
        return Continue(
            set_headers={UPSTREAM_HEADER: self.provider.cluster},
            body=new_body,
            clear_route_cache=True,
        )

    async def response_headers(self, headers: dict[str, str], end_of_stream: bool) -> Reply:
        status = headers.get(":status", "")
        if self.provider is None:
            return CONTINUE
        self.metrics.upstream_status.labels(self.provider.name, status[:1] + "xx" if status else "none").inc()
        self.outcome = f"upstream_{status}"
        self.streaming = "text/event-stream" in headers.get("content-type", "")
        return Continue(
            set_headers={PROVIDER_HEADER: self.provider.name},
            response_body_mode="STREAMED" if self.streaming else ("NONE" if end_of_stream else "BUFFERED"),
        )

    async def response_body(self, body: bytes, end_of_stream: bool) -> Reply:
        if self.provider is None:
            return CONTINUE
        if self.streaming:
            if not self.first_chunk_seen and body:
                self.first_chunk_seen = True
                self.metrics.ttft_seconds.labels(self.provider.name).observe(time.perf_counter() - self.forwarded_at)
            usage, self.sse_tail = usage_from_sse(self.sse_tail + body)
        else:
            usage = usage_from_body(body)
        if usage:
            self._count_tokens(usage)
        return CONTINUE

    def _count_tokens(self, usage: dict[str, int]) -> None:
        assert self.provider is not None
        for key, direction in (("prompt_tokens", "input"), ("completion_tokens", "output")):
            value = usage.get(key)
            if isinstance(value, int) and value >= 0:
                self.metrics.tokens.labels(self.provider.name, direction).inc(value)

    def finish(self) -> None:
        self.metrics.requests.labels(self.listener, "chat_completions", self.outcome).inc()
