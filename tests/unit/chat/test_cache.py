"""The response cache (``response_cache``): keys, entries, the memory store and a real Redis, what
may be stored, and ChatProcessor's hit / miss / bypass with stores that fail."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import redis

from ext_proc.chat.cache import (
    SEMANTIC_ENTRIES,
    CacheEntry,
    Collector,
    MemoryStore,
    RedisStore,
    ResponseCacheService,
    StoreFailed,
    Turn,
    best_match,
    cache_key,
    compatible,
    context_key,
    decode_entry,
    decode_index,
    encode_entry,
    encode_index,
    wants_bypass,
)
from ext_proc.chat.completions import ChatProcessor, egress_router
from ext_proc.config import Config, ConfigError, ResponseCache, SharedStore
from ext_proc.control.model_repo import needed_models
from ext_proc.metrics import Metrics
from ext_proc.processor import Continue, Immediate
from testkit import free_port
from testkit.configs import cfg_from, raw_config
from testkit.redis_server import RedisServer

BODY: dict[str, Any] = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "temperature": 0.2}


def key(body: dict[str, Any] | None = None, **over: Any) -> str:
    args: dict[str, Any] = {"prefix": "sidegate:", "listener": "egress", "client_api": "openai", "provider": "openai",
                            "model": "gpt-4o-mini", "body": BODY if body is None else body}
    return cache_key(**{**args, **over})


# --------------------------------------------------------------------------- keys and entries


def test_the_key_ignores_key_order_and_what_does_not_change_the_answer() -> None:
    reordered = {"temperature": 0.2, "messages": [{"content": "hi", "role": "user"}], "model": "gpt-4o-mini"}
    assert key(reordered) == key()
    assert key({**BODY, "user": "u-1", "store": True}) == key()  # not part of the answer
    assert key({**BODY, "stream": False}) == key({**BODY, "stream": None}) == key()
    assert key().startswith("sidegate:rc:v1:") and len(key().rsplit(":", 1)[1]) == 64


@pytest.mark.parametrize("change", [
    {"body": {**BODY, "temperature": 0.3}},
    {"body": {**BODY, "seed": 7}},
    {"body": {**BODY, "max_tokens": 5}},
    {"body": {**BODY, "stream": True}},
    {"body": {**BODY, "stream": True, "stream_options": {"include_usage": True}}},
    {"body": {**BODY, "tools": [{"type": "function", "function": {"name": "f"}}]}},
    {"body": {**BODY, "messages": [{"role": "system", "content": "be brief"}, *BODY["messages"]]}},
    {"body": {**BODY, "messages": [{"role": "user", "content": "hi!"}]}},
    {"model": "gpt-4o"},
    {"provider": "groq"},
    {"client_api": "anthropic"},
    {"listener": "ingress"},
    {"prefix": "other-app:"},
])
def test_anything_that_changes_the_answer_changes_the_key(change: dict[str, Any]) -> None:
    assert key(**change) != key()


def test_entries_round_trip_and_anything_else_is_not_an_entry() -> None:
    entry = CacheEntry(body=b'{"x": 1}\n\nmore', content_type="application/json", provider="p")
    assert decode_entry(encode_entry(entry)) == entry
    good = encode_entry(entry)
    for raw in (b"", b"{}", b"not ours", good.replace(b"sidegate-rc/1", b"sidegate-rc/2"), good.replace(b'"v":1', b'"v":2'),
                good.split(b"\n", 1)[0] + b"\n{broken json\nbody", good.split(b"\n", 1)[0] + b'\n{"v":1,"ct":3,"provider":"p"}\nb',
                good.split(b"\n", 1)[0] + b"\n[1]\nb"):
        assert decode_entry(raw) is None, raw


@pytest.mark.parametrize(("headers", "bypass"), [
    ({}, False), ({"cache-control": "no-cache"}, True), ({"cache-control": "max-age=0, No-Store"}, True),
    ({"cache-control": "max-age=60"}, False), ({"pragma": "no-cache"}, True),
])
def test_the_client_bypasses_with_no_cache(headers: dict[str, str], bypass: bool) -> None:
    assert wants_bypass(headers) is bypass


# --------------------------------------------------------------------------- the memory store


async def test_memory_entries_expire_and_the_least_recently_used_go_first() -> None:
    now = [0.0]
    store = MemoryStore(max_bytes=300, clock=lambda: now[0])
    await store.put("a", b"x" * 90, ttl_s=10)
    await store.put("b", b"x" * 90, ttl_s=10)
    assert await store.get("a") == b"x" * 90  # a is now the most recently used
    await store.put("c", b"x" * 90, ttl_s=10)  # 3 x 91 bytes fit
    await store.put("d", b"x" * 90, ttl_s=10)  # b goes
    assert await store.get("b") is None
    assert {k for k in "acd" if await store.get(k)} == {"a", "c", "d"}
    assert store.size <= 300
    now[0] = 10.0
    assert await store.get("a") is None and len(store) == 2  # expired: dropped when read
    await store.put("huge", b"x" * 400, ttl_s=10)  # larger than the whole store: not kept, nothing evicted
    assert await store.get("huge") is None and len(store) == 2
    await store.put("c", b"y", ttl_s=10)  # overwritten in place
    assert await store.get("c") == b"y" and store.size == (1 + 1) + (1 + 90)


# --------------------------------------------------------------------------- a real Redis


@pytest.fixture(scope="module")
def server() -> Iterator[RedisServer]:
    with RedisServer() as r:
        yield r


async def test_redis_store_writes_with_the_ttl_under_the_prefix(server: RedisServer) -> None:
    shared = SharedStore(type="redis", url=server.url, prefix="app-a:")
    svc = ResponseCacheService(ResponseCache(ttl_s=30), shared)
    try:
        assert isinstance(svc.store, RedisStore)
        k = svc.key(listener="egress", client_api="openai", provider="p", model="m", body=BODY)
        assert (await svc.lookup(k, {})).result == "miss"
        entry = CacheEntry(body=b'{"choices": []}', content_type="application/json", provider="p")
        assert await svc.put(k, entry)
        found = await svc.lookup(k, {})
        assert found.result == "hit" and found.entry == entry
        client = redis.Redis.from_url(server.url)
        assert k.startswith("app-a:rc:v1:") and 29_000 < client.pttl(k) <= 30_000
        assert (await svc.lookup(k, {"cache-control": "no-cache"})).result == "bypass"
    finally:
        await svc.close()


async def test_a_corrupt_or_foreign_redis_entry_is_a_miss_and_is_overwritten(server: RedisServer) -> None:
    shared = SharedStore(type="redis", url=server.url, prefix="t-corrupt:")
    svc = ResponseCacheService(ResponseCache(), shared)
    client = redis.Redis.from_url(server.url)
    try:
        k = svc.key(listener="egress", client_api="openai", provider="p", model="m", body=BODY)
        for foreign in (b"\xff\x00garbage", json.dumps({"v": 0, "body": "old"}).encode(), b"sidegate-rc/1\n{\"v\":9}\nx"):
            client.set(k, foreign)
            assert (await svc.lookup(k, {})).result == "miss"
        entry = CacheEntry(body=b"{}", content_type="application/json", provider="p")
        assert await svc.put(k, entry)
        assert (await svc.lookup(k, {})).entry == entry
        client.delete(k)
        client.hset(k, mapping={"a": "b"})  # another app's hash under the same key: WRONGTYPE
        errors: list[str] = []
        svc2 = ResponseCacheService(ResponseCache(), shared, on_store_error=errors.append)
        assert (await svc2.lookup(k, {})).result == "bypass" and errors == ["ResponseError"]
        await svc2.close()
    finally:
        client.delete(k)
        await svc.close()


async def test_apps_sharing_one_redis_keep_to_their_prefix(server: RedisServer) -> None:
    """Two sidegate deployments (prefixes app-a:, app-b:) and another app's keys on one Redis."""
    client = redis.Redis.from_url(server.url)
    client.set("app-b-data:rc:v1:x", b"another app's value")  # a near name, outside both prefixes
    a = ResponseCacheService(ResponseCache(), SharedStore(type="redis", url=server.url, prefix="app-a:"))
    b = ResponseCacheService(ResponseCache(), SharedStore(type="redis", url=server.url, prefix="app-b:"))
    try:
        where: dict[str, Any] = {"listener": "egress", "client_api": "openai", "provider": "p", "model": "m", "body": BODY}
        ka, kb = a.key(**where), b.key(**where)
        assert await a.put(ka, CacheEntry(body=b'{"from": "a"}', content_type="application/json", provider="p"))
        assert (await b.lookup(kb, {})).result == "miss"  # the same request, another deployment: not its answer
        assert await b.put(kb, CacheEntry(body=b'{"from": "b"}', content_type="application/json", provider="p"))
        found_a, found_b = await a.lookup(ka, {}), await b.lookup(kb, {})
        assert found_a.entry is not None and found_a.entry.body == b'{"from": "a"}'
        assert found_b.entry is not None and found_b.entry.body == b'{"from": "b"}'
        assert client.get("app-b-data:rc:v1:x") == b"another app's value"
        assert {k.decode().split(":", 1)[0] for k in client.keys("app-*")} == {"app-a", "app-b", "app-b-data"}
    finally:
        client.delete(*client.keys("app-*"))
        await a.close()
        await b.close()


