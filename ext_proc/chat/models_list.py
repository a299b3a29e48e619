"""``GET /v1/models`` on the ingress and egress listeners: the models a client can name.

Chat UIs and IDE clients (Open WebUI, LibreChat, Continue, the ``openai`` and ``anthropic`` SDKs'
``models.list()``) ask a base URL which models it serves before they send anything. The answer
lists, in config order, each provider's ``model`` (a request naming it goes to that provider) and
each ``model_aliases`` name; a provider without a model (``openai/*``, any model of a family) has
nothing to list. OpenAI's shape (``{"object": "list", "data": [{"id", "object": "model",
"created", "owned_by"}]}``, ``owned_by`` the provider's family), or Anthropic's
(``{"data": [{"type": "model", "id", "display_name", "created_at"}], "has_more", "first_id",
"last_id"}``) for a client that sends ``anthropic-version`` as Anthropic's SDKs do. Answered by
ext_proc on the request headers: nothing goes upstream.
"""

from __future__ import annotations

import json
from typing import Any

from ext_proc.chat.providers import provider_for_model
from ext_proc.config import Config
from ext_proc.errors import MethodNotAllowed, render_error
from ext_proc.names import ANTHROPIC_VERSION_HEADER
from ext_proc.processor import Immediate, PassThrough, Reply
from ext_proc.wire.anthropic import render_anthropic_error

__all__ = ["ModelList", "listed_models"]


def listed_models(cfg: Config) -> list[tuple[str, str]]:
    """(model, family) for every model a request can name, in config order, each once."""
    seen: dict[str, str] = {}
    for p in cfg.llm_providers:
        if p.model and p.model not in seen:
            seen[p.model] = p.interface
    for alias in cfg.model_aliases:
        found = provider_for_model(cfg, alias)  # validate refuses an alias no provider serves
        if alias not in seen and found is not None:
            seen[alias] = found[0].interface
    return list(seen.items())


class ModelList(PassThrough):
    """Implements :class:`~ext_proc.processor.Processor` for ``GET /v1/models``."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg

    async def request_headers(self, headers: dict[str, str], end_of_stream: bool) -> Reply:
        anthropic = ANTHROPIC_VERSION_HEADER in headers
        method = headers.get(":method", "").upper()
        if method not in ("GET", "HEAD"):
            err = MethodNotAllowed(f"{method} is not allowed on {headers.get(':path')}: use GET")
            render = render_anthropic_error if anthropic else render_error
            return Immediate.from_error(render(err, request_id=headers.get("x-request-id", "")), details=err.code)
        models = listed_models(self.cfg)
        body: dict[str, Any]
        if anthropic:
            data = [{"type": "model", "id": m, "display_name": m, "created_at": "1970-01-01T00:00:00Z"} for m, _ in models]
            body = {"data": data, "has_more": False, "first_id": data[0]["id"] if data else None,
                    "last_id": data[-1]["id"] if data else None}
        else:
            body = {"object": "list", "data": [{"id": m, "object": "model", "created": 0, "owned_by": family} for m, family in models]}
        return Immediate(status=200, body=json.dumps(body).encode(), headers={"content-type": "application/json"}, details="models")
