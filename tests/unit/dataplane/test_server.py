"""The ext_proc state machine over real gRPC (no Envoy): what Envoy would receive for each message."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import grpc
import pytest
from envoy.config.core.v3 import base_pb2
from envoy.extensions.filters.http.ext_proc.v3 import processing_mode_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc

from ext_proc.config import build_config, ext_proc_message_bytes
from ext_proc.dataplane.routes import Services
from ext_proc.dataplane.server import create_server, grpc_options
from ext_proc.metrics import Metrics
from testkit import free_port, gateway_config

PROVIDERS = [
    {"name": "alpha", "provider_interface": "openai", "endpoint": "http://127.0.0.1:1/v1", "model": "model-a", "default": True},
    {"name": "beta", "provider_interface": "openai", "endpoint": "http://127.0.0.1:2/v1", "model": "model-b"},
]


def headers_msg(path: str = "/v1/chat/completions", method: str = "POST", eos: bool = False, **extra: str) -> pb.ProcessingRequest:
    hs = {":path": path, ":method": method, "x-request-id": "req-1", **{k.replace("_", "-"): v for k, v in extra.items()}}
    return pb.ProcessingRequest(
        request_headers=pb.HttpHeaders(
            headers=base_pb2.HeaderMap(headers=[base_pb2.HeaderValue(key=k, raw_value=v.encode()) for k, v in hs.items()]),
            end_of_stream=eos,
        )
    )


def body_msg(body: bytes) -> pb.ProcessingRequest:
    return pb.ProcessingRequest(request_body=pb.HttpBody(body=body, end_of_stream=True))


def resp_headers_msg(content_type: str, status: str = "200", eos: bool = False) -> pb.ProcessingRequest:
    hs = {":status": status, "content-type": content_type}
    return pb.ProcessingRequest(
        response_headers=pb.HttpHeaders(
            headers=base_pb2.HeaderMap(headers=[base_pb2.HeaderValue(key=k, raw_value=v.encode()) for k, v in hs.items()]),
            end_of_stream=eos,
        )
    )


def set_headers(common: pb.CommonResponse) -> dict[str, str]:
    return {h.header.key: h.header.raw_value.decode() for h in common.header_mutation.set_headers}


@pytest.fixture
async def stub() -> AsyncIterator[tuple[pb_grpc.ExternalProcessorStub, Metrics]]:
    cfg = build_config(gateway_config(PROVIDERS), env={})
    metrics = Metrics()
    services = Services.create(cfg, metrics=metrics)
    server, port = await create_server(services, "127.0.0.1:0")
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    yield pb_grpc.ExternalProcessorStub(channel), metrics
    await channel.close()
    await server.stop(0)
    await services.close()


async def exchange(stub: pb_grpc.ExternalProcessorStub, listener: str, *msgs: pb.ProcessingRequest) -> list[pb.ProcessingResponse]:
    call = stub.Process(iter(msgs), metadata=(("x-sidegate-listener", listener),))
    return [r async for r in call]


def error_of(resp: pb.ProcessingResponse) -> tuple[int, dict]:  # type: ignore[type-arg]
    assert resp.WhichOneof("response") == "immediate_response", resp
    imm = resp.immediate_response
    return imm.status.code, json.loads(imm.body)


async def test_egress_routes_to_default_provider_and_rewrites_model(stub) -> None:
    s, _ = stub
    body = json.dumps({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}).encode()
    r_headers, r_body = await exchange(s, "egress", headers_msg(), body_msg(body))
    assert r_headers.WhichOneof("response") == "request_headers"
    common = r_body.request_body.response
    assert set_headers(common)["x-sidegate-upstream"] == "provider_alpha"
    assert common.clear_route_cache
    assert json.loads(common.body_mutation.body)["model"] == "model-a"


async def test_egress_picks_provider_by_model_and_leaves_body_alone(stub) -> None:
    s, _ = stub
    body = json.dumps({"model": "model-b", "messages": [{"role": "user", "content": "hi"}]}).encode()
    _, r_body = await exchange(s, "egress", headers_msg(), body_msg(body))
    common = r_body.request_body.response
    assert set_headers(common)["x-sidegate-upstream"] == "provider_beta"
    assert not common.HasField("body_mutation")


async def test_egress_hint_header_wins(stub) -> None:
    s, _ = stub
    body = json.dumps({"model": "model-a", "messages": [{"role": "user", "content": "hi"}]}).encode()
    _, r_body = await exchange(s, "egress", headers_msg(x_arch_llm_provider_hint="beta"), body_msg(body))
    assert set_headers(r_body.request_body.response)["x-sidegate-upstream"] == "provider_beta"


@pytest.mark.parametrize(
    ("body", "code", "needle"),
    [
        (b"{not json", "invalid_json", "not valid JSON"),
        (b"[1, 2]", "invalid_body", "JSON object"),
        (json.dumps({"model": "m"}).encode(), "missing_required_parameter", "messages"),
        (json.dumps({"messages": "hi"}).encode(), "invalid_type", "messages"),
        (json.dumps({"messages": [{"role": 3, "content": "x"}]}).encode(), "invalid_type", "role"),
        (json.dumps({"messages": [{"role": "user", "content": 5}]}).encode(), "invalid_type", "content"),
        (json.dumps({"messages": [{"role": "user", "content": "x"}], "stream": "yes"}).encode(), "invalid_type", "stream"),
        (b"\xff\xfe\x00garbage", "invalid_json", "not valid JSON"),
    ],
)
async def test_malformed_bodies_get_400_openai_errors(stub, body: bytes, code: str, needle: str) -> None:
    s, metrics = stub
    _, r_body = await exchange(s, "egress", headers_msg(), body_msg(body))
    status, err = error_of(r_body)
    assert status == 400
    assert err["error"]["type"] == "invalid_request_error"
    assert err["error"]["code"] == code
    assert needle in err["error"]["message"]
    assert metrics.errors.labels("egress", code)._value.get() == 1


async def test_unknown_provider_hint_is_400_listing_known_ones(stub) -> None:
    s, _ = stub
    body = json.dumps({"messages": [{"role": "user", "content": "hi"}]}).encode()
    _, r_body = await exchange(s, "egress", headers_msg(x_arch_llm_provider_hint="nope"), body_msg(body))
    status, err = error_of(r_body)
    assert status == 400 and err["error"]["code"] == "unknown_provider"
    assert "alpha" in err["error"]["message"] and "beta" in err["error"]["message"]


async def test_unknown_path_is_404_and_get_is_405_and_empty_body_is_400(stub) -> None:
    s, _ = stub
    (r,) = await exchange(s, "egress", headers_msg(path="/v1/audio/speech?x=1"))
    assert error_of(r)[0] == 404
    # an anthropic SDK's path gets Anthropic's error shape
    (r,) = await exchange(s, "egress", headers_msg(path="/v1/messages/batches"))
    status, err = error_of(r)
    assert status == 404 and err["type"] == "error" and err["error"]["type"] == "not_found_error"
    assert "'/v1/messages/batches'" in err["error"]["message"]
    (r,) = await exchange(s, "ingress", headers_msg(method="GET", eos=True))
    assert error_of(r)[0] == 405
    (r,) = await exchange(s, "egress", headers_msg(eos=True))
    status, err = error_of(r)
    assert status == 400 and err["error"]["code"] == "empty_body"


async def test_response_body_mode_follows_content_type_and_usage_is_counted(stub) -> None:
    s, metrics = stub
    body = json.dumps({"messages": [{"role": "user", "content": "hi"}], "stream": True}).encode()
    sse = b'data: {"choices":[],"usage":{"prompt_tokens":7,"completion_tokens":3,"total_tokens":10}}\n\ndata: [DONE]\n\n'
    msgs = [
        headers_msg(),
        body_msg(body),
        resp_headers_msg("text/event-stream"),
        pb.ProcessingRequest(response_body=pb.HttpBody(body=sse[:20])),
        pb.ProcessingRequest(response_body=pb.HttpBody(body=sse[20:], end_of_stream=True)),
    ]
    replies = await exchange(s, "ingress", *msgs)
    assert replies[2].mode_override.response_body_mode == processing_mode_pb2.ProcessingMode.STREAMED
    assert set_headers(replies[2].response_headers.response)["x-sidegate-provider"] == "alpha"
    assert [r.WhichOneof("response") for r in replies[3:]] == ["response_body", "response_body"]
    assert not replies[3].response_body.response.HasField("body_mutation")  # chunks pass unchanged
    assert metrics.tokens.labels("alpha", "input")._value.get() == 7
    assert metrics.tokens.labels("alpha", "output")._value.get() == 3

    replies = await exchange(s, "egress", headers_msg(), body_msg(body), resp_headers_msg("application/json"))
    assert replies[2].mode_override.response_body_mode == processing_mode_pb2.ProcessingMode.BUFFERED


async def test_a_bug_in_a_processor_becomes_a_generic_500_and_the_server_stays_up(stub, monkeypatch) -> None:
    s, _ = stub
    from ext_proc.chat import completions as chat

    async def broken(*args, **kwargs):
        raise KeyError("boom")

    monkeypatch.setattr(chat.ChatProcessor, "request_body", broken)
    body = json.dumps({"messages": [{"role": "user", "content": "hi"}]}).encode()
    _, r = await exchange(s, "egress", headers_msg(), body_msg(body))
    status, err = error_of(r)
    assert status == 500 and "req-1" in err["error"]["message"] and "boom" not in err["error"]["message"]
    monkeypatch.undo()
    _, r = await exchange(s, "egress", headers_msg(), body_msg(body))
    assert r.WhichOneof("response") == "request_body"


async def test_a_slow_model_is_a_504_naming_the_model_and_the_key_to_raise() -> None:
    """The guard's model takes longer than its deadline: the client gets sidegate's 504
    model_server_timeout (not Envoy's ext_proc_timeout), and a model server that is down stays 503."""
    from ext_proc.errors import ModelServerError
    from ext_proc.models.triton import _timeout_error

    class Models:
        error: ModelServerError

        async def guard(self, text: str):  # type: ignore[no-untyped-def]
            raise self.error

    models = Models()
    raw = gateway_config(PROVIDERS, prompt_guards={"input_guards": {"jailbreak": {"on_exception": {"message": "no"}}}})
    cfg = build_config(raw, env={})
    services = Services.create(cfg, models=models)  # type: ignore[arg-type]
    server, port = await create_server(services, "127.0.0.1:0")
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    body = json.dumps({"messages": [{"role": "user", "content": "what's the weather in Paris?"}]}).encode()
    try:
        s = pb_grpc.ExternalProcessorStub(channel)
        models.error = _timeout_error("guard", "prompt_guard", 10)
        _, r = await exchange(s, "ingress", headers_msg(), body_msg(body))
        status, err = error_of(r)
        assert (status, err["error"]["code"]) == (504, "model_server_timeout")
        assert "prompt_guard" in err["error"]["message"] and "model_server.models.prompt_guard.timeout" in err["error"]["message"]
        models.error = ModelServerError("Triton at grpc://127.0.0.1:8001 is unreachable: connection refused")
        _, r = await exchange(s, "ingress", headers_msg(), body_msg(body))
        status, err = error_of(r)
        assert (status, err["error"]["code"]) == (503, "model_server_unavailable")
    finally:
        await channel.close()
        await server.stop(0)
        await services.close()


async def test_the_server_ends_the_stream_after_the_last_message_envoy_sends(stub) -> None:
    # Envoy resets an ext_proc stream that is still open when its HTTP stream ends; a reset that
    # cancels a read or write pending in grpc.aio leaks that batch's native memory
    # (grpc/grpc#43360), so the server closes the stream itself as soon as nothing more can come.
    s, _ = stub
    body = json.dumps({"messages": [{"role": "user", "content": "hi"}]}).encode()
    reply = json.dumps({"choices": [], "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}).encode()
    streams = [
        [headers_msg(path="/nowhere")],  # an immediate response (404)
        [headers_msg(), body_msg(body), resp_headers_msg("application/json"),
         pb.ProcessingRequest(response_body=pb.HttpBody(body=reply, end_of_stream=True))],
        [headers_msg(), body_msg(body), resp_headers_msg("application/json", eos=True)],  # a response without a body
    ]
    for msgs in streams:
        call = s.Process(metadata=(("x-sidegate-listener", "egress"),))
        for m in msgs:
            await call.write(m)  # and no done_writing(): Envoy does not half-close either
            assert await asyncio.wait_for(call.read(), 5) is not grpc.aio.EOF
        assert await asyncio.wait_for(call.read(), 5) is grpc.aio.EOF
        assert await call.code() == grpc.StatusCode.OK


def test_the_service_takes_the_largest_body_chunk_envoy_may_send_on_any_listener() -> None:
    """In STREAMED mode Envoy may send, as one chunk, its buffer limit plus the upstream reads that
    crossed it (9,437,106 bytes measured under 8 MiB). The service's gRPC bound covers that for
    every listener, an agent listener with a larger limit included, and matches Envoy's own."""
    raw = gateway_config(PROVIDERS, agents=[{"id": "a", "url": "http://127.0.0.1:7001"}])
    raw["listeners"]["agent_traffic"] = [{"type": "agent", "name": "svc", "port": free_port(), "max_body_bytes": 32 << 20,
                                          "agents": [{"id": "a", "description": "answers anything"}]}]
    cfg = build_config(raw, env={})
    options = dict(grpc_options(cfg))
    assert options["grpc.max_receive_message_length"] == ext_proc_message_bytes(32 << 20) >= (32 << 20) + (2 << 20)
    assert options["grpc.max_send_message_length"] == options["grpc.max_receive_message_length"]
    assert ext_proc_message_bytes(8 << 20) > 9_437_106 + (1 << 20)
