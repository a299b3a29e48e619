"""ext_proc.service pieces that need no running server: the warm-up state /healthz reports."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

from ext_proc.service import _warm


class Ingress:
    def __init__(self, refused: dict[str, str]) -> None:
        self.refused: dict[str, str] = {}
        self._refuse = refused

    async def warm(self) -> None:
        return None

    async def prefill_function_call(self, progress: Any = None) -> int:
        self.refused = dict(self._refuse)
        return 0


def warm_state(refused: dict[str, str]) -> str:
    state: dict[str, bool | str] = {}
    asyncio.run(_warm(SimpleNamespace(models=object(), ingress=Ingress(refused)), state))  # type: ignore[arg-type]
    return str(state["warm"])


def test_warm_is_done_when_every_target_was_pre_filled() -> None:
    assert warm_state({}) == "done"


def test_a_target_function_call_refuses_is_named_in_the_warm_state_sidegate_up_shows() -> None:
    state = warm_state({"configure": "function_call: invalid input: the tool descriptions and parameter schemas fill the window"})
    assert state.startswith("done: function_call refuses prompt target(s) configure, whose requests will get 400: ")
    assert state.endswith("fill the window")
