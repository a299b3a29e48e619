"""IngressPipeline pieces that need no model server (end to end: tests/integration/test_pipeline.py)."""

from __future__ import annotations

import asyncio
import json
import logging
import re
from typing import Any

import numpy as np
import pytest

from ext_proc.chat.endpoints import EndpointClient
from ext_proc.chat.intent import CONFIDENT_THRESHOLD, JUDGE_CANDIDATES, UNRELATED_THRESHOLD
from ext_proc.chat.pipeline import IngressPipeline, Uncertain
from ext_proc.config import build_config
from ext_proc.errors import ModelServerError
from ext_proc.metrics import Metrics
from ext_proc.models.base import ToolCall
from ext_proc.wire.openai import parse_chat_request
from testkit.configs import ENV, raw_config


def _target(name: str, params: bool) -> dict[str, Any]:
    target: dict[str, Any] = {"name": name, "description": f"the {name} target",
                              "endpoint": {"name": "app", "path": f"/{name}"}}
    if params:
        target["parameters"] = [{"name": "city", "type": "str", "required": True, "description": "a city"}]
    return target


class Models:
    def __init__(self, fail: set[str] | None = None, refuse: set[str] | None = None, slow: set[str] | None = None) -> None:
        self.calls: list[str] = []
        self.choices: list[list[str]] = []
        self.deadlines: list[float | None] = []
        self.fail = fail or set()
        self.refuse = refuse or set()
        self.slow = slow or set()

    async def function_call(self, messages: list[dict[str, Any]], tool: dict[str, Any], *, timeout_s: float | None = None) -> ToolCall:
        name = tool["function"]["name"]
        self.calls.append(name)
        self.deadlines.append(timeout_s)
        if name in self.fail:
            raise ModelServerError("function_call is loading")
        if name in self.slow:
            raise ModelServerError(f"Triton model function_call did not answer within {timeout_s:g} s (stream)",
                                   code="model_server_timeout", status=504)
        if name in self.refuse:
            raise ModelServerError("function_call: invalid input: the tool descriptions and parameter schemas fill the window",
                                   code="model_input_invalid", status=400)
        return ToolCall(arguments={}, missing=["city"])

    async def choose_call(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]], candidates: list[str], *,
                          timeout_s: float | None = None) -> tuple[str, ToolCall] | None:
        self.choices.append(list(candidates))
        self.deadlines.append(timeout_s)
        return None


def pipeline(models: Models, n_targets: int, **extra: Any) -> IngressPipeline:
    targets = [_target("no_params", False)] + [_target(f"t{i}", True) for i in range(n_targets)]
    cfg = build_config(raw_config(prompt_targets=targets, **extra), env=ENV)
    return IngressPipeline(cfg=cfg, models=models, endpoints=EndpointClient(cfg), metrics=Metrics())  # type: ignore[arg-type]


def test_prefill_calls_function_call_once_per_target_with_parameters() -> None:
    models = Models()
    assert asyncio.run(pipeline(models, 2).prefill_function_call()) == 2
    assert models.calls == ["t0", "t1"]  # the target without parameters never calls the model


def test_prefill_stops_at_the_slot_count_and_survives_a_failing_call() -> None:
    models = Models(fail={"t1"})
    assert asyncio.run(pipeline(models, 6).prefill_function_call(limit=4)) == 3
    assert models.calls == ["t0", "t1", "t2", "t3"]


def test_prefill_reports_its_progress() -> None:
    seen: list[tuple[int, int]] = []
    assert asyncio.run(pipeline(Models(), 2).prefill_function_call(progress=lambda done, total: seen.append((done, total)))) == 2
    assert seen == [(0, 2), (1, 2), (2, 2)]


