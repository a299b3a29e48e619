"""The response cache (``response_cache`` in the config): an identical chat request within the TTL
is answered from the cache, without a provider call.

Identical means the same listener, client API (chat completions or Messages), provider, model and
request body as sent upstream: messages, tools, tool_choice, every sampling parameter, ``stream``
and ``stream_options`` (only ``user`` and ``store`` are left out: they do not change the answer).
The key is the SHA-256 of that canonical JSON (sorted keys, no spaces), under
``shared_store.prefix``: ``<prefix>rc:v1:<hex>``.

What is stored is the answer as the client saw it (translated between APIs, metadata added): a JSON
body, or the whole SSE event stream, replayed as one body with its content type. Not stored:
non-200 answers, answers with tool calls, answers over ``max_entry_bytes`` (collection stops at
the bound: a huge answer costs no extra memory), streams that did not end properly (no ``[DONE]`` /
``message_stop``, or an error event).

Where entries live (``shared_store``): this host (:class:`MemoryStore` in the process, LRU, bounded by
``max_memory_bytes``, entries expire after ``ttl``; with ``ext_proc.workers`` > 1, :class:`FileStore`,
the same in a SQLite file every worker of one ``sidegate up`` shares) or Redis (:class:`RedisStore`, ``SET .. PX
ttl``). Redis (or the file) failing or slower than ``shared_store.timeout``: the request bypasses the cache (never
an error), counted in ``sidegate_shared_store_errors``. An entry that is corrupt, or written by
another version, is a miss, and the answer overwrites it.

Semantic matching (``similarity``, with a model server for ``prompt_embed``): a request whose last
message is a user turn also has a *context key*: the same hash with that turn's text left out
(system prompt, earlier turns, tools, parameters all kept). Under it the store keeps the
embeddings of the last :data:`SEMANTIC_ENTRIES` user turns answered in that context, each with
its exact key; after an exact miss, the turn is embedded and the best match at cosine >=
``similarity`` answers (``x-sidegate-cache: hit``, counted as ``semantic_hit``), when the two
turns also pass :func:`compatible`: the same numbers in the same order, and the words they share
in the same order (mean-pooled MiniLM scores "convert 10 miles to kilometers" against "convert 10
kilometers to miles" at 0.992: a reordering is not a paraphrase). Turns over
:data:`SEMANTIC_MAX_CHARS` are matched exactly only. The index is
one value read, changed and written back: two processes writing at once may drop an entry (a
later miss, never a wrong answer). Embedding failing or slower than :data:`EMBED_TIMEOUT_S`:
exact matching only, for :data:`EMBED_BACKOFF_S`.
"""

from __future__ import annotations

import asyncio
import difflib
import hashlib
import json
import logging
import re
import sqlite3
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, Protocol, TypeVar

import numpy as np
import numpy.typing as npt

from ext_proc.chat.shared_store import FailureLog, SharedFile, redis_client, redis_errors, workers_file
from ext_proc.config import ResponseCache, SharedStore
from ext_proc.names import CACHE_FILE
from ext_proc.models.base import Models
from ext_proc.wire.openai import content_text

__all__ = [
    "CacheEntry",
    "CacheStore",
    "Collector",
    "FileStore",
    "MemoryStore",
    "RedisStore",
    "ResponseCacheService",
    "StoreFailed",
    "cache_key",
    "compatible",
    "decode_entry",
    "encode_entry",
    "shared_store",
    "wants_bypass",
]

T = TypeVar("T")
log = logging.getLogger("sidegate.cache")

VERSION = 1
_MAGIC = b"sidegate-rc/1\n"  # the first bytes of every value this version writes
_IGNORED_FIELDS = frozenset({"user", "store"})  # request fields that do not change the answer

