"""OpenAI's Responses API (``POST /v1/responses``) on the listeners, as a view of chat completions.

The OpenAI SDK's ``client.responses``, the Agents SDK and Codex speak it. Inside sidegate a request
is always a chat completion (:mod:`ext_proc.wire.openai`): the guard, the prompt pipeline, the
routing and every provider family see that one shape. So a Responses request is translated into a
chat-completions body on the way in, and the chat answer (JSON, or its SSE chunks) is presented
as a Responses object or its event stream on the way out, whatever API the provider speaks:

* :func:`responses_request_to_chat`: the request (checked as OpenAI checks it: ``param`` is the
  path of what is wrong) -> a chat-completions body;
* :func:`chat_completion_to_response`: a ``chat.completion`` -> a ``response`` object;
* :class:`ChatToResponsesStream`: ``chat.completion.chunk`` SSE -> the Responses event stream
  (``response.created`` ... ``response.completed``), in the order and with the item identities
  the ``openai`` SDK's stream accumulator checks.

A request translated for a provider carries its whole conversation in ``input``: a
``previous_response_id`` or ``item_reference`` the stored responses resolved
(:mod:`ext_proc.chat.conversations`) arrives here already expanded, and one they did not is a 400
(``previous_response_not_found``, ``item_not_found``). ``conversation``, ``background`` and stored
prompts are refused with what to send instead, as are tools other than ``function`` and ``custom`` (web search,
file search, code interpreter, computer use, MCP and image generation run inside OpenAI; shell
tools have no chat-completions form) and parameters this module does not know. A custom tool
(free-form text input, such as Codex's ``apply_patch``) is sent as a function of one string
parameter, ``input``, and its calls come back as ``custom_tool_call`` items; a provider with
``native_responses`` gets such a request as it came (``problems``: noted, not raised). What has no
chat-completions form and changes no answer is dropped: ``store`` (read by the stored responses;
the answer says ``store: true`` when it is stored), ``include``, ``truncation``, ``prompt_cache_key``, ``safety_identifier``,
``stream_options``, ``reasoning.summary``, ``reasoning`` items in ``input``. A model's reasoning is
not returned (chat completions carry none).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Mapping
from typing import Any

from ext_proc.errors import MalformedRequest
from ext_proc.wire.anthropic import ChatChunkTranslator, first_choice
from ext_proc.wire.openai import as_object, json_object, nonnegative

__all__ = ["CUSTOM_INPUT", "ChatToResponsesStream", "chat_completion_to_response", "chat_usage", "custom_tools", "responses_request_to_chat"]

# request keys copied to chat completions as they are
_SAME = ("model", "temperature", "top_p", "parallel_tool_calls", "user", "service_tier", "top_logprobs", "stream")
# request keys that change nothing sidegate can do (documented above)
_DROPPED = {"store", "include", "truncation", "prompt_cache_key", "safety_identifier", "stream_options", "metadata",
            "max_tool_calls", "prompt_cache_retention"}
_REFUSED = {
    "conversation": "sidegate stores no conversations (the Conversations API): send previous_response_id, or the whole "
                    "conversation in input",
    "background": "background responses are not supported through sidegate: send the request without background",
    "prompt": "stored prompt templates are not supported through sidegate: send instructions and input instead",
}
_KNOWN = set(_SAME) | _DROPPED | set(_REFUSED) | {"input", "instructions", "tools", "tool_choice", "max_output_tokens", "text",
                                                   "reasoning", "previous_response_id"}
# what to do about a reference sidegate could not resolve (state_storage on, or off)
def _not_held(stored: bool, what: str) -> str:
    """Why a reference was not resolved, and what to send (``what``: the conversation, the item) instead."""
    if not stored:
        return f"state_storage is off (type: none): send the whole {what} in input"
    return (f"sidegate keeps the responses it answered for state_storage.ttl, not those a provider's own Responses API "
            f"answered (native_responses): send the whole {what} in input")
CUSTOM_INPUT = "input"  # the one parameter of a custom tool's function form
# tool types OpenAI runs itself (the others, such as custom and local_shell, run in the client)
_HOSTED_TOOLS = {"web_search", "web_search_preview", "file_search", "code_interpreter", "computer_use_preview", "computer",
                 "mcp", "image_generation"}
_FINISH_STATUS = {"length": ("incomplete", "max_output_tokens"), "content_filter": ("incomplete", "content_filter")}


def _bad(param: str, message: str, code: str = "invalid_value") -> MalformedRequest:
    return MalformedRequest(f"{param}: {message}", code=code, param=param)


def _unsupported(problems: list[MalformedRequest] | None, error: MalformedRequest) -> None:
    """What sidegate cannot translate: a 400 now (``problems`` None), else noted and left out (the
    request may yet go to a provider's own Responses API as it came)."""
    if problems is None:
        raise error
    problems.append(error)


def _created(v: Any) -> int:
    return v if isinstance(v, int) and not isinstance(v, bool) else int(time.time())


def _id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


# --------------------------------------------------------------------------------------------------
# Request


def responses_request_to_chat(raw: bytes | Mapping[str, Any], *, problems: list[MalformedRequest] | None = None,
                              stored: bool = True) -> dict[str, Any]:
    """A ``POST /v1/responses`` body (its bytes, or the object they parse to) -> the chat-completions body that says the same.

    Raises :class:`MalformedRequest` (400, ``param`` = the path) for what OpenAI would refuse, and
    for what has no chat-completions form (state kept between requests, tools that are not
    functions, unknown parameters) unless ``problems`` is given: then those are appended to it and
    left out of the chat body, which still says what the guard and the routing read.

    ``previous_response_id`` and ``item_reference`` items here are those the stored responses did
    not resolve (:mod:`ext_proc.chat.conversations`; ``stored``: whether state_storage is on)."""
    body = raw if isinstance(raw, Mapping) else json_object(raw, "Responses API")
    for key, why in _REFUSED.items():
        if body.get(key) not in (None, False):
            _unsupported(problems, _bad(key, why, code="unsupported_parameter"))
    previous = body.get("previous_response_id")
    if previous is not None:
        _unsupported(problems, _bad("previous_response_id", f"Previous response with id {previous!r} not found: "
                                    f"{_not_held(stored, 'conversation')}", code="previous_response_not_found"))
    for key in sorted(set(body) - _KNOWN):
        _unsupported(problems, _bad(key, "unknown parameter", code="unknown_parameter"))
    if "input" not in body:
        raise _bad("input", "Missing required parameter: 'input'.", code="missing_required_parameter")
    chat: dict[str, Any] = {k: body[k] for k in _SAME if body.get(k) is not None}
    if "top_logprobs" in chat:
        chat["logprobs"] = True  # chat completions asks for both
    messages: list[dict[str, Any]] = []
    instructions = body.get("instructions")
    if instructions is not None:
        if not isinstance(instructions, str):
            raise _bad("instructions", "expected a string")
        if instructions:
            messages.append({"role": "system", "content": instructions})
    messages += _input_messages(body["input"], problems, stored=stored)
    if not messages:  # what was left out says why, first (an input of items it could not resolve, say)
        raise problems[0] if problems else _bad("input", "the input is empty: send at least one message", code="empty_array")
    chat["messages"] = messages
    limit = body.get("max_output_tokens")
    if limit is not None:
        if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
            raise _bad("max_output_tokens", "expected an integer of at least 1")
        chat["max_completion_tokens"] = limit
    if body.get("tools"):
        tools = _tools(body["tools"], problems)
        if tools:
            chat["tools"] = tools
    if body.get("tool_choice") is not None:
        choice = _tool_choice(body["tool_choice"], problems)
        if choice is not None:
            chat["tool_choice"] = choice
    chat.update(_text(body.get("text"), problems))
    reasoning = body.get("reasoning")
    if reasoning is not None:
        if not isinstance(reasoning, dict):
            raise _bad("reasoning", "expected an object")
        if reasoning.get("effort") is not None:
            chat["reasoning_effort"] = reasoning["effort"]
    if chat.get("stream"):
        chat["stream_options"] = {"include_usage": True}  # response.completed reports the usage
    return chat


def _input_messages(value: Any, problems: list[MalformedRequest] | None, *, stored: bool) -> list[dict[str, Any]]:
    if isinstance(value, str):
        return [{"role": "user", "content": value}]
    if not isinstance(value, list):
        raise _bad("input", "expected a string or an array of input items")
    messages: list[dict[str, Any]] = []
    for i, item in enumerate(value):
        at = f"input[{i}]"
        if not isinstance(item, dict):
            raise _bad(at, "expected an object")
        kind = item.get("type", "message")
        if kind == "message":
            role = item.get("role")
            if role not in ("user", "assistant", "system", "developer"):
                raise _bad(f"{at}.role", "expected one of 'user', 'assistant', 'system', 'developer'")
            content = _content(item.get("content"), f"{at}.content", assistant=role == "assistant", problems=problems)
            messages.append({"role": "system" if role == "developer" else role, "content": content})
        elif kind in ("function_call", "custom_tool_call"):
            field = "arguments" if kind == "function_call" else "input"
            call_id, name, arguments = item.get("call_id"), item.get("name"), item.get(field)
            for key, v in (("call_id", call_id), ("name", name), (field, arguments)):
                if not isinstance(v, str):
                    raise _bad(f"{at}.{key}", "expected a string")
            if kind == "custom_tool_call":
                arguments = json.dumps({CUSTOM_INPUT: arguments})
            call = {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}
            last = messages[-1] if messages else None
            if last is not None and last["role"] == "assistant" and "tool_calls" in last:
                last["tool_calls"].append(call)
            elif last is not None and last["role"] == "assistant":
                last["tool_calls"] = [call]
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind in ("function_call_output", "custom_tool_call_output"):
            call_id, output = item.get("call_id"), item.get("output")
            if not isinstance(call_id, str):
                raise _bad(f"{at}.call_id", "expected a string")
            if isinstance(output, list):
                output = _content(output, f"{at}.output", assistant=True, problems=problems)
            if not isinstance(output, str):
                raise _bad(f"{at}.output", "expected a string or an array of content parts")
            messages.append({"role": "tool", "tool_call_id": call_id, "content": output})
        elif kind == "reasoning":
            continue  # the model's earlier reasoning (often encrypted): chat completions have no place for it
        elif kind == "item_reference":
            _unsupported(problems, _bad(f"{at}.id", f"Item with id {item.get('id')!r} not found: {_not_held(stored, 'item')}",
                                        code="item_not_found"))
        else:
            _unsupported(problems, _bad(f"{at}.type", f"input items of type {kind!r} are not supported through sidegate (message, "
                                                      "function_call, function_call_output, custom_tool_call, custom_tool_call_output "
                                                      "and reasoning are)", code="unsupported_parameter"))
    return messages


def _content(value: Any, at: str, *, assistant: bool, problems: list[MalformedRequest] | None) -> Any:
    """A message's content -> chat content: a string, or (for a user turn with images) content parts."""
    if isinstance(value, str):
        return value
    if not isinstance(value, list):
        raise _bad(at, "expected a string or an array of content parts")
    parts: list[dict[str, Any]] = []
    for j, part in enumerate(value):
        where = f"{at}[{j}]"
        if not isinstance(part, dict):
            raise _bad(where, "expected an object")
        kind = part.get("type")
        if kind in ("input_text", "output_text", "text", "refusal"):
            text = part.get("refusal" if kind == "refusal" else "text")
            if not isinstance(text, str):
                raise _bad(f"{where}.text", "expected a string")
            parts.append({"type": "text", "text": text})
        elif kind == "input_image" and not assistant:
            url = part.get("image_url")
            if not isinstance(url, str):
                _unsupported(problems, _bad(f"{where}.image_url", "expected an image URL or a data: URL (file_id is not supported "
                                                                  "through sidegate)", code="unsupported_parameter"))
                continue
            image = {"url": url, **({"detail": part["detail"]} if part.get("detail") else {})}
            parts.append({"type": "image_url", "image_url": image})
        else:
            _unsupported(problems, _bad(f"{where}.type", f"content parts of type {kind!r} are not supported through sidegate here",
                                        code="unsupported_parameter"))
    if all(p["type"] == "text" for p in parts):
        return "".join(p["text"] for p in parts)
    return parts


def _tools(tools: Any, problems: list[MalformedRequest] | None) -> list[dict[str, Any]]:
    if not isinstance(tools, list):
        raise _bad("tools", "expected an array")
    out = []
    for i, tool in enumerate(tools):
        at = f"tools[{i}]"
        if not isinstance(tool, dict):
            raise _bad(at, "expected an object")
        kind = tool.get("type")
        if kind == "custom" and isinstance(tool.get("name"), str) and tool["name"]:
            out.append({"type": "function", "function": _custom_function(tool)})
            continue
        if kind != "function":
            why = "run inside OpenAI" if kind in _HOSTED_TOOLS else "have no chat-completions form to send a provider"
            _unsupported(problems, _bad(f"{at}.type", f"tools of type {kind!r} {why} and are not supported through sidegate: "
                                                      "only function tools are", code="unsupported_parameter"))
            continue
        if not isinstance(tool.get("name"), str) or not tool["name"]:
            raise _bad(f"{at}.name", "Missing required parameter", code="missing_required_parameter")
        function = {k: tool[k] for k in ("name", "description", "parameters", "strict") if tool.get(k) is not None}
        out.append({"type": "function", "function": function})
    return out


def _custom_function(tool: Mapping[str, Any]) -> dict[str, Any]:
    """A custom tool (free-form text input, e.g. Codex's apply_patch) as a function of one string
    parameter, ``input``; its grammar, if any, is told in the description (not enforced)."""
    description = str(tool.get("description") or "")
    fmt = as_object(tool.get("format"))
    if fmt.get("type") == "grammar" and isinstance(fmt.get("definition"), str):
        syntax = f" {fmt['syntax']}" if isinstance(fmt.get("syntax"), str) else ""
        description += f"\n\nThe input follows this{syntax} grammar:\n{fmt['definition']}"
    parameters = {"type": "object", "properties": {CUSTOM_INPUT: {"type": "string", "description": "the tool's input, as free text"}},
                  "required": [CUSTOM_INPUT], "additionalProperties": False}
    return {"name": tool["name"], **({"description": description.strip()} if description.strip() else {}), "parameters": parameters}


def custom_tools(body: Mapping[str, Any]) -> frozenset[str]:
    """The names of a Responses request's custom tools (their calls are answered as custom_tool_call items)."""
    tools = body.get("tools")
    return frozenset(t["name"] for t in tools if isinstance(t, dict) and t.get("type") == "custom" and isinstance(t.get("name"), str)) \
        if isinstance(tools, list) else frozenset()


def _custom_input(arguments: str) -> str:
    """A custom tool's input from the arguments the model wrote for its function form (as they are, if not that form)."""
    try:
        value = json.loads(arguments)
    except ValueError:
        return arguments
    return value[CUSTOM_INPUT] if isinstance(value, dict) and isinstance(value.get(CUSTOM_INPUT), str) else arguments


def _tool_choice(choice: Any, problems: list[MalformedRequest] | None) -> Any:
    if choice in ("auto", "none", "required"):
        return choice
    if isinstance(choice, dict) and choice.get("type") in ("function", "custom") and isinstance(choice.get("name"), str):
        return {"type": "function", "function": {"name": choice["name"]}}
    _unsupported(problems, _bad("tool_choice", "expected 'auto', 'none', 'required' or {\"type\": \"function\", \"name\": ...}",
                                code="unsupported_parameter"))
    return None


def _text(text: Any, problems: list[MalformedRequest] | None) -> dict[str, Any]:
    """``text.format`` -> ``response_format``; ``text.verbosity`` -> ``verbosity``."""
    if text is None:
        return {}
    if not isinstance(text, dict):
        raise _bad("text", "expected an object")
    out: dict[str, Any] = {}
    if text.get("verbosity") is not None:
        out["verbosity"] = text["verbosity"]
    fmt = text.get("format")
    if fmt is None or (isinstance(fmt, dict) and fmt.get("type") == "text"):
        return out
    if isinstance(fmt, dict) and fmt.get("type") == "json_object":
        return {**out, "response_format": {"type": "json_object"}}
    if isinstance(fmt, dict) and fmt.get("type") == "json_schema":
        if not isinstance(fmt.get("name"), str) or not isinstance(fmt.get("schema"), dict):
            raise _bad("text.format", "a json_schema format needs a name and a schema")
        schema = {k: fmt[k] for k in ("name", "schema", "strict", "description") if fmt.get(k) is not None}
        return {**out, "response_format": {"type": "json_schema", "json_schema": schema}}
    _unsupported(problems, _bad("text.format.type", "expected 'text', 'json_object' or 'json_schema'"))
    return out


# --------------------------------------------------------------------------------------------------
# Response


def _usage(usage: Any) -> dict[str, Any] | None:
    if not isinstance(usage, Mapping):
        return None
    prompt, completion = nonnegative(usage.get("prompt_tokens")), nonnegative(usage.get("completion_tokens"))
    details = as_object(usage.get("prompt_tokens_details"))
    cached, written = nonnegative(details.get("cached_tokens")), nonnegative(details.get("cache_write_tokens"))
    reasoning = nonnegative(as_object(usage.get("completion_tokens_details")).get("reasoning_tokens"))
    return {"input_tokens": prompt, "input_tokens_details": {"cached_tokens": cached, "cache_write_tokens": written}, "output_tokens": completion,
            "output_tokens_details": {"reasoning_tokens": reasoning}, "total_tokens": prompt + completion}


def chat_usage(usage: Any) -> dict[str, Any] | None:
    """A Responses ``usage`` as chat completions' (what sidegate counts), None when absent."""
    if not isinstance(usage, Mapping):
        return None
    prompt, completion = nonnegative(usage.get("input_tokens")), nonnegative(usage.get("output_tokens"))
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": nonnegative(usage.get("total_tokens")) or prompt + completion,
            "prompt_tokens_details": {"cached_tokens": nonnegative(as_object(usage.get("input_tokens_details")).get("cached_tokens"))}}


