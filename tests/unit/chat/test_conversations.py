"""state_storage: the Responses API's stored responses (ext_proc/chat/conversations.py), so that
previous_response_id and item_reference work for providers sent chat completions."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from ext_proc.chat.cache import FileStore, MemoryStore, StoreFailed
from ext_proc.chat.conversations import Conversations, StateUnavailable
from ext_proc.chat.translate import Exchange
from ext_proc.config import SharedStore, StateStorage, build_config
from ext_proc.errors import MalformedRequest
from testkit import gateway_config

CFG = build_config(gateway_config([
    {"name": "oai", "provider_interface": "openai", "endpoint": "http://127.0.0.1:9/v1", "model": "gpt-t", "default": True},
    {"name": "native", "provider_interface": "openai", "endpoint": "http://127.0.0.1:9/v1", "model": "gpt-n", "native_responses": True},
]))
OAI, NATIVE = CFG.provider("oai"), CFG.provider("native")


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def chat_answer(text: str | None, calls: list[dict[str, Any]] | None = None) -> bytes:
    message: dict[str, Any] = {"role": "assistant", "content": text}
    if calls:
        message["tool_calls"] = calls
    return json.dumps({"id": "c", "object": "chat.completion", "created": 1, "model": "gpt-t",
                       "choices": [{"index": 0, "message": message, "finish_reason": "tool_calls" if calls else "stop"}]}).encode()


async def turn(conv: Conversations | None, request: dict[str, Any], answer: bytes, *, provider: Any = OAI,
               stream: bool = False) -> tuple[Exchange, dict[str, Any], dict[str, Any] | None]:
    """One request through an Exchange as ChatProcessor drives it: (the exchange, the body sent
    upstream, the response the client got)."""
    ex = Exchange("responses")
    req = await ex.read(json.dumps(request).encode(), conv)
    out, _ = ex.upstream_body(req, None, provider)
    sent = json.loads(out) if out is not None else request
    if ex.native:
        return ex, sent, None
    ex.start_response(status="200", streaming=stream)
    ex.start_presenting(streaming=stream)
    if stream:
        chunks = [{"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "gpt-t",
                   "choices": [{"index": 0, "delta": {"role": "assistant", "content": json.loads(answer)["choices"][0]["message"]["content"]}}]},
                  {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "gpt-t", "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}]
        sse = b"".join(b"data: " + json.dumps(c).encode() + b"\n\n" for c in chunks) + b"data: [DONE]\n\n"
        events = ex.present(sse, streaming=True, end_of_stream=False) or b""
        response = next(json.loads(line[6:])["response"] for line in events.decode().splitlines()
                        if line.startswith("data: ") and '"response.completed"' in line)
    else:
        presented = ex.present(answer, streaming=False, end_of_stream=True)
        assert presented is not None
        response = json.loads(presented)
    stored = ex.to_remember()
    if stored is not None and conv is not None:
        await conv.remember(ex.request, stored)
    return ex, sent, response


def memory() -> Conversations:
    return Conversations(StateStorage(), SharedStore())


def test_previous_response_id_sends_the_conversation_so_far_to_a_chat_provider() -> None:
    async def go() -> None:
        conv = memory()
        _, _, first = await turn(conv, {"model": "gpt-t", "instructions": "be brief", "input": "My name is Ann."}, chat_answer("Hello Ann."))
        assert isinstance(conv.store, MemoryStore) and len(conv.store) == 2  # the response and its one output item
        assert first is not None and first["store"] is True and first["previous_response_id"] is None
        _, sent, second = await turn(conv, {"model": "gpt-t", "previous_response_id": first["id"], "input": "What is my name?"},
                                     chat_answer("Ann."), stream=True)
        # instructions are not carried over (as OpenAI does); the earlier input and output are
        assert sent["messages"] == [{"role": "user", "content": "My name is Ann."}, {"role": "assistant", "content": "Hello Ann."},
                                    {"role": "user", "content": "What is my name?"}]
        assert second is not None and second["previous_response_id"] == first["id"]
        _, sent, _ = await turn(conv, {"model": "gpt-t", "previous_response_id": second["id"], "input": [{"role": "user", "content": "Thanks"}]},
                                chat_answer("You're welcome."))
        assert [m["content"] for m in sent["messages"]] == ["My name is Ann.", "Hello Ann.", "What is my name?", "Ann.", "Thanks"]

    run(go())


def test_item_references_of_a_tool_loop_become_the_items() -> None:
    """The Vercel AI SDK's second step: the earlier function_call referred to by id, then its output."""
    async def go() -> None:
        conv = memory()
        call = {"id": "call_9", "type": "function", "function": {"name": "weather", "arguments": '{"q": "Oslo"}'}}
        _, _, first = await turn(conv, {"model": "gpt-t", "input": "rain in Oslo?"}, chat_answer("Let me look.", [call]))
        assert first is not None
        message, fc = first["output"]
        _, sent, _ = await turn(conv, {"model": "gpt-t", "input": [
            {"role": "user", "content": [{"type": "input_text", "text": "rain in Oslo?"}]},
            {"type": "item_reference", "id": message["id"]}, {"type": "item_reference", "id": fc["id"]},
            {"type": "function_call_output", "call_id": "call_9", "output": "rain"}]}, chat_answer("It rains."))
        assert sent["messages"][1:] == [
            {"role": "assistant", "content": "Let me look.", "tool_calls": [call]},
            {"role": "tool", "tool_call_id": "call_9", "content": "rain"}]

    run(go())


