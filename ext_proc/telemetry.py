"""OpenTelemetry tracing for the ext_proc service (DESIGN.md, "Observability").

One trace per request: Envoy's span is the parent (W3C ``traceparent`` in the gRPC metadata of
the ext_proc stream, which Envoy's gRPC client sets under the request's span; failing that, the
request headers), the service adds a ``sidegate.<listener>`` span per request and a span per stage
(``guard``, ``intent``, ``function_call``, ``endpoint``, ``llm``), and hands the context on to
endpoint calls and Triton (``traceparent`` from the current span).

With no ``tracing.otlp_endpoint`` nothing is set up and every helper here is a no-op that costs
one module-global check: no provider, no spans, no export thread.

Export is asynchronous and bounded (``BatchSpanProcessor``, a fixed-size queue that drops when
full, a background thread with an export timeout), so an unreachable collector never slows or
breaks a request.

Usage::

    telemetry.setup(cfg)                       # service start
    ctx = telemetry.extract(headers)           # a malformed traceparent gives a new root
    span = telemetry.start_span("sidegate.ingress", ctx)
    with telemetry.use(span), telemetry.span("guard") as s:
        s.set_attribute("sidegate.guard.verdict", "allowed")
    telemetry.inject()                         # {"traceparent": ...} of the current span
    telemetry.shutdown()                       # service stop: flushes what is queued
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
from collections.abc import Iterator, Mapping
from typing import Any
from urllib.parse import urlsplit

from ext_proc.config import Config

__all__ = [
    "ENVOY_SERVICE_NAME",
    "SERVICE_NAME",
    "child_context",
    "enabled",
    "extract",
    "include_prompts",
    "inject",
    "set_attributes",
    "setup",
    "shutdown",
    "span",
    "start_span",
    "stream_context",
    "use",
]

log = logging.getLogger("sidegate.telemetry")

SERVICE_NAME = "sidegate-ext-proc"
ENVOY_SERVICE_NAME = "sidegate-envoy"
MAX_QUEUE = 2048
MAX_EXPORT_BATCH = 512
SCHEDULE_DELAY_MS = 500
EXPORT_TIMEOUT_S = 5.0
# never put these on a span, whatever the caller passes
_SECRET_WORDS = ("authorization", "api-key", "api_key", "x-api-key", "access_key", "cookie", "token_secret")

_provider: Any = None  # opentelemetry.sdk.trace.TracerProvider while tracing is on
_tracer: Any = None
_propagator: Any = None
_include_prompts = False


def enabled() -> bool:
    return _tracer is not None


def include_prompts() -> bool:
    return _include_prompts


def parse_endpoint(url: str) -> tuple[str, str]:
    """``grpc://host:port`` → ("grpc", "host:port"); ``http(s)://host:port[/path]`` → ("http", full URL of /v1/traces)."""
    parts = urlsplit(url)
    if parts.scheme == "grpc":
        return "grpc", parts.netloc
    if parts.scheme in ("http", "https"):
        path = parts.path.rstrip("/")
        if not path.endswith("/v1/traces"):
            path += "/v1/traces"
        return "http", f"{parts.scheme}://{parts.netloc}{path}"
    raise ValueError(f"tracing.otlp_endpoint: expected grpc://host:port or http(s)://host:port, got {url!r}")


def _exporter(url: str) -> Any:
    kind, target = parse_endpoint(url)
    if kind == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter

        return GrpcExporter(endpoint=target, insecure=True, timeout=EXPORT_TIMEOUT_S)
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter

    return HttpExporter(endpoint=target, timeout=EXPORT_TIMEOUT_S)


def setup(cfg: Config, *, exporter: Any = None) -> bool:
    """Start tracing when ``cfg`` has ``tracing.otlp_endpoint`` (or an ``exporter`` is given, for tests)."""
    global _provider, _tracer, _propagator, _include_prompts
    shutdown()
    if cfg.otlp_endpoint is None and exporter is None:
        return False
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    ratio = min(max(cfg.tracing_sampling, 0.0), 100.0) / 100.0
    provider = TracerProvider(
        resource=Resource.create({"service.name": SERVICE_NAME}),
        sampler=ParentBased(TraceIdRatioBased(ratio)),
    )
    provider.add_span_processor(
        BatchSpanProcessor(
            exporter if exporter is not None else _exporter(cfg.otlp_endpoint or ""),
            max_queue_size=MAX_QUEUE,
            max_export_batch_size=MAX_EXPORT_BATCH,
            schedule_delay_millis=SCHEDULE_DELAY_MS,
            export_timeout_millis=int(EXPORT_TIMEOUT_S * 1000),
        )
    )
    _provider = provider
    _tracer = provider.get_tracer("sidegate.ext_proc")
    _propagator = TraceContextTextMapPropagator()
    _include_prompts = cfg.tracing_include_prompts
    log.info("tracing: %s, sampling %g%%", cfg.otlp_endpoint or "test exporter", ratio * 100)
    return True


