"""A fake hosted LLM provider speaking the OpenAI chat-completions wire format.

It is the only stand-in for OpenAI, Mistral & co. that sidegate's tests use, and it is written
independently of ``ext_proc`` on purpose: it is the reference the gateway is tested against.

::

    with FakeProvider(name="fake-a") as fp:                  # background thread, port picked by the OS
        client = openai.OpenAI(base_url=fp.base_url, api_key="sk-test")
        client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
        # -> content "fake-a says: hi", response header x-fake-provider: fake-a
        fp.requests[-1].headers["authorization"]               # "Bearer sk-test"

Routes: ``POST …/chat/completions`` (any prefix: ``/v1/…``, ``/openai/v1/…``), OpenAI's
``POST …/responses`` (JSON and its event stream), ``POST …/embeddings``, ``GET …/models``,
Anthropic's ``POST …/messages`` (and ``…/messages/count_tokens``: the words of every message) and Amazon Bedrock's ``POST /model/{modelId}/converse`` and
``/converse-stream`` (JSON, and AWS event-stream binary framing: see :func:`event_frame`; a Bedrock
API key as ``Authorization: Bearer``, or an AWS SigV4 signature by a key of :data:`FAKE_AWS_KEYS`, checked
by :func:`check_sigv4`); ``x-fake-tool: NAME`` answers, on each API, the reply text and then a
call of that tool with arguments ``{"q": <last user text>}`` (streamed in two argument pieces);
anything else is a 404 OpenAI error. Per-request control through request headers (they win over
the instance's :attr:`FakeProvider.defaults`, see :class:`Behaviour`):

=========================  ===========================================================
``x-fake-status: 503``     answer that status (>= 400) with an OpenAI error JSON
``x-fake-delay-ms: 250``   wait before sending the response headers (errors included)
``x-fake-chunk-delay-ms``  wait between SSE frames
``x-fake-end-delay-ms``    wait after the last SSE frame ([DONE], message_stop) before ending the stream
``x-fake-chunks: 40``      exactly N content chunks (the reply's words are grouped, or
                           repeated cyclically when there are fewer than N)
``x-fake-reply: text``     the reply content (default ``"{name} says: {last user text}"``)
``x-fake-chunk-chars: 5``  content pieces of N characters (words split across frames)
=========================  ===========================================================

:meth:`FakeProvider.fail_next` makes the next K requests fail whatever their headers say (retry
tests, where every attempt carries the same headers). Token counts in ``usage`` are word counts.

Standalone: ``python testkit/fake_provider.py --port 18090 --name fake-a``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import calendar
import collections
import hashlib
import hmac
import importlib
import json
import re
import signal
import struct
import threading
import time
import uuid
import zlib
from dataclasses import dataclass, replace
from typing import Any, Callable
from urllib.parse import parse_qsl, quote, unquote

from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy

__all__ = ["FAKE_AWS_KEYS", "Behaviour", "FakeProvider", "RecordedRequest", "check_sigv4", "event_frame"]

# the IAM keys the fake Bedrock knows: access key id -> secret access key
FAKE_AWS_KEYS = {"AKIDSIDEGATEFAKE": "sidegate/fake+secret/KEY"}
_SIGV4_AUTH = re.compile(r"AWS4-HMAC-SHA256 Credential=([^/]+)/(\d{8})/([a-z0-9-]+)/([a-z0-9-]+)/aws4_request, "
                         r"SignedHeaders=([a-z0-9;-]+), Signature=([0-9a-f]{64})")

_CONVERSE = re.compile(r"^/model/([^/]+)/(converse|converse-stream)$")
_BEDROCK_ERRORS = {400: "ValidationException", 403: "AccessDeniedException", 404: "ResourceNotFoundException",
                   408: "ModelTimeoutException", 429: "ThrottlingException", 500: "InternalServerException",
                   503: "ServiceUnavailableException"}

_ERROR_KINDS: dict[int, tuple[str, str]] = {
    400: ("invalid_request_error", "invalid_request"),
    401: ("invalid_request_error", "invalid_api_key"),
    403: ("permission_error", "unsupported_country_region_territory"),
    404: ("invalid_request_error", "model_not_found"),
    408: ("timeout_error", "timeout"),
    413: ("invalid_request_error", "request_too_large"),
    422: ("invalid_request_error", "unprocessable_entity"),
    429: ("requests", "rate_limit_exceeded"),
    500: ("server_error", "internal_error"),
    502: ("server_error", "bad_gateway"),
    503: ("server_error", "service_unavailable"),
    504: ("server_error", "timeout"),
}


@dataclass(frozen=True)
class Behaviour:
    """What the provider does when a request's headers do not say otherwise."""

    status: int | None = None  # >= 400: answer this error
    delay_ms: int = 0  # before the response headers
    chunk_delay_ms: int = 0  # between SSE frames
    end_delay_ms: int = 0  # after the last SSE frame, before the stream's end (the HTTP chunked terminator)
    chunks: int | None = None  # number of content chunks (and words) in the reply
    reply: str | None = None  # reply content; None: "{name} says: {last user text}"
    chunk_chars: int | None = None  # content pieces of this many characters instead of words


