"""Calls to prompt-target endpoints, through Envoy's internal listener.

Envoy does the retries, timeouts, TLS and host rewriting (routes on ``x-sidegate-upstream:
endpoint_<name>``); this module builds the request, forwards the trace context and request id,
and turns anything but a 2xx into an :class:`~ext_proc.errors.UpstreamError` that names the
target, the endpoint and the status.

Usage::

    client = EndpointClient(cfg)
    reply = await client.call(target, endpoint_request(target, args), trace_headers)
    await client.close()
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import aiohttp

from ext_proc import telemetry
from ext_proc.chat.targets import EndpointCall
from ext_proc.config import Config, PromptTarget
from ext_proc.errors import UpstreamError, openai_error_of
from ext_proc.names import UPSTREAM_HEADER

__all__ = ["EndpointClient", "EndpointReply", "FORWARDED_HEADERS"]

FORWARDED_HEADERS = ("traceparent", "tracestate", "x-request-id")
_MAX_REPLY = 4 * 1024 * 1024


@dataclass(frozen=True, kw_only=True)
class EndpointReply:
    status: int
    content_type: str
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")


class EndpointClient:
    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.base = f"http://{cfg.internal.address}:{cfg.internal.port}"
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=256, ttl_dns_cache=None), auto_decompress=True
            )
        return self._session

    async def call(self, target: PromptTarget, call: EndpointCall, incoming: dict[str, str]) -> EndpointReply:
        assert target.endpoint is not None
        endpoint = self.cfg.endpoints[target.endpoint.name]
        headers = {**call.headers, UPSTREAM_HEADER: endpoint.cluster}
        headers.update({h: incoming[h] for h in FORWARDED_HEADERS if h in incoming})
        telemetry.inject(headers)  # tracing on: the current span (the `endpoint` stage) is the app's parent
        where = f"prompt target {target.name!r} endpoint {endpoint.name!r} ({call.method} {call.path})"
        timeout = aiohttp.ClientTimeout(total=endpoint.timeout_s + 2.0)  # Envoy's route timeout fires first
        try:
            async with self._client().request(
                call.method, self.base + call.path, json=call.json_body, headers=headers, timeout=timeout
            ) as resp:
                body = await resp.content.read(_MAX_REPLY + 1)
                reply = EndpointReply(status=resp.status, content_type=resp.headers.get("content-type", ""), body=body)
        except asyncio.TimeoutError as exc:
            raise UpstreamError(f"{where} did not answer within {endpoint.timeout_s:g}s", status=504, code="endpoint_timeout") from exc
        except aiohttp.ClientError as exc:
            raise UpstreamError(f"{where} could not be reached through Envoy's internal listener: {exc}", code="endpoint_unavailable") from exc
        if len(reply.body) > _MAX_REPLY:
            raise UpstreamError(f"{where} answered more than {_MAX_REPLY} bytes", code="endpoint_reply_too_large")
        envoy_says, reason = _envoy_local_reply(reply)
        if envoy_says == "upstream_unavailable":  # Envoy could not connect: the app did not answer anything
            up = endpoint.upstream
            raise UpstreamError(f"{where} could not be reached at {up.host}:{up.port}: is the app running and listening there? "
                                f"(endpoints.{endpoint.name}.endpoint; Envoy: {reason})", code="endpoint_unavailable")
        if envoy_says == "upstream_timeout":
            raise UpstreamError(f"{where} did not answer within {endpoint.timeout_s:g}s (endpoints.{endpoint.name}.timeout)",
                                status=504, code="endpoint_timeout")
        if not 200 <= reply.status < 300:
            detail = reply.text[:300].strip()
            if reply.status == 405:  # the method is the config's (GET when http_method is left out, as in Arch)
                other = "POST" if call.method == "GET" else "GET"
                detail += f" (the endpoint does not take {call.method}: set prompt_targets[{target.name}].endpoint.http_method: {other} if it expects {other})"
            raise UpstreamError(
                f"{where} answered {reply.status}" + (f": {detail}" if detail else ""),
                status=reply.status if 400 <= reply.status < 600 else 502,
                code="endpoint_error",
            )
        return reply

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()


def _envoy_local_reply(reply: EndpointReply) -> tuple[str | None, str]:
    """The code of Envoy's own answer (the bootstrap's local reply mappers, ``sidegate ...``
    messages) when the endpoint could not be reached or timed out, None for the app's answers; and
    Envoy's reason: what follows the message's first parenthesis, the mapper's
    ``(%LOCAL_REPLY_BODY%)`` (the reason itself may hold parentheses)."""
    if reply.status not in (502, 503, 504) or not reply.content_type.startswith("application/json"):
        return None, ""
    error = openai_error_of(reply.body)
    message = str(error["message"]) if error is not None else ""
    if error is None or not message.startswith("sidegate ") or error["code"] not in ("upstream_unavailable", "upstream_timeout"):
        return None, ""
    start = message.find("(")
    return str(error["code"]), (message[start + 1:].rstrip(")") if start >= 0 else message)
