"""Anthropic's POST /v1/messages/count_tokens (ext_proc/chat/count_tokens.py): the provider's own
count for an Anthropic provider, sidegate's estimate for any other."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from ext_proc.chat.count_tokens import CountTokens, estimate
from ext_proc.config import build_config
from ext_proc.names import UPSTREAM_HEADER
from ext_proc.processor import Continue, Immediate, Reply
from testkit import gateway_config

CFG = build_config(gateway_config([
    {"name": "oai", "provider_interface": "openai", "endpoint": "http://127.0.0.1:9/v1", "model": "gpt-t", "default": True},
    {"name": "claude", "provider_interface": "anthropic", "endpoint": "http://127.0.0.1:9", "model": "claude-sonnet-4-5"},
    {"name": "own-key", "provider_interface": "anthropic", "endpoint": "http://127.0.0.1:8", "model": "claude-own", "passthrough_auth": True},
], model_aliases={"smart": {"target": "claude-sonnet-4-5"}}))
MESSAGES = [{"role": "user", "content": "count these words"}]


def call(body: Any, headers: dict[str, str] | None = None, method: str = "POST") -> Reply:
    async def go() -> Reply:
        p = CountTokens(CFG)
        first = await p.request_headers({":method": method, ":path": "/v1/messages/count_tokens", **(headers or {})}, False)
        if isinstance(first, Immediate):
            return first
        return await p.request_body(body if isinstance(body, bytes) else json.dumps(body).encode(), True)
    return asyncio.run(go())


def test_an_anthropic_provider_counts_itself_with_the_model_it_serves() -> None:
    reply = call({"model": "smart", "messages": MESSAGES})
    assert isinstance(reply, Continue) and reply.clear_route_cache
    assert reply.set_headers[UPSTREAM_HEADER] == CFG.provider("claude").cluster  # type: ignore[union-attr]
    assert reply.body is not None and json.loads(reply.body)["model"] == "claude-sonnet-4-5"
    same = call({"model": "claude-sonnet-4-5", "messages": MESSAGES})
    assert isinstance(same, Continue) and same.body is None  # sent as it came
    own = call({"model": "claude-own", "messages": MESSAGES}, {"authorization": "Bearer sk-mine"})
    assert isinstance(own, Continue) and own.set_headers["x-api-key"] == "sk-mine"


def test_any_other_provider_gets_sidegates_estimate() -> None:
    body = {"model": "gpt-t", "system": [{"type": "text", "text": "be brief"}], "messages": MESSAGES,
            "tools": [{"name": "f", "input_schema": {"type": "object"}}]}
    reply = call(body)
    assert isinstance(reply, Immediate) and reply.status == 200 and reply.headers["x-sidegate-estimate"] == "true"
    assert json.loads(reply.body) == {"input_tokens": estimate(body)} and estimate(body) > estimate({"messages": MESSAGES})


def test_bad_requests_are_anthropic_errors() -> None:
    for reply, status in ((call(b"{oops"), 400), (call({"model": "x"}), 400), (call({"messages": MESSAGES}, method="GET"), 405),
                          (call({"messages": MESSAGES}, {"x-arch-llm-provider-hint": "nobody"}), 400)):
        assert isinstance(reply, Immediate) and reply.status == status and json.loads(reply.body)["type"] == "error"