def test_prefill_warns_at_start_about_a_target_the_model_refuses(caplog: pytest.LogCaptureFixture) -> None:
    pipe = pipeline(Models(fail={"t0"}, refuse={"t1"}), 2)
    with caplog.at_level(logging.INFO, logger="sidegate"):
        assert asyncio.run(pipe.prefill_function_call()) == 0
    assert list(pipe.refused) == ["t1"] and "fill the window" in pipe.refused["t1"]  # what `sidegate up` shows
    assert pipe.unfilled == {"t0": "function_call is loading"}  # shown by `sidegate up` too (service._warm)
    levels = {r.getMessage().split(":")[0].split(",")[0]: r.levelno for r in caplog.records
              if "t0" in r.getMessage() or "t1" in r.getMessage()}
    assert levels == {"function_call prefix of t0 not pre-filled": logging.WARNING,
                      "prompt target t1": logging.WARNING}, levels


def test_prefill_has_its_own_deadline_far_longer_than_a_requests() -> None:
    models = Models()
    pipe = pipeline(models, 2)
    assert pipe.cfg.model_server.timeout_for("function_call") == 30  # what a request waits for function_call
    assert asyncio.run(pipe.prefill_function_call()) == 2
    assert models.deadlines == [120.0, 120.0, 120.0]  # a cold model loads on the first call (the chooser's)
    models = Models()
    raised = pipeline(models, 1, model_server={"models": {"function_call": {"timeout": "45s"}}})
    assert asyncio.run(raised.prefill_function_call()) == 1
    assert models.deadlines == [180.0, 180.0]  # 4 x the function_call deadline when that is longer


def test_a_prefill_that_times_out_is_a_warning_and_the_rest_are_not_queued_behind_it(caplog: pytest.LogCaptureFixture) -> None:
    models = Models(slow={"t0"})
    pipe = pipeline(models, 3)
    with caplog.at_level(logging.WARNING, logger="sidegate"):
        assert asyncio.run(pipe.prefill_function_call()) == 0
    assert models.calls == ["t0"]
    assert list(pipe.unfilled) == ["t0", "t1", "t2"] and "did not answer within 120 s" in pipe.unfilled["t0"]
    assert pipe.unfilled["t1"] == "not tried: the pre-fill of t0 timed out" and pipe.refused == {}
    assert any("t0 not pre-filled" in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records)


# ------------------------------------------------------------------ intent: the cascade
# A fake embedding: a target's views all embed as its own axis; a prompt "SCORE=0.4 TARGET=t1 ..."
# as 0.4 x t1's axis + the rest on an axis no target has, so t1's score is exactly 0.4.

DIM = 16


def _axis(i: int) -> np.ndarray:
    v = np.zeros(DIM, dtype=np.float32)
    v[i] = 1.0
    return v


class CascadeModels(Models):
    def __init__(self, names: list[str], choice: str | None = None, refuse_choice: ModelServerError | None = None) -> None:
        super().__init__()
        self.names = names
        self.choice = choice
        self.refuse_choice = refuse_choice
        self.choose_tools: list[list[str]] = []

    async def embed(self, texts: list[str]) -> np.ndarray:
        rows = []
        for text in texts:
            m = re.search(r"SCORE=([0-9.]+) TARGET=(\w+)", text)
            if m:
                a, i = float(m.group(1)), self.names.index(m.group(2))
                rows.append(a * _axis(i) + np.sqrt(1 - a * a) * _axis(DIM - 1))
            else:  # a target view: the axis of the (longest) target name it contains
                (i,) = [j for j, n in enumerate(self.names) if n.replace("_", " ") in text][-1:]
                rows.append(_axis(i))
        return np.stack(rows).astype(np.float32)

    async def choose_call(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]], candidates: list[str], *,
                          timeout_s: float | None = None) -> tuple[str, ToolCall] | None:
        self.choices.append(list(candidates))
        self.choose_tools.append([t["function"]["name"] for t in tools])
        if self.refuse_choice is not None:
            raise self.refuse_choice
        if self.choice is None:
            return None
        return self.choice, ToolCall(arguments={"city": "Paris"}, missing=[])


