"""Between the API a client speaks and the API its provider speaks: OpenAI chat completions,
Anthropic Messages, OpenAI's Responses API (client side only), or (provider side only) Amazon
Bedrock's Converse API (DESIGN.md, "provider families", "Anthropic API on the listeners").

Inside, a chat request is always OpenAI-shaped (:class:`~ext_proc.wire.openai.ChatRequest`): the
router and the prompt pipeline see one shape. :class:`Exchange` does the rest for one request:

* :meth:`Exchange.parse`: the client's body → a ChatRequest (an Anthropic body is translated);
* :meth:`Exchange.upstream_body`: what goes to the provider, in the provider's API, and the path
  it goes to (``None`` where the client's own bytes go unchanged);
* :meth:`Exchange.usage` / :meth:`Exchange.response`: the provider's answer, JSON or SSE chunk by
  chunk: its usage read in the provider's shape, its bytes turned into the client's API;
* :meth:`Exchange.answer`: an answer sidegate writes itself (guard, clarifying question, an error),
  built in OpenAI's shape, in the client's API.

A Responses API client is an OpenAI chat client inside (``client`` is ``openai``: the output
guards, the response cache and the metadata see chat completions); its request is translated on
the way in, and :meth:`Exchange.present` / :meth:`Exchange.present_answer` turn the chat answer into
a ``response`` object or its event stream as the last step before it leaves (``presented``).

Usage::

    ex = Exchange(client="anthropic")
    req = ex.parse(body)                                   # MalformedRequest (400) on a bad body
    body, path = ex.upstream_body(req, decision_body, provider)
    ex.start_response(provider, status=200, streaming=True)
    usage = ex.usage(chunk); out = ex.response(chunk, end_of_stream)
"""

from __future__ import annotations

import json
from typing import Any

from ext_proc.chat.conversations import Conversations
from ext_proc.config import LlmProvider
from ext_proc.errors import MalformedRequest, RenderedError, SidegateError, openai_error_of, render_error
from ext_proc.names import CHAT_COMPLETIONS_PATH, MESSAGES_PATH, RESPONSES_PATH
from ext_proc.processor import Immediate
from ext_proc.wire import anthropic, bedrock, json_tool, responses
from ext_proc.wire.openai import ChatRequest, json_object, parse_chat_request, usage_from_body, usage_from_sse

__all__ = ["API_PATHS", "Exchange"]

API_PATHS = {"openai": CHAT_COMPLETIONS_PATH, "anthropic": MESSAGES_PATH, "responses": RESPONSES_PATH}


