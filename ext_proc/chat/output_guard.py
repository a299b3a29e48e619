"""``prompt_guards.output_guards``: the LLM's answer checked for leaking a system prompt or a secret.

Two checks run on the answer's text (content, tool-call arguments, refusals) as the client sees it:

* ``system_prompt_leak``: a run of ``min_words`` consecutive words of a system prompt (the config's
  ``system_prompt``, the prompt targets', and the request's own system messages) appears in the
  answer, compared on lower-cased words so that case, punctuation, markdown and line breaks do not hide it;
* ``secrets``: a configured value appears verbatim.

A JSON answer is checked whole (:func:`check_json`); an SSE stream event by event by
:class:`StreamGuard`, which holds back only the events whose text could be the start of a leak
(a trailing partial word, words that begin a system-prompt run, characters that begin a secret)
and releases them as soon as the next text rules the leak out. A leak stops the stream: the held
events are dropped and a final chunk (OpenAI: ``finish_reason: content_filter`` with the
guard's message; Anthropic: a text block with the message, ``stop_reason: refusal``) ends it.

Usage::

    guard = AnswerGuard(settings=cfg.output_guards, prompts=["You are ..."])
    found = guard.check_json(body, api="openai")             # None, or the guard that fired
    stream = guard.stream(api="openai")
    out = stream.feed(chunk, end_of_stream=False)            # bytes to send on (maybe b"")
"""

from __future__ import annotations

import json
import re
import uuid
from collections import deque
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Iterable, Sequence

from ext_proc.config import Config, OutputGuards
from ext_proc.wire.openai import ChatRequest, chat_completion, content_text

__all__ = ["AnswerGuard", "Leak", "LeakScanner", "StreamGuard", "answer_texts", "event_text", "replacement", "system_prompts"]

_WORD = re.compile(r"\w+")
_EVENT_END = re.compile(rb"\r\n\r\n|\n\n|\r\r")


@dataclass(frozen=True)
class Leak:
    """What a guard found: ``guard`` is ``system_prompt_leak`` or ``secrets``; ``message`` is its on_exception.message."""

    guard: str
    message: str


def system_prompts(cfg: Config, *requests: ChatRequest) -> list[str]:
    """What the system-prompt leak guard protects: the config's system prompts and the requests' own."""
    prompts = [cfg.system_prompt or ""] + [t.system_prompt or "" for t in cfg.prompt_targets]
    for r in requests:
        prompts += [content_text(m.get("content")) for m in r.messages if isinstance(m, dict) and m.get("role") in ("system", "developer")]
    return list(dict.fromkeys(p for p in prompts if p))


def replacement(leak: Leak, *, model: str) -> dict[str, Any]:
    """The chat completion that replaces a JSON answer a guard blocked (OpenAI shape)."""
    answer = chat_completion(leak.message, model=model)
    answer["choices"][0]["finish_reason"] = "content_filter"
    return answer


@dataclass(frozen=True)
class _Grams:
    ngrams: frozenset[tuple[str, ...]]
    prefixes: frozenset[tuple[str, ...]]  # every proper prefix (1..n-1 words) of an n-gram


@lru_cache(maxsize=256)
def _grams(prompts: tuple[str, ...], n: int) -> _Grams:
    """The word n-grams of ``prompts`` (a prompt shorter than ``n`` words has none), cached: an app
    sends the same system prompt with every request."""
    grams: set[tuple[str, ...]] = set()
    for prompt in prompts:
        words = [w.lower() for w in _WORD.findall(prompt)]
        grams.update(tuple(words[i:i + n]) for i in range(len(words) - n + 1))
    return _Grams(frozenset(grams), frozenset(g[:k] for g in grams for k in range(1, n)))


