"""ext_proc.count_tokens: false (issue 21 item 2): a JSON answer nothing reads is not sent to ext_proc."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import grpc
import pytest
from envoy.extensions.filters.http.ext_proc.v3 import processing_mode_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc

from ext_proc.config import build_config
from ext_proc.dataplane.routes import Services
from ext_proc.dataplane.server import create_server
from testkit import gateway_config

from .test_server import PROVIDERS, body_msg, exchange, headers_msg, resp_headers_msg

MODE = processing_mode_pb2.ProcessingMode


@pytest.fixture(params=[True, False], ids=["count_tokens", "no_count_tokens"])
async def stub(request: pytest.FixtureRequest) -> AsyncIterator[tuple[pb_grpc.ExternalProcessorStub, bool]]:
    raw = gateway_config(PROVIDERS)
    raw["ext_proc"]["count_tokens"] = request.param
    services = Services.create(build_config(raw, env={}))
    server, port = await create_server(services, "127.0.0.1:0")
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    yield pb_grpc.ExternalProcessorStub(channel), request.param
    await channel.close()
    await server.stop(0)
    await services.close()


async def test_a_json_answer_is_buffered_only_when_something_reads_it(stub) -> None:
    s, count_tokens = stub
    chat = json.dumps({"messages": [{"role": "user", "content": "hi"}]}).encode()
    replies = await exchange(s, "egress", headers_msg(), body_msg(chat), resp_headers_msg("application/json"))
    assert len(replies) == 3  # the stream ends after the response headers either way (no body sent)
    want = MODE.BUFFERED if count_tokens else MODE.NONE
    assert replies[2].mode_override.response_body_mode == want
    # an SSE answer is streamed whatever the setting (time to first token, usage in the last chunk)
    stream = json.dumps({"messages": [{"role": "user", "content": "hi"}], "stream": True}).encode()
    replies = await exchange(s, "egress", headers_msg(), body_msg(stream), resp_headers_msg("text/event-stream"))
    assert replies[2].mode_override.response_body_mode == MODE.STREAMED


async def test_an_answer_that_is_translated_is_always_read(stub) -> None:
    s, _ = stub  # an Anthropic Messages request to an OpenAI provider: the answer is translated back
    messages = json.dumps({"model": "model-a", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]}).encode()
    replies = await exchange(s, "egress", headers_msg(path="/v1/messages"), body_msg(messages), resp_headers_msg("application/json"))
    assert replies[2].mode_override.response_body_mode == MODE.BUFFERED