@dataclass(frozen=True)
class RecordedRequest:
    """One request as the provider received it."""

    method: str
    path: str
    query_string: str
    query: dict[str, str]
    headers: CIMultiDictProxy[str]  # case-insensitive: headers["Authorization"] == headers["authorization"]
    body: bytes
    json: Any | None  # parsed body, None when empty or not JSON
    received_at: float  # time.time()
    received_monotonic: float  # time.monotonic(), for measuring gaps between requests


async def _stream(request: web.Request, headers: dict[str, str], frames: list[bytes], b: Behaviour) -> web.StreamResponse:
    """``frames`` as a streamed answer, one HTTP chunk each (sent as soon as it is written), paced by
    ``b.chunk_delay_ms``, the stream ended ``b.end_delay_ms`` after the last one."""
    resp = web.StreamResponse(headers=headers)
    await resp.prepare(request)
    for i, f in enumerate(frames):
        if i and b.chunk_delay_ms > 0:
            await asyncio.sleep(b.chunk_delay_ms / 1000)
        await resp.write(f)
    if b.end_delay_ms > 0:
        await asyncio.sleep(b.end_delay_ms / 1000)
    await resp.write_eof()
    return resp


def _error(status: int, message: str, *, code: str | None = None, param: str | None = None) -> web.Response:
    kind, default_code = _ERROR_KINDS.get(status, ("server_error" if status >= 500 else "invalid_request_error", f"http_{status}"))
    body = {"error": {"message": message, "type": kind, "param": param, "code": code or default_code}}
    return web.json_response(body, status=status)


def _text(content: Any) -> str:
    """A message's text: a string, or the ``text`` of its parts (chat's and Anthropic's text parts,
    the Responses API's input_text and output_text)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    return ""


def _words(messages: Any) -> int:
    """A conversation's token count as the fake counts tokens: the words of every message's text."""
    return sum(len(_text(m.get("content")).split()) for m in messages if isinstance(m, dict))


def _anthropic_unauthenticated(request: web.Request) -> web.Response | None:
    """Anthropic's 401 when the request carries no key: as x-api-key, or as a bearer token (what the
    anthropic SDK 2.x sends for api_key)."""
    if not request.headers.get("x-api-key") and not request.headers.get("authorization", "").startswith("Bearer "):
        return _anthropic_error(401, "x-api-key header is required", "authentication_error")
    return None


def _anthropic_error(status: int, message: str, kind: str) -> web.Response:
    """An error as Anthropic's API writes it."""
    return web.json_response({"type": "error", "error": {"type": kind, "message": message}}, status=status)


def event_frame(headers: dict[str, str], payload: bytes) -> bytes:
    """One AWS event-stream message: prelude (total length, headers length, CRC32 of those 8 bytes),
    string headers (name length, name, type 7, value length, value), payload, CRC32 of all before."""
    hb = b"".join(bytes([len(k)]) + k.encode() + b"\x07" + struct.pack(">H", len(v.encode())) + v.encode() for k, v in headers.items())
    prelude = struct.pack(">II", 12 + len(hb) + len(payload) + 4, len(hb))
    message = prelude + struct.pack(">I", zlib.crc32(prelude)) + hb + payload
    return message + struct.pack(">I", zlib.crc32(message))


def check_sigv4(method: str, raw_path: str, headers: Any, body: bytes, keys: dict[str, str], *, region: str | None = None,
                service: str = "bedrock", now: float | None = None) -> str | None:
    """Why an AWS SigV4 signature is not valid (None: it is), computed as AWS documents it from what was received:
    the headers that SignedHeaders names, each path segment URI-encoded (again), the body's SHA-256."""
    m = _SIGV4_AUTH.fullmatch(headers.get("authorization", ""))
    if m is None:
        return "Authorization header is not an AWS4-HMAC-SHA256 signature"
    key_id, day, signed_region, signed_service, signed, signature = m.groups()
    if key_id not in keys:
        return "The security token included in the request is invalid."
    if (region and signed_region != region) or signed_service != service:
        return f"Credential should be scoped to a valid region and service {service!r}, not {signed_region}/{signed_service}"
    names = signed.split(";")
    if "host" not in names or "x-amz-date" not in names or any(n not in headers for n in names):
        return f"SignedHeaders {signed!r} must include host and x-amz-date, and only headers that were sent"
    amz_date = headers["x-amz-date"]
    try:
        when = calendar.timegm(time.strptime(amz_date, "%Y%m%dT%H%M%SZ"))
    except ValueError:
        return f"X-Amz-Date {amz_date!r} is not of the form YYYYMMDDTHHMMSSZ"
    if not amz_date.startswith(day) or abs((now or time.time()) - when) > 300:
        return f"Signature expired or not yet valid: {amz_date} is not within 5 minutes of the server's time"
    payload = hashlib.sha256(body).hexdigest()
    if headers.get("x-amz-content-sha256", payload) != payload:
        return "The provided x-amz-content-sha256 header does not match what was computed."
    path, _, query = raw_path.partition("?")
    canonical_uri = "/".join(quote(segment, safe="") for segment in path.split("/")) or "/"
    canonical_query = "&".join(sorted(f"{quote(k, safe='')}={quote(v, safe='')}" for k, v in parse_qsl(query, keep_blank_values=True)))
    canonical_headers = "".join(f"{n}:{' '.join(headers[n].split())}\n" for n in names)
    canonical = f"{method}\n{canonical_uri}\n{canonical_query}\n{canonical_headers}\n{signed}\n{payload}"
    scope = f"{day}/{signed_region}/{signed_service}/aws4_request"
    string_to_sign = f"AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{hashlib.sha256(canonical.encode()).hexdigest()}"
    k = f"AWS4{keys[key_id]}".encode()
    for part in scope.split("/"):
        k = hmac.new(k, part.encode(), hashlib.sha256).digest()
    expected = hmac.new(k, string_to_sign.encode(), hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected, signature):
        return "The request signature we calculated does not match the signature you provided."
    return None


