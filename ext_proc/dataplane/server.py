"""The gRPC edge: Envoy's ext_proc protocol in, processor calls, protobuf out.

This is the only module (with its response builders) that touches ``envoy.service.ext_proc.v3``.

Usage (tests)::

    server, port = await create_server(Services.create(cfg), "127.0.0.1:0")
    await server.start()
    ...
    await server.stop(grace=1)
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.extensions.filters.http.ext_proc.v3 import processing_mode_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc
from envoy.type.v3 import http_status_pb2

from ext_proc import telemetry
from ext_proc.config import Config, ext_proc_message_bytes
from ext_proc.dataplane import routes
from ext_proc.errors import NotFound, render_error
from ext_proc.names import LISTENER_METADATA, MESSAGES_PATH
from ext_proc.processor import CONTINUE, Continue, Immediate, PassThrough, Processor, Reply
from ext_proc.wire.anthropic import render_anthropic_error

__all__ = ["ExternalProcessor", "create_server"]

log = logging.getLogger("sidegate.ext_proc")
_OVERWRITE = base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD
_MODES = {
    "NONE": processing_mode_pb2.ProcessingMode.NONE,
    "STREAMED": processing_mode_pb2.ProcessingMode.STREAMED,
    "BUFFERED": processing_mode_pb2.ProcessingMode.BUFFERED,
}


class _RequestLog(logging.LoggerAdapter[logging.Logger]):
    def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
        return f"[{(self.extra or {}).get('request_id', '')}] {msg}", kwargs


def _headers(header_map: base_pb2.HeaderMap) -> dict[str, str]:
    out: dict[str, str] = {}
    for h in header_map.headers:
        value = h.raw_value.decode("utf-8", "replace") if h.raw_value else h.value
        key = h.key.lower()
        out[key] = f"{out[key]},{value}" if key in out else value
    return out


def _mutation(set_headers: dict[str, str], remove: tuple[str, ...] = ()) -> pb.HeaderMutation:
    return pb.HeaderMutation(
        set_headers=[
            base_pb2.HeaderValueOption(header=base_pb2.HeaderValue(key=k, raw_value=v.encode()), append_action=_OVERWRITE)
            for k, v in set_headers.items()
        ],
        remove_headers=list(remove),
    )


_PLAIN: dict[str, pb.ProcessingResponse] = {}


def _to_proto(kind: str, reply: Reply) -> pb.ProcessingResponse:
    if reply is CONTINUE:  # the common case: one prebuilt message per kind, never mutated
        out = _PLAIN.get(kind)
        if out is None:
            out = _PLAIN[kind] = _build(kind, reply)
        return out
    return _build(kind, reply)


def _build(kind: str, reply: Reply) -> pb.ProcessingResponse:
    if isinstance(reply, Immediate):
        return pb.ProcessingResponse(
            immediate_response=pb.ImmediateResponse(
                status=http_status_pb2.HttpStatus(code=reply.status),
                headers=_mutation(reply.headers),
                body=reply.body,
                details=reply.details,
            )
        )
    common = pb.CommonResponse(clear_route_cache=reply.clear_route_cache)
    if reply.set_headers or reply.remove_headers:
        common.header_mutation.CopyFrom(_mutation(reply.set_headers, reply.remove_headers))
    if reply.body is not None:
        common.body_mutation.body = reply.body
    out = pb.ProcessingResponse()
    if kind.endswith("_trailers"):  # trailers are SKIPped by the rendered config; answer politely anyway
        getattr(out, kind).SetInParent()
    else:
        getattr(out, kind).response.CopyFrom(common)  # HeadersResponse and BodyResponse alike
    if reply.response_body_mode is not None:
        out.mode_override.response_body_mode = _MODES[reply.response_body_mode]
    return out


def _answered_last(request: pb.ProcessingRequest, kind: str | None, reply: Reply, response_body_mode: str) -> bool:
    """Whether ``reply`` answers the last message Envoy sends on this stream: an immediate
    response, the response body's end, or response headers with no body to follow (trailers are
    never sent: envoy_bootstrap's processing_mode skips them)."""
    if isinstance(reply, Immediate):
        return True
    if kind == "response_body":
        return bool(request.response_body.end_of_stream)
    if kind == "response_headers":
        return bool(request.response_headers.end_of_stream) or response_body_mode == "NONE"
    return False


class _NotServed(PassThrough):
    """Implements Processor.request_headers for paths nobody serves: an immediate 404."""

    def __init__(self, listener: str, path: str) -> None:
        self.listener, self.path = listener, path

    async def request_headers(self, headers: dict[str, str], end_of_stream: bool) -> Reply:
        served = ", ".join(routes.served_paths(self.listener)) or "nothing"
        err = NotFound(f"sidegate's {self.listener} listener does not serve {self.path!r} (it serves: {served})")
        # an anthropic SDK's request (an agent listener's /v1/messages, /v1/messages/batches) gets Anthropic's shape
        render = render_anthropic_error if self.path.startswith(MESSAGES_PATH) else render_error
        return Immediate.from_error(render(err, request_id=headers.get("x-request-id", "")), details="not_found")


