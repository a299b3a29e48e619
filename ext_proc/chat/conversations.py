"""Stored responses for OpenAI's Responses API (``state_storage``, plano's key): what lets a
client refer to an earlier answer instead of sending it again, whatever provider answers.

A Responses client may send ``previous_response_id`` (the conversation so far is that response's
input and output) or ``item_reference`` items (``{"type": "item_reference", "id": "fc_..."}``: an
output item of an earlier response). The ``openai`` SDK's agents and the Vercel AI SDK (whose
``openai(model)`` speaks the Responses API and refers to the earlier step's items in a tool loop
unless ``store: false``) do both. OpenAI resolves them from what it stored; a provider sidegate
sends chat completions to (Anthropic, Bedrock, any OpenAI-compatible server) has nothing to
resolve them with. So sidegate stores what it presents itself:

* :meth:`Conversations.remember`: after a response sidegate presented (the chat answer of such a
  provider, a cached answer, or its own answer) whose request did not say ``store: false``: the
  response's whole input (the earlier conversation already resolved) and its output under
  ``resp:<id>``, and each output item under ``item:<id>``, for ``state_storage.ttl``;
* :meth:`Conversations.recall`: before a Responses request is read: ``previous_response_id`` found
  here becomes that conversation, in front of the request's own input, and every ``item_reference``
  found here becomes the item. What is not found here is left as it is: a provider that takes the
  Responses API itself (``native_responses``) may know it (an id OpenAI gave); a request translated
  for any other provider gets a 400 naming it (``previous_response_not_found``).

Entries live where the response cache's do (``shared_store``): this process, or a SQLite file the
``ext_proc.workers`` of one ``sidegate up`` share (:class:`~ext_proc.chat.cache.FileStore`), or
Redis. A store that fails or is slower than ``shared_store.timeout``: a request that refers to
something answers ``503 state_storage_unavailable``; a response that cannot be stored is counted
(``sidegate_shared_store_errors``) and logged, and still goes to the client. A reference the store
dropped (expired, or least recently used past ``max_memory_bytes``) is a 400, as one never stored.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from typing import Any

from ext_proc.chat.cache import CacheStore, StoreFailed, shared_store
from ext_proc.chat.shared_store import FailureLog
from ext_proc.config import SharedStore, StateStorage
from ext_proc.errors import SidegateError
from ext_proc.names import STATE_FILE

__all__ = ["Conversations", "StateUnavailable", "input_items"]

log = logging.getLogger("sidegate.ext_proc")

VERSION = 1


class StateUnavailable(SidegateError):
    status = 503
    type = "server_error"
    code = "state_storage_unavailable"


def input_items(value: Any) -> list[Any]:
    """A request's ``input`` as a list of items (a string is one user message)."""
    if isinstance(value, str):
        return [{"type": "message", "role": "user", "content": value}]
    return list(value) if isinstance(value, list) else []


class Conversations:
    """The stored responses of one ext_proc process's listeners."""

    def __init__(self, settings: StateStorage, shared: SharedStore, *, on_store_error: Callable[[str], None] | None = None,
                 store: CacheStore | None = None) -> None:
        self.settings = settings
        self.prefix = f"{shared.prefix}rs:v{VERSION}:"
        self.store = store if store is not None else shared_store(shared, STATE_FILE, max_bytes=settings.max_memory_bytes)
        self._on_store_error = on_store_error or (lambda kind: None)
        self._log = FailureLog(log)

    async def _get(self, kind: str, key: str) -> Any:
        try:
            raw = await self.store.get(f"{self.prefix}{kind}:{key}")
        except StoreFailed as exc:
            self._on_store_error(exc.kind)
            raise StateUnavailable(f"the stored responses could not be read ({exc.kind}): retry, or send the whole "
                                   "conversation in input instead of previous_response_id or item_reference") from exc
        if raw is None:
            return None
        try:
            return json.loads(raw)
        except ValueError:
            return None  # corrupt: as if never stored

    async def recall(self, request: Mapping[str, Any]) -> tuple[dict[str, Any], bool]:
        """(the request with what this store holds resolved, whether anything was). Raises
        :class:`StateUnavailable` when the store cannot be read and the request refers to something."""
        body = dict(request)
        changed = False
        previous = body.get("previous_response_id")
        if isinstance(previous, str) and previous:
            state = await self._get("resp", previous)
            if isinstance(state, dict) and isinstance(state.get("input"), list) and isinstance(state.get("output"), list):
                body["input"] = state["input"] + state["output"] + input_items(body.get("input"))
                del body["previous_response_id"]
                changed = True
        items = body.get("input")
        if isinstance(items, list) and any(isinstance(i, dict) and i.get("type") == "item_reference" for i in items):
            resolved = []
            for item in items:
                ref = item.get("id") if isinstance(item, dict) and item.get("type") == "item_reference" else None
                found = await self._get("item", ref) if isinstance(ref, str) else None
                if isinstance(found, dict):
                    changed = True
                resolved.append(found if isinstance(found, dict) else item)
            body["input"] = resolved
        return body, changed

    async def remember(self, request: Mapping[str, Any], response: Mapping[str, Any]) -> bool:
        """Store ``response`` (a presented ``response`` object) and its output items, with the
        request's input (previous_response_id already resolved). False when the store failed."""
        response_id, output = response.get("id"), response.get("output")
        if not isinstance(response_id, str) or not isinstance(output, list):
            return False
        ttl = self.settings.ttl_s
        try:
            for item in output:
                if isinstance(item, dict) and isinstance(item.get("id"), str):
                    await self.store.put(f"{self.prefix}item:{item['id']}", json.dumps(item).encode(), ttl)
            state = {"input": input_items(request.get("input")), "output": output}
            await self.store.put(f"{self.prefix}resp:{response_id}", json.dumps(state).encode(), ttl)
        except StoreFailed as exc:
            self._on_store_error(exc.kind)
            self._log.warning("response %s not stored (%s): a later previous_response_id or item_reference to it gets a 400",
                              response_id, exc.kind)
            return False
        return True

    async def close(self) -> None:
        await self.store.close()