def _bedrock_error(status: int, message: str) -> web.Response:
    """An error as Bedrock writes it: ``{"message"}``, the exception's name in ``x-amzn-ErrorType``."""
    name = _BEDROCK_ERRORS.get(status, "InternalServerException" if status >= 500 else "ValidationException")
    return web.json_response({"message": message}, status=status,
                             headers={"x-amzn-ErrorType": f"{name}:http://internal.amazon.com/coral/com.amazon.bedrock/"})


def split_words(text: str) -> list[str]:
    """Split after each run of whitespace: ``"".join(split_words(t)) == t`` and no piece is empty."""
    return [w for w in re.split(r"(?<=\s)(?=\S)", text) if w]


def chunk_content(text: str, n: int | None, chars: int | None = None) -> list[str]:
    """The content pieces to stream: one per word, or exactly ``n`` pieces, or pieces of ``chars`` characters."""
    if chars is not None and chars > 0:
        return [text[i:i + chars] for i in range(0, len(text), chars)]
    words = split_words(text)
    if n is None:
        return words
    if n <= 0:
        return []
    if len(words) < n:  # repeat the reply's words until there are n of them
        base = [w.strip() for w in words] or ["word"]
        words = [base[i % len(base)] + (" " if i < n - 1 else "") for i in range(n)]
    per, extra = divmod(len(words), n)  # group contiguous words into n pieces
    pieces, i = [], 0
    for k in range(n):
        size = per + (1 if k < extra else 0)
        pieces.append("".join(words[i : i + size]))
        i += size
    return pieces


