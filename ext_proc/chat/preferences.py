"""Preference routing (issue 19): the provider whose ``routing_preferences`` fit the conversation.

Arch sends the conversation to a hosted 1.5B router model; sidegate decides locally with the
``prompt_embed`` model the intent stage already uses. Each preference is embedded once (at start
and on reload) in the views :func:`ext_proc.chat.intent.target_views` builds (its name as words,
its description, both together) and scored as intent scores targets (``IntentIndex``: best view
plus a little of the mean, ranked with the BM25 term). A request costs one embedding of the head of
its last user turn (:func:`routing_text`: its first ``HEAD_WORDS`` words, where a request says what
it wants done; the rest is mostly its topic, which says little about the kind of task: on the dev
half of bench/data/routing_set.tsv the whole turn routed 0.69 right, its first 6 words 0.85) and,
when that fits nothing, one of the head of the user turn before it ("now in Rust please" after
"write a parser for ..."): the best preference goes when its embedding score
reaches ``overrides.routing_preference_threshold``; otherwise the default provider. A model server
that fails never fails the request: it goes to the default provider, with a warning in the log.

Only requests that name no provider are routed: a ``x-arch-llm-provider-hint`` header or a
``model`` some provider serves decides as before (DESIGN.md, "preference routing").
``bench/routing_eval.py`` evaluates these same functions on a held-out half.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from ext_proc import telemetry
from ext_proc.chat.intent import IntentIndex
from ext_proc.config import Config, LlmProvider, RoutingPreference
from ext_proc.errors import ModelServerError
from ext_proc.metrics import Metrics
from ext_proc.models.base import Models
from ext_proc.wire.openai import ChatRequest, content_text

__all__ = ["HEAD_WORDS", "ROUTE_DEADLINE_S", "PreferenceRouter", "Route", "preference_index", "preference_views", "routing_text"]

log = logging.getLogger("sidegate.preferences")

# the whole decision (both embeddings) must take less: a slow model server sends the request to the
# default provider rather than keep it until Envoy's ext_proc message timeout answers 504
# (an embedding of 6 words takes ~10 ms on 2 cores; ~150 ms at c=32)
ROUTE_DEADLINE_S = 2.0
HEAD_WORDS = 6  # words of a turn's head that are embedded (4 to 6 did best on the dev half; 8 and more worse)


def routing_text(text: str) -> str:
    """What is embedded for a turn: its first ``HEAD_WORDS`` words ("write a python script that
    syncs files from A to B" -> "write a python script that syncs")."""
    return " ".join(text.split()[:HEAD_WORDS])


@dataclass(frozen=True)
class _AsTarget:
    """A routing preference in the shape ``ext_proc.chat.intent`` scores (a target without parameters)."""

    name: str
    description: str
    parameters: tuple[()] = ()


@dataclass(frozen=True, kw_only=True)
class Route:
    """Where a request goes: ``preference`` None is the default provider (nothing fit, or the model
    server could not say); ``decided_by``: ``embedding`` (a preference fit), ``none`` (nothing did),
    ``unavailable`` (the model server failed)."""

    provider: LlmProvider
    preference: str | None
    score: float
    decided_by: str


def preference_index(preferences: Sequence[RoutingPreference], embed: npt.NDArray[np.float32]) -> IntentIndex:
    """The index of ``preferences`` from the embeddings of ``IntentIndex.layout``'s views of them."""
    return IntentIndex.for_targets([_AsTarget(p.name, p.description) for p in preferences], embed)


def preference_views(preferences: Sequence[RoutingPreference]) -> list[str]:
    """The texts to embed for ``preferences`` (in the order :func:`preference_index` reads them)."""
    _, views, _ = IntentIndex.layout([_AsTarget(p.name, p.description) for p in preferences])
    return views


class PreferenceRouter:
    """Chooses a provider by ``routing_preferences``; one per ext_proc process (the index is shared).

    Usage::

        router = PreferenceRouter(cfg=cfg, models=models, metrics=metrics)
        if router.active:
            route = await router.route(req)   # never raises for a model-server failure
    """

    def __init__(self, *, cfg: Config, models: Models | None, metrics: Metrics) -> None:
        self.cfg = cfg
        self.models = models
        self.metrics = metrics
        self.owners: dict[str, LlmProvider] = {rp.name: p for p in cfg.llm_providers for rp in p.routing_preferences}
        self.preferences = [rp for p in cfg.llm_providers for rp in p.routing_preferences]
        self._index: IntentIndex | None = None
        self._lock = asyncio.Lock()

    @property
    def active(self) -> bool:
        """Whether any provider has routing preferences (and a model server can match them)."""
        return bool(self.preferences) and self.models is not None

    async def warm(self) -> None:
        """Embed the preferences' views once (at start and on reload), not per request."""
        if not self.active or self._index is not None:
            return
        assert self.models is not None
        async with self._lock:
            if self._index is None:
                views = preference_views(self.preferences)
                self._index = preference_index(self.preferences, await self.models.embed(views))
                log.info("embedded %d routing preferences (%d views)", len(self.preferences), len(views))

    async def route(self, req: ChatRequest) -> Route:
        """The provider for ``req``'s conversation: its best-fitting preference's, else the default."""
        default = self.cfg.default_provider
        assert default is not None or self.cfg.llm_providers, "a config with preferences has providers"
        fallback = default or self.cfg.llm_providers[0]
        text = req.last_user_text
        started = time.perf_counter()
        with telemetry.span("route") as span:
            try:
                if text.strip():
                    name, score = await asyncio.wait_for(self._best(text, req), ROUTE_DEADLINE_S)
                else:
                    name, score = None, float("-inf")
                decided_by = "embedding" if name is not None else "none"
            except (ModelServerError, asyncio.TimeoutError) as exc:
                why = exc.message if isinstance(exc, ModelServerError) else f"prompt_embed did not answer within {ROUTE_DEADLINE_S:g} s"
                self.metrics.model_errors.labels("route").inc()
                log.warning("routing preferences not matched, sending the request to the default provider %s: %s", fallback.name, why)
                name, score, decided_by = None, float("-inf"), "unavailable"
            elapsed = time.perf_counter() - started
            self.metrics.stage_seconds.labels("route").observe(elapsed)
            self.metrics.route_decisions.labels(name or "none", decided_by).inc()
            span.set_attributes({"sidegate.route": name or "", "sidegate.route.decided_by": decided_by,
                                 "sidegate.latency_ms": elapsed * 1000.0})
            if np.isfinite(score):
                span.set_attribute("sidegate.route.score", score)
        provider = self.owners[name] if name is not None else fallback
        return Route(provider=provider, preference=name, score=score, decided_by=decided_by)

    async def _best(self, text: str, req: ChatRequest) -> tuple[str | None, float]:
        """(the preference that fits, or None; the best embedding score): the head of the last user
        turn, then that of the user turn before it when the last fits nothing ("now in French please")."""
        assert self.models is not None
        await self.warm()
        assert self._index is not None
        threshold = self.cfg.routing_threshold
        query = routing_text(text)
        (vec,) = await self.models.embed([query])
        found, best = self._index.choose(vec, query, threshold)
        if found is None:
            earlier = [content_text(m.get("content")) for m in req.messages[:-1] if m.get("role") == "user"]
            earlier = [t for t in earlier if t.strip()]
            if earlier:
                query = routing_text(earlier[-1])
                (vec,) = await self.models.embed([query])
                found, second = self._index.choose(vec, query, threshold)
                best = max(best, second)
        return (self._index.names[found] if found is not None else None), best
