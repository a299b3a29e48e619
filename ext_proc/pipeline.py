"""The ingress prompt pipeline (DESIGN.md, "Life of an ingress request").

Today only step 1 (parse and check, done by :class:`~ext_proc.chat.ChatProcessor`) and step 7
(no target matched: straight to the LLM provider) exist. The guard, intent, function-calling,
clarification, endpoint and answer stages plug in here, in :func:`ingress_router`, each taking
the parsed request and returning either a decision or ``None`` to let the next stage run.
"""

from __future__ import annotations

from .chat import Decision
from .config import Config
from .errors import MalformedRequest
from .openai_wire import ChatRequest
from .providers import body_for

__all__ = ["ingress_router"]


async def ingress_router(cfg: Config, headers: dict[str, str], req: ChatRequest) -> Decision:
    # guard → intent → function calling → clarification → endpoint → answer: not built yet.
    provider = cfg.default_provider
    if provider is None:
        raise MalformedRequest(
            f"the ingress listener has no LLM provider to send prompts to: mark one default: true in {cfg.source}",
            code="no_default_provider",
        )
    return provider, body_for(provider, req)