async def test_a_real_redis_answering_slowly_is_a_bounded_bypass(server: RedisServer) -> None:
    """CLIENT PAUSE: Redis takes connections and commands and answers after 2 s; the cache gives up at
    shared_store.timeout (100 ms), the request goes on, and lookups work again once Redis answers."""
    errors: list[str] = []
    svc = ResponseCacheService(ResponseCache(), SharedStore(type="redis", url=server.url, prefix="t-slow:", timeout_s=0.1),
                               on_store_error=errors.append)
    client = redis.Redis.from_url(server.url)
    try:
        k = svc.key(listener="egress", client_api="openai", provider="p", model="m", body=BODY)
        assert await svc.put(k, CacheEntry(body=b"{}", content_type="application/json", provider="p"))
        client.client_pause(2000)
        loop = asyncio.get_running_loop()
        start = loop.time()
        found = await svc.lookup(k, {})
        assert found.result == "bypass" and found.reason == "store_error" and errors == ["TimeoutError"]
        assert loop.time() - start < 1.0  # bounded by the timeout (100 ms), not by Redis (2 s)
        client.client_unpause()
        for _ in range(20):  # the client opens a new connection on its next call
            if (await svc.lookup(k, {})).result == "hit":
                break
            await asyncio.sleep(0.05)
        else:
            pytest.fail("no hit after Redis answered again")
    finally:
        client.client_unpause()
        client.delete(*client.keys("t-slow:*"))
        await svc.close()


