"""The ingress prompt pipeline (DESIGN.md, "Life of an ingress request").

    guard → intent → function calling → clarification → endpoint → answer

:class:`IngressPipeline` implements :data:`~ext_proc.chat.completions.Router`: it takes the parsed chat request
and returns either an answer of its own (guard message, clarifying question, the endpoint's
reply) or a :class:`~ext_proc.chat.completions.Forward` to an LLM provider with the rewritten body. The
three model decisions come from a :class:`Models` (Triton in production); endpoint calls go
through Envoy's internal listener (:class:`~ext_proc.chat.endpoints.EndpointClient`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from ext_proc import telemetry
from ext_proc.chat.completions import Decision, Forward, synthesized
from ext_proc.chat.endpoints import EndpointClient
from ext_proc.chat.preferences import PreferenceRouter
from ext_proc.chat.providers import routable
from ext_proc.chat.intent import CONFIDENT_THRESHOLD, JUDGE_CANDIDATES, UNRELATED_THRESHOLD, IntentIndex, asks_what_a_term_means, retry_query
from ext_proc.chat.targets import PendingState, clarifying_question, endpoint_request, finalize_arguments, tool_schema
from ext_proc.config import Config, ModelSettings, PromptTarget
from ext_proc.errors import MalformedRequest, ModelServerError
from ext_proc.metrics import Metrics
from ext_proc.models.base import Models, ToolCall
from ext_proc.names import ARCH_STATE_KEY, GUARD_HEADER
from ext_proc.wire.openai import ChatRequest, content_text
from sidegate_models.guard_text import guard_text

__all__ = ["FUNCTION_CALL_MODEL", "GUARD_MODEL", "IngressPipeline", "Uncertain"]

log = logging.getLogger("sidegate.pipeline")
# function_call's tool slots when the config does not set them (triton_models/function_call/config.pbtxt n_slots)
FUNCTION_CALL_SLOTS = 16

GUARD_MODEL = "sidegate-guard"
FUNCTION_CALL_MODEL = "sidegate-function-call"


@dataclass(frozen=True)
class Uncertain:
    """Intent's verdict when the embedding is neither confident nor clearly unrelated: the
    function-calling model chooses among ``candidates`` (best ranked first) or none."""

    candidates: tuple[str, ...]
    score: float


class IngressPipeline:
    """Implements :data:`~ext_proc.chat.completions.Router` for the ingress listener."""

    def __init__(self, *, cfg: Config, models: Models | None, endpoints: EndpointClient, metrics: Metrics,
                 preferences: PreferenceRouter | None = None) -> None:
        self.cfg = cfg
        self.preferences = preferences  # routing_preferences: which provider a prompt for the LLM goes to
        self.models = models
        self.endpoints = endpoints
        self.metrics = metrics
        self.targets = {t.name: t for t in cfg.prompt_targets}
        self.default_target = next((t for t in cfg.prompt_targets if t.default), None)
        self.intent_targets = [t for t in cfg.prompt_targets if not t.default]  # what intent matches: every target but the default
        # every intent target as a tool, in config order: the chooser's prompt lists them all, so
        # its bytes never change and llama.cpp keeps it cached (the candidates go in the grammar)
        self._tools = [tool_schema(t) for t in self.intent_targets]
        # the function-calling model judges uncertain matches where it is loaded at all (a target
        # with parameters); otherwise the threshold alone decides, as before
        self.judge = models is not None and any(t.parameters for t in cfg.prompt_targets)
        self._index: IntentIndex | None = None
        self._index_lock = asyncio.Lock()
        self.refused: dict[str, str] = {}  # target -> why function_call refused its pre-fill call (400)
        self.unfilled: dict[str, str] = {}  # target -> why its pre-fill failed otherwise (timed out, model server down)

    @property
    def confident(self) -> float:
        """Best embedding score from which the top-ranked target is taken without asking the model.
        With the judge: ``prompt_target_intent_matching_threshold`` where the config sets it, else
        ``CONFIDENT_THRESHOLD``; without: the threshold (default 0.45) decides alone, as before."""
        if not self.judge:
            return self.cfg.intent_threshold
        return self.cfg.intent_threshold if getattr(self.cfg, "intent_threshold_set", False) else CONFIDENT_THRESHOLD

    @property
    def unrelated(self) -> float:
        """Best embedding score under which the prompt is taken as unrelated (no model call)."""
        return min(UNRELATED_THRESHOLD, self.confident) if self.judge else self.cfg.intent_threshold

    # -- start-up ---------------------------------------------------------------------------
    @property
    def prefills(self) -> bool:
        """Whether :meth:`prefill_function_call` has anything to fill: function_call is loaded (a
        target with parameters), the same condition as :attr:`judge`."""
        return self.judge

    async def prefill_function_call(self, limit: int | None = None, progress: Callable[[int, int], None] | None = None,
                                    models: Models | None = None) -> int:
        """Call ``function_call`` once per target that has parameters (at most ``limit``; None:
        the model's tool slots, ``model_server.models.function_call.parameters.n_slots`` or its
        default 16: more would evict the first ones again), so each target's prompt prefix is in the KV
        cache before its first real request: the first call for a target evaluates ~350 prompt
        tokens (~7 s for the 1.5B on 2 cores), later ones ~20. Each call has the pre-fill's own
        deadline (``model_server.prefill_timeout_s``, far longer than a request's: the first
        call on a cold model loads it). Returns how many were filled. A refusal (400: the
        target's description and schema do not fit the model's window) is kept in
        :attr:`refused`, any other failure in :attr:`unfilled` (its first real requests pay for
        the pre-fill and may time out); both are logged as warnings and shown by ``sidegate up``.
        After a pre-fill timed out the others are not tried (they would queue behind it).
        ``progress(done, total)`` is called before each call and at the end. ``models``: another
        client than the pipeline's (one Triton replica of several, refilled after its restart)."""
        models = models or self.models
        if models is None:
            return 0
        if limit is None:
            limit = self.cfg.model_server.models.get("function_call", ModelSettings()).positive("n_slots", FUNCTION_CALL_SLOTS)
        filled = 0
        self.refused, self.unfilled = {}, {}
        deadline = self.cfg.model_server.prefill_timeout_s
        if self.judge and self._tools:  # the chooser's listing of every target: most uncertain prompts meet it
            try:
                await models.choose_call([{"role": "user", "content": "hello"}], self._tools, [], timeout_s=deadline)
            except ModelServerError as exc:
                self.unfilled["(chooser)"] = exc.message
                log.warning("function_call chooser prompt not pre-filled, the first uncertain prompts may be slow: %s", exc.message)
                if exc.code == "model_server_timeout":
                    return 0
        targets = [t for t in self.cfg.prompt_targets if t.parameters][:limit]
        for done, target in enumerate(targets):
            if progress is not None:
                progress(done, len(targets))
            try:
                await models.function_call([{"role": "user", "content": "hello"}], tool_schema(target), timeout_s=deadline,
                                           prefill=True)
                filled += 1
            except ModelServerError as exc:
                if exc.status == 400:  # the model refuses this target (e.g. its schema overflows the window): every request would fail
                    self.refused[target.name] = exc.message
                    log.warning("prompt target %s: function_call refuses it, so its requests will get 400: %s", target.name, exc.message)
                    continue
                self.unfilled[target.name] = exc.message
                log.warning("function_call prefix of %s not pre-filled, its first requests may be slow or time out: %s",
                            target.name, exc.message)
                if exc.code == "model_server_timeout":
                    for rest in targets[done + 1:]:
                        self.unfilled[rest.name] = f"not tried: the pre-fill of {target.name} timed out"
                    break
        if progress is not None and targets:
            progress(len(targets), len(targets))
        return filled

    async def warm(self) -> None:
        """Embed the target views once (at start and on reload), not per request.

        Each target is seen in a few views built from its config (``ext_proc.chat.intent``: name as
        words, description, both, name with its parameter names). Short user prompts match a
        name-like phrase better than a long description (MiniLM, weather/currency demo: "how is
        the weather in seattle" 0.43 vs 0.29); long ones the description. The lexical index
        (BM25 over the targets' words, ``ext_proc.chat.intent.LexicalIndex``) is built here too.
        """
        if self.preferences is not None:
            await self.preferences.warm()
        if self.models is None or not self.intent_targets:
            return
        async with self._index_lock:
            if self._index is None:
                _, views, _ = IntentIndex.layout(self.intent_targets)
                self._index = IntentIndex.for_targets(self.intent_targets, await self.models.embed(views))
                log.info("embedded %d prompt targets (%d views)", len(self._index.names), len(views))

    # -- the router ---------------------------------------------------------------------------
    async def __call__(self, cfg: Config, headers: dict[str, str], req: ChatRequest) -> Decision:
        text = req.last_user_text
        pending = PendingState.decode(req.body.get("metadata")) if self.targets else None
        target = self.targets.get(pending.target) if pending else None
        # Intent runs beside the guard, not after it: both embed the same text, and prompt_embed
        # computes it once (the second request finds the first one's vector in its cache), so
        # guard + intent cost about one embedding. A blocked prompt's intent is dropped.
        intent: asyncio.Future[PromptTarget | Uncertain | None] | None = None
        if self.targets and target is None:
            intent = asyncio.ensure_future(self._intent(text, req))
            intent.add_done_callback(lambda f: f.cancelled() or f.exception())  # dropped when blocked: not an unretrieved error
        try:
            blocked = cfg.jailbreak is not None and bool(text.strip()) and await self._guard(text)
        except BaseException:
            if intent is not None:
                intent.cancel()
            raise
        if blocked:
            if intent is not None:
                intent.cancel()
            assert cfg.jailbreak is not None
            return synthesized(req, cfg.jailbreak.message, model=GUARD_MODEL, headers={GUARD_HEADER: "blocked"})
        if not self.targets:
            return await self._to_llm(req, headers, system_prompt=cfg.system_prompt)
        call: ToolCall | None = None
        if intent is not None:
            verdict = await intent
            if isinstance(verdict, Uncertain):
                target, call = await self._judge(verdict, req)
            else:
                target = verdict
        if target is None:
            return await self._to_llm(req, headers, system_prompt=cfg.system_prompt)
        self.metrics.intent_matches.labels(target.name).inc()
        return await self._run_target(target, pending, headers, req, call=call)

    async def guard(self, text: str) -> bool:
        """Whether the guard blocks ``text`` (:meth:`_guard`): the agent listeners' guard too."""
        return await self._guard(text)

    async def _guard(self, text: str) -> bool:
        """The guard, a cascade (issue 17): the classifier (``prompt_guard``) decides what it is
        sure of; with ``jailbreak.judge`` set, a probability in the judge's band ``[lo, hi)`` is
        decided by the function_call model's yes/no instead (:meth:`_judge_guard`). A classifier
        or judge that fails or is too slow follows ``fail_open``: True lets the prompt through,
        False refuses it (the model server's error). Both read base64 in the prompt decoded
        (``sidegate_models.guard_text``): base64 itself read as an attack to the classifier."""
        assert self.cfg.jailbreak is not None
        jb = self.cfg.jailbreak
        if self.models is None:
            raise ModelServerError("the jailbreak guard is configured but no model server is: set model_server in the config")
        read = guard_text(text)  # base64 runs decoded (or named binary): sidegate_models.guard_text
        try:
            with self._stage("guard") as span:
                verdict = await self.models.guard(read)
                threshold = jb.threshold
                blocked = verdict.flagged if threshold is None else verdict.probability >= threshold
                span.set_attributes({"sidegate.guard.score": float(verdict.probability)})
                if telemetry.include_prompts():
                    span.set_attribute("sidegate.prompt", text)
                if jb.judge is not None and jb.judge.in_band(verdict.probability):
                    blocked = await self._judge_guard(read, span)
                span.set_attribute("sidegate.guard.verdict", "blocked" if blocked else "allowed")
        except ModelServerError:
            if jb.fail_open:
                self.metrics.guard_verdicts.labels("unavailable_allowed").inc()
                log.warning("guard unavailable: letting the prompt through (fail_open: true)")
                return False
            self.metrics.guard_verdicts.labels("unavailable_refused").inc()
            raise
        self.metrics.guard_verdicts.labels("blocked" if blocked else "allowed").inc()
        return blocked

    async def _judge_guard(self, text: str, guard_span: Any) -> bool:
        """The judge's verdict on a prompt in the band: blocked when its P(yes) >= ``judge.threshold``
        (its yes/no where the model gives no probability). Under the judge's own deadline
        (``judge.timeout``); a failure is counted and raised to :meth:`_guard` (``fail_open``)."""
        assert self.models is not None and self.cfg.jailbreak is not None and self.cfg.jailbreak.judge is not None
        judge = self.cfg.jailbreak.judge
        try:
            with self._stage("guard_judge") as span:
                out = await self.models.judge_guard(text, timeout_s=judge.timeout_s)
                blocked = out.flagged(judge.threshold)
                attrs: dict[str, Any] = {"sidegate.guard.judge": out.verdict, "sidegate.guard.judge_blocked": blocked}
                if out.p_yes is not None:
                    attrs["sidegate.guard.judge_p_yes"] = float(out.p_yes)
                span.set_attributes(attrs)
                guard_span.set_attributes(attrs)
        except ModelServerError as exc:
            self.metrics.guard_judge.labels("unavailable").inc()
            guard_span.set_attribute("sidegate.guard.judge", "unavailable")
            log.warning("guard judge unavailable (%s): the guard's fail_open decides", exc.message)
            if exc.code == "model_server_timeout":  # the judge's own deadline, not function_call's: name its key
                raise ModelServerError(
                    f"the guard's judge (Triton model function_call) did not answer within {judge.timeout_s:g} s; raise "
                    "prompt_guards.input_guards.jailbreak.judge.timeout, narrow judge.band, or set the jailbreak guard's "
                    "fail_open: true to let such prompts through", code="model_server_timeout", status=504) from exc
            raise
        self.metrics.guard_judge.labels("yes" if blocked else "no").inc()
        return blocked

    async def _intent(self, text: str, req: ChatRequest) -> PromptTarget | Uncertain | None:
        """The target the last user turn asks for; failing that, the one the recent user turns do;
        :class:`Uncertain` when the function-calling model is to choose (``_judge``).

        The second look covers clients that keep only role/content history: after a clarifying
        question, "3 days please" alone matches nothing, but with the turn before it
        ("what's the weather like in boston") it matches the weather target again.
        """
        if self.models is None:
            if self.intent_targets:
                raise ModelServerError("prompt targets need the intent model, and no model server is configured")
            return self.default_target
        if not self.intent_targets or not text.strip():
            return self.default_target
        earlier = [content_text(m.get("content")) for m in req.messages[:-1] if m.get("role") == "user"]
        try:
            await self.warm()
            with self._stage("intent") as span:
                (vec,) = await self.models.embed([text])
                # a question about what a term means is never a confident match, nor a follow-up
                defining = asks_what_a_term_means(text)
                target = self._best(vec, text, span, defining=defining)
                retry = retry_query(text, earlier) if not isinstance(target, PromptTarget) and not defining else None
                if retry is not None:
                    (vec,) = await self.models.embed([retry])
                    second = self._best(vec, retry, span)
                    if isinstance(second, PromptTarget) or (isinstance(second, Uncertain) and (
                            not isinstance(target, Uncertain) or second.score > target.score)):
                        target = second
                span.set_attribute("sidegate.intent.target", target.name if isinstance(target, PromptTarget) else
                                   "(uncertain)" if target is not None else "")
        except ModelServerError:
            if not self._fail_open():
                raise
            log.warning("intent model unavailable: sending the prompt to the LLM")
            return None
        return target or self.default_target

    def _best(self, vec: npt.NDArray[np.float32], text: str, span: Any = telemetry.NO_SPAN, *,
              defining: bool = False) -> PromptTarget | Uncertain | None:
        """The verdict for ``text`` (embedded as ``vec``), targets ranked by embedding + lexical
        score (``ext_proc.chat.intent``), decided on the best embedding score: at least
        :attr:`confident`, the top-ranked target; under :attr:`unrelated`, None (the default
        target or the LLM, no model call); in between, :class:`Uncertain` with the top
        ``JUDGE_CANDIDATES`` for the function-calling model to choose from (or none).
        ``defining`` (the turn asks what a term means: ``asks_what_a_term_means``): never
        confident while there is a judge."""
        assert self._index is not None
        scores = self._index.scores(vec)
        best = float(np.max(scores)) if len(scores) else float("-inf")
        span.set_attribute("sidegate.intent.score", best)
        if defining:
            span.set_attribute("sidegate.intent.asks_what_a_term_means", True)
        if best < self.unrelated:
            return None
        ranking = self._index.ranking(scores, text)
        if best >= self.confident and not (defining and self.judge):
            return self.targets[self._index.names[int(np.argmax(ranking))]]
        order = np.argsort(-ranking, kind="stable")[:JUDGE_CANDIDATES]
        return Uncertain(tuple(self._index.names[int(i)] for i in order), best)

    async def _judge(self, verdict: Uncertain, req: ChatRequest) -> tuple[PromptTarget | None, ToolCall | None]:
        """The function-calling model says whether the prompt is for one of ``verdict.candidates``
        (the top-ranked few) or none; the target is the top-ranked one (on BFCL's dev halves the
        ranking picked right more often than the model, on the test halves as often:
        ``FunctionCaller.choose``, ``ranked``), or the model's own pick when it is sure of a
        candidate that does something else than the top-ranked one (``IntentIndex.distinct``:
        "It arrived broken, I want to send it back" is ``return_item``, not the ``cancel_order``
        the ranking put first), its arguments filled in the same call. None: the
        default target, else the LLM. A judge that cannot answer (refused, unavailable, slow)
        falls back to the threshold alone, as without a judge."""
        assert self.models is not None
        try:
            with self._stage("function_call") as span:
                assert self._index is not None
                first, *others = verdict.candidates
                distinct = self._index.distinct(first, others)
                out = await self.models.choose_call(_conversation(req), self._tools, list(verdict.candidates), distinct=distinct)
                span.set_attributes({"sidegate.function_call.candidates": ",".join(verdict.candidates),
                                     "sidegate.function_call.distinct": ",".join(distinct),
                                     "sidegate.function_call.choice": out[0] if out else ""})
        except ModelServerError as exc:
            # refused (400: the listing of every target does not fit the model's window), or not
            # there (503: loading again after a Triton restart, which takes 10-60 s), or slow (504):
            # decide as without a judge rather than fail a prompt that may need no model at all
            # (the load bench saw default-target prompts answer 503 for 28 s after a restart)
            log.warning("function_call could not choose among the targets, deciding by the threshold alone: %s", exc.message)
            if verdict.score >= self.cfg.intent_threshold:
                return self.targets[verdict.candidates[0]], None
            return self.default_target, None
        if out is None:
            return self.default_target, None
        name, call = out
        target = self.targets.get(name)
        if target is None or target.default:  # not a name we sent: treat as none
            return self.default_target, None
        if not target.parameters:
            return target, None
        if _unfilled(target, call):
            # unsure, and the request does not carry a value the target requires: more often a
            # request for something else than one to ask a clarifying question about (BFCL's
            # halves: bench/README.md, pipeline_eval, sixth round). A confident match still asks.
            log.debug("judged for %s, but a required argument is missing: the default target", target.name)
            return self.default_target, None
        return target, call

    @contextlib.contextmanager
    def _stage(self, name: str) -> Iterator[Any]:
        """Time one stage into ``sidegate_stage_seconds`` and a span named ``name`` (yielded, for
        attributes; a no-op one while tracing is off); count model-server failures by stage."""
        started = time.perf_counter()
        with telemetry.span(name) as span:
            try:
                yield span
            except ModelServerError:
                self.metrics.model_errors.labels(name).inc()
                raise
            finally:
                elapsed = time.perf_counter() - started
                self.metrics.stage_seconds.labels(name).observe(elapsed)
                span.set_attribute("sidegate.latency_ms", elapsed * 1000.0)

    def _fail_open(self) -> bool:
        return bool(self.cfg.jailbreak and self.cfg.jailbreak.fail_open)

    async def _run_target(self, target: PromptTarget, pending: PendingState | None, headers: dict[str, str], req: ChatRequest,
                          call: ToolCall | None = None) -> Decision:
        """``call``: the arguments the chooser already filled (``_judge``), so no second model call."""
        gathered = dict(pending.arguments) if pending and pending.target == target.name else {}
        args: dict[str, Any] = {}
        if target.parameters:
            if self.models is None:
                raise ModelServerError(f"prompt target {target.name!r} needs the function-calling model, and no model server is configured")
            if call is None:
                with self._stage("function_call") as span:
                    call = await self.models.function_call(_conversation(req), tool_schema(target))
                    span.set_attributes({
                        "sidegate.target": target.name,
                        "sidegate.function_call.arguments_size": len(json.dumps(call.arguments, default=str)),
                        "sidegate.function_call.missing": ",".join(call.missing),
                    })
            found = _given(call)
            args, missing, problems = finalize_arguments(target, {**gathered, **found})
            if missing:
                state = PendingState(target=target.name, arguments={k: v for k, v in args.items() if k in {**gathered, **found}})
                return synthesized(
                    req,
                    clarifying_question(target, missing, problems),
                    model=FUNCTION_CALL_MODEL,
                    metadata={ARCH_STATE_KEY: state.encode()},
                )
        if target.endpoint is None:
            return await self._to_llm(req, headers, system_prompt=target.system_prompt or self.cfg.system_prompt)
        with self._stage("endpoint") as span:
            span.set_attributes({"sidegate.target": target.name, "sidegate.endpoint": target.endpoint.name})
            reply = await self.endpoints.call(target, endpoint_request(target, args, req.messages), headers)
            span.set_attributes({"http.response.status_code": reply.status, "sidegate.endpoint.reply_size": len(reply.body)})
        if not target.auto_llm_dispatch_on_response:
            return synthesized(req, reply.text, model=target.name)
        tool_messages = _tool_messages(target, args, reply.text)
        context = f"Result of {target.name}({json.dumps(args)}):\n{reply.text}"
        system = "\n\n".join(p for p in (target.system_prompt or self.cfg.system_prompt, context) if p)
        return await self._to_llm(req, headers, system_prompt=system, metadata={ARCH_STATE_KEY: json.dumps({"messages": tool_messages})})

    async def _to_llm(self, req: ChatRequest, headers: dict[str, str], *, system_prompt: str | None,
                      metadata: dict[str, Any] | None = None) -> Forward:
        """To the provider whose routing preference fits the conversation, else the default provider
        (a request with a provider hint, or a provider's model unless ``overrides.route_named_models``,
        is not re-routed: it goes to the default, as without preferences); ``system_prompt`` goes first, our ``metadata`` never goes upstream."""
        provider = self.cfg.default_provider
        route: str | None = None
        if self.preferences is not None and self.preferences.active and routable(self.cfg, headers, req):
            found = await self.preferences.route(req)
            provider, route = found.provider, found.preference
        if provider is None:
            raise MalformedRequest(
                f"the ingress listener has no LLM provider to send prompts to: mark one default: true in {self.cfg.source}",
                code="no_default_provider",
            )
        body = {k: v for k, v in req.body.items() if k != "metadata"}
        if system_prompt:
            body["messages"] = [{"role": "system", "content": system_prompt}, *req.messages]
        if provider.model:
            body["model"] = provider.model
        if body == req.body:
            return Forward(provider=provider, response_metadata=metadata, route=route)
        return Forward(provider=provider, body=json.dumps(body).encode(), response_metadata=metadata, route=route)


def _given(call: ToolCall) -> dict[str, Any]:
    """The arguments of ``call`` that have a value (the model's ``missing`` ones and nulls left out)."""
    return {k: v for k, v in call.arguments.items() if v is not None and k not in call.missing}


def _unfilled(target: PromptTarget, call: ToolCall) -> bool:
    """Whether ``call`` (the function-calling model's arguments for ``target``) leaves a required
    parameter without a value: none the user gave, and no default (what ``_run_target`` would ask for)."""
    return bool(finalize_arguments(target, _given(call))[1])


def _conversation(req: ChatRequest) -> list[dict[str, Any]]:
    """What the function-calling model sees: user and assistant turns as plain text."""
    return [
        {"role": m["role"], "content": content_text(m.get("content"))}
        for m in req.messages
        if m.get("role") in ("user", "assistant") and content_text(m.get("content"))
    ]


def _tool_messages(target: PromptTarget, args: dict[str, Any], result: str) -> list[dict[str, Any]]:
    call_id = f"call_{uuid.uuid4().hex[:24]}"
    return [
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [{"id": call_id, "type": "function", "function": {"name": target.name, "arguments": json.dumps(args)}}],
        },
        {"role": "tool", "tool_call_id": call_id, "content": result},
    ]