class LeakScanner:
    """Text in, pieces at a time: whether it leaked, and up to where it is safe to release.

    ``feed(piece)`` returns ``(leak, safe)``: ``leak`` is the guard that fired (None: none), ``safe``
    the length of the text so far that cannot be part of a leak found later. ``final=True`` says
    no more text follows (a trailing word is then complete). Memory stays bounded whatever the
    answer's length: the last ``min_words`` words and the last characters as long as the longest secret.
    """

    def __init__(self, *, prompts: Sequence[str], secrets: Sequence[str], min_words: int,
                 prompt_message: str = "", secret_message: str = "") -> None:
        self.n = min_words
        self.grams = _grams(tuple(p for p in prompts if p), min_words) if prompts else _Grams(frozenset(), frozenset())
        self.secrets = tuple(s for s in secrets if s)
        self.longest = max((len(s) for s in self.secrets), default=0)
        self.secret_starts = frozenset(s[:k] for s in self.secrets for k in range(1, len(s)))
        self.secret_firsts = frozenset(s[0] for s in self.secrets)
        self.prompt_message, self.secret_message = prompt_message, secret_message
        self.total = 0  # characters fed so far
        self.tail = ""  # the last characters fed (secrets that span pieces)
        self.partial = ""  # an unfinished trailing word, not yet counted
        self.partial_at = 0  # where it starts
        self.window: deque[tuple[str, int]] = deque(maxlen=max(min_words, 1))  # last complete words, with their offsets

    @property
    def active(self) -> bool:
        return bool(self.grams.ngrams or self.secrets)

    def feed(self, piece: str, *, final: bool = False) -> tuple[Leak | None, int]:
        start = self.total
        self.total += len(piece)
        if self.secrets:
            text = self.tail + piece
            if any(s in text for s in self.secrets):
                return Leak("secrets", self.secret_message), 0
            self.tail = text[-(self.longest - 1):] if self.longest > 1 else ""
        if self.grams.ngrams and self._words(piece, start, final):
            return Leak("system_prompt_leak", self.prompt_message), 0
        return None, self.safe(final)

    def _words(self, piece: str, start: int, final: bool) -> bool:
        """Count the words ``piece`` completes; True when the last ``n`` form a system-prompt n-gram."""
        text, base = self.partial + piece, self.partial_at if self.partial else start
        self.partial = ""
        for m in _WORD.finditer(text):
            if m.end() == len(text) and not final:  # may go on in the next piece
                self.partial, self.partial_at = m.group(), base + m.start()
                break
            self.window.append((m.group().lower(), base + m.start()))
            if len(self.window) == self.n and tuple(w for w, _ in self.window) in self.grams.ngrams:
                return True
        return False

    def safe(self, final: bool = False) -> int:
        """How much of the text so far cannot be part of a leak found later."""
        if final:
            return self.total
        safe = self.partial_at if self.partial else self.total
        if self.grams.ngrams:
            words = [w for w, _ in self.window]
            for k in range(min(len(words), self.n - 1), 0, -1):  # the longest run of words that begins an n-gram
                if tuple(words[-k:]) in self.grams.prefixes:
                    safe = min(safe, self.window[-k][1])
                    break
        tail = self.tail
        for k in range(min(len(tail), self.longest - 1), 0, -1):  # the longest tail that begins a secret
            if tail[-k] in self.secret_firsts and tail[-k:] in self.secret_starts:
                safe = min(safe, self.total - k)
                break
        return safe