def shutdown() -> None:
    """Flush what is queued (bounded by the export timeout) and stop tracing."""
    global _provider, _tracer, _propagator
    provider, _provider, _tracer, _propagator = _provider, None, None, None
    if provider is not None:
        try:
            provider.shutdown()
        except Exception:  # shutting down must not fail the service's stop
            log.exception("tracing shutdown failed")


_TRACE_KEYS = ("traceparent", "tracestate")
# Envoy's span for the current ext_proc stream: its gRPC client puts `traceparent` in the stream's
# metadata (a child of the request's span); the request headers carry only the client's own.
_stream: contextvars.ContextVar[dict[str, str] | None] = contextvars.ContextVar("sidegate_stream_trace", default=None)


def stream_context(metadata: Mapping[str, Any]) -> None:
    """Remember the trace context of this ext_proc stream's gRPC metadata (tracing on only)."""
    if _propagator is not None:
        carried = {k: v for k, v in metadata.items() if k in _TRACE_KEYS and isinstance(v, str)}
        _stream.set(carried or None)


def extract(headers: Mapping[str, str]) -> Any:
    """The parent for this request: Envoy's stream span when it sent one, else the ``traceparent``
    of ``headers``; a missing or malformed one gives a new root."""
    if _propagator is None:
        return None
    carrier = _stream.get() or {k: v for k, v in headers.items() if k in _TRACE_KEYS}
    return _propagator.extract(carrier)


def start_span(name: str, context: Any = None, *, kind: str = "INTERNAL", attributes: Mapping[str, Any] | None = None) -> Any:
    """A span that the caller ends (``span.end()``); ``None`` while tracing is off."""
    if _tracer is None:
        return None
    from opentelemetry.trace import SpanKind

    return _tracer.start_span(name, context=context, kind=getattr(SpanKind, kind), attributes=_clean(attributes))


def child_context(span: Any) -> Any:
    """A context whose current span is ``span`` (the parent for :func:`start_span`)."""
    if span is None:
        return None
    from opentelemetry import trace

    return trace.set_span_in_context(span)


@contextlib.contextmanager
def use(span: Any) -> Iterator[None]:
    """Make ``span`` the current one for the block (no-op for ``None``)."""
    if span is None:
        yield
        return
    from opentelemetry import trace

    with trace.use_span(span, end_on_exit=False, record_exception=False, set_status_on_exception=False):
        yield


class _NoSpan:
    """What :func:`span` yields while tracing is off: attribute calls do nothing."""

    __slots__ = ()

    def set_attribute(self, key: str, value: Any) -> None:
        pass

    def set_attributes(self, attributes: Mapping[str, Any]) -> None:
        pass

    def is_recording(self) -> bool:
        return False


NO_SPAN = _NoSpan()


@contextlib.contextmanager
def span(name: str, attributes: Mapping[str, Any] | None = None) -> Iterator[Any]:
    """A child span of the current one around the block; records an exception as an error."""
    if _tracer is None:
        yield NO_SPAN
        return
    with _tracer.start_as_current_span(name, attributes=_clean(attributes)) as s:
        yield s


def set_attributes(span: Any, attributes: Mapping[str, Any]) -> None:
    if span is not None and span.is_recording():
        span.set_attributes(_clean(attributes))


def set_error(span: Any, description: str) -> None:
    """Mark ``span`` failed (OTel status ERROR), as tracing UIs expect for 5xx servers and 4xx/5xx clients."""
    if span is not None and span.is_recording():
        from opentelemetry.trace import Status, StatusCode

        span.set_status(Status(StatusCode.ERROR, description))


def inject(carrier: dict[str, str] | None = None) -> dict[str, str]:
    """``traceparent`` (and ``tracestate``) of the current span, into ``carrier``; ``{}`` while tracing is off."""
    out = carrier if carrier is not None else {}
    if _propagator is not None:
        _propagator.inject(out)
    return out


def _clean(attributes: Mapping[str, Any] | None) -> dict[str, Any]:
    """Drop anything that looks like a credential; keep only OTel attribute value types."""
    if not attributes:
        return {}
    out: dict[str, Any] = {}
    for key, value in attributes.items():
        if value is None or any(word in key.lower() for word in _SECRET_WORDS):
            continue
        out[key] = value if isinstance(value, (str, bool, int, float)) else str(value)
    return out