Result = Literal["hit", "miss", "bypass"]
SEMANTIC_ENTRIES = 32  # embeddings kept per context (the most recent first)
SEMANTIC_MAX_CHARS = 4096  # longer last turns are matched exactly only (the index keeps each turn's text)
EMBED_TIMEOUT_S = 1.0  # the embedding of one turn for the semantic lookup
EMBED_BACKOFF_S = 30  # after a failed embedding, no semantic lookups for this long (no added latency per request)
_SEMANTIC_MAGIC = b"sidegate-rcsem/1\n"


def cache_key(*, prefix: str, listener: str, client_api: str, provider: str, model: str | None, body: Mapping[str, Any]) -> str:
    """The cache key of a request: a hash of the canonical JSON of what decides its answer."""
    request = {k: v for k, v in body.items() if k not in _IGNORED_FIELDS}
    request["model"] = model
    request["stream"] = bool(request.get("stream") or False)  # absent, null and false are one request
    canonical = json.dumps(
        {"v": VERSION, "listener": listener, "api": client_api, "provider": provider, "request": request},
        sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False, default=str,
    )
    return f"{prefix}rc:v{VERSION}:{hashlib.sha256(canonical.encode()).hexdigest()}"


def context_key(*, prefix: str, listener: str, client_api: str, provider: str, model: str | None,
                body: Mapping[str, Any]) -> tuple[str, str] | None:
    """(the semantic context key, the last user turn's text), or None when the request does not end
    in a user turn with text (then only exact matching applies)."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages or not isinstance(messages[-1], dict) or messages[-1].get("role") != "user":
        return None
    last = messages[-1]
    text = content_text(last.get("content"))
    if not text.strip() or len(text) > SEMANTIC_MAX_CHARS or (isinstance(last.get("content"), list) and any(
            isinstance(p, dict) and p.get("type") != "text" for p in last["content"])):  # images: not judged by their text
        return None
    rest = {k: v for k, v in last.items() if k != "content"}
    exact = cache_key(prefix=prefix, listener=listener, client_api=client_api, provider=provider, model=model,
                      body={**body, "messages": [*messages[:-1], rest]})
    return exact.replace(f"{prefix}rc:v{VERSION}:", f"{prefix}rc:v{VERSION}:sem:", 1), text


@dataclass(frozen=True)
class Turn:
    """One cached user turn in a context's semantic index."""

    key: str  # the exact key of its answer
    text: str
    vec: npt.NDArray[np.float32]


_TOKEN = re.compile(r"[^\W_]+", re.UNICODE)
# words that turn a question around ("can't" is "can" + "t"): a hit needs as many of them on each side
_NEGATIONS = frozenset("not no never t non without nor none nothing nobody neither nowhere cannot dont doesnt didnt "
                       "cant wont isnt arent wasnt shouldnt couldnt wouldnt".split())
# one of these standing for another does not change what is asked ("do I need" / "should I need" / "can I")
_INTERCHANGEABLE = frozenset("do does can could should would will may might is are s am have has got get a an the my your "
                             "don doesn won isn aren".split())


def _close_spelling(x: str, y: str) -> bool:
    """A typo or an inflection of the same word (refund / refunds, diffrence / difference), not another word."""
    if x[:3] != y[:3] or abs(len(x) - len(y)) > 2:
        return False
    previous = list(range(len(y) + 1))
    for i, cx in enumerate(x, 1):
        current = [i]
        for j, cy in enumerate(y, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (cx != cy)))
        previous = current
    return previous[-1] <= 2


def _one_block_moved(a: list[str], b: list[str]) -> bool:
    """Whether ``b`` is ``a`` (the same words) with at most one run of words moved elsewhere, a run of
    two or more or past two or more ("At the hotel, is there ...?" / "Is there ... at the hotel?"), not
    two single words swapped ("10 miles to km" / "10 km to miles")."""
    start = 0
    while start < len(a) and a[start] == b[start]:
        start += 1
    end = len(a)
    while end > start and a[end - 1] == b[end - 1]:
        end -= 1
    middle_a, middle_b = a[start:end], b[start:end]
    if not middle_a:
        return True
    for cut in range(1, len(middle_a)):  # middle_b is middle_a rotated: one part moved past the other
        if middle_a[cut:] + middle_a[:cut] == middle_b:
            return max(cut, len(middle_a) - cut) >= 2
    return False


