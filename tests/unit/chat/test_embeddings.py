"""OpenAI's POST /v1/embeddings (ext_proc/chat/embeddings.py): which provider gets it, with which model."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from ext_proc.chat.embeddings import Embeddings
from ext_proc.config import build_config
from ext_proc.names import UPSTREAM_HEADER
from ext_proc.processor import Continue, Immediate, Reply
from testkit import gateway_config

CFG = build_config(gateway_config([
    {"name": "chat", "provider_interface": "openai", "endpoint": "http://127.0.0.1:9/v1", "model": "gpt-t", "default": True},
    {"name": "vectors", "provider_interface": "openai", "endpoint": "http://127.0.0.1:8/v1", "model": "embed-large"},
    {"name": "claude", "provider_interface": "anthropic", "endpoint": "http://127.0.0.1:9", "model": "claude-t"},
    {"name": "az", "provider_interface": "azure_openai", "endpoint": "https://r.openai.azure.com", "model": "dep"},
], model_aliases={"embedder": {"target": "embed-large"}}))


def call(body: Any, headers: dict[str, str] | None = None, method: str = "POST") -> Reply:
    async def go() -> Reply:
        p = Embeddings(CFG)
        first = await p.request_headers({":method": method, ":path": "/v1/embeddings", **(headers or {})}, False)
        if isinstance(first, Immediate):
            return first
        return await p.request_body(body if isinstance(body, bytes) else json.dumps(body).encode(), True)
    return asyncio.run(go())


def cluster(name: str) -> str:
    provider = CFG.provider(name)
    assert provider is not None
    return provider.cluster


def test_the_default_provider_gets_the_clients_own_embedding_model() -> None:
    reply = call({"model": "text-embedding-3-small", "input": "hi"})
    assert isinstance(reply, Continue) and reply.set_headers[UPSTREAM_HEADER] == cluster("chat") and reply.body is None


def test_a_provider_or_alias_named_gets_the_request_with_its_model() -> None:
    reply = call({"model": "embedder", "input": ["a", "b"]})
    assert isinstance(reply, Continue) and reply.set_headers[UPSTREAM_HEADER] == cluster("vectors")
    assert reply.body is not None and json.loads(reply.body)["model"] == "embed-large"
    hinted = call({"model": "text-embedding-3-large", "input": "x"}, {"x-arch-llm-provider-hint": "vectors"})
    assert isinstance(hinted, Continue) and hinted.set_headers[UPSTREAM_HEADER] == cluster("vectors") and hinted.body is None


@pytest.mark.parametrize(("body", "headers", "status", "code"), [
    ({"model": "claude-t", "input": "x"}, {}, 400, "unsupported_provider"),
    ({"model": "dep", "input": "x"}, {}, 400, "unsupported_provider"),
    ({"input": "x"}, {}, 400, "missing_required_parameter"),
    ({"model": "m", "input": []}, {}, 400, "missing_required_parameter"),
    (b"{oops", {}, 400, "invalid_json"),
    ({"model": "m", "input": "x"}, {"x-arch-llm-provider-hint": "nobody"}, 400, "unknown_provider"),
])
def test_what_no_provider_can_take_is_a_400_and_nothing_is_forwarded(body: Any, headers: dict[str, str], status: int, code: str) -> None:
    reply = call(body, headers)
    assert isinstance(reply, Immediate) and reply.status == status and json.loads(reply.body)["error"]["code"] == code


def test_only_post() -> None:
    reply = call({}, method="GET")
    assert isinstance(reply, Immediate) and reply.status == 405
