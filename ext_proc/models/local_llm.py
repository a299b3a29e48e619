"""The local default LLM provider: ``POST /v1/chat/completions`` on the ext_proc HTTP port.

A provider with ``provider_interface: sidegate`` points here (``http://127.0.0.1:<http_port>/v1``):
Envoy routes to it like to any provider, and this handler answers in the OpenAI wire format,
JSON or SSE, from the Triton model ``chat_llm`` (a small GGUF model on llama.cpp).
"""

from __future__ import annotations

import json
import logging
from typing import Any

from aiohttp import web

from ext_proc.errors import ModelServerError, SidegateError, render_error
from ext_proc.wire.openai import chat_completion, content_text, parse_chat_request

__all__ = ["add_routes"]

log = logging.getLogger("sidegate.local_llm")
_PARAMS = ("max_tokens", "temperature", "top_p", "stop", "seed")


def add_routes(app: web.Application, client: Any, *, timeout_s: float) -> None:
    """Serve chat completions from ``client`` (a :class:`~ext_proc.models.triton.TritonClient`, or None)."""

    async def chat_completions(request: web.Request) -> web.StreamResponse:
        try:
            if client is None:
                raise ModelServerError("this sidegate has no model server: the local LLM provider is off", code="no_model_server")
            req = parse_chat_request(await request.read())
        except SidegateError as exc:
            return _error(exc)
        params: dict[str, Any] = {k: req.body[k] for k in _PARAMS if req.body.get(k) is not None}
        if "max_completion_tokens" in req.body and "max_tokens" not in params:
            params["max_tokens"] = req.body["max_completion_tokens"]
        messages = [{"role": m["role"], "content": content_text(m.get("content"))} for m in req.messages]
        chunks = client.chat(messages, params, timeout_s=timeout_s, headers=_trace(request))
        model = req.model or "sidegate-local"
        if req.stream:
            return await _stream(request, _named(chunks, model))
        content: list[str] = []
        usage = None
        try:
            async for chunk in chunks:
                usage = chunk.get("usage") or usage
                for choice in chunk.get("choices") or []:
                    content.append((choice.get("delta") or {}).get("content") or "")
        except SidegateError as exc:
            return _error(exc)
        return web.json_response(chat_completion("".join(content), model=model, usage=usage))

    app.router.add_post("/v1/chat/completions", chat_completions)


async def _named(chunks: Any, model: str) -> Any:
    """``chunks`` with the model the request named (the provider's configured ``model``), as the
    JSON answer has it: llama.cpp's chunks name its weights ("qwen2.5-coder-0.5b")."""
    async for chunk in chunks:
        yield {**chunk, "model": model}


async def _stream(request: web.Request, chunks: Any) -> web.StreamResponse:
    """SSE as the chunks come; an error before the first chunk is a normal error response."""
    first = None
    try:
        first = await chunks.__anext__()
    except StopAsyncIteration:
        pass
    except SidegateError as exc:
        return _error(exc)
    resp = web.StreamResponse(headers={"content-type": "text/event-stream", "cache-control": "no-cache"})
    await resp.prepare(request)
    try:
        if first is not None:
            await resp.write(b"data: " + json.dumps(first).encode() + b"\n\n")
        async for chunk in chunks:
            await resp.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")
    except SidegateError as exc:  # mid-stream: the client sees an error event, then the end
        log.warning("local LLM stream failed: %s", exc.message)
        await resp.write(b"data: " + json.dumps({"error": {"message": exc.message, "type": exc.type, "code": exc.code}}).encode() + b"\n\n")
    await resp.write(b"data: [DONE]\n\n")
    await resp.write_eof()
    return resp


def _error(exc: SidegateError) -> web.Response:
    rendered = render_error(exc)
    return web.Response(status=rendered.status, body=rendered.body, headers=rendered.headers)


def _trace(request: web.Request) -> dict[str, str]:
    return {h: request.headers[h] for h in ("traceparent", "x-request-id") if h in request.headers}
