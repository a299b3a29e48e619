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
reaches ``overrides.routing_preference_threshold`` and neither the head nor the turn's first
``ORDINARY_WORDS`` words (embedded in the same call) are closer to what ordinary chat asks for
(``ORDINARY_CHAT``: a dozen one-line kinds of request, "explaining a concept", "giving advice",
..., embedded with the preferences; those near a configured preference left out);
otherwise the default provider. A threshold alone could not tell "Discuss the benefits of a
distributed database" (0.29 to summarization) from a request that fits (0.2-0.35 too): on the
dev half the prompts that fit no preference went to the default 0.63 of the time with the
threshold alone, 0.83 with the ordinary-chat comparison. Before both: a turn whose first word
(request fillers such as "please", "can you" skipped; stemmed by snowballstemmer) is a word of
one preference's name, of no other preference, and no generic verb such as "generate" or
"write" ("Summarize the main ideas in ...", "How would you translate ...") names its task: that
preference, whatever the scores (the embedding of "Summarize the main ideas in Ernest Becker's"
is nearest to creative writing). A model server that fails never fails the request: it goes to
the default provider, with a warning in the log.

With ``overrides.routing_preference_judge`` (opt-in), a turn the embedding is unsure of (its best
preference's score within the judge's band of the nearest ordinary-chat line: :func:`in_judge_band`)
is settled by the function_call model (``Models.judge_route``: the request sorted among the
preferences and "other"): :func:`judge_decision`. A judge that fails or is slow leaves the
embedding's decision.