def test_what_is_not_stored_here_is_a_400_for_a_chat_provider_and_goes_as_it_came_to_a_native_one() -> None:
    async def go() -> None:
        conv = memory()
        with pytest.raises(MalformedRequest) as info:
            await turn(conv, {"model": "gpt-t", "previous_response_id": "resp_elsewhere", "input": "hi"}, chat_answer("x"))
        assert info.value.code == "previous_response_not_found" and "state_storage.ttl" in info.value.message
        with pytest.raises(MalformedRequest) as info:
            await turn(conv, {"model": "gpt-t", "input": [{"type": "item_reference", "id": "fc_gone"}]}, chat_answer("x"))
        assert (info.value.param, info.value.code) == ("input[0].id", "item_not_found")
        request = {"model": "gpt-5", "previous_response_id": "resp_openai", "input": "hi"}
        ex, sent, _ = await turn(conv, request, chat_answer("x"), provider=NATIVE)
        assert ex.native and sent == {**request, "model": "gpt-n"}  # OpenAI's own id: the provider resolves it

    run(go())


def test_a_response_of_ours_is_resolved_before_a_native_provider_gets_the_request() -> None:
    """A conversation that moves from a chat provider to OpenAI's own API: the id OpenAI never saw is expanded."""
    async def go() -> None:
        conv = memory()
        _, _, first = await turn(conv, {"model": "gpt-t", "input": "hi"}, chat_answer("hello"))
        assert first is not None
        ex, sent, _ = await turn(conv, {"model": "gpt-5", "previous_response_id": first["id"], "input": "again"}, chat_answer("x"), provider=NATIVE)
        assert ex.native and "previous_response_id" not in sent and sent["model"] == "gpt-n"
        assert [i.get("role") for i in sent["input"]] == ["user", "assistant", "user"] and sent["input"][1] == first["output"][0]

    run(go())


def test_store_false_and_state_storage_off_store_nothing() -> None:
    async def go() -> None:
        conv = memory()
        _, _, first = await turn(conv, {"model": "gpt-t", "input": "hi", "store": False}, chat_answer("hello"))
        assert first is not None and first["store"] is False
        with pytest.raises(MalformedRequest, match="not found"):
            await turn(conv, {"model": "gpt-t", "previous_response_id": first["id"], "input": "again"}, chat_answer("x"))
        _, _, off = await turn(None, {"model": "gpt-t", "input": "hi"}, chat_answer("hello"))
        assert off is not None and off["store"] is False
        with pytest.raises(MalformedRequest, match="state_storage is off"):
            await turn(None, {"model": "gpt-t", "previous_response_id": off["id"], "input": "again"}, chat_answer("x"))

    run(go())


