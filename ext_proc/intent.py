"""Intent: which prompt target a prompt is for (DESIGN.md, "Life of an ingress request", step 3).

Every target is embedded once, at start-up and on reload, in a few *views* built from its config
(:func:`target_views`): its name as words, its description, the two together, its name with its
parameter names, and all of it with the parameters' descriptions. A request costs one embedding of the prompt; its score for a target is
``(1 - MEAN_WEIGHT) * max + MEAN_WEIGHT * mean`` of its cosines to that target's views
(:func:`target_scores`), which stays on the cosine scale (never above the best view's cosine), so
``overrides.prompt_target_intent_matching_threshold`` keeps its meaning. The best target matches
when its score reaches the threshold (:func:`choose`).

Chosen on BFCL ``multiple`` and a fixed half of ``live_multiple`` (``bench/intent_eval.py``
reports the other half): the combined views and the small mean term each fixed prompts that a
single view ranked wrong (a long description hides a short name, a name alone is ambiguous), and
splitting ``camelCase`` names ("FindTrains" -> "find trains") let the name views match at all.
Splitting the prompt into sentences (or taking its last sentence), one view per parameter
description, and centring each view's cosines over the targets all did worse.
``bench/intent_eval.py`` and ``tests/unit/test_intent.py`` call these same functions.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import numpy.typing as npt

__all__ = ["MEAN_WEIGHT", "IntentIndex", "choose", "name_words", "retry_query", "target_scores", "target_views"]

MEAN_WEIGHT = 0.2  # weight of the mean over a target's views; the rest goes to the best view
EARLIER_TURNS = 2  # user turns joined before the last one for the second look


class _Param(Protocol):
    @property
    def name(self) -> str: ...
    @property
    def description(self) -> str: ...


class _Target(Protocol):  # ext_proc.config.PromptTarget, or anything shaped like it (the bench)
    @property
    def name(self) -> str: ...
    @property
    def description(self) -> str: ...
    @property
    def parameters(self) -> Sequence[_Param]: ...


_CAMEL_LOWER_UPPER = re.compile(r"([a-z0-9])([A-Z])")
_CAMEL_ACRONYM = re.compile(r"([A-Z]+)([A-Z][a-z])")
_SEPARATORS = re.compile(r"[\s_.\-]+")


def name_words(name: str) -> str:
    """An identifier as words: ``get_current_weather``, ``getCurrentWeather`` and
    ``Weather_1-GetCurrentWeather`` read "get current weather" (and "weather get current
    weather"): split on ``_ - .``, spaces and camelCase, numbers alone dropped, lower case."""
    spaced = _CAMEL_ACRONYM.sub(r"\1 \2", _CAMEL_LOWER_UPPER.sub(r"\1 \2", name))
    words = [w for w in _SEPARATORS.split(spaced) if w and not w.isdigit()]
    return " ".join(words).lower() or name


def target_views(target: _Target) -> list[str]:
    """The texts one target is embedded as, in this order (duplicates and blanks left out):
    name as words; description; "name: description"; "name (parameter, names)"; and the whole
    target as one text, "name: description Parameters: parameter: its description; ...". """
    name = name_words(target.name)
    description = target.description.strip()
    views = [name]
    if description:
        views += [description, f"{name}: {description}"]
    params = [(name_words(p.name), (p.description or "").strip()) for p in target.parameters]
    if params:
        views.append(f"{name} ({', '.join(p for p, _ in params)})")
        head = f"{name}: {description}" if description else name
        views.append(f"{head} Parameters: " + "; ".join(f"{p}: {d}" if d else p for p, d in params))
    return list(dict.fromkeys(views))


def target_scores(matrix: npt.NDArray[np.float32], owners: npt.NDArray[np.intp], n_targets: int,
                  vec: npt.NDArray[np.float32]) -> npt.NDArray[np.float64]:
    """Per target: ``(1 - MEAN_WEIGHT) * max + MEAN_WEIGHT * mean`` of the cosines of ``vec``
    (unit norm) to the target's rows of ``matrix`` (``owners[i]``: the target of row i)."""
    sims = (matrix @ vec).astype(np.float64)
    best = np.full(n_targets, -np.inf)
    np.maximum.at(best, owners, sims)
    counts = np.bincount(owners, minlength=n_targets)
    mean = np.bincount(owners, weights=sims, minlength=n_targets) / np.maximum(counts, 1)
    return (1.0 - MEAN_WEIGHT) * best + MEAN_WEIGHT * mean


def choose(scores: npt.NDArray[np.float64], threshold: float) -> int | None:
    """The best target if its score is ``>= threshold``, else None."""
    if not len(scores):
        return None
    best = int(np.argmax(scores))
    return best if float(scores[best]) >= threshold else None


def retry_query(last: str, earlier: Sequence[str]) -> str | None:
    """The second look when the last user turn matches nothing: the last two earlier user turns
    and it, joined by newlines (None without earlier turns). After a clarifying question, "3 days
    please" alone matches nothing, with "what's the weather like in boston" before it it does."""
    earlier = [t for t in earlier if t.strip()]
    return "\n".join([*earlier[-EARLIER_TURNS:], last]) if earlier else None


@dataclass(frozen=True)
class IntentIndex:
    """The embedded views of a set of targets (built once per config)."""

    names: tuple[str, ...]  # target names, in config order
    views: tuple[str, ...]  # every view text
    owners: npt.NDArray[np.intp]  # per view: index into names
    matrix: npt.NDArray[np.float32]  # per view: its unit-norm embedding

    @staticmethod
    def layout(targets: Iterable[_Target]) -> tuple[list[str], list[str], list[int]]:
        """(names, view texts, owner of each view): what to embed for ``targets``."""
        names, views, owners = [], [], []
        for i, t in enumerate(targets):
            names.append(t.name)
            for v in target_views(t):
                views.append(v)
                owners.append(i)
        return names, views, owners

    @classmethod
    def build(cls, names: Sequence[str], views: Sequence[str], owners: Sequence[int],
              matrix: npt.NDArray[np.float32]) -> IntentIndex:
        matrix = np.asarray(matrix, dtype=np.float32)
        if matrix.shape[0] != len(views) or len(owners) != len(views):
            raise ValueError(f"{len(views)} views, {len(owners)} owners, {matrix.shape[0]} embeddings")
        return cls(tuple(names), tuple(views), np.asarray(owners, dtype=np.intp), matrix)

    def scores(self, vec: npt.NDArray[np.float32]) -> npt.NDArray[np.float64]:
        return target_scores(self.matrix, self.owners, len(self.names), vec)
