"""bench/agents.py: the set is read as documented (labels from the ground truth's functions, a fixed
split by conversation) and a turn is scored as the agent listener decides it."""

from __future__ import annotations

import numpy as np
import pytest

from bench import agents as ab
from bench.intent_eval import bfcl_dir
from ext_proc.chat.agent_choice import AgentSpec, agent_index, agent_views

FOLDER = bfcl_dir()
pytestmark = pytest.mark.skipif(FOLDER is None, reason="bfcl-eval is not installed (requirements-bench.txt)")


def test_turns_are_labelled_by_the_system_whose_functions_the_ground_truth_calls() -> None:
    assert FOLDER is not None
    turns, prov = ab.load_turns(FOLDER)
    assert len({t.conv for t in turns}) == 200 and len(prov["questions"]["sha256"]) == 64
    first = [t for t in turns if t.conv == "multi_turn_base_0"]
    names = [a[1] for a in ab.AGENTS.values()]
    assert [sorted(names[i] for i in t.labels) for t in first] == [["file_agent"]] * 4  # cd, mkdir, mv, grep, sort, diff
    assert first[2].texts[1:] == [first[1].texts[0], first[0].texts[0]]  # earlier user turns, most recent first
    assert sum(len(t.labels) == 2 for t in turns) == 17 and sum(not t.labels for t in turns) == 3
    halves = {t.conv: t.split for t in turns}
    assert set(halves.values()) == {"dev", "test"} and all(t.split == halves[t.conv] for t in turns)  # whole conversations


def test_evaluate_scores_each_turn_with_the_listeners_decision() -> None:
    specs = [AgentSpec("a", "apples"), AgentSpec("b", "bananas")]
    axis = {"apples": 0, "a": 0, "a: apples": 0, "bananas": 1, "b": 1, "b: bananas": 1}
    vecs = {t: np.eye(2, dtype=np.float32)[i] for t, i in axis.items()}
    index = agent_index(specs, np.stack([vecs[v] for v in agent_views(specs)[1]]))
    turns = [ab.Turn("c", 0, ["apples"], {0}, "dev"), ab.Turn("c", 1, ["bananas", "apples"], {1}, "dev"),
             ab.Turn("c", 2, ["apples", "bananas", "apples"], {1}, "dev")]
    out = ab.evaluate(turns, index, vecs)
    assert out["turns"] == 3 and out["accuracy"] == pytest.approx(2 / 3) and out["baseline_default"] == pytest.approx(1 / 3)
    assert out["topic_changes"] == 1 and out["accuracy_topic_changes"] == 1.0
