"""Which LLM provider a chat request goes to (DESIGN.md, "Egress")."""

from __future__ import annotations

import json
from dataclasses import dataclass

from ext_proc.arch_compat import family, split_model
from ext_proc.config import ANTHROPIC_INTERFACES, Config, LlmProvider
from ext_proc.errors import MalformedRequest
from ext_proc.names import PROVIDER_HINT_HEADER
from ext_proc.wire.openai import ChatRequest

__all__ = ["ProviderChoice", "body_for", "choose_provider", "named_provider", "passthrough_key", "provider_for_model", "routable"]



@dataclass(frozen=True, kw_only=True)
class ProviderChoice:
    provider: LlmProvider
    body: bytes | None  # the rewritten request body, or None when it goes upstream unchanged


def choose_provider(cfg: Config, headers: dict[str, str], req: ChatRequest) -> ProviderChoice:
    """Hint header, else the provider of the request's ``model`` (:func:`provider_for_model`), else the default.

    The request's ``model`` is rewritten to the chosen provider's model when they differ, so a
    provider configured for ``gpt-4o-mini`` is never asked for a model it was not configured for;
    a provider without a model (``openai/*``) gets the model the request names, without its family.
    """
    provider, model, _ = named_provider(cfg, headers, req.model)
    return ProviderChoice(provider=provider, body=body_for(provider, req, model=model))


def named_provider(cfg: Config, headers: dict[str, str], model: str | None) -> tuple[LlmProvider, str | None, bool]:
    """(the provider, the model to send it, whether the model named it) for a request naming
    ``model``: the hint header's provider (with its model), else the provider of ``model``
    (:func:`provider_for_model`), else the default (with its model). Raises :class:`MalformedRequest`
    for an unknown hint, or when nothing serves ``model`` and no provider is the default."""
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
        return provider, provider.model, False
    found = provider_for_model(cfg, model) if model else None
    if found is not None:
        return found[0], found[1], True
    provider = cfg.default_provider
    if provider is None:
        raise MalformedRequest(
            f"no LLM provider serves model {model!r} and none is marked default: true in {cfg.source}",
            code="model_not_found",
            param="model",
        )
    return provider, provider.model, False


def routable(cfg: Config, headers: dict[str, str], req: ChatRequest) -> bool:
    """Whether routing preferences may choose the provider: the request carries no provider hint and
    names no model a provider serves (DESIGN.md, "preference routing": those are not re-routed), or
    ``overrides.route_named_models`` lets preferences decide for a named model too (plano's way)."""
    if headers.get(PROVIDER_HINT_HEADER):
        return False
    return cfg.route_named_models or not req.model or provider_for_model(cfg, req.model) is None


def _same_family(a: str, b: str) -> bool:
    return family(a) == family(b) or {a, b} <= ANTHROPIC_INTERFACES


def provider_for_model(cfg: Config, model: str) -> tuple[LlmProvider, str | None] | None:
    """(provider, the model to send it) for a request's ``model``, or None when no provider serves it.

    ``model`` may be a ``model_aliases`` alias (read as its target), a provider's model, a provider's
    name (plano names a provider after its model, ``openai/gpt-4o``), or ``family/model``: that
    family's provider of that model, else that family's provider without a model (``openai/*``)."""
    model = cfg.model_aliases.get(model, model)
    for p in cfg.llm_providers:
        if p.model == model:
            return p, p.model
    for p in cfg.llm_providers:
        if p.name == model:
            return p, p.model
    split = split_model(model)
    if split is None:
        return None
    fam, model_id = split
    in_family = [p for p in cfg.llm_providers if _same_family(p.interface, fam)]
    exact = next((p for p in in_family if p.model == model_id), None)
    if exact is not None:
        return exact, exact.model
    wildcard = next((p for p in in_family if p.model is None), None)
    return (wildcard, model_id) if wildcard is not None else None


def body_for(provider: LlmProvider, req: ChatRequest, *, model: str | None = None) -> bytes | None:
    """The body to send ``provider``: ``model`` (default: the provider's model) in place of the request's; None if unchanged."""
    model = model or provider.model
    if model and req.model != model:
        return json.dumps({**req.body, "model": model}).encode()
    return None


def passthrough_key(provider: LlmProvider, headers: dict[str, str]) -> dict[str, str]:
    """``passthrough_auth``: the client's key in the header ``provider`` reads (Arch's semantics).

    The key is the client's ``Authorization`` (``Bearer`` stripped) or else its ``x-api-key``, so an
    ``anthropic`` SDK client reaches an OpenAI-compatible provider and the other way round. No key:
    nothing is set and the provider answers (likely 401) as Arch lets it. Envoy's route removes
    every other key header."""
    raw = headers.get("authorization", "").strip()
    key = raw[len("Bearer"):].strip() if raw[:6].lower() == "bearer" else raw
    key = key or headers.get("x-api-key", "").strip()
    if not key:
        return {}
    return {provider.key_header: f"Bearer {key}" if provider.key_header == "authorization" else key}