async def test_redis_down_or_slow_is_a_bypass_counted_never_an_error() -> None:
    silent = socket.socket()  # accepts connections and never answers: a Redis that hangs
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    try:
        for url in (f"redis://127.0.0.1:{free_port()}/0", f"redis://127.0.0.1:{silent.getsockname()[1]}/0"):
            errors: list[str] = []
            svc = ResponseCacheService(ResponseCache(), SharedStore(type="redis", url=url, timeout_s=0.1), on_store_error=errors.append)
            try:
                loop = asyncio.get_running_loop()
                start = loop.time()
                found = await svc.lookup("sidegate:rc:v1:x", {})
                assert found.result == "bypass" and found.reason == "store_error"
                assert not await svc.put("sidegate:rc:v1:x", CacheEntry(body=b"{}", content_type="application/json", provider="p"))
                assert loop.time() - start < 1.0  # bounded by shared_store.timeout, not a hang
                assert len(errors) == 2 and all(e in ("ConnectionError", "TimeoutError") for e in errors), errors
            finally:
                await svc.close()
    finally:
        silent.close()


async def test_the_store_raises_store_failed_itself() -> None:
    store = RedisStore(SharedStore(type="redis", url=f"redis://127.0.0.1:{free_port()}/0", timeout_s=0.1))
    try:
        with pytest.raises(StoreFailed):
            await store.get("k")
    finally:
        await store.close()


# --------------------------------------------------------------------------- what may be stored


def chat_json(**message: Any) -> bytes:
    return json.dumps({"id": "c", "object": "chat.completion", "choices": [
        {"index": 0, "message": {"role": "assistant", "content": "ok", **message}, "finish_reason": "stop"}]}).encode()


def sse(*events: Any, done: bool = True) -> bytes:
    out = b"".join(b"data: " + json.dumps(e).encode() + b"\n\n" for e in events)
    return out + (b"data: [DONE]\n\n" if done else b"")


