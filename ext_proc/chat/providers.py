"""Which LLM provider a chat request goes to (DESIGN.md, "Egress")."""

from __future__ import annotations

import json
from dataclasses import dataclass

from ext_proc.config import Config, LlmProvider
from ext_proc.errors import MalformedRequest
from ext_proc.names import PROVIDER_HINT_HEADER
from ext_proc.wire.openai import ChatRequest

__all__ = ["ProviderChoice", "body_for", "choose_provider"]



@dataclass(frozen=True, kw_only=True)
class ProviderChoice:
    provider: LlmProvider
    body: bytes | None  # the rewritten request body, or None when it goes upstream unchanged


def choose_provider(cfg: Config, headers: dict[str, str], req: ChatRequest) -> ProviderChoice:
    """Hint header, else a provider whose ``model`` equals the request's, else the default.

    The request's ``model`` is rewritten to the chosen provider's model when they differ, so a
    provider configured for ``gpt-4o-mini`` is never asked for a model it was not configured for.
    """
    hint = headers.get(PROVIDER_HINT_HEADER)
    provider: LlmProvider | None
    if hint:
        provider = cfg.provider(hint)
        if provider is None:
            known = ", ".join(p.name for p in cfg.llm_providers) or "none configured"
            raise MalformedRequest(
                f"unknown LLM provider {hint!r} in {PROVIDER_HINT_HEADER} (known providers: {known})",
                code="unknown_provider",
                param=PROVIDER_HINT_HEADER,
            )
    else:
        provider = next((p for p in cfg.llm_providers if req.model and p.model == req.model), None) or cfg.default_provider
    if provider is None:
        raise MalformedRequest(
            f"no LLM provider serves model {req.model!r} and none is marked default: true in {cfg.source}",
            code="model_not_found",
            param="model",
        )
    return ProviderChoice(provider=provider, body=body_for(provider, req))


def body_for(provider: LlmProvider, req: ChatRequest) -> bytes | None:
    """The body to send ``provider``: ``model`` set to the provider's model; None if unchanged."""
    if provider.model and req.model != provider.model:
        return json.dumps({**req.body, "model": provider.model}).encode()
    return None
