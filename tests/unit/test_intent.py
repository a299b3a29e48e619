"""ext_proc/intent.py: target views, the combined score, the threshold and the second look (numpy only)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from ext_proc import intent


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
