"""Which agent of an agent listener a conversation goes to (issue 19, agents): the decision alone.

Each agent is embedded once in the views intent uses for a prompt target (``ext_proc.chat.intent``:
its id as words, its description, both), with the same BM25 lexical index beside them. A request
costs one ``prompt_embed`` call over its last user turn and the ``CONTEXT_TURNS`` user turns before
it (earlier turns were embedded by the conversation's previous requests: prompt_embed's cache has
them). Each turn's ranking (embedding + ``LEXICAL_WEIGHT`` x lexical, as intent ranks targets)
becomes a distribution over the agents, ``softmax(ranking / TEMPERATURE)``, and the turns are read
oldest first as a hidden Markov chain whose state is the agent: between two turns the conversation
stays with its agent with probability ``STAY``, else moves to any other (:func:`decide`, the
forward pass). So a follow-up that says little ("and sort it by line") stays with the agent the
conversation is with, and a turn that clearly names another topic moves it, with no state kept
by sidegate nor returned by the client. Nothing fits (every turn's best embedding score under
``UNRELATED_SCORE``): the listener's default agent (plano's rule: ``default: true``, else the first).
Chosen on the dev half of ``bench/agents.py``'s set (figures: bench/README.md, section "agents").
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from ext_proc.chat.intent import IntentIndex, target_text

__all__ = ["CONTEXT_TURNS", "STAY", "TEMPERATURE", "UNRELATED_SCORE", "AgentChoice", "AgentSpec", "agent_index",
           "agent_views", "decide"]

CONTEXT_TURNS = 3  # earlier user turns read besides the last one
TEMPERATURE = 0.04  # a turn's ranking -> its distribution over the agents: softmax(ranking / TEMPERATURE)
STAY = 0.8  # probability that the next turn is for the same agent
UNRELATED_SCORE = 0.10  # every turn's best embedding score under this: the default agent


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


def agent_views(agents: Sequence[AgentSpec]) -> list[str]:
    """The texts to embed for ``agents`` (in :func:`agent_index`'s order)."""
    return IntentIndex.layout(agents)[1]


def agent_index(agents: Sequence[AgentSpec], matrix: npt.NDArray[np.float32]) -> IntentIndex:
    """The index of ``agents`` from the embeddings of :func:`agent_views`."""
    names, views, owners = IntentIndex.layout(agents)
    return IntentIndex.build(names, views, owners, matrix, [target_text(a) for a in agents])


def decide(index: IntentIndex, texts: Sequence[str], vecs: Sequence[npt.NDArray[np.float32]], *, default: int,
           temperature: float = TEMPERATURE, stay: float = STAY, unrelated: float = UNRELATED_SCORE) -> AgentChoice:
    """``texts``: the last user turn first, then the earlier user turns, most recent first (at most
    ``CONTEXT_TURNS``); ``vecs``: their unit embeddings; ``default``: the listener's default agent."""
    n = len(index.names)
    if n == 1:
        return AgentChoice(0, "only", 0.0)
    if not texts:
        return AgentChoice(default, "default", float("-inf"))
    posterior: npt.NDArray[np.float64] | None = None
    best_any = last_best = float("-inf")
    last_top = 0
    for text, vec in reversed(list(zip(texts, vecs))):  # oldest first
        scores = index.scores(vec)
        last_best = float(np.max(scores))
        best_any = max(best_any, last_best)
        ranking = index.ranking(scores, text)
        last_top = int(np.argmax(ranking))
        evidence = np.exp((ranking - ranking.max()) / temperature)
        prior = np.full(n, 1.0 / n) if posterior is None else stay * posterior + (1.0 - stay) * (1.0 - posterior) / (n - 1)
        posterior = prior * evidence
        posterior /= posterior.sum()
    assert posterior is not None
    if best_any < unrelated:
        return AgentChoice(default, "default", last_best)
    chosen = int(np.argmax(posterior))
    # match: the last turn alone points there too; context: the earlier turns decided
    return AgentChoice(chosen, "match" if chosen == last_top and last_best >= unrelated else "context", last_best)
