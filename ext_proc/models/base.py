"""What the request path asks of a model server, and the answers it gets back.

:class:`Models` is the protocol the prompt pipeline calls (guard, embed, function calling);
:class:`ext_proc.models.triton.TritonModels` implements it over Triton, and the unit tests
implement it with fakes. Nothing here does I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

__all__ = ["GuardVerdict", "JudgeVerdict", "Models", "RouteVerdict", "ToolCall"]


@dataclass(frozen=True, kw_only=True)
class GuardVerdict:
    probability: float
    flagged: bool  # by the model's own calibrated threshold


@dataclass(frozen=True, kw_only=True)
class JudgeVerdict:
    """The guard's judge (the function_call model's constrained yes/no) on one message."""

    verdict: str  # "yes" (a jailbreak / prompt injection) or "no"
    p_yes: float | None  # P(yes) from the first token's logprobs; None where the runtime gives none

    def flagged(self, threshold: float) -> bool:
        return self.p_yes >= threshold if self.p_yes is not None else self.verdict == "yes"


@dataclass(frozen=True, kw_only=True)
class RouteVerdict:
    """Preference routing's judge (the function_call model sorting a request among categories):
    its constrained ``answer`` (a category's name, None for none of them) and the first token's
    probability mass per category (``p``) and for none (``p_none``); all 0 where the runtime gives
    no probabilities."""

    answer: str | None
    p: dict[str, float]
    p_none: float

    def share(self, name: str) -> float | None:
        """P(``name``) / (P(``name``) + P(none)): how much more the judge leans to ``name`` than
        to none of them; None where neither has any mass (then read ``answer``)."""
        p = self.p.get(name, 0.0)
        total = p + self.p_none
        return p / total if total > 0 else None


@dataclass(frozen=True, kw_only=True)
class ToolCall:
    arguments: dict[str, Any]
    missing: list[str]


class Models(Protocol):
    async def guard(self, text: str) -> GuardVerdict:
        """How likely ``text`` is a jailbreak / prompt injection."""

    async def embed(self, texts: list[str]) -> npt.NDArray[np.float32]:
        """Unit-norm embeddings, one row per text."""

    async def function_call(self, messages: list[dict[str, Any]], tool: dict[str, Any], *, timeout_s: float | None = None,
                            prefill: bool = False) -> ToolCall:
        """Arguments for ``tool`` found in the conversation, and the required ones it could not find.
        ``timeout_s``: the deadline of this call (None: the model's own, ``model_server.models.function_call.timeout``).
        ``prefill``: only evaluate (cache) the tool's prompt prefix; no arguments."""

    async def choose_call(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]], candidates: list[str], *,
                          timeout_s: float | None = None, distinct: list[str] | None = None) -> tuple[str, ToolCall] | None:
        """One model call: is the conversation for one of ``candidates`` (names among ``tools``,
        best first by the gateway's ranking; the model's prompt lists every tool, in this fixed
        order)? The first candidate and its arguments when it is, or the model's own pick when
        that is one of ``distinct`` (candidates that do something else than the first) and the
        model is sure of it; None when it asks for none of them. ``candidates == []``: only
        evaluates (caches) the listing."""

    async def judge_guard(self, text: str, *, timeout_s: float | None = None) -> JudgeVerdict:
        """The cascade's judge on ``text``: is it a jailbreak / prompt injection? (``function_call``
        with ``TOOLS {"judge": "guard"}``). ``timeout_s``: this call's deadline (None: function_call's)."""

    async def judge_route(self, text: str, categories: list[tuple[str, str]], *, timeout_s: float | None = None) -> RouteVerdict:
        """Preference routing's judge on ``text``: which of ``categories`` ((name, description)
        pairs, the same list on every call) it asks for, or none (``function_call`` with ``TOOLS
        {"judge": "route", "categories": [...]}``). ``timeout_s``: this call's deadline."""
