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

from ext_proc.chat.forward import JsonEndpoint
from ext_proc.chat.providers import named_provider
from ext_proc.chat.ratelimit import estimate_tokens
from ext_proc.errors import MalformedRequest
from ext_proc.processor import Immediate, Reply

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


class CountTokens(JsonEndpoint):
    """Implements :class:`~ext_proc.processor.Processor` for ``POST /v1/messages/count_tokens``."""

    path = COUNT_TOKENS_PATH
    anthropic = True
    what = "Messages"

    def decide(self, request: dict[str, Any]) -> Reply:
        if not isinstance(request.get("messages"), list):
            raise MalformedRequest("messages: Field required (an array of messages)", code="missing_required_parameter", param="messages")
        model = request.get("model")
        provider, send_model, _ = named_provider(self.cfg, self.headers, model if isinstance(model, str) else None)
        if provider.wire != "anthropic":
            return Immediate(status=200, body=json.dumps({"input_tokens": estimate(request)}).encode(),
                             headers={"content-type": "application/json", ESTIMATE_HEADER: "true", "x-sidegate-provider": provider.name},
                             details="estimate")
        return self.forward(provider, request, send_model)