class ExternalProcessor(pb_grpc.ExternalProcessorServicer):  # type: ignore[misc]  # xds-protos ships no stubs: the base is Any
    """The ext_proc stream loop: picks a processor on the first headers, dispatches, replies."""

    def __init__(self, services: routes.Services) -> None:
        self.services = services
        self.metrics = services.metrics
        self._phase_cache: dict[tuple[str, str], Any] = {}

    async def Process(  # noqa: N802 (gRPC method name)
        self, request_iterator: AsyncIterator[pb.ProcessingRequest], context: grpc.aio.ServicerContext[pb.ProcessingRequest, pb.ProcessingResponse]
    ) -> None:
        # read()/write() on the context instead of iterating and yielding: grpc.aio then runs no
        # extra consumer task per stream (measured: less CPU per message on the hot path)
        # keys and values of text metadata are str (only "-bin" keys carry bytes)
        metadata = {str(k): v if isinstance(v, str) else v.decode("latin-1") for k, v in context.invocation_metadata() or ()}
        listener = metadata.get(LISTENER_METADATA, "egress")
        telemetry.stream_context(metadata)  # Envoy's span for this stream (traceparent in the gRPC metadata)
        processor: Processor | None = None
        request_id = ""
        response_body_mode = "NONE"  # envoy_bootstrap._ext_proc_filter's processing_mode, until a reply overrides it
        try:
            while True:
                request = await context.read()
                if request is grpc.aio.EOF:
                    break
                kind = request.WhichOneof("request")
                started = time.perf_counter()
                try:
                    if kind == "request_headers":
                        headers = _headers(request.request_headers.headers)
                        request_id = headers.get("x-request-id", "")
                        if processor is None:
                            processor = self._pick(listener, headers, request_id)
                        reply = await processor.request_headers(headers, request.request_headers.end_of_stream)
                    elif processor is None:
                        reply = CONTINUE  # a body or trailers without headers: nothing to decide
                    elif kind == "request_body":
                        reply = await processor.request_body(request.request_body.body, request.request_body.end_of_stream)
                    elif kind == "response_headers":
                        headers = _headers(request.response_headers.headers)
                        reply = await processor.response_headers(headers, request.response_headers.end_of_stream)
                    elif kind == "response_body":
                        reply = await processor.response_body(request.response_body.body, request.response_body.end_of_stream)
                    else:
                        reply = CONTINUE
                except Exception:  # a bug: generic 500 naming the request id, traceback to the log
                    log.exception("[%s] %s failed on %s", request_id, type(processor).__name__, kind)
                    self.metrics.errors.labels(listener, "internal_error").inc()
                    reply = Immediate.from_error(render_error(RuntimeError(), request_id=request_id), details="internal_error")
                self._phase(listener, kind).observe(time.perf_counter() - started)
                if isinstance(reply, Continue) and reply.response_body_mode is not None:
                    response_body_mode = reply.response_body_mode
                if not _answered_last(request, kind, reply, response_body_mode):
                    await context.write(_to_proto(kind or "request_headers", reply))
                    continue
                # The last message Envoy sends on this stream: answer it and end the RPC (Envoy's
                # ext_proc filter takes the server's close as processing complete), instead of
                # reading on until Envoy resets the stream. grpc.aio never frees the batch of a
                # read or write cancelled by that reset (grpc/grpc#43360, grpcio 1.85: the
                # grpc_op array and its message), so each such stream leaked ~0.1-1 kB of native
                # heap; shielded, the write's batch completes and is freed even if the reset
                # comes first.
                await asyncio.shield(context.write(_to_proto(kind or "request_headers", reply)))
                break
        finally:
            if processor is not None:
                processor.finish()

    def _phase(self, listener: str, kind: str) -> Any:
        key = (listener, kind)
        hist = self._phase_cache.get(key)
        if hist is None:
            hist = self._phase_cache[key] = self.metrics.phase_seconds.labels(listener, kind)
        return hist

    def _pick(self, listener: str, headers: dict[str, str], request_id: str) -> Processor:
        path = headers.get(":path", "")
        factory = routes.pick(listener, path)
        if factory is None:
            return _NotServed(listener, path)
        return factory(self.services, _RequestLog(log, {"request_id": request_id}))


def grpc_options(cfg: Config) -> list[tuple[str, int]]:
    """The server's options: messages as large as any listener's Envoy may send (agent listeners included)."""
    limit = max(ext_proc_message_bytes(lst.max_body_bytes) for lst in (cfg.ingress, cfg.egress, *(a.listener for a in cfg.agent_listeners)))
    return [
        ("grpc.max_receive_message_length", limit),
        ("grpc.max_send_message_length", limit),
        ("grpc.so_reuseport", 0),
    ]


async def create_server(services: routes.Services, address: str) -> tuple[grpc.aio.Server, int]:
    """A grpc.aio server with the ext_proc servicer on ``address`` (``host:0`` picks a free port)."""
    server = grpc.aio.server(options=grpc_options(services.cfg))
    pb_grpc.add_ExternalProcessorServicer_to_server(ExternalProcessor(services), server)
    port = server.add_insecure_port(address)
    if port == 0:
        raise OSError(f"cannot listen on {address}")
    return server, port