CHUNK = {"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": "ok"}, "finish_reason": None}]}
TOOL_CHUNK = {"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"name": "f"}}]}}]}


def collected(body: bytes, *, streaming: bool, api: str = "openai", max_bytes: int = 1 << 20, pieces: int = 3) -> tuple[bytes | None, str]:
    c = Collector(client_api=api, streaming=streaming, max_bytes=max_bytes)
    step = max(1, len(body) // pieces)
    for i in range(0, len(body), step):
        c.feed(body[i:i + step])
    return c.finish(), c.refused


@pytest.mark.parametrize(("body", "streaming", "api", "refused"), [
    (chat_json(), False, "openai", ""),
    (chat_json(tool_calls=None), False, "openai", ""),
    (chat_json(tool_calls=[{"id": "t", "type": "function", "function": {"name": "f", "arguments": "{}"}}]), False, "openai", "tool_calls"),
    (json.dumps({"error": {"message": "x"}}).encode(), False, "openai", "error"),
    (b"<html>", False, "openai", "not_json"),
    (sse(CHUNK), True, "openai", ""),
    (sse(CHUNK, done=False), True, "openai", "incomplete"),  # ended early
    (sse(CHUNK, TOOL_CHUNK), True, "openai", "tool_calls"),
    (sse(CHUNK, {"error": {"message": "overloaded"}}), True, "openai", "error"),
    (json.dumps({"type": "message", "content": [{"type": "text", "text": "ok"}], "stop_reason": "end_turn"}).encode(), False, "anthropic", ""),
    (json.dumps({"type": "message", "content": [{"type": "tool_use", "id": "t", "name": "f", "input": {}}],
                 "stop_reason": "tool_use"}).encode(), False, "anthropic", "tool_calls"),
    (b"event: message_start\ndata: {\"type\": \"message_start\"}\n\nevent: message_stop\ndata: {\"type\": \"message_stop\"}\n\n",
     True, "anthropic", ""),
    (b"event: message_start\ndata: {\"type\": \"message_start\"}\n\n", True, "anthropic", "incomplete"),
    (b"event: message_start\ndata: {}\n\nevent: error\ndata: {\"type\": \"error\"}\n\n", True, "anthropic", "error"),
    (b"event: content_block_start\ndata: {\"type\": \"content_block_start\", \"content_block\": {\"type\": \"tool_use\"}}\n\n"
     b"event: message_stop\ndata: {\"type\": \"message_stop\"}\n\n", True, "anthropic", "tool_calls"),
])
def test_what_may_be_stored(body: bytes, streaming: bool, api: str, refused: str) -> None:
    out, why = collected(body, streaming=streaming, api=api)
    assert why == refused
    assert out == (body if not refused else None)


def test_an_answer_over_the_bound_is_dropped_as_it_comes() -> None:
    c = Collector(client_api="openai", streaming=True, max_bytes=1000)
    c.feed(b"x" * 600)
    c.feed(b"x" * 600)
    assert c.refused == "too_large" and c._parts == []  # nothing held any more
    c.feed(b"x" * 600)
    assert c._parts == [] and c.finish() is None


def test_a_stream_is_decided_at_its_last_event_before_the_connection_ends() -> None:
    """A client SDK stops reading at [DONE] / message_stop, so an identical request can follow before
    the HTTP stream's end reaches the gateway: the answer is whole (storable) at that event."""
    c = Collector(client_api="openai", streaming=True, max_bytes=1 << 20)
    c.feed(sse(CHUNK, done=False))
    assert not c.ended()
    c.feed(sse({"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": "say data: [DONE] twice"}}]}, done=False))
    assert not c.ended()  # "[DONE]" inside a delta is no last event
    c.feed(b"data: [DONE]\n\n")
    assert c.ended() and c.finish() is not None
    anthropic = Collector(client_api="anthropic", streaming=True, max_bytes=1 << 20)
    anthropic.feed(b"event: message_start\ndata: {\"type\": \"message_start\"}\n\n")
    assert not anthropic.ended()
    anthropic.feed(b"event: message_stop\ndata: {\"type\": \"message_stop\"}\n\n")
    assert anthropic.ended()
    tools = Collector(client_api="openai", streaming=True, max_bytes=1 << 20)
    tools.feed(sse(TOOL_CHUNK))
    assert tools.ended() and tools.finish() is None and tools.refused == "tool_calls"  # decided: not stored
    big = Collector(client_api="openai", streaming=True, max_bytes=10)
    big.feed(b"data: " + b"x" * 20)
    assert big.ended() and big.refused == "too_large"


# --------------------------------------------------------------------------- config


def test_config_reads_response_cache_and_warns_about_similarity() -> None:
    assert cfg_from().response_cache is None
    cfg = cfg_from(raw_config(response_cache={"ttl": "90s"}))
    assert cfg.response_cache == ResponseCache(ttl_s=90.0)
    assert not [w for w in cfg.warnings if "response_cache" in w]
    cfg = cfg_from(raw_config(response_cache={"ttl": "600s", "similarity": 0.97}))
    assert cfg.response_cache is not None and cfg.response_cache.similarity == 0.97
    assert not [w for w in cfg.warnings if w.startswith("response_cache")]  # no guard, no targets: prompt_embed loaded for it
    assert needed_models(cfg) == ["prompt_embed"]
    off = cfg_from(raw_config(response_cache={"similarity": 0.97}, model_server={"mode": "none"}))
    assert any(w.startswith("response_cache.similarity") and "mode: none" in w for w in off.warnings)
    guarded = cfg_from(raw_config(response_cache={"similarity": 0.97},
                                  prompt_guards={"input_guards": {"jailbreak": {"on_exception": {"message": "no"}}}}))
    assert not [w for w in guarded.warnings if w.startswith("response_cache")]
    with pytest.raises(ConfigError, match="response_cache"):
        cfg_from(raw_config(response_cache={"ttl": "forever"}))
    with pytest.raises(ConfigError, match="response_cache"):
        cfg_from(raw_config(response_cache={"similarity": 1.5}))


