"""The processor interface: one instance per ext_proc stream (that is, per HTTP request).

The gRPC edge (:mod:`ext_proc.dataplane.server`) turns Envoy's protobuf messages into plain values, calls
one of the four methods below, and turns the returned :data:`Reply` back into protobuf. Nothing
here imports protobuf, so processors are tested with dicts and bytes.

Usage::

    class Echo(PassThrough):
        async def request_body(self, body, end_of_stream):
            return Continue(body=body.upper())

Which processor serves a request is decided once, on the request-headers message, by
:func:`ext_proc.dataplane.routes.pick` from the listener (ingress / egress) and the exact ``:path``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Protocol

from ext_proc.errors import RenderedError

__all__ = ["BodyMode", "Continue", "Immediate", "PassThrough", "Processor", "Reply"]

BodyMode = Literal["NONE", "STREAMED", "BUFFERED"]


@dataclass(frozen=True, kw_only=True)
class Continue:
    """Let the message go on, optionally changed.

    ``set_headers``/``remove_headers`` mutate the headers of this direction (in a body reply they
    still mutate the headers, which Envoy has held back while the body was buffered);
    ``body`` replaces a buffered body; ``clear_route_cache`` makes Envoy route again on the
    mutated headers; ``response_body_mode`` switches how this request's response body is sent.
    """

    set_headers: dict[str, str] = field(default_factory=dict)
    remove_headers: tuple[str, ...] = ()
    body: bytes | None = None
    clear_route_cache: bool = False
    response_body_mode: BodyMode | None = None


@dataclass(frozen=True, kw_only=True)
class Immediate:
    """Answer the client now; nothing is forwarded upstream."""

    status: int
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)
    details: str = ""

    @classmethod
    def from_error(cls, rendered: RenderedError, details: str = "") -> Immediate:
        return cls(status=rendered.status, body=rendered.body, headers=rendered.headers, details=details)


Reply = Continue | Immediate
CONTINUE = Continue()


class Processor(Protocol):
    async def request_headers(self, headers: dict[str, str], end_of_stream: bool) -> Reply: ...

    async def request_body(self, body: bytes, end_of_stream: bool) -> Reply: ...

    async def response_headers(self, headers: dict[str, str], end_of_stream: bool) -> Reply: ...

    async def response_body(self, body: bytes, end_of_stream: bool) -> Reply: ...

    def finish(self) -> None:
        """Called once when the stream ends (normally or not): record metrics, free state."""


class PassThrough:
    """Implements :class:`Processor` by continuing every message unchanged."""

    async def request_headers(self, headers: dict[str, str], end_of_stream: bool) -> Reply:
        return CONTINUE

    async def request_body(self, body: bytes, end_of_stream: bool) -> Reply:
        return CONTINUE

    async def response_headers(self, headers: dict[str, str], end_of_stream: bool) -> Reply:
        return CONTINUE

    async def response_body(self, body: bytes, end_of_stream: bool) -> Reply:
        return CONTINUE

    def finish(self) -> None:
        return None