def cascade(models: CascadeModels, **extra: Any) -> IngressPipeline:
    targets = [_target(n, n != "ping") for n in models.names]
    targets.append({"name": "fallback", "description": "anything else", "default": True,
                    "endpoint": {"name": "app", "path": "/fallback"}})
    cfg = build_config(raw_config(prompt_targets=targets, **extra), env=ENV)
    return IngressPipeline(cfg=cfg, models=models, endpoints=EndpointClient(cfg), metrics=Metrics())  # type: ignore[arg-type]


def decide(pipe: IngressPipeline, *turns: str) -> Any:
    messages = [{"role": "user" if i % 2 == 0 else "assistant", "content": t} for i, t in enumerate(turns)]
    req = parse_chat_request(json.dumps({"model": "m", "messages": messages}).encode())
    verdict = asyncio.run(pipe._intent(turns[-1], req))
    if isinstance(verdict, Uncertain):
        target, call = asyncio.run(pipe._judge(verdict, req))
        return ("judged", verdict.candidates, target.name if target else None, call)
    return verdict.name if verdict else None


NAMES = ["weather", "currency", "trains", "ping"]


def test_a_confident_match_goes_straight_to_its_target_with_no_model_call() -> None:
    models = CascadeModels(NAMES)
    pipe = cascade(models)
    assert pipe.confident == CONFIDENT_THRESHOLD and pipe.unrelated == UNRELATED_THRESHOLD
    assert decide(pipe, "SCORE=0.8 TARGET=currency how much is 10 dollars in euros") == "currency"
    assert models.choices == [] and models.calls == []


def test_a_clearly_unrelated_prompt_goes_to_the_default_target_with_no_model_call() -> None:
    models = CascadeModels(NAMES, choice="weather")
    pipe = cascade(models)
    assert decide(pipe, "SCORE=0.1 TARGET=weather tell me a joke") == "fallback"
    assert models.choices == [] and models.calls == []


def test_an_uncertain_prompt_is_judged_among_the_top_candidates_with_every_target_listed_in_config_order() -> None:
    models = CascadeModels(NAMES, choice="weather")
    pipe = cascade(models)
    judged, candidates, target, call = decide(pipe, "SCORE=0.4 TARGET=weather 3 days of Paris")
    assert (judged, target) == ("judged", "weather") and call.arguments == {"city": "Paris"}
    assert candidates[0] == "weather" and len(candidates) == JUDGE_CANDIDATES
    assert models.choose_tools == [NAMES]  # the same listing, same order, every call: llama.cpp keeps it cached
    decide(pipe, "SCORE=0.3 TARGET=trains a train to Lyon")
    assert models.choose_tools == [NAMES, NAMES] and models.calls == []  # no second model call for the arguments


def test_the_judge_saying_none_sends_the_prompt_to_the_default_target_or_else_the_llm() -> None:
    models = CascadeModels(NAMES, choice=None)
    assert decide(cascade(models), "SCORE=0.4 TARGET=weather what is love")[2] == "fallback"
    pipe = cascade(CascadeModels(NAMES, choice=None))
    pipe.default_target = None  # no default: the LLM
    assert decide(pipe, "SCORE=0.4 TARGET=weather what is love")[2] is None


def test_a_target_without_parameters_can_be_chosen_and_has_no_arguments() -> None:
    models = CascadeModels(NAMES, choice="ping")
    _, _, target, call = decide(cascade(models), "SCORE=0.4 TARGET=ping are you there")
    assert target == "ping" and call is None


