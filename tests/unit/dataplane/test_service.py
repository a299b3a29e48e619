"""ext_proc.dataplane.service pieces that need no running server: the warm-up state /healthz reports."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

from ext_proc.control.supervisor import warm_warning
from ext_proc.dataplane.service import _warm


class Ingress:
    def __init__(self, refused: dict[str, str], unfilled: dict[str, str] | None = None) -> None:
        self.refused: dict[str, str] = {}
        self.unfilled: dict[str, str] = {}
        self._refuse = refused
        self._unfill = unfilled or {}

    async def warm(self) -> None:
        return None

    async def prefill_function_call(self, progress: Any = None) -> int:
        self.refused, self.unfilled = dict(self._refuse), dict(self._unfill)
        return 0


def warm_state(refused: dict[str, str], unfilled: dict[str, str] | None = None) -> str:
    state: dict[str, bool | str] = {}
    asyncio.run(_warm(SimpleNamespace(models=object(), ingress=Ingress(refused, unfilled), agents={}), state))  # type: ignore[arg-type]
    return str(state["warm"])


def test_warm_is_done_when_every_target_was_pre_filled() -> None:
    assert warm_state({}) == "done"


def test_a_target_function_call_refuses_is_named_in_the_warm_state_sidegate_up_shows() -> None:
    state = warm_state({"configure": "function_call: invalid input: the tool descriptions and parameter schemas fill the window"})
    assert state.startswith("done: function_call refuses prompt target(s) configure, whose requests will get 400: ")
    assert state.endswith("fill the window")


TIMED_OUT = ("Triton model function_call did not answer within 120 s (stream); if it is only slow (cold, or busy with "
             "queued calls), raise model_server.models.function_call.timeout (or model_server.timeout, the deadline of every model)")


def test_a_pre_fill_that_failed_is_named_in_the_warm_state_too() -> None:
    state = warm_state({}, {"get_weather": TIMED_OUT, "convert": "not tried: the pre-fill of get_weather timed out"})
    assert state == ("done: function_call prompt of target(s) get_weather, convert not pre-filled, so their first requests may be "
                     "slow or time out: " + TIMED_OUT)
    assert warm_warning(state).startswith("function_call prompt of target(s) get_weather")  # what `sidegate up` prints


def test_a_refusal_and_a_failed_pre_fill_are_both_named() -> None:
    state = warm_state({"configure": "too long"}, {"get_weather": TIMED_OUT})
    assert state.startswith("done: function_call refuses prompt target(s) configure, whose requests will get 400: too long; ")
    assert "function_call prompt of target(s) get_weather not pre-filled" in state and state.endswith(TIMED_OUT)
