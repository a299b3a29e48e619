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

import json

from ext_proc.chat.providers import named_provider, passthrough_key
from ext_proc.config import AZURE_INTERFACE, Config
from ext_proc.errors import MalformedRequest, MethodNotAllowed, SidegateError, render_error
from ext_proc.names import UPSTREAM_HEADER
from ext_proc.processor import CONTINUE, Continue, Immediate, PassThrough, Reply

__all__ = ["EMBEDDINGS_PATH", "Embeddings"]

EMBEDDINGS_PATH = "/v1/embeddings"


class Embeddings(PassThrough):
    """Implements :class:`~ext_proc.processor.Processor` for ``POST /v1/embeddings``."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.headers: dict[str, str] = {}

    def _error(self, exc: SidegateError) -> Immediate:
        return Immediate.from_error(render_error(exc, request_id=self.headers.get("x-request-id", "")), details=exc.code)

    async def request_headers(self, headers: dict[str, str], end_of_stream: bool) -> Reply:
        self.headers = headers
        if headers.get(":method", "").upper() != "POST":
            return self._error(MethodNotAllowed(f"{headers.get(':method')} is not allowed on {EMBEDDINGS_PATH}: use POST"))
        if end_of_stream:
            return self._error(MalformedRequest("request body is empty: send a JSON embeddings request", code="empty_body"))
        return CONTINUE

    async def request_body(self, body: bytes, end_of_stream: bool) -> Reply:
        try:
            try:
                request = json.loads(body)
            except ValueError as exc:
                raise MalformedRequest(f"the body is not valid JSON: {exc}", code="invalid_json") from exc
            if not isinstance(request, dict):
                raise MalformedRequest("the body must be a JSON object", code="invalid_type")
            if not isinstance(request.get("model"), str) or not request["model"]:
                raise MalformedRequest("Missing required parameter: 'model'.", code="missing_required_parameter", param="model")
            if request.get("input") in (None, "", []):
                raise MalformedRequest("Missing required parameter: 'input'.", code="missing_required_parameter", param="input")
            provider, model, named = named_provider(self.cfg, self.headers, request["model"])
            if provider.wire != "openai" or provider.interface == AZURE_INTERFACE:
                raise MalformedRequest(f"provider {provider.name!r} ({provider.interface}) has no embeddings endpoint sidegate can call: name "
                                       "the model of an OpenAI-compatible provider, or send x-arch-llm-provider-hint", code="unsupported_provider",
                                       param="model")
        except SidegateError as exc:
            return self._error(exc)
        headers = {UPSTREAM_HEADER: provider.cluster}
        if provider.passthrough_auth:
            headers.update(passthrough_key(provider, self.headers))
        out = None
        if named and model and model != request["model"]:
            out = json.dumps({**request, "model": model}).encode()
            headers["content-length"] = str(len(out))
        return Continue(set_headers=headers, body=out, clear_route_cache=True)
