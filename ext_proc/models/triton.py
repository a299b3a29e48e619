"""The ext_proc service's one client to Triton: gRPC (``tritonclient.grpc.aio``), one channel per process.

Protobuf and tritonclient stop here: callers pass ``str`` and get numpy arrays or booleans back,
and every failure reaches them as :class:`~ext_proc.errors.ModelServerError` (translated in one
place, :func:`_model_server_errors`). Every call carries a deadline.

Usage::

    client = TritonClient("grpc://127.0.0.1:8001")       # once, at start-up
    vectors = await client.embed(["what's the weather in Paris?"], timeout_s=0.5)   # (1, 384)
    if not await client.ready(models=["prompt_embed"]):  # health endpoint
        ...
    await client.close()                                  # on shutdown

A python-backend stub that crashes leaves its model READY while every request fails with
"... is not healthy". The client notices that error, marks the model in :attr:`unhealthy` and
reloads it in the background (:meth:`TritonClient.reload_unhealthy`, one reload at a time per
model); requests fail fast with ``ModelServerError`` until the fresh stub serves.

A caller that gives up (its task is cancelled: the guard blocked a prompt whose intent lookup was
still running, Envoy closed the stream) never cancels the RPC itself: the call runs to its end in
the background (it is already bounded by its deadline) and its answer is dropped. Triton 2.51's
gRPC frontend crashes (SIGSEGV in ``ModelInferHandler::Process``, a use-after-free fixed upstream
in triton-inference-server/server#7840) when a client cancels a call while the server completes
it: 8 concurrent guard-blocked ingress requests, each dropping its intent embedding, brought
tritonserver down in about 20 s, every time.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator, Sequence
from typing import Any, Self, TypeVar

import grpc
import numpy as np
import numpy.typing as npt
import tritonclient.grpc.aio as triton_aio
from tritonclient.grpc import InferInput, InferRequestedOutput
from tritonclient.utils import InferenceServerException

from ext_proc import telemetry
from ext_proc.config import ENSEMBLE_STEPS  # a step whose stub died fails its ensemble's requests; the step is reloaded
from ext_proc.errors import ModelServerError
from ext_proc.models.base import GuardVerdict, JudgeVerdict, RouteVerdict, ToolCall
from ext_proc.names import INVALID_INPUT_MARK, STUB_DEAD, STUB_DEAD_INSTANCE

__all__ = ["EMBEDDING_DIM", "EMBED_MODEL", "TritonClient"]

log = logging.getLogger(__name__)

EMBED_MODEL = "prompt_embed"
GUARD_MODEL = "prompt_guard"
FUNCTION_CALL_MODEL = "function_call"
CHAT_MODEL = "chat_llm"


def _json_inputs(**documents: Any) -> list[InferInput]:
    """One BYTES [1] input per keyword, holding the value as a JSON document."""
    out = []
    for name, value in documents.items():
        inp = InferInput(name, [1], "BYTES")
        inp.set_data_from_numpy(np.array([json.dumps(value).encode()], dtype=np.object_))
        out.append(inp)
    return out
EMBEDDING_DIM = 384
EMBED_MAX_BATCH = 64  # max_batch_size in triton_models/prompt_embed/config.pbtxt
# STUB_DEAD_INSTANCE names the stub's model instance, "<model>_<group>_<instance>"; through an
# ensemble the instance is that of the step whose stub died


# calls whose deadline is the model's config (model_server.models.<name>.timeout / model_server.timeout)
_INFERENCE = ("embed", "guard", "stream")


def _timeout_error(operation: str, model: str, timeout_s: float) -> ModelServerError:
    """A model slower than its deadline: 504 ``model_server_timeout`` naming the model, and for an
    inference call the config key that sets the deadline (503 stays for a server that is down)."""
    message = f"Triton model {model} did not answer within {timeout_s:g} s ({operation})"
    if operation in _INFERENCE:
        message += (f"; if it is only slow (cold, or busy with queued calls), raise model_server.models.{model}.timeout "
                    "(or model_server.timeout, the deadline of every model)")
    return ModelServerError(message, code="model_server_timeout", status=504)


T = TypeVar("T")
# the gRPC deadline of a call is its caller's deadline plus this: the caller stops waiting at its
# own deadline (504), the call itself goes on, so that gRPC cancels only calls to a hung model
RPC_GRACE_S = 30.0
UNLOAD_POLL_S = 0.05  # how often unload_model asks the repository index whether the unload is done
DEAD_TEARDOWN_S = 5.0  # how long a dead-stub reload waits for the dead instance's unload (~1 s; see _reload_here)


def _drop_outcome(calls: set[asyncio.Future[Any]]) -> Callable[[asyncio.Future[Any]], None]:
    """A done-callback that forgets a finished call and retrieves its outcome, so that an RPC
    whose caller gave up does not log "exception was never retrieved"."""

    def done(task: asyncio.Future[Any]) -> None:
        calls.discard(task)
        if not task.cancelled():
            task.exception()

    return done


def _first_tool_call(answer: Any) -> dict[str, Any] | None:
    """``{"name", "arguments", "missing"}`` of a TOOL_CALLS document's first call; None when it
    has none (the chooser's "none"); ModelServerError when it is not that shape."""
    try:
        calls = answer["tool_calls"]
        if not calls:
            return None
        call = calls[0]
        return {
            "name": call["function"]["name"],
            "arguments": json.loads(call["function"]["arguments"]),
            "missing": list(call.get("missing") or []),
        }
    except (TypeError, KeyError, IndexError, ValueError) as exc:
        raise ModelServerError(f"Triton model {FUNCTION_CALL_MODEL} returned an unexpected answer: {answer!r:.200}") from exc


def _target(url: str) -> str:
    """``grpc://host:port`` or ``host:port`` -> ``host:port`` (what grpc dials)."""
    if url.startswith("grpc://"):
        return url.removeprefix("grpc://").rstrip("/")
    if "://" in url:
        raise ValueError(f"Triton is reached over gRPC: expected grpc://HOST:PORT, got {url!r}")
    return url


class TritonClient:
    """One gRPC channel to Triton; async, safe to share between all streams of the process.

    Create it inside the running event loop (grpc.aio binds the channel to it) and close it on
    shutdown. ``url`` is ``grpc://HOST:PORT`` (``model_server.endpoint``) or ``HOST:PORT``.
    """

    def __init__(self, url: str, *, auto_reload: bool = True, reload_timeout_s: float = 120.0,
                 replicas: Sequence[str] = ()) -> None:
        self.url = url
        # with several Tritons behind Envoy's balancer (``url``): each one's own address, where a
        # dead stub is looked for and reloaded (a reload sent through the balancer would land on
        # whichever replica it picked)
        self.replicas = list(replicas)
        self.unhealthy: set[str] = set()  # models whose stub was seen dead, until reloaded
        self._auto_reload = auto_reload
        self._reload_timeout_s = reload_timeout_s
        self._reloads: dict[str, asyncio.Task[bool]] = {}
        self._calls: set[asyncio.Future[Any]] = set()  # RPCs running on after their caller gave up
        self._client = triton_aio.InferenceServerClient(url=_target(url))

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- inference ----------------------------------------------------------------------------
    async def embed(
        self, texts: Sequence[str | bytes], *, timeout_s: float, headers: dict[str, str] | None = None
    ) -> npt.NDArray[np.float32]:
        """Embed ``texts`` with ``prompt_embed``: an ``(len(texts), 384)`` array of unit vectors.

        ``headers`` go along as gRPC metadata (e.g. ``traceparent``). More texts than the
        model's max batch are sent as several concurrent requests, all under ``timeout_s``.
        Raises :class:`ModelServerError`: status 400 (code ``model_input_invalid``) when the
        model rejects a text (empty, not UTF-8), 504 (code ``model_server_timeout``) past
        ``timeout_s``, 503 for everything else.
        """
        if not texts:
            return np.empty((0, EMBEDDING_DIM), dtype=np.float32)
        chunks = [texts[i:i + EMBED_MAX_BATCH] for i in range(0, len(texts), EMBED_MAX_BATCH)]
        parts = await asyncio.gather(*(self._embed_chunk(c, timeout_s, headers) for c in chunks))
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    async def _embed_chunk(
        self, texts: Sequence[str | bytes], timeout_s: float, headers: dict[str, str] | None
    ) -> npt.NDArray[np.float32]:
        # surrogatepass: a lone surrogate (valid in JSON, not in UTF-8) reaches the model as the
        # invalid bytes it is and comes back as a clear INVALID_ARG, not as a crash here
        rows = [t if isinstance(t, bytes) else t.encode("utf-8", "surrogatepass") for t in texts]
        text = InferInput("TEXT", [len(rows), 1], "BYTES")
        text.set_data_from_numpy(np.array(rows, dtype=np.object_).reshape(-1, 1))
        with self._model_server_errors("embed", EMBED_MODEL, timeout_s):
            result = await self._uncancelled(self._client.infer(
                EMBED_MODEL,
                [text],
                outputs=[InferRequestedOutput("EMBEDDING")],
                client_timeout=timeout_s + RPC_GRACE_S,
                headers=headers,
            ), timeout_s)
        embeddings = result.as_numpy("EMBEDDING")
        if embeddings is None or embeddings.shape != (len(rows), EMBEDDING_DIM):
            shape = None if embeddings is None else embeddings.shape
            raise ModelServerError(f"Triton model {EMBED_MODEL} returned EMBEDDING of shape {shape}, "
                                   f"expected ({len(rows)}, {EMBEDDING_DIM})")
        return np.asarray(embeddings, dtype=np.float32)

    async def guard(
        self, text: str, *, timeout_s: float, headers: dict[str, str] | None = None
    ) -> tuple[float, bool]:
        """``prompt_guard`` on one text: (probability, flagged by the model's own threshold)."""
        row = text.encode("utf-8", "surrogatepass")
        inp = InferInput("TEXT", [1, 1], "BYTES")
        inp.set_data_from_numpy(np.array([[row]], dtype=np.object_))
        outputs = [InferRequestedOutput(name) for name in ("PROB", "LABEL")]
        with self._model_server_errors("guard", GUARD_MODEL, timeout_s):
            result = await self._uncancelled(
                self._client.infer(GUARD_MODEL, [inp], outputs=outputs, client_timeout=timeout_s + RPC_GRACE_S, headers=headers),
                timeout_s,
            )
        prob, label = result.as_numpy("PROB"), result.as_numpy("LABEL")
        if prob is None or label is None or prob.size != 1 or label.size != 1:
            raise ModelServerError(f"Triton model {GUARD_MODEL} returned an unexpected answer")
        return float(prob.reshape(-1)[0]), label.reshape(-1)[0] == b"jailbreak"

    async def function_call(
        self, messages: list[dict[str, Any]], tools: list[dict[str, Any]], *, timeout_s: float, headers: dict[str, str] | None = None,
        prefill: bool = False,
    ) -> dict[str, Any]:
        """``function_call`` (decoupled): ``{"name", "arguments": {...}, "missing": [...]}`` of the first tool call.
        ``prefill``: only evaluate (cache) the one tool's prompt prefix (``TOOLS {"tools", "prefill": true}``)."""
        document: Any = {"tools": tools, "prefill": True} if prefill else tools
        answer = await self._function_call_answer(_json_inputs(MESSAGES=messages, TOOLS=document), timeout_s, headers)
        call = _first_tool_call(answer)
        if call is None:
            raise ModelServerError(f"Triton model {FUNCTION_CALL_MODEL} returned no tool call: {answer!r:.200}")
        return call

    async def function_choose(
        self, messages: list[dict[str, Any]], tools: list[dict[str, Any]], candidates: list[str], *, timeout_s: float,
        headers: dict[str, str] | None = None, distinct: list[str] | None = None,
    ) -> dict[str, Any] | None:
        """``function_call`` as a gate: the first of ``candidates`` (names of ``tools``, best
        first by the gateway's ranking; the model's prompt lists every tool in the order given)
        or none, and its arguments, in one request (``"ranked": true``: the model says whether the
        request is for one of the candidates, the ranking says which, unless the model is sure of
        one of ``distinct``: ``"distinct"``). ``{"name", "arguments", "missing"}``, or None when
        the model said none."""
        choice: dict[str, Any] = {"tools": tools, "candidates": candidates, "allow_none": True, "ranked": True}
        if distinct:
            choice["distinct"] = distinct
        inputs = _json_inputs(MESSAGES=messages, TOOLS=choice)
        return _first_tool_call(await self._function_call_answer(inputs, timeout_s, headers))

    async def function_judge(
        self, text: str, *, kind: str = "guard", timeout_s: float, headers: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        """``function_call`` as the guard's judge (``TOOLS {"judge": kind}``, the text as the one
        user turn): ``{"verdict": "yes"|"no", "p_yes": float|None, ...}``."""
        inputs = _json_inputs(MESSAGES=[{"role": "user", "content": text}], TOOLS={"judge": kind})
        answer = await self._function_call_answer(inputs, timeout_s, headers)
        p_yes = answer.get("p_yes") if isinstance(answer, dict) else None
        if not isinstance(answer, dict) or answer.get("verdict") not in ("yes", "no") or not (
                p_yes is None or isinstance(p_yes, (int, float))):
            raise ModelServerError(f"Triton model {FUNCTION_CALL_MODEL} returned an unexpected judge answer: {answer!r:.200}")
        return answer

    async def function_route(
        self, text: str, categories: list[tuple[str, str]], *, timeout_s: float, headers: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        """``function_call`` as preference routing's judge (``TOOLS {"judge": "route", "categories":
        [...]}``, the text as the one user turn): ``{"answer": name | None, "p": {...}, "p_none": ...}``."""
        inputs = _json_inputs(MESSAGES=[{"role": "user", "content": text}],
                              TOOLS={"judge": "route", "categories": [{"name": n, "description": d} for n, d in categories]})
        answer = await self._function_call_answer(inputs, timeout_s, headers)
        names = {n for n, _ in categories}
        if not isinstance(answer, dict) or not (answer.get("answer") is None or answer.get("answer") in names) or not isinstance(
                answer.get("p"), dict) or not isinstance(answer.get("p_none"), (int, float)):
            raise ModelServerError(f"Triton model {FUNCTION_CALL_MODEL} returned an unexpected route judge answer: {answer!r:.200}")
        return answer

    async def _function_call_answer(self, inputs: list[InferInput], timeout_s: float, headers: dict[str, str] | None) -> Any:
        """The last TOOL_CALLS document of one ``function_call`` request, waited for at most
        ``timeout_s``; the stream itself is never cancelled (see :meth:`_uncancelled`)."""

        async def last() -> Any:
            answer = None
            async for out in self._stream(FUNCTION_CALL_MODEL, inputs, "TOOL_CALLS", timeout_s + RPC_GRACE_S, headers):
                answer = out
            return answer

        with self._model_server_errors("stream", FUNCTION_CALL_MODEL, timeout_s):
            return await self._uncancelled(last(), timeout_s)

    async def chat(
        self, messages: list[dict[str, Any]], params: dict[str, Any], *, timeout_s: float, headers: dict[str, str] | None = None
    ) -> AsyncIterator[dict[str, Any]]:
        """``chat_llm`` (decoupled): OpenAI ``chat.completion.chunk`` dicts as they are generated."""
        async for chunk in self._stream(CHAT_MODEL, _json_inputs(MESSAGES=messages, PARAMS=params), "CHUNK", timeout_s, headers):
            yield chunk

    async def _stream(
        self, model: str, inputs: list[InferInput], output: str, timeout_s: float, headers: dict[str, str] | None
    ) -> AsyncIterator[dict[str, Any]]:
        """One request to a decoupled model; yields each response's ``output`` JSON until the final flag."""

        async def requests() -> AsyncIterator[dict[str, Any]]:
            yield {
                "model_name": model,
                "inputs": inputs,
                "outputs": [InferRequestedOutput(output)],
                "request_id": uuid.uuid4().hex,
                "enable_empty_final_response": True,
            }

        with self._model_server_errors("stream", model, timeout_s):
            async with asyncio.timeout(timeout_s):
                responses = self._client.stream_infer(requests(), stream_timeout=timeout_s, headers=headers)
                async for result, error in responses:
                    if error is not None:
                        raise error
                    response = result.get_response()
                    data = result.as_numpy(output)
                    if data is not None and data.size:
                        raw = data.reshape(-1)[0]
                        yield json.loads(raw.decode() if isinstance(raw, bytes) else raw)
                    final = response.parameters.get("triton_final_response")
                    if final is not None and final.bool_param:
                        return

    # -- health and model control -------------------------------------------------------------
    async def ready(self, *, models: Sequence[str] = (), timeout_s: float = 1.0) -> bool:
        """Whether the server and each of ``models`` are ready (never raises; for health checks).

        A model whose stub was seen dead counts as not ready until it is reloaded.
        """
        try:
            async with asyncio.timeout(timeout_s):
                if not await self._client.is_server_ready(client_timeout=timeout_s):
                    return False
                for model in models:
                    if model in self.unhealthy or not await self._client.is_model_ready(model, client_timeout=timeout_s):
                        return False
        except (InferenceServerException, grpc.RpcError, TimeoutError, OSError):
            return False
        return True

    async def load_model(self, model: str, *, timeout_s: float) -> None:
        """Load ``model`` through the repository API (a no-op for a loaded, unchanged model)."""
        with self._model_server_errors("load", model, timeout_s):
            await self._client.load_model(model, client_timeout=timeout_s)
        log.info("Triton model %s loaded", model)

    async def unload_model(self, model: str, *, timeout_s: float, settle_s: float | None = None) -> None:
        """Unload ``model`` through the repository API; returns once the unload is done.

        Triton answers the unload request at once and tears the instance down after: the
        repository index says UNLOADING until the python stub has exited (~1 s here), then
        UNAVAILABLE. A load started in between overlapped the two, and tritonserver 2.51 aborted
        ("unaligned tcache chunk detected"), so this waits for the index to leave UNLOADING:
        within ``timeout_s`` (else ``504 model_server_timeout``), or, with ``settle_s``, at most
        that long and then returns with a warning (the dead-stub reload: see ``_reload_here``).
        """
        with self._model_server_errors("unload", model, timeout_s):
            await self._client.unload_model(model, client_timeout=timeout_s)
            if settle_s is None:
                await self._until_unloaded(model, timeout_s)
            else:
                try:
                    await self._until_unloaded(model, settle_s)
                except TimeoutError:
                    log.warning("Triton model %s: the dead instance is still UNLOADING after %g s; loading a fresh one",
                                model, settle_s)
                    return
        log.info("Triton model %s unloaded", model)

    async def _until_unloaded(self, model: str, timeout_s: float) -> None:
        """Returns once Triton's repository index no longer lists ``model`` as UNLOADING;
        TimeoutError after ``timeout_s``."""
        async with asyncio.timeout(timeout_s):
            while True:
                index = await self._client.get_model_repository_index(as_json=True, client_timeout=timeout_s)
                if not any(m.get("name") == model and m.get("state") == "UNLOADING" for m in index.get("models", [])):
                    return
                await asyncio.sleep(UNLOAD_POLL_S)

    async def reload_unhealthy(self, model: str, *, timeout_s: float = 120.0) -> bool:
        """Reload ``model`` if its stub was seen dead; returns whether a reload happened.

        The python backend reports a crashed stub per request ("Stub process ... is not
        healthy") while the model stays READY, so readiness cannot tell. This unloads the model
        and loads it again through the repository API, which starts a fresh stub, clears the
        mark, then loads again the ensembles it is a step of that were loaded (unloading a step
        unloads them). (A plain load of an unchanged model is a no-op in Triton 2.51, and a load
        with the same config override only updates the config: neither replaces the dead stub.)
        The client calls this itself in the background, one reload at a time per model.
        """
        if model not in self.unhealthy:
            return False
        if not self.replicas:
            # only a stub that is still dead (or a model not loaded): a mark set by a request that
            # failed during the previous reload would otherwise reload the fresh model again,
            # overlapping that reload's ensemble load, and tritonserver 2.51 once aborted on it
            # ("malloc(): unaligned tcache chunk detected" in libtriton_python.so, two reloads
            # 3 ms apart in its log: test_triton's dead prompt_embed stub test)
            if await self.stub_dead(model, timeout_s=timeout_s) or not await self._loaded(model, timeout_s):
                await self._reload_here(model, timeout_s)
        else:  # one replica at a time, only those whose stub is dead: the others keep serving
            for url in self.replicas:
                async with TritonClient(url, auto_reload=False) as replica:
                    if await replica.stub_dead(model, timeout_s=timeout_s):
                        log.warning("Triton model %s: python stub on %s is dead, reloading it there", model, url)
                        await replica._reload_here(model, timeout_s)
        self.unhealthy.discard(model)
        return True

    async def _loaded(self, model: str, timeout_s: float) -> bool:
        """Whether Triton has ``model`` loaded and READY (whatever its stub's health)."""
        try:
            return bool(await self._client.is_model_ready(model, client_timeout=timeout_s))
        except (InferenceServerException, grpc.RpcError, OSError):
            return False

    async def _reload_here(self, model: str, timeout_s: float) -> None:
        ensembles = [e for e, steps in ENSEMBLE_STEPS.items() if model in steps and await self.ready(models=[e], timeout_s=timeout_s)]
        # a dead stub's instance is torn down in ~1 s, and loading before that overlapped the two
        # (see unload_model). But once a request has failed on the dead stub, tritonserver 2.51
        # never finishes that unload (UNLOADING for good, nothing left to tear down), so after
        # DEAD_TEARDOWN_S the fresh instance is loaded beside it
        await self.unload_model(model, timeout_s=timeout_s, settle_s=min(DEAD_TEARDOWN_S, timeout_s))
        await self.load_model(model, timeout_s=timeout_s)
        for ensemble in ensembles:  # only those that were loaded: this server may serve the step alone
            await self.load_model(ensemble, timeout_s=timeout_s)

    async def stub_dead(self, model: str, *, timeout_s: float) -> bool:
        """Whether ``model``'s python stub on this server is dead: a dead stub leaves the model
        READY, so this sends it one request of empty inputs (built from its config) on the
        streaming API, which decoupled models take too. A live stub refuses it (or answers);
        a dead one is "not healthy"."""
        try:
            config = (await self._client.get_model_config(model, as_json=True, client_timeout=timeout_s))["config"]
        except InferenceServerException:
            return False  # not loaded here: nothing to reload
        batched = int(config.get("max_batch_size", 0)) > 0
        inputs = []
        for spec in config.get("input", []):
            dims = [1 if int(d) < 0 else int(d) for d in spec.get("dims", [])]
            shape = ([1] if batched else []) + dims
            dtype = spec["data_type"].removeprefix("TYPE_")
            inp = InferInput(spec["name"], shape, "BYTES" if dtype == "STRING" else dtype)
            np_type = np.object_ if dtype == "STRING" else getattr(np, dtype.lower().replace("fp", "float"))
            inp.set_data_from_numpy(np.full(shape, b"" if dtype == "STRING" else 0, dtype=np_type))
            inputs.append(inp)

        async def requests() -> AsyncIterator[dict[str, Any]]:
            yield {"model_name": model, "inputs": inputs, "request_id": uuid.uuid4().hex}

        errors = []
        try:
            async with asyncio.timeout(timeout_s):  # read to the end: leaving the stream early would cancel it
                async for _, error in self._client.stream_infer(requests(), stream_timeout=timeout_s):
                    errors.append(str(error or ""))
        except (InferenceServerException, grpc.RpcError, TimeoutError) as exc:
            errors.append(str(exc))
        return any(STUB_DEAD in e for e in errors)

    async def close(self) -> None:
        for task in self._reloads.values():
            task.cancel()
        await asyncio.gather(*self._reloads.values(), return_exceptions=True)
        self._reloads.clear()
        if self._calls:  # calls whose callers gave up: let them end (each has its deadline) before the channel goes
            await asyncio.wait(self._calls, timeout=5.0)
        await self._client.close()

    async def _uncancelled(self, call: Coroutine[Any, Any, T], timeout_s: float) -> T:
        """Await ``call`` (one RPC) for at most ``timeout_s`` (then ``TimeoutError``); if the
        caller is cancelled or its time is up, the RPC still runs to its end in the background
        and its outcome is dropped (see the module docstring: cancelling an RPC in flight crashes
        Triton 2.51). The RPC's own gRPC deadline is ``RPC_GRACE_S`` later: only a model that
        hangs is cut off by gRPC."""
        task = asyncio.ensure_future(call)
        self._calls.add(task)
        task.add_done_callback(_drop_outcome(self._calls))
        async with asyncio.timeout(timeout_s):
            return await asyncio.shield(task)

    # -- errors -------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _model_server_errors(self, operation: str, model: str, timeout_s: float) -> Iterator[None]:
        """The one place where Triton's and gRPC's exceptions become :class:`ModelServerError`."""
        try:
            yield
        except InferenceServerException as exc:
            status, message = exc.status() or "", exc.message() or str(exc)
            if status == "StatusCode.DEADLINE_EXCEEDED":
                raise _timeout_error(operation, model, timeout_s) from exc
            if status == "StatusCode.INVALID_ARGUMENT" or (not status and f": {INVALID_INPUT_MARK}: " in message):
                raise ModelServerError(f"Triton model {model} rejected the input: {message}",
                                       code="model_input_invalid", status=400) from exc
            dead = self._dead_model(model, message)
            if dead is not None:  # a dead stub, or a reload still under way or that failed
                self._mark_unhealthy(dead)
                which = f"Triton model {dead}" + (f" (a step of {model})" if dead != model else "")
                raise ModelServerError(f"{which} crashed and is being reloaded: {message}",
                                       code="model_server_unhealthy") from exc
            if model in ENSEMBLE_STEPS and "unknown model" in message:  # a step was unloaded, and the ensemble with it
                steps = " and ".join(ENSEMBLE_STEPS[model])
                raise ModelServerError(f"Triton model {model} is not available: it needs {steps} loaded ({message})") from exc
            if status == "StatusCode.UNAVAILABLE":
                raise ModelServerError(f"Triton at {self.url} is unreachable: {message}") from exc
            raise ModelServerError(f"Triton {operation} ({model}) failed: [{status}] {message}") from exc
        except TimeoutError as exc:
            raise _timeout_error(operation, model, timeout_s) from exc
        except (grpc.RpcError, OSError) as exc:
            if isinstance(exc, grpc.RpcError) and exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                raise _timeout_error(operation, model, timeout_s) from exc
            raise ModelServerError(f"Triton {operation} ({model}) at {self.url} failed: {exc!r}") from exc

    def _dead_model(self, model: str, message: str) -> str | None:
        """The model whose stub this error says is dead (``model`` or, for an ensemble, one of
        its steps), or one of them already marked dead (its reload is under way: unloading a
        step makes the ensemble unknown meanwhile); None when the error is something else."""
        found = STUB_DEAD_INSTANCE.search(message)
        if found:
            return re.sub(r"_\d+_\d+$", "", found["instance"])
        if STUB_DEAD in message:
            return model
        return next((m for m in (model, *ENSEMBLE_STEPS.get(model, ())) if m in self.unhealthy), None)

    def _mark_unhealthy(self, model: str) -> None:
        self.unhealthy.add(model)
        if not self._auto_reload or (model in self._reloads and not self._reloads[model].done()):
            return  # the reload in flight will serve this request's successors
        log.warning("Triton model %s: python stub is dead, reloading it", model)
        task = asyncio.get_running_loop().create_task(self._reload(model))
        self._reloads[model] = task

    async def _reload(self, model: str) -> bool:
        try:
            return await self.reload_unhealthy(model, timeout_s=self._reload_timeout_s)
        except ModelServerError as exc:
            log.error("Triton model %s could not be reloaded: %s", model, exc.message)
            return False



class TritonModels:
    """Implements :class:`ext_proc.chat.pipeline.Models` over one :class:`TritonClient`.

    Every call carries its model's deadline: ``timeouts[model]`` (``model_server.models.<name>.timeout``,
    resolved by the config), else ``timeout_s`` (``model_server.timeout``).
    """

    def __init__(self, client: TritonClient, *, timeout_s: float, timeouts: dict[str, float] | None = None) -> None:
        self.client = client
        self.timeout_s = timeout_s
        self.timeouts = dict(timeouts or {})

    def timeout_for(self, model: str) -> float:
        return self.timeouts.get(model, self.timeout_s)

    async def embed(self, texts: list[str]) -> npt.NDArray[np.float32]:
        return await self.client.embed(texts, timeout_s=self.timeout_for(EMBED_MODEL), headers=telemetry.inject() or None)

    async def guard(self, text: str) -> GuardVerdict:
        prob, flagged = await self.client.guard(text, timeout_s=self.timeout_for(GUARD_MODEL), headers=telemetry.inject() or None)
        return GuardVerdict(probability=prob, flagged=flagged)

    async def function_call(self, messages: list[dict[str, Any]], tool: dict[str, Any], *, timeout_s: float | None = None,
                            prefill: bool = False) -> ToolCall:
        deadline = self.timeout_for(FUNCTION_CALL_MODEL) if timeout_s is None else timeout_s
        out = await self.client.function_call(messages, [tool], timeout_s=deadline, headers=telemetry.inject() or None,
                                              prefill=prefill)
        return ToolCall(arguments=out.get("arguments") or {}, missing=list(out.get("missing") or []))

    async def choose_call(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]], candidates: list[str], *,
                          timeout_s: float | None = None, distinct: list[str] | None = None) -> tuple[str, ToolCall] | None:
        deadline = self.timeout_for(FUNCTION_CALL_MODEL) if timeout_s is None else timeout_s
        out = await self.client.function_choose(messages, tools, candidates, timeout_s=deadline, headers=telemetry.inject() or None,
                                                distinct=distinct)
        if out is None:
            return None
        return out["name"], ToolCall(arguments=out.get("arguments") or {}, missing=list(out.get("missing") or []))

    async def judge_guard(self, text: str, *, timeout_s: float | None = None) -> JudgeVerdict:
        """The guard's judge, under ``timeout_s`` (the pipeline passes
        ``prompt_guards.input_guards.jailbreak.judge.timeout``; None: function_call's deadline)."""
        deadline = self.timeout_for(FUNCTION_CALL_MODEL) if timeout_s is None else timeout_s
        out = await self.client.function_judge(text, kind="guard", timeout_s=deadline, headers=telemetry.inject() or None)
        p_yes = out.get("p_yes")
        return JudgeVerdict(verdict=out["verdict"], p_yes=None if p_yes is None else float(p_yes))

    async def judge_route(self, text: str, categories: list[tuple[str, str]], *, timeout_s: float | None = None) -> RouteVerdict:
        deadline = self.timeout_for(FUNCTION_CALL_MODEL) if timeout_s is None else timeout_s
        out = await self.client.function_route(text, categories, timeout_s=deadline, headers=telemetry.inject() or None)
        return RouteVerdict(answer=out.get("answer"), p={str(k): float(v) for k, v in out["p"].items()}, p_none=float(out["p_none"]))

    async def close(self) -> None:
        await self.client.close()