def _chat_texts(obj: Any, key: str) -> Iterable[str]:
    """Text of OpenAI ``choices[].message`` (key ``message``) or ``choices[].delta`` (key ``delta``)."""
    for choice in obj.get("choices") or ():
        part = choice.get(key) if isinstance(choice, dict) else None
        if not isinstance(part, dict):
            continue
        content = part.get("content")
        if isinstance(content, str):
            yield content
        elif isinstance(content, list):
            yield from (p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
        if isinstance(part.get("refusal"), str):
            yield part["refusal"]
        for call in part.get("tool_calls") or ():
            fn = call.get("function") if isinstance(call, dict) else None
            if isinstance(fn, dict) and isinstance(fn.get("arguments"), str):
                yield fn["arguments"]


def answer_texts(answer: Any, api: str) -> list[str]:
    """The text of a whole JSON answer (OpenAI chat completion or Anthropic message)."""
    if not isinstance(answer, dict):
        return []
    if api == "openai":
        return list(_chat_texts(answer, "message"))
    out: list[str] = []
    for block in answer.get("content") or ():
        if not isinstance(block, dict):
            continue
        for key in ("text", "thinking"):
            if isinstance(block.get(key), str):
                out.append(block[key])
        if block.get("type") == "tool_use" and "input" in block:
            out.append(json.dumps(block["input"], ensure_ascii=False))
    return out


def event_text(event: bytes, api: str) -> str | None:
    """The answer text one SSE event carries ("" for none); None when its data is not JSON (the
    caller checks the raw data instead: a leak must not hide in an event nobody can parse)."""
    data = "\n".join(line[5:].removeprefix(" ") for line in event.decode("utf-8", "replace").splitlines()
                     if line.startswith("data:"))
    if not data or data.strip() == "[DONE]":
        return ""
    try:
        obj = json.loads(data)
    except ValueError:
        return None
    if not isinstance(obj, dict):
        return None
    if api == "openai":
        return "".join(_chat_texts(obj, "delta"))
    delta = obj.get("delta") if obj.get("type") == "content_block_delta" else obj.get("content_block")
    if not isinstance(delta, dict):
        return ""
    return "".join(delta[k] for k in ("text", "partial_json", "thinking") if isinstance(delta.get(k), str))


class AnswerGuard:
    """The output guards for one request: its system prompts (config's and request's) and the secrets."""

    def __init__(self, *, settings: OutputGuards, prompts: Sequence[str]) -> None:
        self.settings = settings
        leak = settings.system_prompt_leak
        self.prompts = tuple(prompts) if leak is not None else ()
        self.min_words = leak.min_words if leak is not None else 1

    def scanner(self) -> LeakScanner:
        leak, secrets = self.settings.system_prompt_leak, self.settings.secrets
        return LeakScanner(prompts=self.prompts, secrets=secrets.values if secrets else (), min_words=self.min_words,
                           prompt_message=leak.message if leak else "", secret_message=secrets.message if secrets else "")

    def check_json(self, body: bytes, *, api: str) -> Leak | None:
        """The guard a whole JSON answer trips, if any (a body that is not JSON is checked as text)."""
        try:
            texts = answer_texts(json.loads(body), api)
        except ValueError:
            texts = [body.decode("utf-8", "replace")]
        scanner = self.scanner()
        for text in texts:
            found, _ = scanner.feed(text + "\n")
            if found is not None:
                return found
        return scanner.feed("", final=True)[0]

    def stream(self, *, api: str, model: str) -> StreamGuard:
        return StreamGuard(scanner=self.scanner(), api=api, model=model)


class StreamGuard:
    """One SSE answer through the output guards: :meth:`feed` each chunk, send what it returns.

    Events whose text might begin a leak are held (at most until the text that follows rules it out:
    one chunk window for ordinary text); a leak drops them and ends the stream with a final
    chunk carrying the guard's message; an event cut off by the end of the stream is dropped (it
    cannot be checked, and an SSE client discards it too) and the stream ends with an error event.
    """

    def __init__(self, *, scanner: LeakScanner, api: str, model: str) -> None:
        self.scanner, self.api, self.model = scanner, api, model
        self.buffer = b""  # an event not complete yet
        self.held: deque[tuple[bytes, int]] = deque()  # complete events not sent yet, with where their text ends
        self.leak: Leak | None = None
        self.dropped_bytes = 0
        self.safe = 0  # how much of the text so far may be sent
        self.open_block: int | None = None  # Anthropic: the content block index sent open, if any
        self.next_block = 0

    def feed(self, chunk: bytes, *, end_of_stream: bool) -> bytes:
        if self.leak is not None:
            return b""
        self.buffer += chunk
        safe = self.safe
        while (m := _EVENT_END.search(self.buffer)) is not None:
            event, self.buffer = self.buffer[:m.end()], self.buffer[m.end():]
            text = event_text(event, self.api)
            if text is None:  # not JSON: its raw data is what the client gets, check that
                text = event.decode("utf-8", "replace")
            leak, after = self.scanner.feed(text)
            if leak is not None:  # what was safe before this event still goes out, then the stop
                return self._release(safe) + self._stop(leak)
            safe = self.safe = after
            self.held.append((event, self.scanner.total))
        if end_of_stream:
            self.dropped_bytes = len(self.buffer.strip())
            self.buffer = b""
            leak, safe = self.scanner.feed("", final=True)
            if leak is not None:
                return self._stop(leak)
        return self._release(safe) + (self._cut() if self.dropped_bytes else b"")

    def _cut(self) -> bytes:
        """The end of a stream the provider cut mid-event: an error event, as the stream translators write it."""
        message = "the provider's stream ended mid-event (cut mid-stream); the unfinished event was dropped"
        if self.api == "openai":
            body = {"error": {"message": message, "type": "upstream_error", "param": None, "code": "upstream_error"}}
            return b"data: " + json.dumps(body).encode() + b"\n\n"
        return b"event: error\ndata: " + json.dumps({"type": "error", "error": {"type": "upstream_error", "message": message}}).encode() + b"\n\n"

    def _release(self, safe: int) -> bytes:
        out = []
        while self.held and self.held[0][1] <= safe:
            out.append(self._sent(self.held.popleft()[0]))
        return b"".join(out)

    def _sent(self, event: bytes) -> bytes:
        """Note which Anthropic content block the client has open, so a stop can close it."""
        if self.api == "anthropic" and b"content_block_" in event:
            m = re.search(rb'"type"\s*:\s*"(content_block_start|content_block_stop)"\s*,\s*"index"\s*:\s*(\d+)', event)
            if m is not None:
                index = int(m.group(2))
                self.open_block = index if m.group(1) == b"content_block_start" else None
                self.next_block = max(self.next_block, index + 1)
        return event

    def _stop(self, leak: Leak) -> bytes:
        self.leak = leak
        self.held.clear()
        self.buffer = b""
        if self.api == "openai":
            chunk = {"id": f"chatcmpl-{uuid.uuid4().hex[:24]}", "object": "chat.completion.chunk", "model": self.model,
                     "choices": [{"index": 0, "delta": {"content": leak.message}, "logprobs": None, "finish_reason": "content_filter"}]}
            return b"data: " + json.dumps(chunk).encode() + b"\n\ndata: [DONE]\n\n"

        def event(kind: str, payload: dict[str, Any]) -> bytes:
            return f"event: {kind}\ndata: {json.dumps({'type': kind, **payload})}\n\n".encode()

        out = event("content_block_stop", {"index": self.open_block}) if self.open_block is not None else b""
        i = self.next_block
        return out + b"".join((
            event("content_block_start", {"index": i, "content_block": {"type": "text", "text": ""}}),
            event("content_block_delta", {"index": i, "delta": {"type": "text_delta", "text": leak.message}}),
            event("content_block_stop", {"index": i}),
            event("message_delta", {"delta": {"stop_reason": "refusal", "stop_sequence": None}, "usage": {"output_tokens": 0}}),
            event("message_stop", {}),
        ))
