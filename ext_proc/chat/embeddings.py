"""OpenAI's ``POST /v1/embeddings`` on the ingress and egress listeners, passed to a provider.

An app that points its ``openai`` client (or LangChain's, LlamaIndex's, the Vercel AI SDK's) at
sidegate sends its embeddings there too; Envoy AI Gateway and LiteLLM serve them. The provider is
the one the hint header names, else the provider whose ``model`` (or alias) the request names, else
the default; the request goes to it as it came (with its key; the model rewritten only when the
request named a provider's model or an alias of one, since the default provider's chat model is no
embedding model). Anthropic and Bedrock have no such endpoint in their APIs, and Azure's takes
another path: those are a 400 naming the provider. The answer comes back as the provider wrote it.
Not counted by token rate limits or ``sidegate_llm_tokens``; no guard reads the input.
"""

from __future__ import annotations

from typing import Any

from ext_proc.chat.forward import JsonEndpoint
from ext_proc.chat.providers import named_provider
from ext_proc.config import AZURE_INTERFACE
from ext_proc.errors import MalformedRequest
from ext_proc.processor import Reply

__all__ = ["EMBEDDINGS_PATH", "Embeddings"]

EMBEDDINGS_PATH = "/v1/embeddings"


class Embeddings(JsonEndpoint):
    """Implements :class:`~ext_proc.processor.Processor` for ``POST /v1/embeddings``."""

    path = EMBEDDINGS_PATH
    what = "embeddings"

    def decide(self, request: dict[str, Any]) -> Reply:
        if not isinstance(request.get("model"), str) or not request["model"]:
            raise MalformedRequest("Missing required parameter: 'model'.", code="missing_required_parameter", param="model")
        if request.get("input") in (None, "", []):
            raise MalformedRequest("Missing required parameter: 'input'.", code="missing_required_parameter", param="input")
        provider, model, named = named_provider(self.cfg, self.headers, request["model"])
        if provider.wire != "openai" or provider.interface == AZURE_INTERFACE:
            raise MalformedRequest(f"provider {provider.name!r} ({provider.interface}) has no embeddings endpoint sidegate can call: name "
                                   "the model of an OpenAI-compatible provider, or send x-arch-llm-provider-hint", code="unsupported_provider",
                                   param="model")
        return self.forward(provider, request, model if named else None)
