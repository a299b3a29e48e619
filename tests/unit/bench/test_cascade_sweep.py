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


def gated(best: float, want: str | None, gate_none: float, judge_text: str | None = "a", set_: str = "multiple") -> dict:
    r = rec(best, want, text=judge_text, p_none=0.05, p_cand=0.95, set_=set_)  # the chooser: log ratio -2.94
    return {**r, "gate": {"p_none": gate_none, "p_call": 1 - gate_none}}


def test_the_gate_alone_decides_none_on_its_own_log_ratio_and_the_sum_adds_the_choosers() -> None:
    from bench.cascade_sweep import gate_decide

    r = gated(0.4, "a", gate_none=0.05)  # gate log ratio -2.94
    assert gate_decide(r, 0.55, -3.5, False, 0.2) is None  # -2.94 >= -3.5: none
    assert gate_decide(r, 0.55, -2.5, False, 0.2) == "a"
    assert gate_decide(r, 0.55, -5.5, True, 0.2) == "a"  # with the chooser's: -5.89 < -5.5
    assert gate_decide(r, 0.55, -6.0, True, 0.2) is None
    assert gate_decide(gated(0.4, "a", 0.0001, judge_text=None), 0.55, -3.5, True, 0.2) is None  # the chooser said none
    assert gate_decide(gated(0.7, "a", 0.9), 0.55, -3.5, False, 0.2) == "a"  # confident: no gate
    assert gate_decide(gated(0.1, "a", 0.0), 0.55, -3.5, False, 0.2) is None  # unrelated


def test_gate_rows_and_auc_score_the_same_prompts() -> None:
    from bench.cascade_sweep import auc, chooser_value, gate_rows, gate_value

    records = [gated(0.4, "a", 0.001), gated(0.4, "a", 0.01), gated(0.4, None, 0.2, set_="irrelevance"), gated(0.4, None, 0.02, set_="irrelevance")]
    assert auc(records, gate_value) == 1.0  # both out-of-scope ratios over both in-scope ones
    assert auc(records, chooser_value) == 0.5  # the chooser gave all four the same ratio
    rows = {(row[0].split(" (")[0], row[1]): row[2:] for row in gate_rows(records, 0.55, [1.5], 0.2)}
    # gate log ratios: in scope -6.91, -4.60; out of scope -1.39, -3.89
    assert rows[("the gate alone", -3.5)] == [1.0, 0.5, 1.5]
    assert rows[("the gate alone", -4.0)] == [1.0, 1.0, 2.0]
    assert rows[("the chooser's none", 1.5)] == [1.0, 0.0, 1.0]  # the chooser leans to the candidate on all four


def test_the_gate_prompts() -> None:
    from bench.cascade_sweep import _fill_with_none, gate_mass, gate_request

    from sidegate_models.function_call.prompt import INSTRUCTIONS

    system, user, grammar = gate_request("fill", INSTRUCTIONS, "Function: f\n", "f", "Conversation:\nUser: hi\nAnswer:")
    assert system == _fill_with_none(INSTRUCTIONS) + "Function: f\n" and user.endswith("Answer:") and '"none"' in grammar
    system, user, grammar = gate_request("question", INSTRUCTIONS, "Function: f\n", "f", "Conversation:\nUser: hi\nAnswer:")
    assert system == INSTRUCTIONS + "Function: f\n" and "User: hi\n\nQuestion: does" in user and "function f does" in user
    assert gate_mass("fill", {"{": math.log(0.6), ' {"': math.log(0.1), "None": math.log(0.2), "x": math.log(0.1)}) == pytest.approx((0.2, 0.7))
    assert gate_mass("question", {"yes": math.log(0.7), "No": math.log(0.2), "maybe": math.log(0.1)}) == pytest.approx((0.2, 0.7))


def test_the_fillings_evidence_turns_only_judged_routed_prompts_to_none() -> None:
    from bench.cascade_sweep import FILL_RULES, fill_decide

    empty = {"params": 2, "arguments": 0, "missing": 1}
    partial = {"params": 2, "arguments": 1, "missing": 1}
    assert fill_decide({**rec(0.4, "a"), "fill": empty}, 0.55, 1.5, 0.2, FILL_RULES[0]) is None  # judged, nothing the user gave
    assert fill_decide({**rec(0.4, "a"), "fill": partial}, 0.55, 1.5, 0.2, FILL_RULES[0]) == "a"
    assert fill_decide({**rec(0.4, "a"), "fill": partial}, 0.55, 1.5, 0.2, FILL_RULES[1]) is None  # a required value missing
    assert fill_decide({**rec(0.6, "a"), "fill": empty}, 0.55, 1.5, 0.2, FILL_RULES[0]) == "a"  # confident: not judged
    assert fill_decide({**rec(0.4, "a"), "fill": {"params": 0, "arguments": 0, "missing": 0}}, 0.55, 1.5, 0.2, FILL_RULES[0]) == "a"
    assert fill_decide(rec(0.4, "a"), 0.55, 1.5, 0.2, FILL_RULES[0]) == "a"  # not filled


def test_the_sure_pick_of_a_distinct_candidate_replaces_the_first_as_the_engine_does() -> None:
    """``sure``: the model's pick replaces the ranking's first when the gateway marked it distinct,
    its first token does not begin the first's name, and the candidates' mass is at least
    PICK_SURE; its own filling then decides the required-value rule."""
    from bench.cascade_sweep import FILL_RULES, fill_decide, sure_pick

    def picked(top_logprobs: dict, distinct: list, p_cand: float = 0.9, text: str = "return_item") -> dict:
        r = rec(0.4, "return_item", text=text, p_none=0.05, p_cand=p_cand)
        r["top"], r["distinct"] = ["cancel_order", "return_item", "cancel_purchase"], distinct
        r["judge"]["top_logprobs"] = top_logprobs
        return r

    sure = picked({"return": -0.1, "cancel": -2.5, "none": -4.0}, ["return_item"])
    assert sure_pick(sure) == "return_item"
    assert decide(sure, 0.55, 0.5, True, 0.2, sure=True) == ("return_item", "judged")
    assert decide(sure, 0.55, 0.5, True, 0.2) == ("cancel_order", "judged")  # ranked alone: the first
    assert sure_pick(picked({"return": -0.1}, [])) is None  # not distinct: a near twin of the first
    assert sure_pick(picked({"return": -0.1}, ["return_item"], p_cand=0.5)) is None  # not sure enough
    # a first token that begins the first's name too reads as agreement
    assert sure_pick(picked({"cancel": -0.1}, ["cancel_purchase"], text="cancel_purchase")) is None
    assert sure_pick(picked({}, ["return_item"])) is None  # no probabilities recorded
    empty = {"params": 1, "arguments": 0, "missing": 1}
    full = {"params": 1, "arguments": 1, "missing": 0}
    assert fill_decide({**sure, "fill": empty, "fill_pick": full}, 0.55, 0.5, 0.2, FILL_RULES[1], sure=True) == "return_item"
    assert fill_decide({**sure, "fill": full, "fill_pick": empty}, 0.55, 0.5, 0.2, FILL_RULES[1], sure=True) is None
    assert fill_decide({**sure, "fill": full, "fill_pick": empty}, 0.55, 0.5, 0.2, FILL_RULES[1]) == "cancel_order"
