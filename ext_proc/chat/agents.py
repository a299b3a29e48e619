"""``POST /v1/chat/completions`` on an agent listener (issue 19, plano's ``type: agent`` listeners).

The request is checked like any chat request (400 on a malformed body), goes through the guard when
``prompt_guards`` configures one (blocked: the guard's answer, nothing forwarded), then to the agent
whose description fits the conversation (:mod:`ext_proc.chat.agent_choice`): ext_proc sets
``x-sidegate-upstream`` to the agent's cluster and Envoy forwards the request unchanged to the
agent's ``url`` + ``/v1/chat/completions``; the answer, JSON or SSE, goes back through Envoy
untouched (the response body is not sent to ext_proc) with ``x-sidegate-agent: <id>``. An agent that
cannot be reached is Envoy's 502 naming its cluster ``agent_<id>``.

The previous agent of a conversation is not stored or returned: the decision reads the earlier user
turns of the request itself, so any client that sends its history (the OpenAI SDK's usual way)
keeps a follow-up with the same agent unless the new turn is clearly about another one.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np
import numpy.typing as npt

from ext_proc import telemetry
from ext_proc.chat.agent_choice import ANCHOR_LINES, CONTEXT_TURNS, AgentChoice, AgentSpec, agent_decider, agent_texts, decide
from ext_proc.chat.completions import request_problem, request_span, synthesized
from ext_proc.chat.intent import IntentIndex
from ext_proc.chat.output_guard import AnswerGuard, StreamGuard, replacement, system_prompts
from ext_proc.chat.pipeline import GUARD_MODEL
from ext_proc.config import AgentListener, Config
from ext_proc.errors import ModelServerError, SidegateError, UpstreamError, render_error
from ext_proc.metrics import Metrics
from ext_proc.models.base import Models
from ext_proc.names import AGENT_HEADER, GUARD_HEADER, OUTPUT_BLOCKED, UPSTREAM_HEADER
from ext_proc.processor import CONTINUE, Continue, Immediate, PassThrough, Reply
from ext_proc.wire.openai import ChatRequest, content_text, parse_chat_request

__all__ = ["AgentProcessor", "AgentRouter", "user_turns"]

log = logging.getLogger("sidegate.agents")

def user_turns(req: ChatRequest, limit: int = CONTEXT_TURNS) -> list[str]:
    """The last user turn, then up to ``limit`` earlier ones, most recent first (blank ones left out)."""
    turns = [t for t in (content_text(m.get("content")) for m in req.messages if m.get("role") == "user") if t.strip()]
    return list(reversed(turns[-1 - limit:]))


class AgentRouter:
    """One agent listener's decision: its agents embedded once (:meth:`warm`), then per request."""

    def __init__(self, *, listener: AgentListener, models: Models | None, metrics: Metrics) -> None:
        self.listener = listener
        self.models = models
        self.metrics = metrics
        self.specs = [AgentSpec(a.id, a.description) for a in listener.agents]
        self._index: IntentIndex | None = None
        self._anchors: npt.NDArray[np.float32] | None = None
        self._lock = asyncio.Lock()

    async def warm(self) -> None:
        """Embed the agents' views (at start, else on the first request)."""
        if self.models is None or len(self.specs) < 2 or self._index is not None:
            return
        async with self._lock:
            if self._index is None:
                texts = agent_texts(self.specs)
                index, self._anchors = agent_decider(self.specs, await self.models.embed(texts))
                self._index = index
                log.info("agent listener %s: embedded %d agents (%d views, %d of %d ordinary-chat lines kept)", self.listener.listener.name,
                         len(self.specs), len(texts) - len(ANCHOR_LINES), len(self._anchors), len(ANCHOR_LINES))

    async def choose(self, req: ChatRequest) -> AgentChoice:
        """The agent for ``req``; the default one when the embedding model is unavailable (logged, counted)."""
        if len(self.specs) == 1:
            return AgentChoice(0, "only", 0.0)
        if self.models is None:
            raise ModelServerError(f"agent listener {self.listener.listener.name!r} routes by embeddings, and no model server is "
                                   "configured: set model_server in the config")
        texts = user_turns(req)
        if not texts:
            return AgentChoice(self.listener.default_index, "default", float("-inf"))
        try:
            await self.warm()
            assert self._index is not None
            vecs = await self.models.embed(texts)
        except ModelServerError as exc:
            log.warning("agent listener %s: prompt_embed unavailable (%s): to the default agent", self.listener.listener.name, exc.message)
            return AgentChoice(self.listener.default_index, "unavailable", float("-inf"))
        return decide(self._index, texts, list(vecs), default=self.listener.default_index, anchors=self._anchors)


Guard = Callable[[str], Awaitable[bool]]