def compatible(a: str, b: str) -> bool:
    """Whether two turns close in embedding may share an answer. Mean-pooled MiniLM scores one-word
    edits that change the question as paraphrases ("Is the clinic open on Sundays?" / "... closed on
    Sundays?" 0.953, "Remind me at 7am" / "7pm" 0.968, "convert 10 miles to km" / "10 km to miles"
    0.992), so the two also need: the same numbers (every token with a digit, in order), as many
    negations, the words each says once in the same order (one phrase may move), and no word put in
    place of another one for one, unless it is a spelling of the same word or an auxiliary
    ("do" / "can")."""
    ta, tb = [t.lower() for t in _TOKEN.findall(a)], [t.lower() for t in _TOKEN.findall(b)]
    if [t for t in ta if any(c.isdigit() for c in t)] != [t for t in tb if any(c.isdigit() for c in t)]:
        return False
    if sum(t in _NEGATIONS for t in ta) != sum(t in _NEGATIONS for t in tb):
        return False
    once_a, once_b = ({t for t, n in Counter(ts).items() if n == 1} for ts in (ta, tb))
    shared = once_a & once_b  # words said once on each side: their places can be compared
    if not _one_block_moved([t for t in ta if t in shared], [t for t in tb if t in shared]):
        return False
    for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(None, ta, tb, autojunk=False).get_opcodes():
        if tag == "replace" and i2 - i1 == j2 - j1 and not all(
                x == y or _close_spelling(x, y) or (x in _INTERCHANGEABLE and y in _INTERCHANGEABLE)
                for x, y in zip(ta[i1:i2], tb[j1:j2])):
            return False
    return True


def encode_index(turns: list[Turn]) -> bytes:
    """The semantic entries of one context, the most recent first."""
    rows = [{"k": t.key, "t": t.text, "e": np.asarray(t.vec, dtype="<f4").tobytes().hex()} for t in turns]
    return _SEMANTIC_MAGIC + json.dumps(rows, separators=(",", ":"), ensure_ascii=False).encode()


def decode_index(raw: bytes | None) -> list[Turn]:
    """The entries (anything this version did not write: none)."""
    if raw is None or not raw.startswith(_SEMANTIC_MAGIC):
        return []
    try:
        rows = json.loads(raw[len(_SEMANTIC_MAGIC):])
        out = [Turn(key=r["k"], text=r["t"], vec=np.frombuffer(bytes.fromhex(r["e"]), dtype="<f4").astype(np.float32)) for r in rows]
    except (ValueError, TypeError, KeyError, AttributeError):
        return []
    if not all(isinstance(t.key, str) and isinstance(t.text, str) and t.vec.ndim == 1 and t.vec.size == out[0].vec.size > 0
               for t in out):
        return []
    return out


def best_match(turns: list[Turn], text: str, vec: npt.NDArray[np.float32], threshold: float) -> tuple[str, float] | None:
    """The exact key of the most similar compatible turn at cosine >= ``threshold`` (vectors are unit-norm)."""
    best: tuple[str, float] | None = None
    for t in turns:
        if t.vec.shape != vec.shape:
            continue
        score = float(np.dot(t.vec, vec))
        if score >= threshold and (best is None or score > best[1]) and compatible(t.text, text):
            best = (t.key, score)
    return best


def wants_bypass(headers: Mapping[str, str]) -> bool:
    """The client's ``cache-control: no-cache`` (or ``no-store``): neither read nor write the cache."""
    directives = {d.strip().split("=", 1)[0].lower() for d in headers.get("cache-control", "").split(",")}
    return bool(directives & {"no-cache", "no-store"}) or headers.get("pragma", "").strip().lower() == "no-cache"


@dataclass(frozen=True)
class CacheEntry:
    body: bytes
    content_type: str
    provider: str  # the provider that answered (x-sidegate-provider on a hit)


