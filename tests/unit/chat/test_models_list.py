"""GET /v1/models (ext_proc/chat/models_list.py): what a client can name, in each SDK's shape."""

from __future__ import annotations

import asyncio
import json

from ext_proc.chat.models_list import ModelList, listed_models
from ext_proc.config import build_config
from ext_proc.processor import Immediate
from testkit import gateway_config

CFG = build_config(gateway_config([
    {"name": "fast", "provider_interface": "openai", "endpoint": "http://127.0.0.1:9/v1", "model": "gpt-4o-mini", "default": True},
    {"name": "any-openai", "provider_interface": "openai", "endpoint": "http://127.0.0.1:9/v1"},  # any model: nothing to list
    {"name": "claude", "provider_interface": "anthropic", "endpoint": "http://127.0.0.1:9", "model": "claude-sonnet-4-5"},
    {"name": "fast-eu", "provider_interface": "openai", "endpoint": "http://127.0.0.1:8/v1", "model": "gpt-4o-mini"},  # listed once
], model_aliases={"smart": {"target": "claude-sonnet-4-5"}}))


def answer(headers: dict[str, str]) -> Immediate:
    reply = asyncio.run(ModelList(CFG).request_headers({":path": "/v1/models", **headers}, True))
    assert isinstance(reply, Immediate)
    return reply


def test_each_model_a_request_can_name_is_listed_once_in_config_order_then_the_aliases() -> None:
    assert listed_models(CFG) == [("gpt-4o-mini", "openai"), ("claude-sonnet-4-5", "anthropic"), ("smart", "anthropic")]


def test_openais_shape_by_default_and_anthropics_for_an_anthropic_client() -> None:
    reply = answer({":method": "GET"})
    assert reply.status == 200 and json.loads(reply.body) == {"object": "list", "data": [
        {"id": "gpt-4o-mini", "object": "model", "created": 0, "owned_by": "openai"},
        {"id": "claude-sonnet-4-5", "object": "model", "created": 0, "owned_by": "anthropic"},
        {"id": "smart", "object": "model", "created": 0, "owned_by": "anthropic"}]}
    page = json.loads(answer({":method": "GET", "anthropic-version": "2023-06-01"}).body)
    assert [m["id"] for m in page["data"]] == ["gpt-4o-mini", "claude-sonnet-4-5", "smart"]
    assert (page["has_more"], page["first_id"], page["last_id"]) == (False, "gpt-4o-mini", "smart")


def test_a_method_other_than_get_is_a_405_in_the_clients_shape() -> None:
    reply = answer({":method": "POST"})
    assert reply.status == 405 and json.loads(reply.body)["error"]["code"] == "method_not_allowed"
    reply = answer({":method": "DELETE", "anthropic-version": "2023-06-01"})
    assert reply.status == 405 and json.loads(reply.body)["type"] == "error"