# --------------------------------------------------------------------------- ChatProcessor


class FailingStore:
    async def get(self, key: str) -> bytes | None:
        raise StoreFailed("ConnectionError")

    async def put(self, key: str, value: bytes, ttl_s: float) -> None:
        raise StoreFailed("ConnectionError")

    async def close(self) -> None:
        return None


def with_cache(**over: Any) -> Config:
    providers = [*raw_config()["llm_providers"],
                 {"name": "claude", "provider_interface": "anthropic", "access_key": "sk-ant", "model": "claude-x"}]
    return cfg_from(raw_config(response_cache={"ttl": "60s", **over}, llm_providers=providers))


class Flow:
    """One ext_proc process's cache and metrics; :meth:`call` runs one request through a fresh ChatProcessor."""

    def __init__(self, cfg: Config, store: Any = None) -> None:
        assert cfg.response_cache is not None
        self.cfg = cfg
        self.metrics = Metrics()
        self.cache = ResponseCacheService(cfg.response_cache, cfg.shared_store, store=store)

    async def call(self, body: dict[str, Any], answer: list[bytes], *, status: str = "200", headers: dict[str, str] | None = None,
                   path: str = "/v1/chat/completions", api: str = "openai") -> tuple[Immediate | None, dict[str, str], bytes]:
        proc = ChatProcessor(cfg=self.cfg, listener="egress", router=egress_router, metrics=self.metrics,
                             log=logging.LoggerAdapter(logging.getLogger("t")), cache=self.cache, api=api)
        await proc.request_headers({":method": "POST", ":path": path, **(headers or {})}, False)
        reply = await proc.request_body(json.dumps(body).encode(), True)
        if isinstance(reply, Immediate):
            proc.finish()
            return reply, reply.headers, reply.body
        streaming = bool(body.get("stream"))
        ctype = "text/event-stream" if streaming else "application/json"
        head = await proc.response_headers({":status": status, "content-type": ctype}, False)
        assert isinstance(head, Continue)
        out = b""
        for i, chunk in enumerate(answer):
            r = await proc.response_body(chunk, i == len(answer) - 1)
            assert isinstance(r, Continue)
            out += r.body if r.body is not None else chunk
        proc.finish()
        return None, head.set_headers, out

    def count(self, result: str) -> float:
        return self.metrics.cache_lookups.labels("egress", result)._value.get()


REQ = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello"}]}


async def test_a_json_answer_is_stored_and_replayed() -> None:
    flow = Flow(with_cache())
    answer = chat_json()
    first, headers, out = await flow.call(REQ, [answer])
    assert first is None and headers["x-sidegate-cache"] == "miss" and out == answer
    hit, headers, out = await flow.call({**REQ, "user": "someone"}, [b"never sent"])
    assert hit is not None and hit.status == 200 and out == answer
    assert headers == {"content-type": "application/json", "x-sidegate-cache": "hit", "x-sidegate-provider": "openai"}
    assert (flow.count("miss"), flow.count("hit")) == (1, 1)
    assert flow.metrics.cache_stored_bytes.labels("egress")._value.get() == len(answer)
    other, headers, _ = await flow.call({**REQ, "temperature": 1.0}, [answer])
    assert other is None and headers["x-sidegate-cache"] == "miss"


async def test_an_sse_answer_is_stored_whole_and_replayed_as_one_body() -> None:
    flow = Flow(with_cache())
    stream = sse(CHUNK, CHUNK)
    req = {**REQ, "stream": True}
    _, _, out = await flow.call(req, [stream[:20], stream[20:60], stream[60:], b""])
    assert out == stream
    hit, headers, body = await flow.call(req, [])
    assert hit is not None and body == stream and headers["content-type"] == "text/event-stream"
    json_req, headers, _ = await flow.call(REQ, [chat_json()])  # the same request without stream is another entry
    assert json_req is None and headers["x-sidegate-cache"] == "miss"


async def test_translated_answers_are_stored_as_the_client_saw_them() -> None:
    flow = Flow(with_cache())
    message = json.dumps({"id": "msg_1", "type": "message", "role": "assistant", "model": "claude-x",
                          "content": [{"type": "text", "text": "bonjour"}], "stop_reason": "end_turn",
                          "usage": {"input_tokens": 3, "output_tokens": 1}}).encode()
    req = {**REQ, "model": "claude-x"}
    _, headers, out = await flow.call(req, [message])
    assert headers["x-sidegate-cache"] == "miss" and json.loads(out)["choices"][0]["message"]["content"] == "bonjour"
    hit, _, body = await flow.call(req, [])
    assert hit is not None and body == out  # the chat-completions shape, not Anthropic's


