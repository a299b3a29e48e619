"""bench/cache_semantic.py: the fow-cache pairs as the bench reads them, its fixed split, how it
chooses the similarity, and that its decisions are the cache's own (ChatProcessor) ones.

No model is loaded: planted vectors stand in for prompt_embed's, so the file runs in about a second.
"""

from __future__ import annotations

import asyncio
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[3]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import cache_semantic as CS  # noqa: E402


def test_the_pairs_and_their_fixed_halves() -> None:
    pytest.importorskip("fow_cache", reason="fow-cache is not installed (requirements-bench.txt)")
    questions, conversations, digests = CS.load_pairs(CS.data_dir())
    assert (len(questions), len(conversations)) == (600, 240)
    assert set(digests) >= {"data/pairs.jsonl"} and all(len(h) == 64 for h in digests.values())
    groups = Counter((p.group, p.same) for p in questions)
    assert {g for g, same in groups if same} == {"paraphrase", "near_repeat"}  # ambiguous pairs count as different answers
    assert {g for g, same in groups if not same} >= {"negation", "entity_swap", "number_date", "scope"}
    for pairs in (questions, conversations):
        halves = Counter((p.group, p.same, p.half) for p in pairs)
        for (group, same), n in Counter((p.group, p.same) for p in pairs).items():  # each group split in two
            assert abs(halves[(group, same, "select")] - halves[(group, same, "held_out")]) <= 1, (group, same, n)
    again, _, _ = CS.load_pairs(CS.data_dir())
    assert [p.half for p in again] == [p.half for p in questions]  # fixed: by sha256 of the id, not by chance


def pair(i: int, same: bool, a: str = "", b: str = "") -> CS.Pair:
    return CS.Pair(id=f"p{i}", group="g", same=same, a=[{"role": "user", "content": a or f"question {i}"}],
                   b=[{"role": "user", "content": b or f"question {i} please"}], half="select")


def test_choose_takes_the_lowest_similarity_from_which_precision_holds() -> None:
    pairs = [pair(i, same=i < 8) for i in range(10)]
    scores = {f"p{i}": (0.90 + 0.01 * i, True) for i in range(8)} | {"p8": (0.93, True), "p9": (0.95, False)}
    # p8 is a wrong hit up to 0.93; p9 never (compatible() says no)
    assert CS.choose(pairs, scores, 0.99) == 0.935
    c = CS.count(pairs, CS.predicted(pairs, scores, 0.935))
    assert (c.right, c.wrong, c.positives, c.precision, c.recall) == (4, 0, 8, 1.0, 4 / 8)
    assert CS.count(pairs, CS.predicted(pairs, scores, 0.90)).precision == 8 / 9
    assert CS.choose(pairs, {**scores, "p8": (0.999, True)}, 0.99) is None  # a wrong hit at the top: no value holds


class Planted:
    """prompt_embed stand-in: fixed unit vectors per text."""

    def __init__(self, table: dict[str, list[float]]) -> None:
        self.vectors = {t: np.asarray(v, dtype=np.float32) / np.linalg.norm(v) for t, v in table.items()}

    def prepare(self, texts: Any) -> None:
        return None

    async def embed(self, texts: list[str]) -> Any:
        return np.stack([self.vectors[t] for t in texts])


def test_the_bench_decides_through_chat_processor_as_predicted() -> None:
    table = {"What time does the pool open?": [1, 0, 0], "When does the pool open?": [0.99, 0.12, 0],  # cosine 0.993
             "Is the gym open on Sundays?": [0, 1, 0], "Is the gym closed on Sundays?": [0, 0.99, 0.12],  # 0.993, not compatible
             "How do I pay?": [0, 0, 1], "How do I pay by card?": [0.5, 0, 0.87]}  # 0.87: too far
    pairs = [pair(0, True, "What time does the pool open?", "When does the pool open?"),
             pair(1, False, "Is the gym open on Sundays?", "Is the gym closed on Sundays?"),
             pair(2, False, "How do I pay?", "How do I pay by card?")]
    embedder: Any = Planted(table)
    served = asyncio.run(CS.served(pairs, embedder, 0.92))
    assert served == {"p0": True, "p1": False, "p2": False}
    assert served == CS.predicted(pairs, CS.scores(pairs, embedder), 0.92)