def encode_entry(entry: CacheEntry) -> bytes:
    header = json.dumps({"v": VERSION, "ct": entry.content_type, "provider": entry.provider}, separators=(",", ":"))
    return _MAGIC + header.encode() + b"\n" + entry.body


def decode_entry(raw: bytes) -> CacheEntry | None:
    """The entry, or None for anything this version did not write (corrupt, foreign, older)."""
    if not raw.startswith(_MAGIC):
        return None
    header, sep, body = raw[len(_MAGIC):].partition(b"\n")
    if not sep:
        return None
    try:
        meta = json.loads(header)
    except ValueError:
        return None
    if not isinstance(meta, dict) or meta.get("v") != VERSION:
        return None
    ctype, provider = meta.get("ct"), meta.get("provider")
    if not isinstance(ctype, str) or not isinstance(provider, str):
        return None
    return CacheEntry(body=body, content_type=ctype, provider=provider)


class StoreFailed(Exception):
    """The store could not be read or written (Redis down, slow, or answering nonsense)."""

    def __init__(self, kind: str) -> None:
        super().__init__(kind)
        self.kind = kind


class CacheStore(Protocol):
    async def get(self, key: str) -> bytes | None: ...

    async def put(self, key: str, value: bytes, ttl_s: float) -> None: ...

    async def close(self) -> None: ...