Only requests that name no provider are routed: a ``x-arch-llm-provider-hint`` header or a
``model`` some provider serves decides as before (DESIGN.md, "preference routing"), unless
``overrides.route_named_models`` lets preferences decide for a named model too (plano's way).
``bench/routing_eval.py`` evaluates these same functions on a held-out half.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import snowballstemmer

from ext_proc import telemetry
from ext_proc.chat.intent import IntentIndex, choose
from ext_proc.config import ROUTE_EMBED_DEADLINE_S, Config, LlmProvider, RoutingPreference
from ext_proc.errors import ModelServerError
from ext_proc.metrics import Metrics
from ext_proc.models.base import Models, RouteVerdict
from ext_proc.wire.openai import ChatRequest, content_text

__all__ = ["ANCHOR_OVERLAP", "HEAD_WORDS", "JUDGE_PREFILL_TIMEOUT_S", "ORDINARY_CHAT", "ORDINARY_WORDS", "ROUTE_DEADLINE_S", "Decision",
           "PreferenceIndex", "PreferenceRouter", "Route", "in_judge_band", "judge_decision", "lead_word", "preference_index",
           "preference_views", "routing_text", "user_turns", "wider_text"]

log = logging.getLogger("sidegate.preferences")

# the whole decision (both embeddings) must take less: a slow model server sends the request to the
# default provider rather than keep it until Envoy's ext_proc message timeout answers 504
# (an embedding of 6 words takes ~10 ms on 2 cores; ~150 ms at c=32)
ROUTE_DEADLINE_S = ROUTE_EMBED_DEADLINE_S
# the judge's listing of the preferences is evaluated once in the background at start (its first call
# evaluates the whole listing: seconds on 2 cores), under this deadline
JUDGE_PREFILL_TIMEOUT_S = 120.0
# text an agent harness adds to a user turn for the model, not the user's words (an unclosed one runs to the end)
_HARNESS_TEXT = re.compile(r"<system-reminder>.*?(?:</system-reminder>|\Z)", re.S)
HEAD_WORDS = 6  # words of a turn's head that are embedded (4 to 6 did best on the dev half; 8 and more worse)
# words of a turn's wider head, embedded too (in the same call) for the comparison with ordinary chat only:
# "I want to build a fun" (6 words) says less about what kind of request it is than its first 12 words
# (dev half of both routing-set files: 0.818 -> 0.842, at every threshold from 0.14 to 0.22)
ORDINARY_WORDS = 12

# What people ask a chat model for besides any one kind of task: a preference wins only when the
# head of the turn is closer to it than to every one of these (the "none" side of the decision,
# embedded beside the preferences). Written as a general list of kinds of chat request (after
# reading the dev half's misses; the test half was not read for it); no preference is meant by them.
ORDINARY_CHAT = (
    "explaining a concept or how something works",
    "answering a general knowledge question",
    "giving advice or recommendations",
    "brainstorming ideas and suggestions",
    "making a plan or a strategy",
    "comparing options and their pros and cons",
    "discussing a topic or an opinion",
    "business, marketing and sales questions",
    "defining a term",
    "troubleshooting a problem",
    "writing an email or a letter",
    "editing or rewriting text",
    "casual conversation",
)
# an ORDINARY_CHAT line at least this close (cosine) to a view of a configured preference is left
# out: a user whose preference is "writing emails" gets it, not the default (the five preferences of
# bench/routing_eval.py are at most 0.43 from any line; "email writing", "advice", "general questions"
# or "debugging: finding and fixing bugs in code" leave out the line they restate, at 0.66 to 0.99)
ANCHOR_OVERLAP = 0.6


# words a request starts with before it says what it wants ("please", "can you", "how would you")
_FILLERS = frozenset("""
a about all also am an and any are as at be been can could did do does for from give go had has have hello hey hi how
i i'd i'm id im in is it just kindly let let's lets me my need now of ok okay on please quick quickly real really so some
that the then this to us want we what will with would you your
""".split())
_WORDS = re.compile(r"[a-z][a-z']*")
_STEMMER = snowballstemmer.stemmer("english")  # not thread-safe: the event loop's thread only
# British -ise / -yse spellings ("summarise", "analysed", "organisation"), written as their -ize /
# -yze forms before stemming, so that a request and a preference spelled the other way share a stem
# (the stemmer gives "summaris" for "summarise" and "summar" for "summarize"); applied to both sides,
# so a word that only looks British ("promise" -> "promize") still meets itself
_BRITISH = re.compile(r"^([a-z']{3,}[iy])s(e|ed|es|ing|ation|ations)$")


def _us(word: str) -> str:
    return _BRITISH.sub(r"\1z\2", word)


# verbs that ask for something to be produced without saying which task: never a named task
# ("Generate a poem" is no request for the preference "code generation")
_GENERIC = frozenset(_STEMMER.stemWords([_us(w) for w in """
build compose create describe do draft explain generate get give list make produce provide show tell write
""".split()]))


def _words(text: str) -> list[str]:
    """The words of ``text`` (lower case, US -ize spellings) that are not request fillers."""
    return [_us(w) for w in _WORDS.findall(text.lower()) if w not in _FILLERS]


def _stems(text: str) -> set[str]:
    return set(_STEMMER.stemWords(_words(text)))


def lead_word(text: str) -> str | None:
    """The stem of the first word of ``text`` that is not a request filler ("Can you summarize the
    book" -> "summar"), None without one."""
    words = _words(text)
    return str(_STEMMER.stemWord(words[0])) if words else None


def user_turns(req: ChatRequest) -> list[str]:
    """The text of each user turn of ``req``, oldest first, without what an agent harness adds for the
    model (Claude Code's ``<system-reminder>`` blocks: project notes, todo lists, before or after the
    user's words); turns with no text left (a tool result, reminders only) are left out, so each
    step of a tool loop is routed by the user turn that started it."""
    texts = (_HARNESS_TEXT.sub("", content_text(m.get("content"))) for m in req.messages if m.get("role") == "user")
    return [t for t in texts if t.strip()]


def routing_text(text: str) -> str:
    """What is embedded for a turn: its first ``HEAD_WORDS`` words ("write a python script that
    syncs files from A to B" -> "write a python script that syncs")."""
    return " ".join(text.split()[:HEAD_WORDS])


def wider_text(text: str) -> str:
    """A turn's first ``ORDINARY_WORDS`` words: compared with the ordinary-chat lines beside its head."""
    return " ".join(text.split()[:ORDINARY_WORDS])


@dataclass(frozen=True)
class _AsTarget:
    """A routing preference in the shape ``ext_proc.chat.intent`` scores (a target without parameters)."""

    name: str
    description: str
    parameters: tuple[()] = ()


@dataclass(frozen=True, kw_only=True)
class Route:
    """Where a request goes: ``preference`` None is the default provider (nothing fit, or the model
    server could not say); ``decided_by``: ``named`` (the turn's first word names the preference),
    ``embedding`` (a preference fit), ``none`` (nothing did), ``unavailable`` (the model server failed)."""

    provider: LlmProvider
    preference: str | None
    score: float
    decided_by: str


@dataclass(frozen=True, kw_only=True)
class Decision:
    """One turn's decision: ``found`` (the preference's index, or None), ``score`` (the best
    preference's embedding score), ``ordinary`` (the best ``ORDINARY_CHAT`` line's cosine, -inf with
    none), ``why``: ``named`` (the turn's first word names the preference), ``match``, ``below``
    (no preference reached the threshold) or ``ordinary`` (one did, but the turn is closer to
    ordinary chat)."""

    found: int | None
    score: float
    ordinary: float
    why: str  # match, below, ordinary, named; judged (the judge decided: judge_decision)
    top: int | None = None  # the preference the ranking (embedding + BM25) puts first, whatever the decision


@dataclass(frozen=True)
class PreferenceIndex:
    """The preferences' index (scored as intent scores targets) and the embedded ``ORDINARY_CHAT``
    lines kept for them (``anchors``: unit rows; none kept: the threshold alone decides)."""

    index: IntentIndex
    anchors: npt.NDArray[np.float32]
    anchor_texts: tuple[str, ...]
    # per stem of a word of one preference's name that no other preference has: that preference
    named: dict[str, int]

    @property
    def names(self) -> tuple[str, ...]:
        return self.index.names

    def decide(self, vec: npt.NDArray[np.float32], text: str, threshold: float,
               wider: npt.NDArray[np.float32] | None = None) -> Decision:
        """The decision for a turn's :func:`routing_text` ``text`` embedded as ``vec`` (and its
        :func:`wider_text` as ``wider``; None: the same as the head): the best preference by the
        ranking (embedding + BM25) when the best embedding score reaches ``threshold`` and no
        ordinary-chat line is closer to the head or to the wider head."""
        scores = self.index.scores(vec)
        best = float(np.max(scores)) if len(scores) else float("-inf")
        ordinary = float("-inf")
        if len(self.anchors):
            ordinary = float(np.max(self.anchors @ vec))
            if wider is not None:
                ordinary = max(ordinary, float(np.max(self.anchors @ wider)))
        ranking = self.index.ranking(scores, text) if len(scores) else scores
        top = int(np.argmax(ranking)) if len(ranking) else None
        lead = lead_word(text)
        if lead is not None and lead in self.named:
            return Decision(found=self.named[lead], score=best, ordinary=ordinary, why="named", top=top)
        if best < threshold:
            return Decision(found=None, score=best, ordinary=ordinary, why="below", top=top)
        if ordinary >= best:
            return Decision(found=None, score=best, ordinary=ordinary, why="ordinary", top=top)
        found = choose(scores, threshold, ranking)
        return Decision(found=found, score=best, ordinary=ordinary, why="match", top=top)


def in_judge_band(decision: Decision, band: float) -> bool:
    """Whether the judge decides ``decision``'s turn: its best preference's score is within ``band``
    of the nearest ordinary-chat line (the embedding's unsure cases, on either side), and its first
    word did not name a preference."""
    return (decision.why != "named" and decision.top is not None and np.isfinite(decision.ordinary)
            and abs(decision.score - decision.ordinary) < band)


def judge_decision(decision: Decision, verdict: RouteVerdict, names: Sequence[str], threshold: float) -> Decision:
    """``decision`` as the judge's ``verdict`` settles it: the ranking's first preference when the
    judge's P(it) / (P(it) + P(none)) reaches ``threshold`` (its answer where it gives no
    probabilities), else none (``why`` "judged" either way)."""
    assert decision.top is not None
    name = names[decision.top]
    share = verdict.share(name)
    yes = share >= threshold if share is not None else verdict.answer == name
    return dataclasses.replace(decision, found=decision.top if yes else None, why="judged")


def preference_views(preferences: Sequence[RoutingPreference], *, ordinary: bool = True) -> list[str]:
    """The texts to embed for ``preferences`` (in the order :func:`preference_index` reads them):
    their views, then the ``ORDINARY_CHAT`` lines (``ordinary`` False: none)."""
    _, views, _ = IntentIndex.layout([_AsTarget(p.name, p.description) for p in preferences])
    return views + list(ORDINARY_CHAT if ordinary else ())


def preference_index(preferences: Sequence[RoutingPreference], embed: npt.NDArray[np.float32]) -> PreferenceIndex:
    """The index of ``preferences`` from the embeddings of :func:`preference_views` (with or without
    the ordinary-chat lines: told by the number of rows); lines within ``ANCHOR_OVERLAP`` of a
    preference's view are left out."""
    targets = [_AsTarget(p.name, p.description) for p in preferences]
    _, views, _ = IntentIndex.layout(targets)
    embed = np.asarray(embed, dtype=np.float32)
    if embed.shape[0] not in (len(views), len(views) + len(ORDINARY_CHAT)):
        raise ValueError(f"{embed.shape[0]} embeddings for {len(views)} preference views (+ {len(ORDINARY_CHAT)} ordinary-chat lines)")
    index = IntentIndex.for_targets(targets, embed[:len(views)])
    lines = embed[len(views):]
    keep = [i for i in range(len(lines)) if not len(views) or float(np.max(index.matrix @ lines[i])) < ANCHOR_OVERLAP]
    words = [_stems(f"{p.name} {p.description}") for p in preferences]
    named = {w: i for i, p in enumerate(preferences) for w in _stems(p.name) - _GENERIC
             if not any(w in other for j, other in enumerate(words) if j != i)}
    return PreferenceIndex(index, lines[keep], tuple(ORDINARY_CHAT[i] for i in keep), named)


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
        self._index: PreferenceIndex | None = None
        self._lock = asyncio.Lock()
        # the judge's categories: every preference, in one fixed order (its cached listing)
        self.categories = [(rp.name, rp.description) for rp in self.preferences]
        self._prefill: asyncio.Task[None] | None = None

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
                log.info("embedded %d routing preferences (%d texts; %d of %d ordinary-chat lines kept)", len(self.preferences),
                         len(views), len(self._index.anchor_texts), len(ORDINARY_CHAT))
                if self.cfg.routing_judge is not None and self._prefill is None:
                    self._prefill = asyncio.get_running_loop().create_task(self._prefill_judge())

    async def _prefill_judge(self) -> None:
        """One judge call in the background, so the first judged request finds the listing cached."""
        assert self.models is not None
        try:
            await self.models.judge_route("hello", self.categories, timeout_s=JUDGE_PREFILL_TIMEOUT_S)
        except ModelServerError as exc:
            log.warning("preference routing's judge did not pre-fill its listing (%s): its first call will take longer", exc.message)

    async def route(self, req: ChatRequest, *, fallback: LlmProvider | None = None) -> Route:
        """The provider for ``req``'s conversation: its best-fitting preference's, else ``fallback``
        (default: the default provider)."""
        default = self.cfg.default_provider
        assert default is not None or self.cfg.llm_providers, "a config with preferences has providers"
        fallback = fallback or default or self.cfg.llm_providers[0]
        turns = user_turns(req)
        text = turns[-1] if turns else ""
        started = time.perf_counter()
        judge = self.cfg.routing_judge
        deadline = ROUTE_DEADLINE_S + (judge.timeout_s if judge is not None else 0.0)
        with telemetry.span("route") as span:
            try:
                if text.strip():
                    name, score, why = await asyncio.wait_for(self._best(text, turns[-2] if len(turns) > 1 else None), deadline)
                else:
                    name, score, why = None, float("-inf"), "below"
                decided_by = "none" if name is None else "named" if why == "named" else "judge" if why == "judged" else "embedding"
            except (ModelServerError, asyncio.TimeoutError) as exc:
                why = exc.message if isinstance(exc, ModelServerError) else (
                    f"prompt_embed did not answer within {deadline:g} s" if judge is None else
                    f"prompt_embed and function_call's judge did not answer within {deadline:g} s")
                self.metrics.model_errors.labels("route").inc()
                log.warning("routing preferences not matched, sending the request to provider %s: %s", fallback.name, why)
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

    async def _best(self, text: str, earlier: str | None) -> tuple[str | None, float, str]:
        """(the preference that fits, or None; the best embedding score; the decision's ``why``):
        the head of the last user turn (settled by the judge when it is configured and the turn is
        in its band), then that of the user turn before it when no preference reached the threshold
        for the last ("now in French please"; a last turn closer to ordinary chat stays with the
        default)."""
        assert self.models is not None
        await self.warm()
        assert self._index is not None
        threshold = self.cfg.routing_threshold
        query = routing_text(text)
        first = await self._decide(query, wider_text(text), threshold)
        decision = await self._judged(first, text)
        best = decision.score
        if decision.found is None and first.why == "below" and earlier is not None:
            decision = await self._decide(routing_text(earlier), wider_text(earlier), threshold)
            best = max(best, decision.score)
        return (self._index.names[decision.found] if decision.found is not None else None), best, decision.why

    async def _judged(self, decision: Decision, text: str) -> Decision:
        """``decision`` as the judge settles it (:func:`judge_decision`) when one is configured and
        the turn is in its band; unchanged otherwise, and when the judge fails or is slower than its
        deadline (counted as a model error of ``route_judge``, with a warning in the log)."""
        judge = self.cfg.routing_judge
        if judge is None or not in_judge_band(decision, judge.band):
            return decision
        assert self.models is not None and self._index is not None
        started = time.perf_counter()
        try:
            with telemetry.span("route_judge") as span:
                verdict = await asyncio.wait_for(self.models.judge_route(text, self.categories, timeout_s=judge.timeout_s),
                                                 judge.timeout_s)
                settled = judge_decision(decision, verdict, self._index.names, judge.threshold)
                span.set_attributes({"sidegate.route.judge": verdict.answer or "none",
                                     "sidegate.route.judge_choice": self._index.names[settled.found] if settled.found is not None else ""})
        except (ModelServerError, asyncio.TimeoutError) as exc:
            why = exc.message if isinstance(exc, ModelServerError) else f"function_call did not answer within {judge.timeout_s:g} s"
            self.metrics.model_errors.labels("route_judge").inc()
            log.warning("preference routing's judge could not decide, the embedding's decision stands: %s", why)
            return decision
        finally:
            self.metrics.stage_seconds.labels("route_judge").observe(time.perf_counter() - started)
        return settled

    async def _decide(self, query: str, wider: str, threshold: float) -> Decision:
        """One turn's decision: its head and its wider head embedded in one call (the head alone when they are the same)."""
        assert self.models is not None and self._index is not None
        if wider == query:
            (vec,) = await self.models.embed([query])
            return self._index.decide(vec, query, threshold)
        vec, wide = await self.models.embed([query, wider])
        return self._index.decide(vec, query, threshold, wide)
