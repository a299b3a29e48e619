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


def test_followups_load_as_scored_items_the_checker_accepts_for_their_expected_arguments() -> None:
    from bench import pipeline_eval as pe
    from bench.fill_eval import followup_items

    dev, test = followup_items("dev", None, 0), followup_items("test", None, 0)
    assert len(dev) + len(test) == 42 and not {i.id for i in dev} & {i.id for i in test}
    checker, _ = pe.load_checker()
    for it in dev + test:
        assert it.messages[-1]["role"] == "user" and sum(m["role"] == "user" for m in it.messages) >= 2  # a follow-up
        # the expected arguments (first allowed value, optional ones left out) pass the scoring the part uses
        args = {k: v[0] for k, v in it.ground_truth[it.answer].items() if v[0] != ""}
        verdict = pe.score(it, pe.Outcome(kind="target", status=200, target=it.answer_target, arguments=args), checker)
        assert verdict["args_exact"], (it.id, verdict["why"])
        # the earlier value kept is a miss: the part can fail
        wrong = {**args, next(iter(args)): "an earlier value"}
        assert not pe.score(it, pe.Outcome(kind="target", status=200, target=it.answer_target, arguments=wrong),
                            checker)["args_exact"]
