"""Gateway configs for tests and benchmarks, every port a free one on 127.0.0.1.

:func:`gateway_config` is the small one (listeners, ext_proc and the given providers);
:func:`raw_config` uses most sections (endpoints with TLS and host rewriting, four providers,
environment-referenced keys: :data:`ENV` holds their values, :data:`SECRET` the one a test
checks never appears in a rendered file).
"""

from __future__ import annotations

from typing import Any

from ext_proc.config import Config, build_config
from testkit.ports import free_port

__all__ = ["ENV", "SECRET", "cfg_from", "gateway_config", "raw_config"]


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
        "ext_proc": {"address": "127.0.0.1", "port": free_port(), "http_port": free_port(), "message_timeout": "5s", "workers": 1},
        "llm_providers": providers,
    }
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(raw.get(key), dict):
            for k, v in value.items():
                raw[key][k] = {**raw[key].get(k, {}), **v} if isinstance(v, dict) else v
        else:
            raw[key] = value
    return raw


SECRET = "sk-test-SECRET-value-4711"


def raw_config(**over: Any) -> dict[str, Any]:
    """A config with every port free on 127.0.0.1; ``over`` replaces top-level keys."""
    raw: dict[str, Any] = {
        "version": "v0.1",
        "listeners": {
            "ingress_traffic": {"address": "127.0.0.1", "port": free_port(), "timeout": "30s"},
            "egress_traffic": {"address": "127.0.0.1", "port": free_port(), "timeout": "45s", "max_body_bytes": 65536},
            "internal_traffic": {"address": "127.0.0.1", "port": free_port(), "timeout": "20s"},
            "admin": {"address": "127.0.0.1", "port": free_port()},
        },
        "ext_proc": {"address": "127.0.0.1", "port": free_port(), "http_port": free_port(), "message_timeout": "7s", "workers": 1},
        "endpoints": {
            "app": {"endpoint": "127.0.0.1:18083", "connect_timeout": "1s", "timeout": "12s", "http_host": "app.local"},
            "tls_app": {"endpoint": "https://api.example.com/base/", "timeout": "5s"},
        },
        "llm_providers": [
            {"name": "openai", "provider_interface": "openai", "access_key": "$OPENAI_API_KEY",
             "model": "gpt-4o-mini", "default": True, "retries": 2},
            {"name": "groq", "provider_interface": "groq", "access_key": "$GROQ_API_KEY", "model": "llama"},
            {"name": "local", "provider_interface": "openai", "endpoint": "http://127.0.0.1:18083/v1", "model": "echo"},
            {"name": "literal", "provider_interface": "openai", "endpoint": "http://localhost:9999",
             "access_key": SECRET + "-literal", "model": "lit"},
        ],
    }
    raw.update(over)
    return raw


ENV = {"OPENAI_API_KEY": SECRET, "GROQ_API_KEY": SECRET + "-groq"}


def cfg_from(raw: dict[str, Any] | None = None, env: dict[str, str] | None = None) -> Config:
    return build_config(raw or raw_config(), env=ENV if env is None else env)