def _envelope(request: Mapping[str, Any], *, response_id: str, model: str, created: int, status: str,
              custom: frozenset[str] = frozenset(), echo: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A ``response`` object's fields other than ``output`` and ``usage``, from the (chat) request;
    ``echo``: fields of the client's own request it repeats (``store``, ``previous_response_id``)."""
    fmt = request.get("response_format")
    text: dict[str, Any] = {"format": {"type": "text"}}
    if isinstance(fmt, dict) and fmt.get("type") == "json_object":
        text = {"format": {"type": "json_object"}}
    elif isinstance(fmt, dict) and fmt.get("type") == "json_schema":
        text = {"format": {"type": "json_schema", **(fmt.get("json_schema") or {})}}
    messages = request.get("messages") or []
    instructions = messages[0]["content"] if messages and isinstance(messages[0], dict) and messages[0].get("role") == "system" else None
    tools = [{"type": "custom", "name": t["function"]["name"]} if t["function"].get("name") in custom else {"type": "function", **t["function"]}
             for t in request.get("tools") or [] if isinstance(t, dict) and isinstance(t.get("function"), dict)]
    choice = request.get("tool_choice", "auto")
    if isinstance(choice, dict):
        choice = {"type": "function", "name": (choice.get("function") or {}).get("name")}
    return {
        "id": response_id, "object": "response", "created_at": created, "status": status, "error": None,
        "incomplete_details": None, "instructions": instructions if isinstance(instructions, str) else None,
        "max_output_tokens": request.get("max_completion_tokens"), "model": model, "output": [],
        "parallel_tool_calls": request.get("parallel_tool_calls", True), "previous_response_id": None,
        "reasoning": {"effort": request.get("reasoning_effort"), "summary": None}, "store": False,
        "temperature": request.get("temperature"), "text": text, "tool_choice": choice, "tools": tools,
        "top_p": request.get("top_p"), "truncation": "disabled", "usage": None, "user": request.get("user"), "metadata": {},
        **(echo or {}),
    }


def _message_item(text: str) -> dict[str, Any]:
    """The assistant's text as a completed ``message`` output item."""
    return {"id": _id("msg"), "type": "message", "status": "completed", "role": "assistant",
            "content": [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}]}