class AgentProcessor(PassThrough):
    """Implements :class:`~ext_proc.processor.Processor` for chat completions on an agent listener."""

    def __init__(self, *, cfg: Config, router: AgentRouter, guard: Guard | None, metrics: Metrics,
                 log: logging.LoggerAdapter[logging.Logger]) -> None:
        self.cfg = cfg
        self.router = router
        self.guard = guard
        self.metrics = metrics
        self.log = log
        self.name = router.listener.listener.name
        self.headers: dict[str, str] = {}
        self.agent: str | None = None
        self.outcome = "incomplete"
        self.span: Any = None
        self.answer_guard: AnswerGuard | None = None  # prompt_guards.output_guards on the agent's answer
        self.stream_guard: StreamGuard | None = None

    def _error(self, exc: SidegateError) -> Immediate:
        self.outcome = f"error_{exc.status}"
        self.metrics.errors.labels(f"agent:{self.name}", exc.code).inc()
        self.log.info("answered %d %s: %s", exc.status, exc.code, exc.message)
        return Immediate.from_error(render_error(exc, request_id=self.headers.get("x-request-id", "")), details=exc.code)

    async def request_headers(self, headers: dict[str, str], end_of_stream: bool) -> Reply:
        self.headers = headers
        if telemetry.enabled():
            self.span = request_span("sidegate.agent", f"agent:{self.name}", headers)
        problem = request_problem(headers, end_of_stream)
        return CONTINUE if problem is None else self._error(problem)

    async def request_body(self, body: bytes, end_of_stream: bool) -> Reply:
        try:
            req = parse_chat_request(body)
            with telemetry.use(self.span):
                if self.guard is not None and await self.guard(req.last_user_text):
                    assert self.cfg.jailbreak is not None
                    self.outcome = "answered"
                    return synthesized(req, self.cfg.jailbreak.message, model=GUARD_MODEL, headers={GUARD_HEADER: "blocked"})
                started = time.perf_counter()
                with telemetry.span("agent") as span:
                    choice = await self.router.choose(req)
                    agent = self.router.listener.agents[choice.index].id
                    span.set_attributes({"sidegate.agent": agent, "sidegate.agent.how": choice.how,
                                         "sidegate.agent.score": choice.score if choice.score > float("-inf") else 0.0})
                self.metrics.stage_seconds.labels("agent").observe(time.perf_counter() - started)
        except SidegateError as exc:
            return self._error(exc)
        self.agent = agent
        self.outcome = "forwarded"
        if self.cfg.output_guards is not None:
            self.answer_guard = AnswerGuard(settings=self.cfg.output_guards, prompts=system_prompts(self.cfg, req))
        self.metrics.agent_routes.labels(self.name, agent, choice.how).inc()
        telemetry.set_attributes(self.span, {"sidegate.agent": agent, "sidegate.agent.how": choice.how})
        self.log.debug("to agent %s (%s, score %.3f)", agent, choice.how, choice.score)
        return Continue(set_headers={UPSTREAM_HEADER: self.cfg.agents[agent].cluster}, clear_route_cache=True)

    async def response_headers(self, headers: dict[str, str], end_of_stream: bool) -> Reply:
        if self.agent is None:
            return CONTINUE
        status = headers.get(":status", "")
        self.outcome = f"upstream_{status}"
        self.metrics.upstream_status.labels(f"agent:{self.agent}", status[:1] + "xx" if status else "none").inc()
        telemetry.set_attributes(self.span, {"http.response.status_code": int(status) if status.isdigit() else 0})
        if self.answer_guard is None or not status.startswith("2") or end_of_stream:
            # the answer (JSON or SSE) goes to the client as the agent sent it: ext_proc does not see its body
            return Continue(set_headers={AGENT_HEADER: self.agent})
        # output guards: the answer is read (SSE chunk by chunk, JSON whole), as on the chat listeners
        if "text/event-stream" in headers.get("content-type", ""):
            self.stream_guard = self.answer_guard.stream(api="openai", model="")
            return Continue(set_headers={AGENT_HEADER: self.agent}, remove_headers=("content-length",), response_body_mode="STREAMED")
        size, limit = headers.get("content-length", ""), self.router.listener.listener.max_body_bytes
        if size.isdigit() and int(size) > limit:
            return self._error(UpstreamError(
                f"agent {self.agent}'s answer is {size} bytes, more than the output guards can check (max_body_bytes of agent "
                f"listener {self.name}: {limit}): raise max_body_bytes, or ask for a shorter answer or a stream",
                code="output_guard_unchecked", status=502))
        return Continue(set_headers={AGENT_HEADER: self.agent}, response_body_mode="BUFFERED")

    async def response_body(self, body: bytes, end_of_stream: bool) -> Reply:
        if self.stream_guard is not None:
            out = self.stream_guard.feed(body, end_of_stream=end_of_stream)
            if self.stream_guard.leak is not None and self.outcome != "output_blocked":
                self._blocked(self.stream_guard.leak.guard)
            return CONTINUE if out == body else Continue(body=out)
        if self.answer_guard is None or not end_of_stream:
            return CONTINUE
        leak = self.answer_guard.check_json(body, api="openai")
        if leak is None:
            return CONTINUE
        self._blocked(leak.guard)
        new = json.dumps(replacement(leak, model=self.agent or "")).encode()
        return Continue(body=new, set_headers={"content-length": str(len(new)), GUARD_HEADER: OUTPUT_BLOCKED})

    def _blocked(self, guard: str) -> None:
        self.outcome = "output_blocked"
        self.metrics.output_guard_blocks.labels(f"agent:{self.name}", guard).inc()
        self.log.info("agent %s's answer blocked by output guard %s", self.agent, guard)

    def finish(self) -> None:
        self.metrics.requests.labels(f"agent:{self.name}", "chat_completions", self.outcome).inc()
        if self.span is not None:
            self.span.set_attribute("sidegate.outcome", self.outcome)
            if self.outcome.startswith(("error_5", "upstream_5")):
                telemetry.set_error(self.span, self.outcome)
            self.span.end()
            self.span = None