def test_a_threshold_the_config_sets_is_the_confident_one_with_the_judge_band_below() -> None:
    models = CascadeModels(NAMES, choice="trains")
    pipe = cascade(models, overrides={"prompt_target_intent_matching_threshold": 0.35})
    assert pipe.confident == 0.35 and pipe.unrelated == UNRELATED_THRESHOLD
    assert decide(pipe, "SCORE=0.4 TARGET=weather weather in Paris") == "weather"  # over the user's threshold: as before
    assert decide(pipe, "SCORE=0.3 TARGET=weather weather in Paris")[0] == "judged"
    low = cascade(CascadeModels(NAMES), overrides={"prompt_target_intent_matching_threshold": 0.1})
    assert low.confident == low.unrelated == 0.1  # under the unrelated threshold: no band, the user's threshold decides


def test_without_function_call_the_threshold_alone_decides_as_before() -> None:
    names = ["weather", "currency"]
    models = CascadeModels(names, choice="weather")
    targets = [_target(n, False) for n in names]
    cfg = build_config(raw_config(prompt_targets=targets), env=ENV)
    pipe = IngressPipeline(cfg=cfg, models=models, endpoints=EndpointClient(cfg), metrics=Metrics())  # type: ignore[arg-type]
    assert not pipe.judge and pipe.confident == pipe.unrelated == 0.45
    assert decide(pipe, "SCORE=0.5 TARGET=currency euros") == "currency"
    assert decide(pipe, "SCORE=0.4 TARGET=currency euros") is None  # no default target: the LLM
    assert models.choices == []


@pytest.mark.parametrize("error", [
    ModelServerError("function_call: invalid input: the tool descriptions fill the window", code="model_input_invalid", status=400),
    ModelServerError("Request for unknown model: 'function_call' is not found"),  # loading again after a Triton restart
    ModelServerError("Triton model function_call did not answer within 30 s", code="model_server_timeout", status=504),
], ids=["refused", "unavailable", "slow"])
def test_a_judge_that_cannot_answer_falls_back_to_the_threshold(error: ModelServerError) -> None:
    """Never a failed request for a prompt that may need no model at all: the load bench saw
    default-target prompts answer 503 for 28 s while function_call loaded after a restart."""
    models = CascadeModels(NAMES, refuse_choice=error)
    pipe = cascade(models)
    assert decide(pipe, "SCORE=0.5 TARGET=weather weather")[2] == "weather"  # >= 0.45, the threshold without a judge
    assert decide(pipe, "SCORE=0.3 TARGET=weather weather")[2] == "fallback"


def test_the_earlier_turns_are_looked_at_when_the_last_one_is_not_confident() -> None:
    models = CascadeModels(NAMES, choice="weather")
    pipe = cascade(models)
    # after a clarifying question: "3 days" alone is unrelated, with the turn before it confident
    verdict = decide(pipe, "SCORE=0.9 TARGET=weather weather in Paris", "For how many days?", "SCORE=0.1 TARGET=weather 3 days")
    assert verdict == "weather"


def test_prefill_fills_the_choosers_listing_first() -> None:
    models = CascadeModels(NAMES)
    assert asyncio.run(cascade(models).prefill_function_call()) == 3
    assert models.choices == [[]] and models.choose_tools == [NAMES]  # no candidates: the listing only
    assert models.calls == ["weather", "currency", "trains"]


def test_a_prompt_naming_two_targets_is_judged_and_gets_one_route() -> None:
    models = CascadeModels(NAMES, choice="currency")
    verdict = decide(cascade(models), "SCORE=0.5 TARGET=weather weather in Paris and 10 dollars in euros")
    assert verdict[0] == "judged" and verdict[2] == "currency" and "weather" in verdict[1]


def test_a_50_turn_conversation_is_decided_on_its_last_turns_and_the_judge_sees_it_whole() -> None:
    models = CascadeModels(NAMES, choice="trains")
    turns = [f"SCORE=0.1 TARGET=ping chat {i}" for i in range(49)] + ["SCORE=0.4 TARGET=trains a train to Lyon"]
    verdict = decide(cascade(models), *turns)
    assert verdict[0] == "judged" and verdict[2] == "trains"
