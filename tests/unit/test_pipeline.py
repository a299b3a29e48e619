"""IngressPipeline pieces that need no model server (end to end: tests/integration/test_pipeline.py)."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from ext_proc.config import build_config
from ext_proc.endpoints import EndpointClient
from ext_proc.errors import ModelServerError
from ext_proc.metrics import Metrics
from ext_proc.pipeline import IngressPipeline, ToolCall
from tests.unit.test_render import ENV, raw_config


def _target(name: str, params: bool) -> dict[str, Any]:
    target: dict[str, Any] = {"name": name, "description": f"the {name} target",
                              "endpoint": {"name": "app", "path": f"/{name}"}}
    if params:
        target["parameters"] = [{"name": "city", "type": "str", "required": True, "description": "a city"}]
    return target


class Models:
    def __init__(self, fail: set[str] | None = None, refuse: set[str] | None = None, slow: set[str] | None = None) -> None:
        self.calls: list[str] = []
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
    assert models.deadlines == [120.0, 120.0]  # a cold model loads on the first call
    models = Models()
    raised = pipeline(models, 1, model_server={"models": {"function_call": {"timeout": "45s"}}})
    assert asyncio.run(raised.prefill_function_call()) == 1
    assert models.deadlines == [180.0]  # 4 x the function_call deadline when that is longer


def test_a_prefill_that_times_out_is_a_warning_and_the_rest_are_not_queued_behind_it(caplog: pytest.LogCaptureFixture) -> None:
    models = Models(slow={"t0"})
    pipe = pipeline(models, 3)
    with caplog.at_level(logging.WARNING, logger="sidegate"):
        assert asyncio.run(pipe.prefill_function_call()) == 0
    assert models.calls == ["t0"]
    assert list(pipe.unfilled) == ["t0", "t1", "t2"] and "did not answer within 120 s" in pipe.unfilled["t0"]
    assert pipe.unfilled["t1"] == "not tried: the pre-fill of t0 timed out" and pipe.refused == {}
    assert any("t0 not pre-filled" in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records)