@pytest.mark.parametrize(("status", "answer", "reason"), [
    ("500", [json.dumps({"error": {"message": "boom"}}).encode()], "status"),
    ("200", [chat_json(tool_calls=[{"id": "t", "type": "function", "function": {"name": "f", "arguments": "{}"}}])], "tool_calls"),
    ("200", [chat_json(content="x" * 2000)], "too_large"),
])
async def test_errors_tool_calls_and_large_answers_are_not_stored(status: str, answer: list[bytes], reason: str) -> None:
    flow = Flow(with_cache(max_entry_bytes=1000))
    for _ in range(2):
        hit, headers, _ = await flow.call(REQ, answer, status=status)
        assert hit is None and headers["x-sidegate-cache"] == "miss"
    assert flow.metrics.cache_not_stored.labels(reason)._value.get() == 2


async def test_a_100_mb_json_answer_goes_through_unchanged_and_is_not_stored() -> None:
    """Envoy hands a buffered JSON answer over whole (a listener's max_body_bytes raised to allow it)."""
    flow = Flow(with_cache())  # max_entry_bytes: the default 1 MiB
    huge = chat_json(content="y" * (100 * 1024 * 1024))
    for _ in range(2):
        hit, headers, out = await flow.call(REQ, [huge])
        assert hit is None and headers["x-sidegate-cache"] == "miss" and out == huge
    assert flow.metrics.cache_not_stored.labels("too_large")._value.get() == 2
    assert isinstance(flow.cache.store, MemoryStore) and len(flow.cache.store) == 0


@pytest.mark.parametrize(("path", "model", "size_over_limit", "mode"), [
    ("/v1/chat/completions", "gpt-4o-mini", 1, "NONE"),  # more than Envoy may buffer: through, unread, not stored
    ("/v1/chat/completions", "gpt-4o-mini", 0, "BUFFERED"),
    ("/v1/messages", "gpt-4o-mini", 1, "BUFFERED"),  # translated into the client's API: it has to be read
])
async def test_a_json_answer_over_the_listeners_body_limit_passes_through(path: str, model: str, size_over_limit: int, mode: str) -> None:
    cfg = with_cache()
    flow = Flow(cfg)
    proc = ChatProcessor(cfg=cfg, listener="egress", router=egress_router, metrics=flow.metrics,
                         log=logging.LoggerAdapter(logging.getLogger("t")), cache=flow.cache,
                         api="anthropic" if path == "/v1/messages" else "openai")
    await proc.request_headers({":method": "POST", ":path": path}, False)
    body = {"model": model, "max_tokens": 10, "messages": [{"role": "user", "content": "everything"}]}
    assert isinstance(await proc.request_body(json.dumps(body).encode(), True), Continue)
    size = cfg.egress.max_body_bytes + size_over_limit
    head = await proc.response_headers({":status": "200", "content-type": "application/json", "content-length": str(size)}, False)
    assert isinstance(head, Continue) and head.response_body_mode == mode and head.set_headers["x-sidegate-cache"] == "miss"
    assert flow.metrics.cache_not_stored.labels("too_large")._value.get() == (1 if mode == "NONE" else 0)
    proc.finish()


async def test_no_cache_neither_reads_nor_writes() -> None:
    flow = Flow(with_cache())
    _, headers, _ = await flow.call(REQ, [chat_json()], headers={"cache-control": "no-cache"})
    assert headers["x-sidegate-cache"] == "bypass"
    _, headers, _ = await flow.call(REQ, [chat_json()])
    assert headers["x-sidegate-cache"] == "miss"  # the bypassed answer was not written
    hit, _, _ = await flow.call(REQ, [], headers={"cache-control": "no-cache"})
    assert hit is None  # nor read
    assert flow.metrics.cache_bypasses.labels("no_cache")._value.get() == 2


async def test_a_failing_store_is_a_bypass_and_the_request_goes_on() -> None:
    flow = Flow(with_cache(), store=FailingStore())
    for _ in range(2):
        hit, headers, out = await flow.call(REQ, [chat_json()])
        assert hit is None and headers["x-sidegate-cache"] == "bypass" and out == chat_json()
    assert flow.metrics.cache_bypasses.labels("store_error")._value.get() == 2


async def test_sidegates_own_answers_say_bypass_and_no_cache_config_sets_no_header() -> None:
    flow = Flow(with_cache())
    err, headers, _ = await flow.call({"model": "gpt-4o-mini"}, [])
    assert err is not None and err.status == 400 and headers["x-sidegate-cache"] == "bypass"
    proc = ChatProcessor(cfg=cfg_from(), listener="egress", router=egress_router, metrics=Metrics(),
                         log=logging.LoggerAdapter(logging.getLogger("t")))
    await proc.request_headers({":method": "POST", ":path": "/v1/chat/completions"}, False)
    await proc.request_body(json.dumps(REQ).encode(), True)
    head = await proc.response_headers({":status": "200", "content-type": "application/json"}, False)
    assert isinstance(head, Continue) and "x-sidegate-cache" not in head.set_headers