class FakeProvider:
    """An OpenAI-compatible server on ``host:port`` in a background thread with its own event loop."""

    def __init__(
        self,
        name: str = "fake-a",
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        models: tuple[str, ...] = ("gpt-4o-mini",),
        defaults: Behaviour | None = None,
        routes: dict[str, Callable[[RecordedRequest], tuple[int, Any]]] | None = None,
        history: int | None = None,
    ) -> None:
        self.name = name
        # app endpoints a prompt target calls: path prefix -> handler(request) -> (status, JSON);
        # they obey fail_next / x-fake-status / x-fake-delay-ms like chat requests
        self.routes = routes or {}
        self.host = host
        self.port = port
        self.models = models
        self.defaults = defaults or Behaviour()  # replace it (atomic) to change the behaviour mid-test
        # every request received, or the last ``history`` (a long benchmark would keep hundreds of MiB)
        self._requests: collections.deque[RecordedRequest] = collections.deque(maxlen=history)
        self._lock = threading.Lock()
        self._fail_next: list[int] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None

    # -- public API ---------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        """The OpenAI client's ``base_url``: ``http://HOST:PORT/v1``."""
        return f"http://{self.host}:{self.port}/v1"

    @property
    def requests(self) -> list[RecordedRequest]:
        """A copy of every request received so far, oldest first."""
        with self._lock:
            return list(self._requests)

    def clear(self) -> None:
        with self._lock:
            self._requests.clear()
            self._fail_next.clear()

    def fail_next(self, status: int = 503, times: int = 1) -> None:
        """Answer the next ``times`` chat requests with ``status``, whatever their headers say."""
        with self._lock:
            self._fail_next.extend([status] * times)

    def set_defaults(self, **changes: Any) -> None:
        """Change some :class:`Behaviour` fields, e.g. ``fp.set_defaults(status=503)``."""
        self.defaults = replace(self.defaults, **changes)

    def wait_for_requests(self, n: int, timeout: float = 5.0) -> list[RecordedRequest]:
        """Block until at least ``n`` requests have arrived (TimeoutError otherwise); return them."""
        deadline = time.monotonic() + timeout
        while len(reqs := self.requests) < n:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.name}: {len(reqs)} of {n} requests after {timeout}s")
            time.sleep(0.01)
        return reqs

    def start(self) -> FakeProvider:
        if self._thread is not None:
            return self
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self._serve())
            except BaseException as exc:  # noqa: BLE001 - reported to start()
                failure.append(exc)
                ready.set()
                loop.close()
                return
            ready.set()
            loop.run_forever()
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

        self._thread = threading.Thread(target=run, name=f"fake-provider-{self.name}", daemon=True)
        self._thread.start()
        if not ready.wait(10) or failure:
            self._thread = None
            raise RuntimeError(f"fake provider {self.name} did not start on {self.host}:{self.port}") from (failure or [None])[0]
        return self

    def stop(self) -> None:
        if self._thread is None or self._loop is None:
            return
        loop, runner = self._loop, self._runner
        if runner is not None:
            asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        self._thread.join(10)
        self._thread = self._loop = self._runner = None

    def __enter__(self) -> FakeProvider:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- server -------------------------------------------------------------------------------

    async def _serve(self) -> None:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._dispatch)
        # handler_cancellation: a client that hangs up cancels a pending delay, so stop() is quick
        self._runner = web.AppRunner(app, access_log=None, handler_cancellation=True, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        self.port = self._runner.addresses[0][1]

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        try:
            parsed = json.loads(body) if body else None
        except ValueError:
            parsed = None
        record = RecordedRequest(
            method=request.method,
            path=request.path,
            query_string=request.query_string,
            query=dict(request.query),
            headers=CIMultiDictProxy(CIMultiDict(request.headers)),
            body=body,
            json=parsed,
            received_at=time.time(),
            received_monotonic=time.monotonic(),
        )
        with self._lock:
            self._requests.append(record)
        path = request.path.rstrip("/")
        if path.endswith("/chat/completions"):
            if request.method != "POST":
                return _error(405, f"method {request.method} not allowed on {request.path}", code="method_not_allowed")
            resp = await self._chat(request, parsed)
        elif (converse := _CONVERSE.match(request.path)) is not None:  # Amazon Bedrock's Converse API
            if request.method != "POST":
                return _bedrock_error(405, f"method {request.method} not allowed on {request.path}")
            resp = await self._converse(request, parsed, unquote(converse.group(1)), stream=converse.group(2) == "converse-stream")
        elif path.endswith("/responses"):  # OpenAI's Responses API
            if request.method != "POST":
                return _error(405, f"method {request.method} not allowed on {request.path}", code="method_not_allowed")
            resp = await self._responses(request, parsed)
        elif path.endswith("/embeddings") and request.method == "POST":  # OpenAI's: 8 numbers a text, from its sha256
            resp = self._embeddings(parsed)
        elif path.endswith("/messages/count_tokens"):  # Anthropic's token count: the words of every message
            if request.method != "POST":
                return _anthropic_error(405, f"method {request.method} not allowed on {request.path}", "invalid_request_error")
            if (refused := _anthropic_unauthenticated(request)) is not None:
                return refused
            if not isinstance(parsed, dict) or not isinstance(parsed.get("messages"), list):
                return _anthropic_error(400, "messages: Field required", "invalid_request_error")
            resp = web.json_response({"input_tokens": _words(parsed["messages"])})
        elif path.endswith("/messages"):  # Anthropic's Messages API
            if request.method != "POST":
                return _anthropic_error(405, f"method {request.method} not allowed on {request.path}", "invalid_request_error")
            resp = await self._messages(request, parsed)
        elif (route := next((fn for prefix, fn in self.routes.items() if request.path.startswith(prefix)), None)) is not None:
            b = self._behaviour(request)
            if b.delay_ms:
                await asyncio.sleep(b.delay_ms / 1000)
            if b.status is not None and b.status >= 400:
                resp = _error(b.status, f"{self.name} failed on purpose with {b.status}")
            else:
                status, payload = route(record)
                resp = web.json_response(payload, status=status)
        elif path.endswith("/models") and request.method == "GET":
            data = [{"id": m, "object": "model", "created": 0, "owned_by": self.name} for m in self.models]
            resp = web.json_response({"object": "list", "data": data})
        else:
            resp = _error(404, f"Invalid URL ({request.method} {request.path})", code="unknown_url")
        if not resp.prepared:
            resp.headers["x-fake-provider"] = self.name
        return resp

    def _behaviour(self, request: web.Request) -> Behaviour:
        b, h = self.defaults, request.headers

        def num(key: str) -> int | None:
            raw = h.get(key)
            return int(raw) if raw is not None and raw.strip().lstrip("-").isdigit() else None

        with self._lock:
            forced = self._fail_next.pop(0) if self._fail_next else None
        status = forced or num("x-fake-status") or b.status
        delay = num("x-fake-delay-ms")
        chunk_delay = num("x-fake-chunk-delay-ms")
        end_delay = num("x-fake-end-delay-ms")
        chunks = num("x-fake-chunks")
        chunk_chars = num("x-fake-chunk-chars")
        return Behaviour(
            status=status,
            delay_ms=b.delay_ms if delay is None else delay,
            chunk_delay_ms=b.chunk_delay_ms if chunk_delay is None else chunk_delay,
            end_delay_ms=b.end_delay_ms if end_delay is None else end_delay,
            chunks=b.chunks if chunks is None else chunks,
            reply=h.get("x-fake-reply", b.reply),
            chunk_chars=b.chunk_chars if chunk_chars is None else chunk_chars,
        )

    def _embeddings(self, body: Any) -> web.StreamResponse:
        """``POST /v1/embeddings`` as OpenAI answers it: one vector per input (8 floats from the text's
        sha256), ``encoding_format: base64`` as little-endian float32 bytes, usage in words."""
        texts = body.get("input") if isinstance(body, dict) else None
        if isinstance(texts, str):
            texts = [texts]
        if not isinstance(body, dict) or not isinstance(body.get("model"), str) or not isinstance(texts, list) or not texts:
            return _error(400, "Missing required parameter: 'model' or 'input'.", code="missing_required_parameter")
        data = []
        for i, text in enumerate(texts):
            digest = hashlib.sha256(str(text).encode()).digest()
            vector = [round(b / 255.0, 6) for b in digest[:8]]
            value: Any = base64.b64encode(struct.pack("<8f", *vector)).decode() if body.get("encoding_format") == "base64" else vector
            data.append({"object": "embedding", "index": i, "embedding": value})
        words = sum(len(str(t).split()) for t in texts)
        return web.json_response({"object": "list", "data": data, "model": body["model"],
                                  "usage": {"prompt_tokens": words, "total_tokens": words}})

    async def _messages(self, request: web.Request, body: Any) -> web.StreamResponse:
        """``POST /v1/messages`` as Anthropic answers it: a message, or its SSE event sequence.
        Checks what Anthropic checks first: the key (``x-api-key`` or a bearer token), ``anthropic-version``, ``max_tokens``."""
        b = self._behaviour(request)
        if b.delay_ms > 0:
            await asyncio.sleep(b.delay_ms / 1000)
        if b.status is not None and b.status >= 400:
            kind = {429: "rate_limit_error", 529: "overloaded_error"}.get(b.status, "api_error")
            return _anthropic_error(b.status, f"{self.name}: simulated error {b.status}", kind)
        if (refused := _anthropic_unauthenticated(request)) is not None:
            return refused
        if not request.headers.get("anthropic-version"):
            return _anthropic_error(400, "anthropic-version: header is required", "invalid_request_error")
        if not isinstance(body, dict) or not isinstance(body.get("messages"), list) or not body["messages"]:
            return _anthropic_error(400, "messages: Field required", "invalid_request_error")
        if not isinstance(body.get("max_tokens"), int):
            return _anthropic_error(400, "max_tokens: Field required", "invalid_request_error")
        model = str(body.get("model") or "")
        last_user = next((_text(m.get("content")) for m in reversed(body["messages"]) if isinstance(m, dict) and m.get("role") == "user"), "")
        pieces = chunk_content(b.reply if b.reply is not None else f"{self.name} says: {last_user}", b.chunks, b.chunk_chars)
        content = "".join(pieces)
        usage = {"input_tokens": _words(body["messages"]),
                 "output_tokens": len(content.split())}
        tool = request.headers.get("x-fake-tool")
        tools = [t.get("name") for t in body.get("tools") or [] if isinstance(t, dict)]
        if tool is not None and tool not in tools:
            return _anthropic_error(400, f"x-fake-tool {tool!r} is not in tools ({tools})", "invalid_request_error")
        mid = f"msg_{uuid.uuid4().hex[:24]}"
        headers = {"x-fake-provider": self.name, "request-id": f"req_{uuid.uuid4().hex[:16]}"}
        blocks: list[dict[str, Any]] = [{"type": "text", "text": content}]
        if tool is not None:
            blocks.append({"type": "tool_use", "id": f"toolu_{uuid.uuid4().hex[:20]}", "name": tool, "input": {"q": last_user}})
        stop = "tool_use" if tool is not None else "end_turn"
        message = {"id": mid, "type": "message", "role": "assistant", "model": model,
                   "content": blocks, "stop_reason": stop, "stop_sequence": None, "usage": usage}
        if not body.get("stream"):
            return web.json_response(message, headers=headers)

        def event(kind: str, data: dict[str, Any]) -> bytes:
            return f"event: {kind}\ndata: {json.dumps({'type': kind, **data})}\n\n".encode()

        start = {**message, "content": [], "stop_reason": None, "usage": {"input_tokens": usage["input_tokens"], "output_tokens": 1}}
        frames = [event("message_start", {"message": start}),
                  event("content_block_start", {"index": 0, "content_block": {"type": "text", "text": ""}}),
                  event("ping", {})]
        frames += [event("content_block_delta", {"index": 0, "delta": {"type": "text_delta", "text": p}}) for p in pieces]
        frames.append(event("content_block_stop", {"index": 0}))
        if tool is not None:
            arguments = json.dumps(blocks[1]["input"])
            frames += [event("content_block_start", {"index": 1, "content_block": {**blocks[1], "input": {}}}),
                       *(event("content_block_delta", {"index": 1, "delta": {"type": "input_json_delta", "partial_json": piece}})
                         for piece in (arguments[:5], arguments[5:])),
                       event("content_block_stop", {"index": 1})]
        frames += [event("message_delta", {"delta": {"stop_reason": stop, "stop_sequence": None},
                                           "usage": {"output_tokens": usage["output_tokens"]}}),
                   event("message_stop", {})]
        return await _stream(request, {**headers, "content-type": "text/event-stream", "cache-control": "no-cache"}, frames, b)

    async def _responses(self, request: web.Request, body: Any) -> web.StreamResponse:
        """``POST /v1/responses`` as OpenAI answers it: a ``response`` object, or its event stream
        (``response.created`` ... ``response.completed``); the reply is said about the last user
        message of ``input``; ``x-fake-tool`` adds a ``function_call`` item after the message."""
        b, refused = await self._openai_start(request, body)
        if refused is not None:
            return refused
        model, items = body.get("model"), body.get("input")
        if not isinstance(model, str) or not model:
            return _error(400, "Missing required parameter: 'model'.", code="missing_required_parameter", param="model")
        if isinstance(items, str):
            items = [{"role": "user", "content": items}]
        if not isinstance(items, list) or not items:
            return _error(400, "Missing required parameter: 'input'.", code="missing_required_parameter", param="input")
        users = [i for i in items if isinstance(i, dict) and i.get("role") == "user"]
        last_user = _text(users[-1].get("content")) if users else ""
        tool = request.headers.get("x-fake-tool")
        tools = [t.get("name") for t in body.get("tools") or [] if isinstance(t, dict) and t.get("type") == "function"]
        if tool is not None and tool not in tools:
            return _error(400, f"x-fake-tool {tool!r} is not in tools ({tools})", param="tools")
        pieces = chunk_content(b.reply if b.reply is not None else f"{self.name} says: {last_user}", b.chunks, b.chunk_chars)
        content = "".join(pieces)
        input_tokens = _words(items)
        usage = {"input_tokens": input_tokens, "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
                 "output_tokens": len(content.split()), "output_tokens_details": {"reasoning_tokens": 0},
                 "total_tokens": input_tokens + len(content.split())}
        part = {"type": "output_text", "text": content, "annotations": [], "logprobs": []}
        output: list[dict[str, Any]] = [{"id": f"msg_{uuid.uuid4().hex}", "type": "message", "status": "completed", "role": "assistant",
                                         "content": [part]}]
        if tool is not None:
            output.append({"id": f"fc_{uuid.uuid4().hex}", "type": "function_call", "status": "completed", "call_id": f"call_{uuid.uuid4().hex[:24]}",
                           "name": tool, "arguments": json.dumps({"q": last_user})})
        response = {"id": f"resp_{uuid.uuid4().hex}", "object": "response", "created_at": int(time.time()), "status": "completed",
                    "error": None, "incomplete_details": None, "instructions": body.get("instructions"), "model": model,
                    "output": output, "parallel_tool_calls": True, "store": bool(body.get("store", True)), "temperature": 1.0,
                    "tool_choice": "auto", "tools": body.get("tools") or [], "top_p": 1.0, "usage": usage, "metadata": {}}
        headers = {"x-fake-provider": self.name, "x-request-id": f"req_{uuid.uuid4().hex[:16]}"}
        if not body.get("stream"):
            return web.json_response(response, headers=headers)

        seq = iter(range(1_000_000))

        def event(kind: str, data: dict[str, Any]) -> bytes:
            return f"event: {kind}\ndata: {json.dumps({'type': kind, 'sequence_number': next(seq), **data})}\n\n".encode()

        started = {**response, "status": "in_progress", "output": [], "usage": None}
        message = output[0]
        frames = [event("response.created", {"response": started}), event("response.in_progress", {"response": started}),
                  event("response.output_item.added", {"output_index": 0, "item": {**message, "status": "in_progress", "content": []}}),
                  event("response.content_part.added", {"item_id": message["id"], "output_index": 0, "content_index": 0,
                                                        "part": {**part, "text": ""}})]
        frames += [event("response.output_text.delta", {"item_id": message["id"], "output_index": 0, "content_index": 0, "delta": p,
                                                        "logprobs": []}) for p in pieces]
        frames += [event("response.output_text.done", {"item_id": message["id"], "output_index": 0, "content_index": 0, "text": content,
                                                       "logprobs": []}),
                   event("response.content_part.done", {"item_id": message["id"], "output_index": 0, "content_index": 0, "part": part}),
                   event("response.output_item.done", {"output_index": 0, "item": message})]
        if tool is not None:
            call = output[1]
            frames += [event("response.output_item.added", {"output_index": 1, "item": {**call, "status": "in_progress", "arguments": ""}}),
                       *(event("response.function_call_arguments.delta", {"item_id": call["id"], "output_index": 1, "delta": piece})
                         for piece in (call["arguments"][:5], call["arguments"][5:])),
                       event("response.function_call_arguments.done", {"item_id": call["id"], "output_index": 1, "name": tool,
                                                                       "arguments": call["arguments"]}),
                       event("response.output_item.done", {"output_index": 1, "item": call})]
        frames.append(event("response.completed", {"response": response}))
        return await _stream(request, {**headers, "content-type": "text/event-stream", "cache-control": "no-cache"}, frames, b)

    async def _converse(self, request: web.Request, body: Any, model: str, *, stream: bool) -> web.StreamResponse:
        """Bedrock's Converse (JSON) and ConverseStream (event-stream) answers. Checks what Bedrock
        checks: a Bearer API key, ``messages`` of content blocks, alternating roles starting with user."""
        b = self._behaviour(request)
        if b.delay_ms > 0:
            await asyncio.sleep(b.delay_ms / 1000)
        if b.status is not None and b.status >= 400:
            return _bedrock_error(b.status, f"{self.name}: simulated error {b.status}")
        auth = request.headers.get("authorization", "")
        if auth.startswith("AWS4-HMAC-SHA256 "):
            why = check_sigv4(request.method, request.raw_path, request.headers, await request.read(), FAKE_AWS_KEYS)
            if why is not None:
                return _bedrock_error(403, why)
        elif not auth.startswith("Bearer "):
            return _bedrock_error(403, "Authorization header requires a Bearer API key or an AWS SigV4 signature")
        messages = body.get("messages") if isinstance(body, dict) else None
        if not isinstance(messages, list) or not messages:
            return _bedrock_error(400, "1 validation error detected: Value null at 'messages' failed to satisfy constraint")
        for i, m in enumerate(messages):
            if not isinstance(m, dict) or m.get("role") != ("user", "assistant")[i % 2] or not isinstance(m.get("content"), list):
                return _bedrock_error(400, "A conversation must start with a user message and alternate between user and "
                                           f"assistant roles, each with a list of content blocks (messages.{i})")
        if "model" in body or "stream" in body:
            return _bedrock_error(400, f"Malformed input request: extraneous key [{'model' if 'model' in body else 'stream'}] is not permitted")
        last_user = " ".join(blk["text"] for blk in messages[-1]["content"] if isinstance(blk, dict) and isinstance(blk.get("text"), str))
        tools = [t["toolSpec"]["name"] for t in (body.get("toolConfig") or {}).get("tools", []) if isinstance(t, dict) and "toolSpec" in t]
        tool = request.headers.get("x-fake-tool")
        if tool is not None and tool not in tools:
            return _bedrock_error(400, f"x-fake-tool {tool!r} is not in toolConfig.tools ({tools})")
        pieces = chunk_content(b.reply if b.reply is not None else f"{self.name} says: {last_user}", b.chunks, b.chunk_chars)
        content = "".join(pieces)
        input_tokens = sum(len(str(blk.get("text", "")).split()) for m in messages for blk in m["content"] if isinstance(blk, dict))
        usage = {"inputTokens": input_tokens, "outputTokens": len(content.split()), "totalTokens": input_tokens + len(content.split())}
        blocks: list[dict[str, Any]] = [{"text": content}]
        if tool is not None:
            blocks.append({"toolUse": {"toolUseId": f"tooluse_{uuid.uuid4().hex[:20]}", "name": tool, "input": {"q": last_user}}})
        stop = "tool_use" if tool is not None else "end_turn"
        headers = {"x-fake-provider": self.name, "x-amzn-RequestId": str(uuid.uuid4()), "x-fake-model": model}
        if not stream:
            return web.json_response({"output": {"message": {"role": "assistant", "content": blocks}}, "stopReason": stop,
                                      "usage": usage, "metrics": {"latencyMs": 12}}, headers=headers)

        def event(kind: str, data: dict[str, Any]) -> bytes:
            return event_frame({":event-type": kind, ":content-type": "application/json", ":message-type": "event"},
                               json.dumps({**data, "p": "abcdefgh"}).encode())  # "p": Bedrock's padding field

        frames = [event("messageStart", {"role": "assistant"})]
        frames += [event("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": p}}) for p in pieces]
        frames.append(event("contentBlockStop", {"contentBlockIndex": 0}))
        if tool is not None:
            use = blocks[1]["toolUse"]
            arguments = json.dumps(use["input"])
            frames += [event("contentBlockStart", {"contentBlockIndex": 1, "start": {"toolUse": {"toolUseId": use["toolUseId"], "name": tool}}}),
                       event("contentBlockDelta", {"contentBlockIndex": 1, "delta": {"toolUse": {"input": arguments[:5]}}}),
                       event("contentBlockDelta", {"contentBlockIndex": 1, "delta": {"toolUse": {"input": arguments[5:]}}}),
                       event("contentBlockStop", {"contentBlockIndex": 1})]
        frames += [event("messageStop", {"stopReason": stop}), event("metadata", {"usage": usage, "metrics": {"latencyMs": 12}})]
        return await _stream(request, {**headers, "content-type": "application/vnd.amazon.eventstream"}, frames, b)

    async def _openai_start(self, request: web.Request, body: Any) -> tuple[Behaviour, web.Response | None]:
        """What both OpenAI APIs do first: the request's behaviour, its delay, and the error it asked
        for or a body that is no JSON object (None: go on)."""
        b = self._behaviour(request)
        if b.delay_ms > 0:
            await asyncio.sleep(b.delay_ms / 1000)
        if b.status is not None and b.status >= 400:
            return b, _error(b.status, f"{self.name}: simulated error {b.status}")
        if not isinstance(body, dict):
            return b, _error(400, "We could not parse the JSON body of your request.", code="invalid_json")
        return b, None

    async def _chat(self, request: web.Request, body: Any) -> web.StreamResponse:
        b, refused = await self._openai_start(request, body)
        if refused is not None:
            return refused
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            return _error(400, "Missing required parameter: 'messages'.", code="missing_required_parameter", param="messages")
        model = body.get("model")
        if not isinstance(model, str) or not model:
            return _error(400, "you must provide a model parameter", code="missing_required_parameter", param="model")

        last_user = next((_text(m.get("content")) for m in reversed(messages) if isinstance(m, dict) and m.get("role") == "user"), "")
        pieces = chunk_content(b.reply if b.reply is not None else f"{self.name} says: {last_user}", b.chunks, b.chunk_chars)
        content = "".join(pieces)
        prompt_tokens = _words(messages)
        completion_tokens = len(content.split())
        usage = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens, "total_tokens": prompt_tokens + completion_tokens}
        cid, created = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time())
        headers = {"x-fake-provider": self.name, "x-request-id": f"req_{uuid.uuid4().hex[:16]}"}
        tool = request.headers.get("x-fake-tool")
        tools = [(t.get("function") or {}).get("name") for t in body.get("tools") or [] if isinstance(t, dict)]
        if tool is not None and tool not in tools:
            return _error(400, f"x-fake-tool {tool!r} is not in tools ({tools})", param="tools")
        call = {"id": f"call_{uuid.uuid4().hex[:24]}", "type": "function",
                "function": {"name": tool, "arguments": json.dumps({"q": last_user})}} if tool is not None else None
        finish = "tool_calls" if call is not None else "stop"
        message: dict[str, Any] = {"role": "assistant", "content": content}
        if call is not None:
            message["tool_calls"] = [call]

        if not body.get("stream"):
            return web.json_response(
                {
                    "id": cid,
                    "object": "chat.completion",
                    "created": created,
                    "model": model,
                    "system_fingerprint": "fp_fake",
                    "choices": [
                        {"index": 0, "message": message, "logprobs": None, "finish_reason": finish}
                    ],
                    "usage": usage,
                },
                headers=headers,
            )

        opts = body.get("stream_options")
        include_usage = isinstance(opts, dict) and opts.get("include_usage") is True

        def frame(choices: list[dict[str, Any]], usage_value: dict[str, int] | None = None) -> bytes:
            chunk: dict[str, Any] = {
                "id": cid,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "system_fingerprint": "fp_fake",
                "choices": choices,
            }
            if include_usage:  # as OpenAI does: null on every chunk but the last
                chunk["usage"] = usage_value
            return b"data: " + json.dumps(chunk, separators=(",", ":")).encode() + b"\n\n"

        def delta(d: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
            return {"index": 0, "delta": d, "logprobs": None, "finish_reason": finish}

        frames = [frame([delta({"role": "assistant", "content": ""})])]
        frames += [frame([delta({"content": p})]) for p in pieces]
        if call is not None:  # OpenAI's shape: the call's id, type and name first, then its arguments in pieces
            arguments = call["function"]["arguments"]
            frames += [frame([delta({"tool_calls": [{"index": 0, "id": call["id"], "type": "function",
                                                     "function": {"name": tool, "arguments": ""}}]})]),
                       *(frame([delta({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]})])
                         for piece in (arguments[:5], arguments[5:]))]
        frames.append(frame([delta({}, finish)]))
        if include_usage:
            frames.append(frame([], usage))
        frames.append(b"data: [DONE]\n\n")

        return await _stream(request, {**headers, "content-type": "text/event-stream", "cache-control": "no-cache"}, frames, b)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="Run the fake OpenAI-compatible provider.")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--name", default="fake-a")
    ap.add_argument("--history", type=int, default=None, help="keep only the last N requests (default: all)")
    ap.add_argument("--routes", metavar="MODULE:NAME", help="app endpoints to serve too: a dict path prefix -> handler")
    args = ap.parse_args(argv)
    routes = None
    if args.routes:
        module, _, name = args.routes.partition(":")
        routes = getattr(importlib.import_module(module), name)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with FakeProvider(args.name, args.host, args.port, routes=routes, history=args.history) as fp:
        print(f"fake provider {fp.name} listening on {fp.base_url}", flush=True)
        try:
            while not stop.wait(0.5):
                pass
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