class Broken(MemoryStore):
    """A store that fails as Redis down does."""

    async def get(self, key: str) -> bytes | None:
        raise StoreFailed("ConnectionError")

    async def put(self, key: str, value: bytes, ttl_s: float) -> None:
        raise StoreFailed("ConnectionError")


def test_a_store_that_fails_is_a_503_for_a_reference_and_nothing_for_the_rest() -> None:
    async def go() -> None:
        errors: list[str] = []
        conv = Conversations(StateStorage(), SharedStore(), store=Broken(max_bytes=1 << 20), on_store_error=errors.append)
        _, sent, response = await turn(conv, {"model": "gpt-t", "input": "hi"}, chat_answer("hello"))  # not stored: still answered
        assert response is not None and response["output"][0]["content"][0]["text"] == "hello" and errors == ["ConnectionError"]
        with pytest.raises(StateUnavailable) as info:
            await turn(conv, {"model": "gpt-t", "previous_response_id": "resp_1", "input": "hi"}, chat_answer("x"))
        assert info.value.status == 503 and info.value.code == "state_storage_unavailable"

    run(go())


def test_two_workers_share_the_stored_responses_through_one_file(tmp_path: Path) -> None:
    async def go() -> None:
        one, two = (Conversations(StateStorage(), SharedStore(), store=FileStore(str(tmp_path / "state.sqlite"), max_bytes=1 << 20))
                    for _ in range(2))
        _, _, first = await turn(one, {"model": "gpt-t", "input": "My name is Ann."}, chat_answer("Hello Ann."))
        assert first is not None
        _, sent, _ = await turn(two, {"model": "gpt-t", "previous_response_id": first["id"], "input": "Name?"}, chat_answer("Ann."))
        assert [m["content"] for m in sent["messages"]] == ["My name is Ann.", "Hello Ann.", "Name?"]

    run(go())


def test_an_expired_or_corrupt_entry_is_as_if_never_stored() -> None:
    async def go() -> None:
        now = [0.0]
        store = MemoryStore(max_bytes=1 << 20, clock=lambda: now[0])
        conv = Conversations(StateStorage(ttl_s=60), SharedStore(), store=store)
        _, _, first = await turn(conv, {"model": "gpt-t", "input": "hi"}, chat_answer("hello"))
        assert first is not None
        assert (await conv.recall({"previous_response_id": first["id"], "input": "x"}))[1] is True
        now[0] = 61.0
        assert (await conv.recall({"previous_response_id": first["id"], "input": "x"}))[1] is False
        await store.put(f"{conv.prefix}resp:resp_bad", b"{not json", 60)
        assert (await conv.recall({"previous_response_id": "resp_bad", "input": "x"}))[1] is False

    run(go())


def test_state_storage_config() -> None:
    assert build_config(gateway_config([{"name": "p", "provider_interface": "openai", "endpoint": "http://127.0.0.1:9", "default": True}])
                        ).state_storage == StateStorage()
    off = build_config(gateway_config([{"name": "p", "provider_interface": "openai", "endpoint": "http://127.0.0.1:9", "default": True}],
                                      state_storage={"type": "none"}))
    assert off.state_storage is None
    pg = build_config(gateway_config([{"name": "p", "provider_interface": "openai", "endpoint": "http://127.0.0.1:9", "default": True}],
                                     state_storage={"type": "postgres", "connection_string": "postgresql://u@h/db", "ttl": "2h"}))
    assert pg.state_storage == StateStorage(ttl_s=7200.0)
    assert any(w.startswith("state_storage.type: postgres is not implemented") for w in pg.warnings)