def _tool_item(call: Mapping[str, Any], custom: frozenset[str], arguments: str) -> dict[str, Any]:
    """A chat tool call as an output item: a custom_tool_call for a custom tool, else a function_call."""
    fn = as_object(call.get("function"))
    name, call_id = str(fn.get("name") or ""), str(call.get("id") or _id("call"))
    if name in custom:
        return {"id": _id("ctc"), "type": "custom_tool_call", "status": "completed", "call_id": call_id, "name": name,
                "input": _custom_input(arguments)}
    return {"id": _id("fc"), "type": "function_call", "status": "completed", "call_id": call_id, "name": name, "arguments": arguments}


def _finished(envelope: dict[str, Any], finish: str | None) -> dict[str, Any]:
    status, reason = _FINISH_STATUS.get(finish or "", ("completed", None))
    return {**envelope, "status": status, "incomplete_details": {"reason": reason} if reason else None}


def chat_completion_to_response(raw: bytes | Mapping[str, Any], *, request: Mapping[str, Any],
                                custom: frozenset[str] = frozenset(), echo: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A ``chat.completion`` (first choice) as a ``response`` object; ``request``: the chat request
    it answers (what the object echoes: instructions, tools, ...); ``custom``: the names of its custom
    tools; ``echo``: see :func:`_envelope`. Raises :class:`UpstreamError` (502) for an answer without choices."""
    completion, choice = first_choice(raw)
    message = as_object(choice.get("message"))
    created = _created(completion.get("created"))
    envelope = _envelope(request, response_id=_id("resp"), model=str(completion.get("model") or request.get("model") or ""),
                         created=created, status="completed", custom=custom, echo=echo)
    output: list[dict[str, Any]] = []
    text = message.get("content") if isinstance(message.get("content"), str) else message.get("refusal")
    if isinstance(text, str) and text:
        output.append(_message_item(text))
    for call in message.get("tool_calls") or []:
        if isinstance(call, dict):
            output.append(_tool_item(call, custom, str(as_object(call.get("function")).get("arguments") or "")))
    return {**_finished(envelope, choice.get("finish_reason")), "output": output, "usage": _usage(completion.get("usage"))}


def _event(kind: str, data: dict[str, Any], seq: int) -> bytes:
    return f"event: {kind}\ndata: {json.dumps({'type': kind, 'sequence_number': seq, **data})}\n\n".encode()


class ChatToResponsesStream(ChatChunkTranslator):
    """OpenAI ``chat.completion.chunk`` SSE -> the Responses API's event stream.

    ``response.created`` and ``response.in_progress`` first; a ``message`` output item for the text
    (``output_item.added``, ``content_part.added``, ``output_text.delta``..., then ``.done`` for each)
    and a ``function_call`` item per tool call (``function_call_arguments.delta``...), each item
    closed before the next opens; at ``[DONE]`` (or the end of a stream that had its
    ``finish_reason``) ``response.completed`` (``response.incomplete`` when cut by the token limit)
    with the whole output and the usage. ``data: {"error": ...}`` -> an ``error`` event and
    ``response.failed``; so is a stream cut before its ``finish_reason``. Only choice 0 is read.
    """

    BROKEN = "server_error"

    def __init__(self, *, request: Mapping[str, Any], model: str | None = None, custom: frozenset[str] = frozenset(),
                 echo: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        self._request = request
        self._echo = echo
        self.final: dict[str, Any] | None = None  # the response as response.completed / .incomplete gave it
        self._custom = custom  # custom tools: their calls are custom_tool_call items, the input sent whole at the end
        self._arguments: dict[str, str] = {}  # a custom call's item id -> its function arguments so far
        self._model = model
        self._seq = 0
        self._envelope: dict[str, Any] | None = None
        self._items: list[dict[str, Any]] = []  # the output so far, closed items completed
        self._open: dict[str, Any] | None = None  # the open item
        self._calls: dict[Any, int] = {}  # a chat tool call's key -> its index in _items

    def _emit(self, kind: str, data: dict[str, Any]) -> bytes:
        self._seq += 1
        return _event(kind, data, self._seq - 1)

    def _start(self, chunk: Mapping[str, Any]) -> bytes:
        if self._envelope is not None:
            return b""
        model = self._model or str(chunk.get("model") or self._request.get("model") or "")
        self._envelope = _envelope(self._request, response_id=_id("resp"), model=model, created=_created(chunk.get("created")),
                                   status="in_progress", custom=self._custom, echo=self._echo)
        return self._emit("response.created", {"response": self._envelope}) + self._emit("response.in_progress", {"response": self._envelope})

    def _close_item(self) -> bytes:
        item, self._open = self._open, None
        if item is None:
            return b""
        index = self._items.index(item)  # completed since it was made; output_item.added showed an in_progress copy
        if item["type"] == "message":
            part = item["content"][0]
            out = self._emit("response.output_text.done", {"item_id": item["id"], "output_index": index, "content_index": 0,
                                                           "text": part["text"], "logprobs": []})
            out += self._emit("response.content_part.done", {"item_id": item["id"], "output_index": index, "content_index": 0, "part": part})
        elif item["type"] == "custom_tool_call":
            item["input"] = _custom_input(self._arguments.pop(item["id"], ""))
            out = self._emit("response.custom_tool_call_input.delta", {"item_id": item["id"], "output_index": index, "delta": item["input"]})
            out += self._emit("response.custom_tool_call_input.done", {"item_id": item["id"], "output_index": index, "input": item["input"]})
        else:
            out = self._emit("response.function_call_arguments.done", {"item_id": item["id"], "output_index": index,
                                                                       "name": item["name"], "arguments": item["arguments"]})
        return out + self._emit("response.output_item.done", {"output_index": index, "item": item})

    def _open_item(self, item: dict[str, Any]) -> bytes:
        out = self._close_item()
        self._items.append(item)
        self._open = item
        index = len(self._items) - 1
        added: dict[str, Any] = {**item, "status": "in_progress"}
        if item["type"] == "message":
            added["content"] = []
        else:
            added["arguments" if item["type"] == "function_call" else "input"] = ""
        out += self._emit("response.output_item.added", {"output_index": index, "item": added})
        if item["type"] == "message":
            out += self._emit("response.content_part.added", {"item_id": item["id"], "output_index": index, "content_index": 0,
                                                              "part": {"type": "output_text", "text": "", "annotations": [], "logprobs": []}})
        return out

    def _response(self, finish: str | None) -> dict[str, Any]:
        assert self._envelope is not None
        return {**_finished(self._envelope, finish), "output": self._items, "usage": _usage(self._usage)}

    def _complete(self) -> bytes:
        self.done = True
        out = self._start({}) + self._close_item()
        response = self.final = self._response(self._finish_reason)
        return out + self._emit("response.completed" if response["status"] == "completed" else "response.incomplete", {"response": response})

    def _fail(self, etype: str, message: str) -> bytes:
        self.done = True
        out = self._start({}) + self._emit("error", {"code": etype, "message": message, "param": None})
        # the failed response's code is one of OpenAI's few (the error event above keeps the provider's own)
        kind = "rate_limit_exceeded" if etype in ("rate_limit_exceeded", "rate_limit_error") else "server_error"
        response = {**self._response(None), "status": "failed", "error": {"code": kind, "message": message}}
        return out + self._emit("response.failed", {"response": response})

    def _upstream_error(self, error: Mapping[str, Any]) -> bytes:
        return self._fail(str(error.get("code") or error.get("type") or self.BROKEN), str(error.get("message") or "the provider reported an error mid-stream"))

    def _text(self, text: str) -> bytes:
        out = b""
        if self._open is None or self._open["type"] != "message":
            out = self._open_item(_message_item(""))
        assert self._open is not None
        self._open["content"][0]["text"] += text
        return out + self._emit("response.output_text.delta", {"item_id": self._open["id"], "output_index": len(self._items) - 1,
                                                              "content_index": 0, "delta": text, "logprobs": []})

    def _tool_call(self, key: Any, call: Mapping[str, Any], function: Mapping[str, Any]) -> bytes:
        out = b""
        index = self._calls.get(key)
        if index is None:
            out = self._open_item(_tool_item(call, self._custom, ""))
            index = self._calls[key] = len(self._items) - 1
        item = self._items[index]
        arguments = function.get("arguments")
        if item["type"] == "custom_tool_call":  # its input is a string inside these arguments: sent whole when it ends
            if isinstance(arguments, str):
                self._arguments[item["id"]] = self._arguments.get(item["id"], "") + arguments
            return out
        if isinstance(arguments, str) and arguments:
            item["arguments"] += arguments
            out += self._emit("response.function_call_arguments.delta", {"item_id": item["id"], "output_index": index, "delta": arguments})
        return out

    def _close(self) -> bytes:
        return self._close_item()
