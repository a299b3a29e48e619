"""The repo root on sys.path, and fixtures; shared helpers live in ``testkit/`` (bench/ uses them too)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # `from testkit.fake_provider import FakeProvider`



@pytest.fixture
def sidegate_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "sidegate-home"
    monkeypatch.setenv("SIDEGATE_HOME", str(home))
    return home