class Exchange:
    """One request's translation between ``client`` (its API) and the provider the router chose."""

    def __init__(self, client: str = "openai") -> None:
        assert client in API_PATHS, client
        self.presented = client  # the API the client gets its answer in
        self.client = "openai" if client == "responses" else client  # the API everything before presenting sees
        self._presenter: responses.ChatToResponsesStream | None = None
        self._raw: dict[str, Any] | None = None  # a Responses client's own request (with what the stored responses resolved)
        self._resolved = False  # the stored responses changed it: a native provider gets it rewritten
        self._stored = True  # state_storage is on (what a reference not resolved is told)
        self._echo: dict[str, Any] = {}  # what the presented response repeats of the request (store, previous_response_id)
        self._final: dict[str, Any] | None = None  # the presented response, JSON
        self._remembered = False
        self._untranslatable: list[MalformedRequest] = []  # what of it has no chat-completions form
        self.native = False  # a Responses client's request went to the provider's own /v1/responses
        self._native_reader: anthropic.SSEReader | None = None
        self.upstream = client  # the provider's API, once chosen
        self.model: str | None = None
        self._status = 200
        self._stream: anthropic.MessagesToChatStream | anthropic.ChatToMessagesStream | None = None
        self._scanner: anthropic.MessagesUsageScanner | None = None
        self._sse_tail = b""
        self._chat_body: dict[str, Any] | None = None  # an Anthropic client's request, translated
        self._converse: bedrock.ConverseToChatStream | None = None  # a Bedrock stream, to OpenAI chunks
        self._converse_out = b""  # what the Bedrock stream's last bytes became, read by usage(), sent by response()
        self._usage_sent = False
        self._fed = False  # usage() fed the current chunk to the Bedrock decoder
        self._include_usage = True  # an OpenAI client's stream_options.include_usage (Bedrock streams)
        self._error_type: str | None = None
        self._json_tool: json_tool.ContentStream | None = None  # a JSON response_format sent as a forced tool call

    @property
    def translating(self) -> bool:
        return self.upstream != self.client

    # -- request ------------------------------------------------------------------------------
    @property
    def _custom(self) -> frozenset[str]:
        return responses.custom_tools(self._raw or {})

    @property
    def presenting(self) -> bool:
        """A Responses API client: the chat answer is presented as a ``response`` at the end."""
        return self.presented == "responses"

    async def read(self, body: bytes, conversations: Conversations | None) -> ChatRequest:
        """:meth:`parse`, after a Responses client's references (``previous_response_id``,
        ``item_reference``) are resolved from the stored responses (None: state_storage off)."""
        if self.presenting:
            await self._recall(body, conversations)
        return self.parse(body)

    async def _recall(self, body: bytes, conversations: Conversations | None) -> None:
        raw = json_object(body, "Responses API")
        self._stored = conversations is not None
        previous = raw.get("previous_response_id")
        if conversations is not None:
            raw, self._resolved = await conversations.recall(raw)
            if raw.get("store") is not False:
                self._echo["store"] = True
        if isinstance(previous, str):
            self._echo["previous_response_id"] = previous
        self._raw = raw

    @property
    def request(self) -> dict[str, Any]:
        """A Responses client's request as :meth:`read` left it (its input: the whole conversation found)."""
        return self._raw or {}

    def parse(self, body: bytes) -> ChatRequest:
        if self.presenting:  # what has no chat form waits: a native_responses provider takes the request as it came
            if self._raw is None:
                self._raw = json_object(body, "Responses API")
            self._chat_body = responses.responses_request_to_chat(self._raw, problems=self._untranslatable, stored=self._stored)
            return parse_chat_request(json.dumps(self._chat_body).encode())
        if self.client == "openai":
            return parse_chat_request(body)
        self._chat_body = anthropic.messages_request_to_chat(anthropic.parse_messages_request(body).body)
        return parse_chat_request(json.dumps(self._chat_body).encode())

    def upstream_body(self, req: ChatRequest, body: bytes | None, provider: LlmProvider, *,
                      native_ok: bool = True) -> tuple[bytes | None, str | None]:
        """(the body for ``provider`` or None: the client's bytes unchanged; the path or None: unchanged).

        ``body``: the router's OpenAI-shaped body (None: the request as the client sent it).
        ``native_ok``: a Responses client's request may go to a ``native_responses`` provider as it
        came (the caller reads nothing of the answer in chat's shape: no output guards, no fallbacks)."""
        self.upstream = provider.wire
        self.model = provider.model or req.model
        if self.presenting and native_ok and provider.native_responses and self._same_request(body):
            self.native = True
            self._native_reader = anthropic.SSEReader()
            if self._raw is not None and (self._resolved or (provider.model and self._raw.get("model") != provider.model)):
                return json.dumps({**self._raw, "model": provider.model or self._raw.get("model")}).encode(), None
            return None, None
        if self._untranslatable:  # to chat completions, and something in it has no such form
            raise self._untranslatable[0]
        if self.upstream == "bedrock":  # Converse: the model and the streaming choice are in the path
            chat_in: dict[str, Any] = self._structured(json.loads(body) if body is not None else dict(req.body), "Bedrock")
            model = provider.model or str(chat_in.get("model") or "")
            path = bedrock.converse_path(model, stream=bool(chat_in.get("stream")), base_path=provider.upstream.base_path)
            options = chat_in.get("stream_options")
            self._include_usage = isinstance(options, dict) and options.get("include_usage") is True
            return json.dumps(bedrock.chat_request_to_converse(chat_in)).encode(), path
        if self.presenting and not self.translating:  # chat completions, whatever the client's path was
            return (body if body is not None else json.dumps(self._chat_body).encode()), CHAT_COMPLETIONS_PATH
        if not self.translating and (self.client == "openai" or body is None):
            return body, None
        chat: dict[str, Any] = json.loads(body) if body is not None else self._chat_body or dict(req.body)
        if provider.model:
            chat = {**chat, "model": provider.model}
        out = anthropic.chat_request_to_messages(self._structured(chat, "Anthropic")) if self.upstream == "anthropic" else chat
        return json.dumps(out).encode(), API_PATHS[self.upstream] if self.translating else None

    def _structured(self, chat: dict[str, Any], api: str) -> dict[str, Any]:
        """A chat request for a provider without ``response_format``: a JSON one becomes a forced tool call."""
        if not json_tool.wants_json(chat):
            return chat
        self._json_tool = json_tool.ContentStream()
        return json_tool.as_tool_call(chat, api)

    def _same_request(self, body: bytes | None) -> bool:
        """Whether the router's body says what the client's request does, but for ``model`` (an
        ingress pipeline that added a system prompt did not: that one goes as chat completions)."""
        if body is None:
            return True
        routed = {k: v for k, v in json.loads(body).items() if k != "model"}
        return routed == {k: v for k, v in (self._chat_body or {}).items() if k != "model"}

    # -- response -----------------------------------------------------------------------------
    @property
    def _status_ok(self) -> bool:
        return 200 <= self._status < 300

    @staticmethod
    def is_stream(content_type: str) -> bool:
        """Whether a provider's answer is a stream: SSE, or Bedrock's event-stream framing."""
        return "text/event-stream" in content_type or bedrock.EVENT_STREAM_TYPE in content_type

    def start_response(self, *, status: str, streaming: bool, error_type: str | None = None) -> None:
        """``error_type``: Bedrock's ``x-amzn-errortype`` header (the exception's name), if any."""
        self._status = int(status) if status.isdigit() else 502
        self._error_type = error_type
        if self.upstream == "bedrock":
            if streaming and self._status_ok:
                # an Anthropic client's message_delta needs the usage chunk; an OpenAI client gets it when it asked
                self._converse = bedrock.ConverseToChatStream(model=self.model, include_usage=self._include_usage or self.client == "anthropic")
                if self.client == "anthropic":
                    self._stream = anthropic.ChatToMessagesStream(model=self.model)
            return
        if self.upstream == "anthropic" and streaming:
            self._scanner = anthropic.MessagesUsageScanner()
        if self.translating and streaming and self._status_ok:
            if self.upstream == "anthropic":
                self._stream = anthropic.MessagesToChatStream(model=self.model, include_usage=True)
            else:
                self._stream = anthropic.ChatToMessagesStream(model=self.model)

    def usage(self, chunk: bytes, *, streaming: bool) -> dict[str, Any] | None:
        """OpenAI-shaped usage found in the provider's bytes (a whole JSON body, or the next SSE chunk)."""
        if self.native:
            return self._native_usage(chunk, streaming=streaming)
        if self.upstream == "bedrock":
            if not streaming:
                return bedrock.usage_from_converse(chunk) if self._status_ok else None
            if self._converse is None:
                return None
            self._converse_out += self._converse.feed(chunk)
            self._fed = True
            if self._converse.usage is not None and not self._usage_sent:
                self._usage_sent = True
                return self._converse.usage
            return None
        if self.upstream == "anthropic":
            if streaming:
                return self._scanner.feed(chunk) if self._scanner is not None else None
            return anthropic.usage_from_message(chunk)
        if streaming:
            usage, self._sse_tail = usage_from_sse(self._sse_tail + chunk)
            return usage
        return usage_from_body(chunk)

    def _native_usage(self, chunk: bytes, *, streaming: bool) -> dict[str, Any] | None:
        """Chat-shaped usage of a Responses answer: its ``usage``, or that of the stream's last ``response.*`` event."""
        if not self._status_ok:
            return None
        if not streaming:
            try:
                return responses.chat_usage(json.loads(chunk).get("usage"))
            except (ValueError, AttributeError):
                return None
        assert self._native_reader is not None
        found = None
        for _event, data in self._native_reader.feed(chunk):
            if '"usage"' in data:
                try:
                    event = json.loads(data)
                except ValueError:
                    continue
                if isinstance(event, dict) and isinstance(event.get("response"), dict):
                    found = responses.chat_usage(event["response"].get("usage")) or found
        return found

    def _json_content(self, chat: bytes, *, end_of_stream: bool) -> bytes:
        """Chat SSE chunks with the JSON tool's call as their content, as a provider with
        ``response_format`` streams (unchanged when no JSON ``response_format`` was asked for)."""
        if self._json_tool is None:
            return chat
        return self._json_tool.feed(chat) + (self._json_tool.close() if end_of_stream else b"")

    def response(self, chunk: bytes, *, streaming: bool, end_of_stream: bool) -> bytes | None:
        """The provider's bytes in the client's API (None: unchanged)."""
        if not self.translating:
            if self.client == "anthropic" and not self._status_ok and not streaming and openai_error_of(chunk) is not None:
                return anthropic.error_body_to_messages(chunk, self._status)  # Envoy's own (provider down) in Anthropic's shape
            return None
        if self.upstream == "bedrock":
            return self._from_bedrock(chunk, streaming=streaming, end_of_stream=end_of_stream)
        if streaming and self._stream is not None:
            return self._json_content(self._stream.feed(chunk) + (self._stream.close() if end_of_stream else b""), end_of_stream=end_of_stream)
        if not self._status_ok:
            if self.upstream == "anthropic":
                # Envoy's own answer (provider unreachable or silent) is OpenAI's shape already: its code stays
                return None if openai_error_of(chunk) is not None else anthropic.error_body_to_chat(chunk, self._status)
            return anthropic.error_body_to_messages(chunk, self._status)
        if self.upstream == "anthropic":
            completion = anthropic.message_to_chat_completion(chunk, model=self.model)
            return json.dumps(json_tool.completion_content(completion) if self._json_tool is not None else completion).encode()
        return json.dumps(anthropic.chat_completion_to_message(chunk, model=self.model)).encode()

    def _from_bedrock(self, chunk: bytes, *, streaming: bool, end_of_stream: bool) -> bytes:
        if streaming and self._converse is not None:
            if not self._fed:  # usage() decodes a chunk first, when it is called
                self._converse_out += self._converse.feed(chunk)
            self._fed = False
            chat, self._converse_out = self._converse_out + (self._converse.close() if end_of_stream else b""), b""
            chat = self._json_content(chat, end_of_stream=end_of_stream)
            if self._stream is None:
                return chat
            return self._stream.feed(chat) + (self._stream.close() if end_of_stream else b"")
        if not self._status_ok:
            error = chunk if openai_error_of(chunk) is not None else bedrock.error_body_to_chat(chunk, self._status, self._error_type)
            return anthropic.error_body_to_messages(error, self._status) if self.client == "anthropic" else error
        completion = bedrock.converse_to_chat_completion(chunk, model=self.model)
        if self._json_tool is not None:
            completion = json_tool.completion_content(completion)
        if self.client == "anthropic":
            return json.dumps(anthropic.chat_completion_to_message(completion, model=self.model)).encode()
        return json.dumps(completion).encode()

    # -- a Responses API client --------------------------------------------------------------
    @property
    def reshaping(self) -> bool:
        """Whether the answer's bytes change on their way to the client (translated or presented)."""
        return self.translating or (self.presenting and not self.native)

    def start_presenting(self, *, streaming: bool) -> None:
        """The provider's answer begins: a 2xx stream is presented event by event."""
        if self.presenting and not self.native and streaming and self._status_ok:
            self._presenter = self._response_stream()

    def present(self, chunk: bytes, *, streaming: bool, end_of_stream: bool) -> bytes | None:
        """The chat answer's bytes as the Responses client gets them (None: unchanged: not presenting,
        or an error, whose JSON is the same in both APIs)."""
        if not self.presenting or self.native or not self._status_ok:
            return None
        if streaming:
            if self._presenter is None:
                return None
            return self._presenter.feed(chunk) + (self._presenter.close() if end_of_stream else b"")
        if not end_of_stream:
            return b""  # a buffered JSON answer comes whole
        return self._response_json(chunk)

    def _response_stream(self) -> responses.ChatToResponsesStream:
        return responses.ChatToResponsesStream(request=self._chat_body or {}, model=self.model, custom=self._custom, echo=self._echo)

    def _response_json(self, chat: bytes) -> bytes:
        self._final = responses.chat_completion_to_response(chat, request=self._chat_body or {}, custom=self._custom, echo=self._echo)
        return json.dumps(self._final).encode()

    def to_remember(self) -> dict[str, Any] | None:
        """The response just presented, once, when it is to be stored (state_storage on, and the
        request did not say ``store: false``): a whole JSON answer, or a stream's at its
        ``response.completed`` / ``response.incomplete`` (before that event goes to the client, so
        the client's next request finds it)."""
        if self._remembered or not self._echo.get("store"):
            return None
        final = self._presenter.final if self._presenter is not None else self._final
        if final is None:
            return None
        self._remembered = True
        return final

    def present_answer(self, reply: Immediate) -> Immediate:
        """An answer sidegate holds whole (its own, or a cached one), chat-shaped, as the Responses client gets it."""
        if not self.presenting or reply.status != 200:
            return reply
        if "text/event-stream" in reply.headers.get("content-type", ""):
            stream = self._presenter = self._response_stream()
            body = stream.feed(reply.body) + stream.close()
        else:
            body = self._response_json(reply.body)
        headers = {k: v for k, v in reply.headers.items() if k.lower() != "content-length"}
        return Immediate(status=reply.status, body=body, headers=headers, details=reply.details)

    # -- sidegate's own answers ---------------------------------------------------------------
    def answer(self, reply: Immediate) -> Immediate:
        """An answer sidegate wrote (OpenAI-shaped) in the client's API (a Responses client's: chat,
        until :meth:`present_answer`)."""
        if self.client == "openai":
            return reply
        ctype = reply.headers.get("content-type", "")
        if reply.status != 200:
            body = anthropic.error_body_to_messages(reply.body, reply.status)
        elif "text/event-stream" in ctype:
            stream = anthropic.ChatToMessagesStream()
            body = stream.feed(reply.body) + stream.close()
        else:
            body = json.dumps(anthropic.chat_completion_to_message(reply.body)).encode()
        return Immediate(status=reply.status, body=body, headers=reply.headers, details=reply.details)

    def error(self, exc: SidegateError, *, request_id: str) -> RenderedError:
        if self.client == "anthropic":
            return anthropic.render_anthropic_error(exc, request_id=request_id)
        return render_error(exc, request_id=request_id)
