"""ext_proc/intent.py: target views, the combined score, the threshold and the second look (numpy only)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from ext_proc.chat import intent


def _target(name: str, description: str = "", params: tuple[tuple[str, str], ...] = ()) -> SimpleNamespace:
    return SimpleNamespace(name=name, description=description,
                           parameters=[SimpleNamespace(name=n, description=d) for n, d in params])


@pytest.mark.parametrize(("raw", "words"), [
    ("get_current_weather", "get current weather"),
    ("getCurrentWeather", "get current weather"),
    ("currency-exchange", "currency exchange"),
    ("Trains_1_FindTrains", "trains find trains"),
    ("XMLHttpRequest", "xml http request"),
    ("v2_list", "v2 list"),
    ("_", "_"),  # nothing left: the name itself
])
def test_name_words(raw: str, words: str) -> None:
    assert intent.name_words(raw) == words


def test_target_views() -> None:
    t = _target("get_current_weather", " Get the weather. ", (("location", "The city"), ("days", "")))
    assert intent.target_views(t) == [
        "get current weather",
        "Get the weather.",
        "get current weather: Get the weather.",
        "get current weather (location, days)",
        "get current weather: Get the weather. Parameters: location: The city; days",
    ]
    assert intent.target_views(_target("ping")) == ["ping"]  # no description, no parameters
    assert intent.target_views(_target("ping", "ping")) == ["ping", "ping: ping"]  # duplicates once
    assert intent.target_views(_target("ping", "", (("host", ""),))) == ["ping", "ping (host)", "ping Parameters: host"]


def test_scores_mix_the_best_and_the_mean_view() -> None:
    matrix = np.array([[1, 0], [0, 1], [0.6, 0.8]], dtype=np.float32)  # target 0: rows 0 and 1; target 1: row 2
    owners = np.array([0, 0, 1])
    s = intent.target_scores(matrix, owners, 2, np.array([0, 1], dtype=np.float32))
    w = intent.MEAN_WEIGHT
    assert s.tolist() == pytest.approx([(1 - w) * 1.0 + w * 0.5, 0.8])
    assert np.all(s <= np.array([1.0, 0.8]) + 1e-6)  # never above the best view: the threshold keeps its scale


def test_choose_and_retry_query() -> None:
    assert intent.choose(np.array([0.2, 0.4]), 0.4) == 1
    assert intent.choose(np.array([0.2, 0.4]), 0.41) is None
    assert intent.choose(np.array([]), 0.0) is None
    # the ranking picks the target; the threshold reads the best score, whichever target that is
    assert intent.choose(np.array([0.2, 0.4]), 0.4, np.array([0.9, 0.5])) == 0
    assert intent.choose(np.array([0.2, 0.4]), 0.41, np.array([0.9, 0.5])) is None
    assert intent.retry_query("3 days please", ["hi", " ", "weather in boston"]) == "hi\nweather in boston\n3 days please"
    assert intent.retry_query("x", ["a", "b", "c"]) == "b\nc\nx"
    assert intent.retry_query("x", [" "]) is None and intent.retry_query("x", []) is None


def test_index_layout_and_build() -> None:
    targets = [_target("a_b", "first"), _target("c", "", (("p", "q"),))]
    names, views, owners = intent.IntentIndex.layout(targets)
    assert names == ["a_b", "c"] and owners == [0, 0, 0, 1, 1, 1]
    rng = np.random.default_rng(0)
    m = rng.normal(size=(len(views), 4)).astype(np.float32)
    index = intent.IntentIndex.build(names, views, owners, m)
    q = np.ones(4, dtype=np.float32) / 2
    assert index.scores(q).tolist() == pytest.approx(intent.target_scores(m, np.array(owners), 2, q).tolist())
    with pytest.raises(ValueError):
        intent.IntentIndex.build(names, views, owners, m[:-1])
    with pytest.raises(ValueError):
        intent.IntentIndex.build(names, views, owners, m, ["only one text"])
    assert index.lexical is None and index.ranking(np.array([0.1, 0.2]), "a b") .tolist() == [0.1, 0.2]


@pytest.mark.parametrize(("text", "words"), [
    ("getServerLogs for the PostgreSQL servers", ["get", "server", "log", "postgre", "sql", "server"]),
    ("Please list all entries, boxes and buses in 2023", ["list", "entry", "box", "bus"]),
    ("status of the class", ["status", "class"]),  # "-us" and "-ss" are no plurals
    ("what is it?", []),
])
def test_lexical_words(text: str, words: list[str]) -> None:
    assert intent.lexical_words(text) == words


def test_target_text() -> None:
    t = _target("get_current_weather", "Get the weather.", (("location", "The city"), ("numDays", "")))
    assert intent.target_text(t) == "get current weather Get the weather. location num days The city"
    assert intent.target_text(_target("ping")) == "ping"


def test_lexical_index_bm25() -> None:
    lex = intent.LexicalIndex.build(["list servers environment", "add postgres server environment", "weather forecast city"])
    s = lex.scores("list all the postgres servers")
    assert s.shape == (3,) and np.all((s >= 0) & (s <= 1))
    assert s[2] == 0 and s[0] > 0 and s[1] > 0
    # "server" is in two targets, "list" and "postgres" in one each: idf weighs them equally, the rest ties
    assert s[0] == pytest.approx(s[1], rel=0.2)
    assert lex.scores("show the weather forecast for boston").argmax() == 2
    assert lex.scores("tell me a joke").tolist() == [0, 0, 0]  # no word any target has
    assert lex.scores("").tolist() == [0, 0, 0] and lex.scores("the of").tolist() == [0, 0, 0]
    # a word no target has lowers every score (it is part of the prompt nothing explains)
    assert lex.scores("weather forecast")[2] > lex.scores("weather forecast haiku")[2] > 0
    # a word every target has carries (almost) no evidence
    everywhere = intent.LexicalIndex.build(["alpha common", "beta common"])
    both = everywhere.scores("alpha common")
    assert both[0] > 4 * both[1] > 0
    # every prompt word, once in a target of average length: 1 / (k1 + 1), the most one occurrence gives
    assert both[0] == pytest.approx(1 / (intent.BM25_K1 + 1))
    assert intent.LexicalIndex.build([]).scores("anything").shape == (0,)


def test_hybrid_ranking_keeps_the_threshold_on_the_embedding() -> None:
    targets = [_target("list_servers", "List all the servers in the environment", (("type", "server type"),)),
               _target("add_postgres_server", "Register a new PostgreSQL server", (("host", "the host name"),))]
    names, views, owners = intent.IntentIndex.layout(targets)
    m = np.zeros((len(views), 2), dtype=np.float32)
    m[np.array(owners) == 0] = [1, 0]
    m[np.array(owners) == 1] = [0.6, 0.8]
    index = intent.IntentIndex.for_targets(targets, m)
    assert index.names == ("list_servers", "add_postgres_server") and index.lexical is not None
    vec = np.array([0.5, 0.866], dtype=np.float32)  # closer to target 1 by embedding (0.99 vs 0.5)
    scores = index.scores(vec)
    assert scores.argmax() == 1
    # the words pick target 0 when the embedding's margin is small, not when it is large
    close = np.array([0.62, 0.6])
    assert index.ranking(close, "list servers in the environment").argmax() == 0
    assert index.ranking(close, "add a postgres server").argmax() == 1
    assert index.ranking(np.array([0.1, 0.9]), "list servers in the environment").argmax() == 1
    chosen, best = index.choose(vec, "register a new postgres server host", 0.9)
    assert chosen == 1 and best == pytest.approx(float(scores.max()))
    assert index.choose(vec, "list the servers", float(scores.max()) + 1e-3) == (None, pytest.approx(float(scores.max())))


def test_likeness_reads_the_name_and_description_views_and_distinct_leaves_out_near_twins() -> None:
    """Two targets are compared by their "name: description" views (a target without a
    description by its name's view); distinct() keeps those under DISTINCT_BELOW."""
    targets = [_target("cancel_order", "Cancel an order that has not shipped", (("order_id", "the order"),)),
               _target("return_item", "Return a delivered item for a refund", (("order_id", "the order"),)),
               _target("cancel_purchase", "Cancel a purchase before it ships"),
               _target("ping")]
    names, views, owners = intent.IntentIndex.layout(targets)
    m = np.zeros((len(views), 4), dtype=np.float32)
    for row, (text, owner) in enumerate(zip(views, owners)):
        m[row, owner] = 1.0  # every view of a target on its own axis ...
    heads = {"cancel order: Cancel an order that has not shipped": [1, 0, 0, 0],
             "return item: Return a delivered item for a refund": [0.4, 0.9165, 0, 0],  # ... but these two
             "cancel purchase: Cancel a purchase before it ships": [0.8, 0, 0.6, 0]}
    for row, text in enumerate(views):
        if text in heads:
            m[row] = heads[text]
    index = intent.IntentIndex.for_targets(targets, m)
    assert index.likeness("cancel_order", "return_item") == pytest.approx(0.4)
    assert index.likeness("cancel_purchase", "cancel_order") == pytest.approx(0.8)  # near twins
    assert index.likeness("cancel_order", "ping") == pytest.approx(0.0)  # ping: its name's view
    assert intent.DISTINCT_BELOW == 0.7
    assert index.distinct("cancel_order", ["return_item", "cancel_purchase", "ping"]) == ["return_item", "ping"]
    assert index.distinct("cancel_order", ["cancel_order"]) == []
    with pytest.raises(ValueError, match="for_targets"):
        intent.IntentIndex.build(names, views, owners, m).likeness("cancel_order", "ping")
