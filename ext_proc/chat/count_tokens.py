"""Anthropic's ``POST /v1/messages/count_tokens`` on the ingress and egress listeners.

Claude Code calls it at start-up and as a conversation grows (its ``/context`` accounting and when
to compact; the VS Code extension sends dozens at start-up), through the ``anthropic`` SDK's
``messages.count_tokens``; a gateway that answers 404 leaves it guessing (LiteLLM #13252). The
provider is chosen as for a Messages request by its model, without routing preferences (a count is
cheap, and an embedding per call is not): the hint header, else the provider of the ``model`` it
names, else the default. An Anthropic provider gets the request itself at its own
``/v1/messages/count_tokens`` (query kept: ``?beta=true``), with its key, the model rewritten to
its own when they differ, and the answer comes back as it wrote it. Any other provider has no such
endpoint: sidegate answers ``{"input_tokens": N}`` with its own estimate, the one its token rate
limits charge (~4 characters a token, 4 more a message; the system prompt and the tools' JSON
counted as text), marked ``x-sidegate-estimate: true``.
"""

from __future__ import annotations

import json
from typing import Any

from ext_proc.chat.providers import named_provider, passthrough_key
from ext_proc.chat.ratelimit import estimate_tokens
from ext_proc.config import Config
from ext_proc.errors import MalformedRequest, MethodNotAllowed, SidegateError
from ext_proc.names import UPSTREAM_HEADER
from ext_proc.processor import CONTINUE, Continue, Immediate, PassThrough, Reply
from ext_proc.wire.anthropic import render_anthropic_error

__all__ = ["COUNT_TOKENS_PATH", "CountTokens", "estimate"]

COUNT_TOKENS_PATH = "/v1/messages/count_tokens"
ESTIMATE_HEADER = "x-sidegate-estimate"


def estimate(body: dict[str, Any]) -> int:
    """sidegate's estimate of a Messages request's input tokens (what its rate limits charge)."""
    extra = [{"content": body["system"] if isinstance(body.get("system"), str) else json.dumps(body["system"])}] if body.get("system") else []
    if body.get("tools"):
        extra.append({"content": json.dumps(body["tools"])})
    messages = [{"content": m.get("content") if isinstance(m.get("content"), str) else json.dumps(m.get("content"))}
                for m in body["messages"] if isinstance(m, dict)]
    return estimate_tokens(extra + messages)


class CountTokens(PassThrough):
    """Implements :class:`~ext_proc.processor.Processor` for ``POST /v1/messages/count_tokens``."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.headers: dict[str, str] = {}

    def _error(self, exc: SidegateError) -> Immediate:
        return Immediate.from_error(render_anthropic_error(exc, request_id=self.headers.get("x-request-id", "")), details=exc.code)

    async def request_headers(self, headers: dict[str, str], end_of_stream: bool) -> Reply:
        self.headers = headers
        if headers.get(":method", "").upper() != "POST":
            return self._error(MethodNotAllowed(f"{headers.get(':method')} is not allowed on {COUNT_TOKENS_PATH}: use POST"))
        if end_of_stream:
            return self._error(MalformedRequest("request body is empty: send a JSON Messages request", code="empty_body"))
        return CONTINUE

    async def request_body(self, body: bytes, end_of_stream: bool) -> Reply:
        try:
            try:
                request = json.loads(body)
            except ValueError as exc:
                raise MalformedRequest(f"the body is not valid JSON: {exc}", code="invalid_json") from exc
            if not isinstance(request, dict):
                raise MalformedRequest("the body must be a JSON object", code="invalid_type")
            if not isinstance(request.get("messages"), list):
                raise MalformedRequest("messages: Field required (an array of messages)", code="missing_required_parameter", param="messages")
            model = request.get("model")
            provider, send_model, _ = named_provider(self.cfg, self.headers, model if isinstance(model, str) else None)
        except SidegateError as exc:
            return self._error(exc)
        if provider.wire != "anthropic":
            return Immediate(status=200, body=json.dumps({"input_tokens": estimate(request)}).encode(),
                             headers={"content-type": "application/json", ESTIMATE_HEADER: "true", "x-sidegate-provider": provider.name},
                             details="estimate")
        headers = {UPSTREAM_HEADER: provider.cluster}
        if provider.passthrough_auth:
            headers.update(passthrough_key(provider, self.headers))
        out = None
        if send_model and send_model != model:
            out = json.dumps({**request, "model": send_model}).encode()
            headers["content-length"] = str(len(out))
        return Continue(set_headers=headers, body=out, clear_route_cache=True)
