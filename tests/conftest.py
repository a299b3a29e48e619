"""Shared test helpers: free ports, configs built from dicts, and the repo root on sys.path."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # `from tests.fake_provider import FakeProvider`

from bench._harness import free_port  # noqa: E402  (one helper for tests and benchmarks)


def gateway_config(providers: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    """A config dict with every port free on 127.0.0.1 and the given providers."""
    raw: dict[str, Any] = {
        "version": "v0.1",
        "listeners": {
            "ingress_traffic": {"address": "127.0.0.1", "port": free_port(), "timeout": "5s"},
            "egress_traffic": {"address": "127.0.0.1", "port": free_port(), "timeout": "5s"},
            "internal_traffic": {"address": "127.0.0.1", "port": free_port()},
            "admin": {"address": "127.0.0.1", "port": free_port()},
        },
        "ext_proc": {"address": "127.0.0.1", "port": free_port(), "http_port": free_port(), "message_timeout": "5s"},
        "llm_providers": providers,
    }
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(raw.get(key), dict):
            for k, v in value.items():
                raw[key][k] = {**raw[key].get(k, {}), **v} if isinstance(v, dict) else v
        else:
            raw[key] = value
    return raw


@pytest.fixture
def sidegate_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "sidegate-home"
    monkeypatch.setenv("SIDEGATE_HOME", str(home))
    return home
