"""Which agent of an agent listener a conversation goes to (issue 19, agents): the decision alone.

Each agent is embedded once in the views intent uses for a prompt target (``ext_proc.chat.intent``:
its id as words, its description, both) plus one view per capability its description lists
(:func:`agent_views`: the clauses between commas, semicolons, "and", line breaks and bullets, after
a leading "Name:"), with the same BM25 lexical index beside them. A turn is about one thing its
agent does, and a long description hides it. A request costs one ``prompt_embed`` call over its last user turn and the ``CONTEXT_TURNS`` user turns before
it (earlier turns were embedded by the conversation's previous requests: prompt_embed's cache has
them). Each turn's ranking (embedding + ``LEXICAL_WEIGHT`` x lexical, as intent ranks targets)
becomes a distribution over the agents, ``softmax(ranking / TEMPERATURE)``, and the turns are read
oldest first as a hidden Markov chain whose state is the agent: between two turns the conversation
stays with its agent with probability ``STAY``, else moves to any other (:func:`decide`, the
forward pass). So a follow-up that says little ("and sort it by line") stays with the agent the
conversation is with, and a turn that clearly names another topic moves it, with no state kept
by sidegate nor returned by the client. Nothing fits (every turn is nearer to what people ask any
chat model for than to every agent: :data:`ANCHOR_LINES`, preference routing's ordinary-chat lines
and a few kinds of small talk, embedded with the agents; those near an agent's view left out; or
its best score is under ``UNRELATED_SCORE``): the listener's default agent (plano's rule:
``default: true``, else the first). A greeting or "thanks" scores 0.26-0.38 against any agent
(short texts are near everything in MiniLM), so no score threshold alone tells it from a
request (a tenth of BFCL's first turns score under 0.29). Chosen on the dev half of
``bench/agents.py``'s set (figures: bench/README.md, section "agents").
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from ext_proc.chat.intent import IntentIndex, name_words, target_text
from ext_proc.chat.preferences import ANCHOR_OVERLAP, ORDINARY_CHAT

__all__ = ["ANCHOR_LINES", "CONTEXT_TURNS", "SMALL_TALK", "STAY", "TEMPERATURE", "UNRELATED_SCORE", "AgentChoice", "AgentSpec",
           "agent_anchors", "agent_decider", "agent_index", "agent_texts", "agent_views", "capabilities", "decide"]

CONTEXT_TURNS = 2  # earlier user turns read besides the last one (1, 2 and 3 scored the same on dev; 2 keeps "ok" + "and tomorrow?" in context)
TEMPERATURE = 0.02  # a turn's ranking -> its distribution over the agents: softmax(ranking / TEMPERATURE)
STAY = 0.7  # probability that the next turn is for the same agent
UNRELATED_SCORE = 0.10  # every turn's best embedding score under this: the default agent
# kinds of small talk a conversation with an agent listener starts or ends with, which preference
# routing's ORDINARY_CHAT ("casual conversation") does not catch: "hi" is 0.31 from it
SMALL_TALK = (
    "hello, hi, good morning",
    "thanks, thank you",
    "ok, sure, yes, no",
    "goodbye, see you",
    "who are you and what can you do",
    "a joke or a riddle",
)
# what people ask any chat model for: a turn nearer to one of these than to every agent fits none
ANCHOR_LINES = ORDINARY_CHAT + SMALL_TALK


@dataclass(frozen=True)
class AgentSpec:
    """An agent as the decision sees it (shaped like a prompt target without parameters)."""

    name: str  # the agent id
    description: str
    parameters: tuple[()] = ()


@dataclass(frozen=True)
class AgentChoice:
    """``index``: into the listener's agents; ``how``: match (the last turn), context (earlier turns
    decided), default (nothing fits), only (one agent: no embedding); ``score``: the best embedding score."""

    index: int
    how: str
    score: float


_CLAUSES = re.compile(r"[,;\n\u2022*]|\band\b|\s-\s")
_ASIDE = re.compile(r"\([^()]*\)")


def capabilities(description: str) -> list[str]:
    """The things a description lists: "Stock trading: prices, watchlists and orders" ->
    ["prices", "watchlists", "orders"] (text after a first ":" on the first line, when there is one).
    A parenthesis is an aside, not a capability: plano's travel demo describes its weather agent as
    answering "ONLY the weather part" of queries that also ask about other things "(e.g., flights,
    currency)", and "flights" as a view of its own sent flight questions to it (and "weather" from
    the flight agent's twin line sent weather questions to the flight agent)."""
    first, sep, rest = description.partition(":")
    text = rest if sep and "\n" not in first and len(first) <= 80 else description
    return [c for c in (p.strip(" .\t") for p in _CLAUSES.split(_ASIDE.sub(" ", text))) if len(c) > 2]


