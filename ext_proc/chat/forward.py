"""What the processors of a JSON API endpoint that one provider answers share (Anthropic's
``count_tokens``, OpenAI's ``embeddings``): the request checked (POST, a JSON object body), errors
in the client's API, and the request sent to the chosen provider's cluster."""

from __future__ import annotations

import json
from typing import Any

from ext_proc.chat.providers import passthrough_key
from ext_proc.config import Config, LlmProvider
from ext_proc.errors import MalformedRequest, MethodNotAllowed, SidegateError, render_error
from ext_proc.names import UPSTREAM_HEADER
from ext_proc.processor import CONTINUE, Continue, Immediate, PassThrough, Reply
from ext_proc.wire.anthropic import render_anthropic_error

__all__ = ["JsonEndpoint"]


class JsonEndpoint(PassThrough):
    """Implements :class:`~ext_proc.processor.Processor` up to :meth:`decide`: ``POST path`` with a
    JSON object body, errors in Anthropic's shape (``anthropic``) or OpenAI's."""

    path = ""
    anthropic = False
    what = "JSON"  # the request expected, for the empty-body error

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.headers: dict[str, str] = {}

    def _error(self, exc: SidegateError) -> Immediate:
        render = render_anthropic_error if self.anthropic else render_error
        return Immediate.from_error(render(exc, request_id=self.headers.get("x-request-id", "")), details=exc.code)

    async def request_headers(self, headers: dict[str, str], end_of_stream: bool) -> Reply:
        self.headers = headers
        if headers.get(":method", "").upper() != "POST":
            return self._error(MethodNotAllowed(f"{headers.get(':method')} is not allowed on {self.path}: use POST"))
        if end_of_stream:
            return self._error(MalformedRequest(f"request body is empty: send a JSON {self.what} request", code="empty_body"))
        return CONTINUE

    async def request_body(self, body: bytes, end_of_stream: bool) -> Reply:
        try:
            try:
                request = json.loads(body)
            except ValueError as exc:
                raise MalformedRequest(f"the body is not valid JSON: {exc}", code="invalid_json") from exc
            if not isinstance(request, dict):
                raise MalformedRequest("the body must be a JSON object", code="invalid_type")
            return self.decide(request)
        except SidegateError as exc:
            return self._error(exc)

    def decide(self, request: dict[str, Any]) -> Reply:
        raise NotImplementedError

    def forward(self, provider: LlmProvider, request: dict[str, Any], model: str | None) -> Continue:
        """The request to ``provider``'s cluster, with its key (or the client's, ``passthrough_auth``),
        ``model`` in place of the request's when given and different."""
        headers = {UPSTREAM_HEADER: provider.cluster}
        if provider.passthrough_auth:
            headers.update(passthrough_key(provider, self.headers))
        out = None
        if model and model != request.get("model"):
            out = json.dumps({**request, "model": model}).encode()
            headers["content-length"] = str(len(out))
        return Continue(set_headers=headers, body=out, clear_route_cache=True)