# --------------------------------------------------------------------------- semantic matching (similarity)


class FakeEmbedder:
    """Models.embed over a fixed table of unit vectors (64 dimensions, the table's first 4); any other
    text gets a random direction of its own (far from every other: cosine about ±0.1)."""

    def __init__(self, table: dict[str, list[float]], *, fail: bool = False) -> None:
        self.table = {k: self._unit(np.pad(np.asarray(v, dtype=np.float32), (0, 60))) for k, v in table.items()}
        self.fail = fail
        self.calls: list[str] = []

    @staticmethod
    def _unit(v: Any) -> Any:
        return (v / np.linalg.norm(v)).astype(np.float32)

    def vector(self, text: str) -> Any:
        if text in self.table:
            return self.table[text]
        seed = int.from_bytes(text.encode()[:16].ljust(16, b"\0"), "big") ^ len(text)
        return self._unit(np.random.default_rng(seed).normal(size=64))

    async def embed(self, texts: list[str]) -> Any:
        self.calls += texts
        if self.fail:
            raise ConnectionError("model server down")
        return np.stack([self.vector(t) for t in texts])


PARIS = [1.0, 0.0, 0.0, 0.0]
TABLE = {"what is the capital of France?": PARIS, "what's the capital city of France?": [0.99, 0.1, 0.0, 0.0],  # cosine 0.995
         "what is the capital of Spain?": [0.9, 0.43, 0.0, 0.0]}  # cosine 0.90


def semantic_flow(embedder: FakeEmbedder, similarity: float = 0.97, store: Any = None) -> Flow:
    flow = Flow(with_cache(similarity=similarity), store=store)
    flow.cache.models = embedder  # type: ignore[assignment]
    return flow


def turn(text: str, system: str = "be brief", **extra: Any) -> dict[str, Any]:
    return {"model": "gpt-4o-mini", "messages": [{"role": "system", "content": system}, {"role": "user", "content": text}], **extra}


def test_the_context_key_leaves_out_only_the_last_user_turn() -> None:
    def ctx(body: dict[str, Any]) -> Any:
        return context_key(prefix="p:", listener="egress", client_api="openai", provider="openai", model="m", body=body)

    a, b = ctx(turn("one")), ctx(turn("two"))
    assert a is not None and b is not None and a[0] == b[0] and a[0].startswith("p:rc:v1:sem:") and (a[1], b[1]) == ("one", "two")
    assert ctx(turn("one", system="be long"))[0] != a[0]
    assert ctx(turn("one", temperature=1.0))[0] != a[0]
    assert ctx({"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]}) is None
    assert ctx({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "u"}}, {"type": "text", "text": "x"}]}]}) is None
    assert ctx({"messages": [{"role": "user", "content": "  "}]}) is None


def test_the_semantic_index_round_trips_and_ignores_foreign_values() -> None:
    v = np.asarray([0.6, 0.8], dtype=np.float32)
    turns = decode_index(encode_index([Turn(key="k1", text="où est la gare ?", vec=v), Turn(key="k2", text="b", vec=-v)]))
    assert [(t.key, t.text) for t in turns] == [("k1", "où est la gare ?"), ("k2", "b")] and np.allclose(turns[0].vec, v)
    assert best_match(turns, "où est la gare", v, 0.97) == ("k1", pytest.approx(1.0))
    assert best_match(turns, "où est la gare", np.asarray([0.8, 0.6], dtype=np.float32), 0.97) is None  # cosine 0.96
    assert best_match(turns, "la gare est où", v, 0.97) is None  # close, but the words in another order
    for raw in (None, b"", b"garbage", b"sidegate-rcsem/1\n{not json", b'sidegate-rcsem/1\n[{"k": 1, "t": "", "e": "00"}]',
                b'sidegate-rcsem/1\n[{"k": "a", "t": "", "e": "zz"}]', b'sidegate-rcsem/1\n[{"k": "a", "e": "0000803f"}]'):
        assert decode_index(raw) == [], raw


