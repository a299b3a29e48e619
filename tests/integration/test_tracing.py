"""One OpenTelemetry trace per request, through a real Envoy and the real ext_proc service, into
a real OTLP/gRPC receiver (the ``opentelemetry-proto`` TraceService, not an in-memory exporter)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent import futures
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import openai
import pytest
import yaml
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

from ext_proc.config import load_config
from testkit import free_port, gateway_config
from testkit.fake_provider import FakeProvider

from .conftest import PROVIDER_KEY_A, start_stack

pytestmark = pytest.mark.integration

CLIENT_KEY = "sk-client-own-key"
USER = [{"role": "user", "content": "hello tracing"}]


@dataclass
class Span:
    service: str
    name: str
    trace_id: str
    span_id: str
    parent_id: str
    attributes: dict[str, Any]


class Receiver(trace_service_pb2_grpc.TraceServiceServicer):
    """An OTLP/gRPC collector on 127.0.0.1 that keeps every span it is sent."""

    def __init__(self) -> None:
        self.spans: list[Span] = []
        self._lock = threading.Lock()
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(self, self.server)
        self.port = self.server.add_insecure_port("127.0.0.1:0")

    def Export(self, request: trace_service_pb2.ExportTraceServiceRequest, context: Any) -> Any:  # noqa: N802
        got = []
        for rs in request.resource_spans:
            service = next((a.value.string_value for a in rs.resource.attributes if a.key == "service.name"), "")
            for ss in rs.scope_spans:
                for s in ss.spans:
                    attrs = {a.key: _value(a.value) for a in s.attributes}
                    got.append(Span(service, s.name, s.trace_id.hex(), s.span_id.hex(), s.parent_span_id.hex(), attrs))
        with self._lock:
            self.spans.extend(got)
        return trace_service_pb2.ExportTraceServiceResponse()

    def wait_for(self, predicate: Any, timeout: float = 20.0) -> list[Span]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                spans = list(self.spans)
            if predicate(spans):
                return spans
            time.sleep(0.2)
        with self._lock:
            return list(self.spans)


def _value(v: Any) -> Any:
    kind = v.WhichOneof("value")
    return getattr(v, kind) if kind in ("string_value", "int_value", "double_value", "bool_value") else str(v)


@contextmanager
def traced_stack(tmp_path: Path, otlp_endpoint: str) -> Iterator[tuple[Any, FakeProvider]]:
    mp = pytest.MonkeyPatch()
    mp.setenv("SIDEGATE_HOME", str(tmp_path))
    mp.setenv("ALPHA_KEY", PROVIDER_KEY_A)
    try:
        with FakeProvider(name="fake-alpha") as alpha:
            providers = [{"name": "alpha", "provider_interface": "openai", "endpoint": alpha.base_url, "model": "model-a",
                          "default": True, "access_key": "$ALPHA_KEY"}]
            raw = gateway_config(providers, tracing={"random_sampling": 100, "otlp_endpoint": otlp_endpoint})
            config_path = tmp_path / "sidegate.yaml"
            config_path.write_text(yaml.safe_dump(raw))
            cfg = load_config(config_path)
            supervisor = start_stack(cfg, config_path)
            try:
                yield cfg, alpha
            finally:
                supervisor.stop_all()
    finally:
        mp.undo()


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    r.server.start()
    yield r
    r.server.stop(0)


def client(cfg: Any, listener: str) -> openai.OpenAI:
    port = cfg.ingress.port if listener == "ingress" else cfg.egress.port
    return openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=CLIENT_KEY, max_retries=0, timeout=10)


def test_one_trace_across_envoy_and_ext_proc(receiver: Receiver, tmp_path_factory: pytest.TempPathFactory) -> None:
    with traced_stack(tmp_path_factory.mktemp("traced"), f"grpc://127.0.0.1:{receiver.port}") as (cfg, alpha):
        stream = client(cfg, "ingress").chat.completions.create(
            model="whatever", messages=USER, stream=True, stream_options={"include_usage": True}
        )
        assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == "fake-alpha says: hello tracing"

        def complete(spans: list[Span]) -> bool:
            llm = [s for s in spans if s.name == "llm"]
            return bool(llm) and any(s.service == "sidegate-envoy" and s.trace_id == llm[0].trace_id for s in spans)

        spans = receiver.wait_for(complete)
    (llm,) = [s for s in spans if s.service == "sidegate-ext-proc" and s.name == "llm"]
    trace = [s for s in spans if s.trace_id == llm.trace_id]
    envoy = {s.span_id: s for s in trace if s.service == "sidegate-envoy"}
    ours = {s.span_id: s for s in trace if s.service == "sidegate-ext-proc"}
    assert envoy, f"no Envoy span in the trace: {[(s.service, s.name) for s in spans]}"
    (request,) = [s for s in ours.values() if s.name == "sidegate.ingress"]
    assert request.parent_id in envoy, "the ext_proc request span's parent is one of Envoy's spans"
    assert llm.parent_id == request.span_id
    assert llm.attributes["gen_ai.request.model"] == "model-a"
    assert llm.attributes["gen_ai.system"] == "openai"
    assert llm.attributes["gen_ai.usage.input_tokens"] > 0
    assert llm.attributes["gen_ai.usage.output_tokens"] > 0
    assert llm.attributes["sidegate.time_to_first_token_ms"] > 0
    assert alpha.requests[-1].headers["authorization"] == f"Bearer {PROVIDER_KEY_A}"  # the key did go upstream...
    for s in spans:  # ...but it, and the client's own key, are in no span
        text = repr(s.attributes)
        assert PROVIDER_KEY_A not in text and CLIENT_KEY not in text, (s.service, s.name, s.attributes)


@pytest.mark.parametrize("scheme", ["grpc", "http"])
def test_an_unreachable_otlp_endpoint_never_breaks_or_slows_requests(scheme: str, tmp_path_factory: pytest.TempPathFactory) -> None:
    dead = free_port()
    with traced_stack(tmp_path_factory.mktemp(f"dead-{scheme}"), f"{scheme}://127.0.0.1:{dead}") as (cfg, _):
        for listener in ("ingress", "egress", "ingress", "egress"):
            started = time.perf_counter()
            done = client(cfg, listener).chat.completions.create(model="model-a", messages=USER)
            assert done.choices[0].message.content == "fake-alpha says: hello tracing"
            assert time.perf_counter() - started < 2.0
