"""Every (listener, path) the ext_proc service serves, in one place, and what they share.

Envoy tells the service which listener a stream comes from through the gRPC metadata
``x-sidegate-listener`` (set per listener in the rendered bootstrap). The processor is chosen by
the exact ``:path`` without its query string; anything else gets an immediate 404.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Callable

from ext_proc.chat.agents import AgentProcessor, AgentRouter
from ext_proc.chat.cache import ResponseCacheService
from ext_proc.chat.conversations import Conversations
from ext_proc.chat.completions import ChatProcessor, Router, egress_router, preference_egress_router
from ext_proc.chat.decision import DECISION_PREFIX, RoutingDecision
from ext_proc.chat.count_tokens import COUNT_TOKENS_PATH, CountTokens
from ext_proc.chat.embeddings import EMBEDDINGS_PATH, Embeddings
from ext_proc.chat.models_list import ModelList
from ext_proc.chat.preferences import PreferenceRouter
from ext_proc.chat.translate import API_PATHS
from ext_proc.chat.endpoints import EndpointClient
from ext_proc.chat.pipeline import IngressPipeline
from ext_proc.chat.ratelimit import RateLimiter
from ext_proc.config import Config
from ext_proc.metrics import Metrics
from ext_proc.models.base import Models
from ext_proc.names import AGENT_LISTENER_PREFIX, CHAT_COMPLETIONS_PATH, MODELS_PATH
from ext_proc.processor import Processor

__all__ = ["Services", "pick", "served_paths"]


@dataclass(kw_only=True)
class Services:
    """What every stream of one ext_proc process shares: config, metrics, model and endpoint clients."""

    cfg: Config
    metrics: Metrics
    models: Models | None
    endpoints: EndpointClient
    ingress: IngressPipeline
    ratelimits: RateLimiter
    cache: ResponseCacheService | None = None  # response_cache (None: not configured)
    conversations: Conversations | None = None  # state_storage: the Responses API's stored responses (None: off)
    agents: dict[str, AgentRouter] = field(default_factory=dict)  # agent listener name -> its router
    egress: Router = egress_router  # the egress listener's router (with routing_preferences: preference_egress_router)

    @classmethod
    def create(cls, cfg: Config, *, metrics: Metrics | None = None, models: Models | None = None) -> Services:
        metrics = metrics or Metrics()
        endpoints = EndpointClient(cfg)
        preferences = PreferenceRouter(cfg=cfg, models=models, metrics=metrics)
        pipeline = IngressPipeline(cfg=cfg, models=models, endpoints=endpoints, metrics=metrics,
                                   preferences=preferences if preferences.active else None)
        def store_error(kind: str) -> None:
            metrics.store_errors.labels(kind).inc()

        cache = ResponseCacheService(cfg.response_cache, cfg.shared_store, models=models, on_store_error=store_error) if cfg.response_cache else None
        conversations = Conversations(cfg.state_storage, cfg.shared_store, on_store_error=store_error) if cfg.state_storage else None
        return cls(cfg=cfg, metrics=metrics, models=models, endpoints=endpoints, ingress=pipeline, conversations=conversations,
                   ratelimits=RateLimiter(cfg.ratelimits, store=cfg.shared_store, on_store_error=store_error), cache=cache,
                   agents={a.listener.name: AgentRouter(listener=a, models=models, metrics=metrics) for a in cfg.agent_listeners},
                   egress=preference_egress_router(preferences) if preferences.active else egress_router)

    async def close(self) -> None:
        await self.endpoints.close()
        await self.ratelimits.close()
        if self.cache is not None:
            await self.cache.close()
        if self.conversations is not None:
            await self.conversations.close()
        close = getattr(self.models, "close", None)
        if close is not None:
            await close()


Factory = Callable[[Services, logging.LoggerAdapter[logging.Logger]], Processor]

def _chat(listener: str, api: str) -> Factory:
    """Chat requests in ``api`` (openai: chat completions, anthropic: Messages) on ``listener``."""
    def make(s: Services, log: logging.LoggerAdapter[logging.Logger]) -> Processor:
        router = s.ingress if listener == "ingress" else s.egress
        return ChatProcessor(cfg=s.cfg, listener=listener, router=router, metrics=s.metrics, log=log, ratelimits=s.ratelimits, api=api,
                             cache=s.cache, conversations=s.conversations)
    return make


def _decision(api: str) -> Factory:
    """plano's routing-decision endpoint for ``api`` on the egress listener: where a request would go, sent nowhere."""
    def make(s: Services, log: logging.LoggerAdapter[logging.Logger]) -> Processor:
        return RoutingDecision(cfg=s.cfg, router=s.egress, metrics=s.metrics, log=log, api=api,
                               conversations=s.conversations)
    return make


# endpoints answered from the config alone (no model server, no shared state): path -> processor
_CONFIG_ENDPOINTS: dict[str, Callable[[Config], Processor]] = {
    MODELS_PATH: ModelList,  # GET /v1/models: the models a client can name, answered here
    COUNT_TOKENS_PATH: CountTokens,  # Anthropic's count_tokens: an Anthropic provider's count, else sidegate's estimate
    EMBEDDINGS_PATH: Embeddings,  # OpenAI's embeddings: to an OpenAI-compatible provider, as they came
}


def _from_config(make_processor: Callable[[Config], Processor]) -> Factory:
    def make(s: Services, log: logging.LoggerAdapter[logging.Logger]) -> Processor:
        return make_processor(s.cfg)
    return make


_ROUTES: dict[tuple[str, str], Factory] = {
    **{(listener, path): _chat(listener, api) for listener in ("ingress", "egress") for api, path in API_PATHS.items()},
    **{(listener, path): _from_config(cls) for listener in ("ingress", "egress") for path, cls in _CONFIG_ENDPOINTS.items()},
    **{("egress", DECISION_PREFIX + path): _decision(api) for api, path in API_PATHS.items()},
}


def _agent(name: str) -> Factory:
    """Chat completions on the agent listener ``name`` (its ext_proc metadata: ``agent:<name>``)."""
    def make(s: Services, log: logging.LoggerAdapter[logging.Logger]) -> Processor:
        return AgentProcessor(cfg=s.cfg, router=s.agents[name], guard=s.ingress.guard if s.cfg.jailbreak else None,
                              metrics=s.metrics, log=log)
    return make


def pick(listener: str, path: str) -> Factory | None:
    path = path.split("?", 1)[0]
    if listener.startswith(AGENT_LISTENER_PREFIX):
        return _agent(listener.removeprefix(AGENT_LISTENER_PREFIX)) if path == CHAT_COMPLETIONS_PATH else None
    return _ROUTES.get((listener, path))


def served_paths(listener: str) -> list[str]:
    if listener.startswith(AGENT_LISTENER_PREFIX):
        return [CHAT_COMPLETIONS_PATH]
    return sorted(p for (lst, p) in _ROUTES if lst == listener)