@pytest.mark.parametrize(("a", "b", "ok"), [
    ("What is the capital of France?", "What's the capital city of France?", True),
    ("How many calories are in a banana?", "How many calories does a banana have?", True),
    ("Convert 10 miles to kilometers", "Convert 10 kilometers to miles", False),  # MiniLM: cosine 0.992
    ("Convert 10 miles to kilometers", "Convert 12 miles to kilometers", False),
    ("Is 17 prime?", "is 17 prime", True),
    # one word in place of another (MiniLM: 0.95-0.99), unless a spelling of the same word or an auxiliary
    ("Is the museum open on Mondays?", "Is the museum closed on Mondays?", False),
    ("Is aspirin safe with coffee?", "Is aspirin unsafe with coffee?", False),
    ("Which rooms include breakfast?", "Which rooms don't include breakfast?", False),  # a negation more
    ("Which rooms can be booked?", "Which rooms cannot be booked?", False),
    ("Wake me at 6am", "Wake me at 6pm", False),  # tokens with digits compare whole
    ("How do I get a refund for a late bus?", "How do I get refunds for a late bus?", True),
    ("What is the diffrence between a loan and a mortgage?", "What is the difference between a loan and a mortgage?", True),
    ("How do I cancel my order?", "How can I cancel my order?", True),
    ("How do I cancel my order?", "How do I track my order?", False),
    # a phrase moved: the same question; two single words swapped: not
    ("Where can I park near the station?", "Near the station, where can I park?", True),
    ("flights from Oslo to Rome", "flights to Rome from Oslo", True),
    ("flights from Oslo to Rome", "flights from Rome to Oslo", False),
    ("hi, how do I reset my router?", "how do I reset my router please", True),  # words added around
])
def test_compatible_turns(a: str, b: str, ok: bool) -> None:
    assert compatible(a, b) is ok


async def test_a_paraphrase_in_the_same_context_is_a_semantic_hit() -> None:
    flow = semantic_flow(FakeEmbedder(TABLE))
    answer = chat_json(content="Paris")
    _, headers, _ = await flow.call(turn("what is the capital of France?"), [answer])
    assert headers["x-sidegate-cache"] == "miss"
    hit, headers, body = await flow.call(turn("what's the capital city of France?"), [b"never sent"])
    assert hit is not None and headers["x-sidegate-cache"] == "hit" and body == answer
    assert flow.count("semantic_hit") == 1


@pytest.mark.parametrize("second", [
    turn("what is the capital of Spain?"),  # too far (0.90 < 0.97)
    turn("what's the capital city of France?", system="answer in German"),  # another system prompt
    turn("what's the capital city of France?", temperature=1.0),  # other parameters
    {"model": "gpt-4o-mini", "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"},
                                          {"role": "assistant", "content": "hello"}, {"role": "user", "content": "what's the capital city of France?"}]},
])
async def test_no_semantic_hit_outside_the_threshold_or_the_context(second: dict[str, Any]) -> None:
    flow = semantic_flow(FakeEmbedder(TABLE))
    await flow.call(turn("what is the capital of France?"), [chat_json(content="Paris")])
    hit, headers, _ = await flow.call(second, [chat_json(content="other")])
    assert hit is None and headers["x-sidegate-cache"] == "miss"


async def test_a_failing_embedder_leaves_exact_matching_working() -> None:
    embedder = FakeEmbedder(TABLE, fail=True)
    flow = semantic_flow(embedder)
    await flow.call(turn("what is the capital of France?"), [chat_json(content="Paris")])
    hit, _, _ = await flow.call(turn("what is the capital of France?"), [])
    assert hit is not None  # exact
    hit, headers, _ = await flow.call(turn("what's the capital city of France?"), [chat_json()])
    assert hit is None and headers["x-sidegate-cache"] == "miss" and len(embedder.calls) == 1
    await flow.call(turn("another question"), [chat_json()])
    assert len(embedder.calls) == 1  # backing off: no embedding (and no added latency) for a while


async def test_semantic_entries_in_redis_are_shared_and_bounded(server: RedisServer) -> None:
    shared = SharedStore(type="redis", url=server.url)
    store_a, store_b = RedisStore(shared), RedisStore(shared)
    try:
        a, b = semantic_flow(FakeEmbedder(TABLE), store=store_a), semantic_flow(FakeEmbedder(TABLE), store=store_b)
        await a.call(turn("what is the capital of France?"), [chat_json(content="Paris")])
        hit, _, body = await b.call(turn("what's the capital city of France?"), [])  # another process, the same Redis
        assert hit is not None and json.loads(body)["choices"][0]["message"]["content"] == "Paris"
        for i in range(SEMANTIC_ENTRIES + 5):
            await a.call(turn(f"question {i}"), [chat_json()])
        client = redis.Redis.from_url(server.url)
        (ctx,) = client.keys("sidegate:rc:v1:sem:*")  # the config's shared_store.prefix
        assert len(decode_index(client.get(ctx))) == SEMANTIC_ENTRIES and client.pttl(ctx) > 0
    finally:
        await store_a.close()
        await store_b.close()
