"""bench/cascade_sweep.py's decision rule: what the gateway's cascade does with one prompt's record."""

from __future__ import annotations

import math

import pytest

from bench.cascade_sweep import decide, score


def rec(best: float, want: str | None, text: str | None = "b", p_none: float = 0.1, p_cand: float = 0.9, set_: str = "multiple") -> dict:
    judge = {"text": text, **({"p_none": p_none, "p_cand": p_cand} if text else {})}
    return {"id": "x", "set": set_, "want": want, "best": best, "top": ["a", "b", "c"], "judge": judge}


def test_under_the_unrelated_cut_off_nothing_is_asked_and_over_the_confident_one_the_ranking_decides() -> None:
    assert decide(rec(0.1, "a"), 0.55, 1.5, False, 0.2) == (None, "unrelated")
    assert decide(rec(0.6, "a"), 0.55, 1.5, False, 0.2) == ("a", "confident")
    assert decide(rec(0.6, "a"), 0.65, 1.5, False, 0.2) == ("b", "judged")  # the model's own pick


def test_ranked_takes_the_top_candidate_unless_the_model_says_none() -> None:
    assert decide(rec(0.4, "a"), 0.55, 1.5, True, 0.2) == ("a", "judged")
    assert decide(rec(0.4, "a", text=None), 0.55, 1.5, True, 0.2) == (None, "judged")  # the model wrote none


def test_the_margin_turns_a_leaning_answer_to_none() -> None:
    leaning = rec(0.4, "b", p_none=0.2, p_cand=0.8)  # log ratio 1.39
    assert decide(leaning, 0.55, 1.0, False, 0.2)[0] == "b"
    assert decide(leaning, 0.55, 1.5, False, 0.2)[0] is None
    assert math.log(0.8) - math.log(0.2) < 1.5


def test_score_pools_in_scope_and_out_of_scope_and_counts_the_judged() -> None:
    records = [rec(0.7, "a"), rec(0.4, "a"), rec(0.4, None, set_="irrelevance"), rec(0.4, None, text=None, set_="irrelevance")]
    s = score(records, 0.55, 1.5, True, 0.2)
    assert (s["in_scope"], s["out_of_scope"], s["judged_in_scope"]) == (1.0, 0.5, 0.5)
    s = score(records, 0.55, 1.5, False, 0.2)
    assert s["in_scope"] == pytest.approx(0.5) and s["sets"] == {"multiple": 0.5, "irrelevance": 0.5}


def test_bands_compare_the_rankings_first_with_the_models_pick() -> None:
    from bench.cascade_sweep import bands

    records = [rec(0.47, "a"), rec(0.48, "b"), rec(0.49, None, text=None, set_="irrelevance"), rec(0.3, "a")]
    rows = {row[0]: row[1:] for row in bands(records, 0.2)}
    assert rows["0.45-0.50"] == [2, 1, 1, 1, 1]  # 2 in scope: ranking right once, the model ("b") once; 1 out, kept away
    assert rows["0.20-0.45"] == [1, 1, 0, 0, 0]