def agent_views(agents: Sequence[AgentSpec]) -> tuple[list[str], list[str], list[int]]:
    """(agent names, the texts to embed, the agent of each text): per agent its id as words, its
    description, "id: description" and each of its :func:`capabilities`, duplicates left out."""
    names, views, owners = [], [], []
    for i, a in enumerate(agents):
        names.append(a.name)
        words = name_words(a.name)
        own = [words, a.description, f"{words}: {a.description}", *capabilities(a.description)]
        for v in dict.fromkeys(x for x in own if x.strip()):
            views.append(v)
            owners.append(i)
    return names, views, owners


def agent_index(agents: Sequence[AgentSpec], matrix: npt.NDArray[np.float32]) -> IntentIndex:
    """The index of ``agents`` from the embeddings of :func:`agent_views`' texts."""
    names, views, owners = agent_views(agents)
    return IntentIndex.build(names, views, owners, matrix, [target_text(a) for a in agents])


def agent_anchors(index: IntentIndex, lines: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """The embedded :data:`ANCHOR_LINES` (``lines``, unit rows) a turn is compared with: those
    within ``ANCHOR_OVERLAP`` of a view of an agent are left out (an agent for "writing emails"
    gets the emails)."""
    lines = np.asarray(lines, dtype=np.float32)
    keep = [i for i in range(len(lines)) if float(np.max(index.matrix @ lines[i])) < ANCHOR_OVERLAP]
    return lines[keep]


def agent_texts(agents: Sequence[AgentSpec]) -> list[str]:
    """What an agent listener embeds once: its agents' views (:func:`agent_views`), then :data:`ANCHOR_LINES`."""
    return [*agent_views(agents)[1], *ANCHOR_LINES]


def agent_decider(agents: Sequence[AgentSpec], matrix: npt.NDArray[np.float32]) -> tuple[IntentIndex, npt.NDArray[np.float32]]:
    """(:func:`agent_index`, :func:`agent_anchors`) from the embeddings of :func:`agent_texts`, in its order."""
    n = len(agent_views(agents)[1])
    index = agent_index(agents, matrix[:n])
    return index, agent_anchors(index, matrix[n:])


def decide(index: IntentIndex, texts: Sequence[str], vecs: Sequence[npt.NDArray[np.float32]], *, default: int,
           anchors: npt.NDArray[np.float32] | None = None, temperature: float = TEMPERATURE, stay: float = STAY,
           unrelated: float = UNRELATED_SCORE) -> AgentChoice:
    """``texts``: the last user turn first, then the earlier user turns, most recent first (at most
    ``CONTEXT_TURNS``); ``vecs``: their unit embeddings; ``default``: the listener's default agent;
    ``anchors``: :func:`agent_anchors` (None: the score threshold alone tells what fits none). A turn
    fits some agent when its best embedding score reaches ``unrelated`` and beats every anchor."""
    n = len(index.names)
    if n == 1:
        return AgentChoice(0, "only", 0.0)
    if not texts:
        return AgentChoice(default, "default", float("-inf"))
    posterior: npt.NDArray[np.float64] | None = None
    last_best = float("-inf")
    fits_any = last_fits = False
    last_top = 0
    for text, vec in reversed(list(zip(texts, vecs))):  # oldest first
        scores = index.scores(vec)
        last_best = float(np.max(scores))
        last_fits = last_best >= unrelated and (anchors is None or not len(anchors) or last_best > float(np.max(anchors @ vec)))
        fits_any = fits_any or last_fits
        ranking = index.ranking(scores, text)
        last_top = int(np.argmax(ranking))
        evidence = np.exp((ranking - ranking.max()) / temperature)
        prior = np.full(n, 1.0 / n) if posterior is None else stay * posterior + (1.0 - stay) * (1.0 - posterior) / (n - 1)
        posterior = prior * evidence
        posterior /= posterior.sum()
    assert posterior is not None
    if not fits_any:
        return AgentChoice(default, "default", last_best)
    chosen = int(np.argmax(posterior))
    # match: the last turn alone points there too; context: the earlier turns decided
    return AgentChoice(chosen, "match" if chosen == last_top and last_fits else "context", last_best)
