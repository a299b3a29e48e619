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
    def __init__(self, fail: set[str] | None = None, refuse: set[str] | None = None) -> None:
        self.calls: list[str] = []
        self.fail = fail or set()
        self.refuse = refuse or set()

    async def function_call(self, messages: list[dict[str, Any]], tool: dict[str, Any]) -> ToolCall:
        name = tool["function"]["name"]
        self.calls.append(name)
        if name in self.fail:
            raise ModelServerError("function_call is loading")
        if name in self.refuse:
            raise ModelServerError("function_call: invalid input: the tool descriptions and parameter schemas fill the window",
                                   code="model_input_invalid", status=400)
        return ToolCall(arguments={}, missing=["city"])


def pipeline(models: Models, n_targets: int) -> IngressPipeline:
    targets = [_target("no_params", False)] + [_target(f"t{i}", True) for i in range(n_targets)]
    cfg = build_config(raw_config(prompt_targets=targets), env=ENV)
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
    levels = {r.getMessage().split(":")[0]: r.levelno for r in caplog.records if "t0" in r.getMessage() or "t1" in r.getMessage()}
    assert levels == {"function_call prefix of t0 not pre-filled": logging.INFO,
                      "prompt target t1": logging.WARNING}, levels