class MemoryStore:
    """Entries in this process: least recently used go first beyond ``max_bytes``; each expires after its TTL."""

    def __init__(self, *, max_bytes: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.max_bytes = max_bytes
        self._clock = clock
        self._entries: OrderedDict[str, tuple[float, bytes]] = OrderedDict()
        self.size = 0  # bytes of keys and values held

    def __len__(self) -> int:
        return len(self._entries)

    def _drop(self, key: str) -> None:
        _, value = self._entries.pop(key)
        self.size -= len(key) + len(value)

    async def get(self, key: str) -> bytes | None:
        found = self._entries.get(key)
        if found is None:
            return None
        if found[0] <= self._clock():
            self._drop(key)
            return None
        self._entries.move_to_end(key)
        return found[1]

    async def put(self, key: str, value: bytes, ttl_s: float) -> None:
        if key in self._entries:
            self._drop(key)
        cost = len(key) + len(value)
        if cost > self.max_bytes:
            return
        while self._entries and self.size + cost > self.max_bytes:
            self._drop(next(iter(self._entries)))
        self._entries[key] = (self._clock() + ttl_s, value)
        self.size += cost

    async def close(self) -> None:
        self._entries.clear()
        self.size = 0


class FileStore:
    """Entries in a SQLite file that the ext_proc workers of one ``sidegate up`` share
    (``ext_proc.workers`` > 1 with ``shared_store.type: memory``), so an answer one worker stored is
    a hit on every worker: least recently used go first beyond ``max_bytes``; each expires after its
    TTL, on the wall clock. Each call is one transaction; a file locked longer than ``timeout_s`` or
    unusable raises :class:`StoreFailed` (the request bypasses the cache)."""

    def __init__(self, path: str, *, max_bytes: int, timeout_s: float = 0.25, clock: Callable[[], float] = time.time) -> None:
        self.file = SharedFile(path, "CREATE TABLE IF NOT EXISTS entries (key TEXT PRIMARY KEY, value BLOB NOT NULL, "
                               "expires REAL NOT NULL, used REAL NOT NULL, size INTEGER NOT NULL)", timeout_s=timeout_s, clock=clock)
        self.path = self.file.path
        self.max_bytes = max_bytes

    def _run(self, change: Callable[[sqlite3.Connection, float], T]) -> T:
        try:
            return self.file.run(change)
        except sqlite3.Error as exc:
            raise StoreFailed(type(exc).__name__) from exc

    async def get(self, key: str) -> bytes | None:
        def change(db: sqlite3.Connection, now: float) -> bytes | None:
            row = db.execute("SELECT value, expires FROM entries WHERE key = ?", (key,)).fetchone()
            if row is None:
                return None
            if row[1] <= now:
                db.execute("DELETE FROM entries WHERE key = ?", (key,))
                return None
            db.execute("UPDATE entries SET used = ? WHERE key = ?", (now, key))
            return bytes(row[0])

        return self._run(change)

    async def put(self, key: str, value: bytes, ttl_s: float) -> None:
        cost = len(key) + len(value)

        def change(db: sqlite3.Connection, now: float) -> None:
            db.execute("DELETE FROM entries WHERE key = ? OR expires <= ?", (key, now))
            if cost > self.max_bytes:
                return
            (size,) = db.execute("SELECT COALESCE(SUM(size), 0) FROM entries").fetchone()
            if size + cost > self.max_bytes:  # the least recently used go until the new entry fits
                for old, old_size in db.execute("SELECT key, size FROM entries ORDER BY used").fetchall():
                    db.execute("DELETE FROM entries WHERE key = ?", (old,))
                    size -= old_size
                    if size + cost <= self.max_bytes:
                        break
            db.execute("INSERT INTO entries (key, value, expires, used, size) VALUES (?, ?, ?, ?, ?)",
                       (key, value, now + ttl_s, now, cost))

        self._run(change)

    async def close(self) -> None:
        self.file.close()


class RedisStore:
    """Entries in Redis (``SET key value PX ttl``), shared by every process on it; every call is
    bounded by ``shared_store.timeout`` and raises :class:`StoreFailed` on any failure."""

    def __init__(self, store: SharedStore) -> None:
        self.store = store
        self._redis = redis_client(store)
        self._errors = redis_errors()

    async def get(self, key: str) -> bytes | None:
        try:
            value = await asyncio.wait_for(self._redis.get(key), self.store.timeout_s)
        except self._errors as exc:
            raise StoreFailed(type(exc).__name__) from exc
        if value is not None and not isinstance(value, bytes):
            raise StoreFailed("UnexpectedReply")
        return value

    async def put(self, key: str, value: bytes, ttl_s: float) -> None:
        try:
            await asyncio.wait_for(self._redis.set(key, value, px=max(1, int(ttl_s * 1000))), self.store.timeout_s)
        except self._errors as exc:
            raise StoreFailed(type(exc).__name__) from exc

    async def close(self) -> None:
        await self._redis.aclose()


def shared_store(shared: SharedStore, file_name: str, *, max_bytes: int) -> CacheStore:
    """Where entries live by ``shared_store``: Redis; or this host: the file ``file_name`` the
    ext_proc workers of one ``sidegate up`` share, else this process (``max_bytes``: the bound on
    this host, least recently used dropped first)."""
    if shared.type == "redis":
        return RedisStore(shared)
    if (path := workers_file(file_name)) is not None:  # several workers: one store for all of them
        return FileStore(path, max_bytes=max_bytes, timeout_s=shared.timeout_s)
    return MemoryStore(max_bytes=max_bytes)


@dataclass(frozen=True)
class Lookup:
    result: Result
    entry: CacheEntry | None = None
    reason: str = ""  # a bypass's: no_cache | store_error
    similarity: float | None = None  # a semantic hit's cosine


class ResponseCacheService:
    """The cache of one ext_proc process: lookups and stores, and the store's failures (bypasses)."""

    def __init__(self, settings: ResponseCache, shared: SharedStore, *, models: Models | None = None,
                 on_store_error: Callable[[str], None] | None = None, store: CacheStore | None = None) -> None:
        self.settings = settings
        # semantic matching: with `similarity` and a model server to embed with
        self.models = models if settings.similarity is not None else None
        self._embed_down_until = 0.0  # after a failed embedding: exact matching only for EMBED_BACKOFF_S
        self.prefix = shared.prefix
        self.store = store if store is not None else shared_store(shared, CACHE_FILE, max_bytes=settings.max_memory_bytes)
        self._on_store_error = on_store_error or (lambda kind: None)
        self._log = FailureLog(log)

    def _failed(self, exc: StoreFailed, doing: str) -> None:
        self._on_store_error(exc.kind)
        self._log.warning("response cache: %s the shared store failed (%s): bypassing the cache", doing, exc.kind)

    def key(self, *, listener: str, client_api: str, provider: str, model: str | None, body: Mapping[str, Any]) -> str:
        return cache_key(prefix=self.prefix, listener=listener, client_api=client_api, provider=provider, model=model, body=body)

    async def lookup(self, key: str, headers: Mapping[str, str]) -> Lookup:
        if wants_bypass(headers):
            found = Lookup("bypass", reason="no_cache")
        else:
            try:
                raw = await self.store.get(key)
            except StoreFailed as exc:
                self._failed(exc, "reading")
                found = Lookup("bypass", reason="store_error")
            else:
                entry = decode_entry(raw) if raw is not None else None
                if raw is not None and entry is None:
                    log.debug("response cache: %s holds no entry of this version: a miss, overwritten by the answer", key)
                found = Lookup("hit", entry) if entry is not None else Lookup("miss")
        return found

    async def embed(self, text: str) -> npt.NDArray[np.float32] | None:
        """The turn's embedding for semantic matching (None: no semantic matching, or the model failed)."""
        if self.models is None or time.monotonic() < self._embed_down_until:
            return None
        try:
            (vec,) = await asyncio.wait_for(self.models.embed([text]), EMBED_TIMEOUT_S)
        except Exception as exc:  # noqa: BLE001 - any model failure: exact matching only
            self._embed_down_until = time.monotonic() + EMBED_BACKOFF_S
            log.warning("response cache: embedding failed (%s: %s): exact matching only for %d s", type(exc).__name__, exc, EMBED_BACKOFF_S)
            return None
        out: npt.NDArray[np.float32] = np.asarray(vec, dtype=np.float32)
        return out

    async def semantic_lookup(self, context: str, text: str, vec: npt.NDArray[np.float32]) -> Lookup:
        """After an exact miss: the answer of the most similar turn in the same context, if close enough."""
        assert self.settings.similarity is not None
        try:
            found = best_match(decode_index(await self.store.get(context)), text, vec, self.settings.similarity)
            if found is None:
                return Lookup("miss")
            raw = await self.store.get(found[0])
        except StoreFailed as exc:
            self._failed(exc, "reading")
            return Lookup("bypass", reason="store_error")
        entry = decode_entry(raw) if raw is not None else None
        return Lookup("hit", entry, similarity=found[1]) if entry is not None else Lookup("miss")

    async def remember(self, context: str, text: str, vec: npt.NDArray[np.float32], key: str) -> None:
        """Add a stored answer's turn to its context's semantic entries (the oldest beyond the bound go)."""
        try:
            turns = [t for t in decode_index(await self.store.get(context)) if t.key != key]
            await self.store.put(context, encode_index([Turn(key=key, text=text, vec=vec), *turns][:SEMANTIC_ENTRIES]),
                                 self.settings.ttl_s)
        except StoreFailed as exc:
            self._failed(exc, "writing")

    async def put(self, key: str, entry: CacheEntry) -> bool:
        value = encode_entry(entry)
        try:
            await self.store.put(key, value, self.settings.ttl_s)
        except StoreFailed as exc:
            self._failed(exc, "writing")
            return False
        return True

    async def close(self) -> None:
        await self.store.close()


class Collector:
    """Gathers one answer as the client sees it, chunk by chunk, and says whether it may be stored."""

    def __init__(self, *, client_api: str, streaming: bool, max_bytes: int) -> None:
        self.client_api = client_api
        self.streaming = streaming
        self.max_bytes = max_bytes
        self._parts: list[bytes] = []
        self._size = 0
        self.refused = ""  # why it will not be stored ("" while it still may)
        self._last_event_in_chunk = False  # the chunk fed last carried what may be a stream's last event
        self._whole = False  # ended() parsed the parts fed so far: a whole answer that may be stored

    def feed(self, chunk: bytes) -> None:
        if self.refused or not chunk:
            return
        self._last_event_in_chunk = self.streaming and (b"[DONE]" in chunk or b"message_stop" in chunk)
        self._whole = False
        self._size += len(chunk)
        if self._size > self.max_bytes:
            self.refused = "too_large"
            self._parts = []  # stop holding it: a huge answer costs nothing extra
            return
        self._parts.append(chunk)

    def ended(self) -> bool:
        """Whether a stream's answer is decided before its connection ends: its last event (OpenAI's
        ``[DONE]``, Anthropic's ``message_stop``) was fed, or it will not be stored anyway. A client
        SDK stops reading at that event, so an identical request can follow before the end of the
        HTTP stream reaches the gateway: storing at the event makes that request a hit."""
        if self.refused:
            return True
        if not self._last_event_in_chunk:
            return False
        why = _stream_refusal(b"".join(self._parts), self.client_api)
        if why == "incomplete":
            return False
        self.refused, self._whole = why, not why  # parsed once: finish() does not parse it again
        return True

    def finish(self) -> bytes | None:
        """The whole answer when it may be stored (else None, with :attr:`refused` saying why)."""
        if self.refused:
            return None
        body = b"".join(self._parts)
        self._parts = []
        if self._whole:
            return body
        why = _stream_refusal(body, self.client_api) if self.streaming else _json_refusal(body, self.client_api)
        if why:
            self.refused = why
            return None
        return body


def _has_tool_calls_openai(choices: Any, key: str) -> bool:
    for c in choices if isinstance(choices, list) else ():
        if not isinstance(c, dict):
            continue
        if c.get("finish_reason") in ("tool_calls", "function_call"):
            return True
        part = c.get(key)
        if isinstance(part, dict) and (part.get("tool_calls") or part.get("function_call")):
            return True
    return False


def _json_refusal(body: bytes, client_api: str) -> str:
    try:
        answer = json.loads(body)
    except ValueError:
        return "not_json"
    if not isinstance(answer, dict) or "error" in answer:
        return "error"
    if client_api == "anthropic":
        blocks = answer.get("content")
        if answer.get("stop_reason") == "tool_use" or any(
                isinstance(b, dict) and b.get("type") == "tool_use" for b in (blocks if isinstance(blocks, list) else ())):
            return "tool_calls"
        return "" if answer.get("type") == "message" else "error"
    if _has_tool_calls_openai(answer.get("choices"), "message"):
        return "tool_calls"
    return "" if isinstance(answer.get("choices"), list) else "error"


def _sse_events(body: bytes) -> list[tuple[str, str]]:
    """(event name, data) of each SSE event in ``body``."""
    events = []
    for block in body.replace(b"\r\n", b"\n").split(b"\n\n"):
        name, data = "", []
        for line in block.decode("utf-8", errors="replace").split("\n"):
            if line.startswith("event:"):
                name = line[6:].strip()
            elif line.startswith("data:"):
                data.append(line[5:].lstrip(" "))
        if name or data:
            events.append((name, "\n".join(data)))
    return events


def _stream_refusal(body: bytes, client_api: str) -> str:
    events = _sse_events(body)
    done = False
    for name, data in events:
        if name == "error":
            return "error"
        if data == "[DONE]":
            done = True
            continue
        try:
            event = json.loads(data) if data else {}
        except ValueError:
            return "error"
        if not isinstance(event, dict):
            return "error"
        if "error" in event or event.get("type") == "error":
            return "error"
        if client_api == "anthropic":
            block = event.get("content_block")
            delta = event.get("delta")
            if (isinstance(block, dict) and block.get("type") == "tool_use") or (
                    isinstance(delta, dict) and delta.get("stop_reason") == "tool_use"):
                return "tool_calls"
            if event.get("type") == "message_stop":
                done = True
        elif _has_tool_calls_openai(event.get("choices"), "delta"):
            return "tool_calls"
    return "" if done else "incomplete"
