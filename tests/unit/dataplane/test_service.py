"""ext_proc.dataplane.service pieces that need no running server: the warm-up state /healthz reports, and
the refill of function_call's prompt prefixes when a Triton comes back."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from types import SimpleNamespace
from typing import Any

import pytest

from ext_proc.control.supervisor import warm_warning
from ext_proc.dataplane.service import _refill, _warm
from ext_proc.models import triton
from ext_proc.models.triton import TritonClient, TritonModels


class Ingress:
    def __init__(self, refused: dict[str, str], unfilled: dict[str, str] | None = None, state: dict[str, bool | str] | None = None,
                 intent_targets: Sequence[Any] = ()) -> None:
        self.intent_targets = list(intent_targets)
        self.refused: dict[str, str] = {}
        self.unfilled: dict[str, str] = {}
        self._refuse = refused
        self._unfill = unfilled or {}
        self.preferences = None
        self.state = state
        self.seen: str | None = None

    async def warm(self) -> None:
        if self.state is not None:
            self.seen = str(self.state["warm"])

    async def prefill_function_call(self, progress: Any = None) -> int:
        self.refused, self.unfilled = dict(self._refuse), dict(self._unfill)
        return 0


def warm_state(refused: dict[str, str], unfilled: dict[str, str] | None = None) -> str:
    state: dict[str, bool | str] = {}
    services = SimpleNamespace(models=object(), ingress=Ingress(refused, unfilled), agents={})
    asyncio.run(_warm(services, state))  # type: ignore[arg-type]
    return str(state["warm"])


class Agents:
    async def warm(self) -> None:
        return None


def test_the_warm_state_says_what_is_being_embedded() -> None:
    def first_state(intent_targets: Sequence[Any], agents: dict[str, Any]) -> str | None:
        state: dict[str, bool | str] = {}
        ingress = Ingress({}, state=state, intent_targets=intent_targets)
        asyncio.run(_warm(SimpleNamespace(models=object(), ingress=ingress, agents=agents), state))  # type: ignore[arg-type]
        return ingress.seen

    target = SimpleNamespace(name="get_weather")
    assert first_state([], {"travel": Agents()}) == "embedding agents"  # plano's agent demo: no prompt targets
    assert first_state([target], {}) == "embedding prompt targets"
    assert first_state([target], {"travel": Agents()}) == "embedding prompt targets, agents"


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


# -- refilling function_call's prompt prefixes when it comes back ------------------------------
class ScriptedTriton(TritonClient):
    """A Triton client whose function_call readiness follows a script (no server is dialled)."""

    script: dict[str, list[bool]] = {}

    def __init__(self, url: str, **kwargs: Any) -> None:
        super().__init__(url, **kwargs)
        self.asked = 0

    async def ready(self, *, models: Sequence[str] = (), timeout_s: float = 1.0) -> bool:
        assert list(models) == ["function_call"]
        steps = self.script[self.url]
        self.asked += 1
        return steps.pop(0) if steps else True


class Refills:
    prefills = True

    def __init__(self) -> None:
        self.via: list[str] = []

    async def prefill_function_call(self, models: Any = None) -> int:
        self.via.append(models.client.url)
        return 1


def refill(script: dict[str, list[bool]], replicas: list[str], *, filled_all: bool = True, polls: int = 6) -> list[str]:
    async def run() -> list[str]:
        ScriptedTriton.script = {url: list(steps) for url, steps in script.items()}
        client = ScriptedTriton("grpc://127.0.0.1:1", replicas=replicas)
        ingress = Refills()
        services = SimpleNamespace(models=TritonModels(client, timeout_s=1.0), ingress=ingress)
        task = asyncio.create_task(_refill(services, filled_all=filled_all, poll_s=0.001))  # type: ignore[arg-type]
        while any(ScriptedTriton.script.values()):
            await asyncio.sleep(0.001)
        await asyncio.sleep(0.01)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await client.close()
        return ingress.via

    return asyncio.run(run())


def test_function_call_back_after_a_restart_is_pre_filled_again_once() -> None:
    assert refill({"grpc://127.0.0.1:1": [True, False, False, True, True]}, []) == ["grpc://127.0.0.1:1"]


def test_a_start_up_pre_fill_that_failed_is_tried_again_when_function_call_is_ready() -> None:
    assert refill({"grpc://127.0.0.1:1": [True]}, [], filled_all=False) == ["grpc://127.0.0.1:1"]
    assert refill({"grpc://127.0.0.1:1": [True, True]}, [], filled_all=True) == []


def test_each_replica_is_watched_and_refilled_on_its_own_address(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(triton, "TritonClient", ScriptedTriton)  # the per-replica clients _refill opens
    a, b = "grpc://127.0.0.1:2", "grpc://127.0.0.1:3"
    assert refill({"grpc://127.0.0.1:1": [], a: [True, True, True], b: [True, False, True, True]}, [a, b]) == [b]
