"""bench/fill_eval.py's table: exact arguments per set and in all, with the call's latency."""

from __future__ import annotations

import pytest

from bench.fill_eval import main, summarize


def test_summarize_counts_exact_items_per_set_and_in_all() -> None:
    records = [{"set": "multiple", "exact": True, "seconds": 1.0}, {"set": "multiple", "exact": False, "seconds": 3.0},
               {"set": "live_simple", "exact": True, "seconds": 2.0}]
    rows = {row[0]: row[1:] for row in summarize(records, ["multiple", "live_simple", "live_multiple"])}
    assert rows["multiple"] == [2, 1, 0.5, 2.0, 2.8]
    assert rows["live_simple"] == [1, 1, 1.0, 2.0, 2.0]
    assert rows["live_multiple"] == [0, 0, None, None, None]  # a set with no item: no share, no latency
    assert rows["all"][:3] == [3, 2, 0.667]


def test_out_of_scope_sets_are_refused_before_anything_loads() -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--sets", "irrelevance", "--weights", "x"])
    assert exc.value.code == 2
