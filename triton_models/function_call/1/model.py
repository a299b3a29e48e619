"""Triton python backend for ``function_call``: a thin, decoupled wrapper over the engine
(``sidegate_models.function_call``, in ``triton_models/sidegate_models/function_call/``).

Tensors (``config.pbtxt``; ``max_batch_size: 0``, one JSON document per request):

* ``MESSAGES`` BYTES [1] — the conversation, OpenAI shape: ``[{"role", "content"}, ...]``
* ``TOOLS`` BYTES [1] — an OpenAI tool list (``[{"type": "function", "function": {...}}]``),
  or one tool object; with several tools the model first picks one by a constrained name. Or a
  choice: ``{"tools": [...], "candidates": ["name", ...], "allow_none": true}``: the model picks
  one of ``candidates`` (default: every tool) or, with ``allow_none``, none of them, and fills
  the chosen one in the same request. Its prompt lists ALL ``tools`` in the order given (send
  them in a fixed order: the listing then stays in llama.cpp's prompt cache); the candidates
  restrict only the grammar. None chosen: ``"tool_calls": []``. ``candidates: []`` with
  ``allow_none`` only evaluates (caches) the listing: the gateway's start-up pre-fill.
  ``"ranked": true`` (with ``allow_none``): the candidates come best first from the caller's
  ranking, and the model only says whether the request is for one of them; the answer is then
  the first candidate, or none (``FunctionCaller.choose``). ``"distinct": ["name", ...]``
  (with ``ranked``): candidates after the first that do something else than it; the model's own
  pick among them is the answer when the model is sure of it.
  ``{"tools": [tool], "prefill": true}`` evaluates (caches) one tool's prompt prefix: the
  pre-fill of a prompt target; ``tool_calls`` then names the tool with ``{}`` arguments.
* ``TOOL_CALLS`` BYTES [1] — one JSON object::

    {"model": "qwen2.5-coder-0.5b-instruct-q4_k_m",
     "tool_calls": [{"id": "call_…", "type": "function",
                     "function": {"name": "get_weather", "arguments": "{\\"location\\": \\"Paris\\"}"},
                     "missing": ["days"]}],
     "usage": {...}}

  ``arguments`` is a JSON string, as in OpenAI responses; it validates against the tool's
  schema once the parameters in ``missing`` (required, not found in the conversation) are given.
* The guard's judge (issue 17): ``TOOLS`` ``{"judge": "guard"}`` asks a constrained yes/no on
  the last user message of ``MESSAGES``: is it a jailbreak / prompt injection? (fixed policy,
  message fenced as data and cut to its start and end: ``FunctionCaller.judge``). ``TOOL_CALLS``
  is then ``{"model", "tool_calls": [], "judge": "guard", "verdict": "yes"|"no", "p_yes": 0.93,
  "usage": {...}}`` (``p_yes`` null where the runtime gives no logprobs).
* Preference routing's judge (issue 19): ``TOOLS`` ``{"judge": "route", "categories": [{"name",
  "description"}, ...]}``: which category the last user message asks for, or none
  (``FunctionCaller.judge_route``). ``TOOL_CALLS`` is then ``{"model", "tool_calls": [], "judge":
  "route", "answer": name | null, "p": {name: mass}, "p_none": mass, "usage": {...}}``.

Decoupled: ``execute`` hands each request to a worker thread
(``sidegate_models.backend.DecoupledWorker``) and returns at once; the worker sends exactly one
response and the FINAL flag. Bad input (not JSON, wrong shape, a schema the
grammar cannot express) is a per-request ``INVALID_ARG`` error; the batch never fails whole.

Parameters (``config.pbtxt`` ``parameters``; all strings): ``weights`` (a packaged model name
from ``sidegate_models.weights`` or a GGUF path: the chooser among targets and the guard's judge),
``fill_weights`` (the filler, which fills every tool's arguments; empty: the same engine),
``weights_dir`` (cache for assembled weights; default
``$SIDEGATE_HOME/models``), ``n_threads`` (0 = the cores that are free at load), ``n_ctx`` and
``kv_windows`` (the slots share a KV cache of ``kv_windows`` x ``n_ctx`` tokens; ``kv_windows``
empty: 6, which ``sidegate up`` sizes from the config), ``n_slots`` (tools whose prompts stay cached),
``n_gpu_layers``, ``ground`` (``all``/``optional``/``none``), ``decode`` (``values``/``object``),
``warmup`` (``true``/``false``), ``mmap`` (``true`` maps the GGUF instead of reading it),
``kv_cache`` (``q8_0``/``f16``), ``max_chars`` (the conversation's most recent characters the
model reads; the oldest turns are cut first), ``none_margin`` (how readily a choice answers
none: ``sidegate_models.function_call.NONE_MARGIN``).
"""

from __future__ import annotations

import contextlib
import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

from sidegate_models import weights
from sidegate_models.backend import BadRequest, DecoupledWorker, check_config, gpu_layers, internal_error, invalid_input, json_input
from sidegate_models.function_call import ContextTooLong, FunctionCaller, UnsupportedSchema
from sidegate_models.function_call.engine import KV_WINDOWS
from sidegate_models.function_call.prompt import JUDGE_KINDS

_INPUTS = {"MESSAGES": "TYPE_STRING", "TOOLS": "TYPE_STRING"}
_OUTPUTS = {"TOOL_CALLS": "TYPE_STRING"}
# the chooser's KV cache when a filler has the tool slots: its listing of every target (~60
# tokens a target) and the judges' prompts (guard ~300, routing preferences), in windows of n_ctx tokens
CHOOSER_KV_WINDOWS = 3


class TritonPythonModel:
    def initialize(self, args: dict[str, str]) -> None:
        params = check_config(json.loads(args["model_config"]), "function_call", _INPUTS, _OUTPUTS)

        spec = os.environ.get("SIDEGATE_FC_WEIGHTS") or params.get("weights") or weights.DEFAULT_MODEL
        fill_spec = os.environ.get("SIDEGATE_FC_FILL_WEIGHTS") or params.get("fill_weights") or spec
        weights_dir = params.get("weights_dir") or None
        path = weights.resolve(spec, dest_dir=Path(weights_dir) if weights_dir else None)
        # resolve() re-hashes the cached GGUF (~0.5 s for the 1.5B): once when both are the same weights
        fill_path = path if fill_spec == spec else weights.resolve(fill_spec, dest_dir=Path(weights_dir) if weights_dir else None)
        n_slots = int(params.get("n_slots") or 16)
        # the KV cache of the engine that holds the tool slots (`sidegate up` renders it for the config)
        kv_windows = int(params.get("kv_windows") or KV_WINDOWS)
        common = dict(
            n_threads=int(params.get("n_threads") or 0),
            n_ctx=int(params.get("n_ctx") or 2048),
            n_gpu_layers=gpu_layers(params.get("n_gpu_layers"), args.get("model_instance_kind", "CPU")),
            ground=params.get("ground") or "all",
            values_only=(params.get("decode") or "values") != "object",
            warmup=(params.get("warmup") or "true").lower() != "false",
            mmap=(params.get("mmap") or "false").lower() == "true",
            kv_cache=params.get("kv_cache") or "q8_0",
            max_chars=int(params.get("max_chars") or 2000),
        )
        # the filler: the model that fills a tool's arguments (every call and pre-fill, and the
        # arguments after a choice); the chooser (the weights above) picks among targets or none
        # and is the guard's judge. Other weights than the chooser's: a second engine, with the
        # tool slots; the chooser then keeps only its own two slots
        self.filler: FunctionCaller | None = None
        if fill_path != path:
            self.filler = FunctionCaller(model_path=str(fill_path), n_slots=n_slots, kv_windows=kv_windows,
                                         model_name=fill_spec if fill_spec in weights.MODELS else None, **common)
        self.engine = FunctionCaller(
            model_path=str(path),
            n_slots=1 if self.filler else n_slots,
            kv_windows=CHOOSER_KV_WINDOWS if self.filler else kv_windows,
            none_margin=float(params["none_margin"]) if params.get("none_margin") else None,
            model_name=spec if spec in weights.MODELS else None,
            filler=self.filler,
            **common,
        )
        self.fill = self.filler or self.engine
        self.model_name = self.fill.model_name
        # one worker: the engine serializes calls anyway (the threads are the cores; a slot per
        # tool only keeps prompts cached, it does not add compute)
        self._worker = DecoupledWorker("function_call", self._respond)
        for role, engine in (("chooser", self.engine), ("filler", self.filler)):
            if engine is not None:
                pb_utils.Logger.log_info(
                    f"function_call {role}: {engine.model_path} loaded in {engine.load_s:.1f}s, warm-up {engine.warmup_s:.1f}s, "
                    f"{engine.n_threads} threads, KV cache {engine.kv_windows} x {engine.n_ctx} tokens; {engine.runtime}")

    def execute(self, requests: list) -> None:
        self._worker.submit(requests)
        return None

    def finalize(self) -> None:
        self._worker.close()
        self.engine.close()
        if self.filler is not None:
            self.filler.close()

    # ---- one request

    def _respond(self, request) -> None:
        request.get_response_sender().send(self._response(request), flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)

    def _response(self, request):
        if request.is_cancelled():
            return pb_utils.InferenceResponse(error=pb_utils.TritonError("cancelled", pb_utils.TritonError.CANCELLED))
        try:
            body = self._tool_calls(json_input(request, "MESSAGES"), json_input(request, "TOOLS"))
        except (BadRequest, UnsupportedSchema) as exc:
            return pb_utils.InferenceResponse(error=invalid_input("function_call", exc))
        except Exception as exc:  # noqa: BLE001 - reported to the client, the model keeps serving
            return internal_error("function_call", exc)
        data = np.array([json.dumps(body, ensure_ascii=False).encode()], dtype=np.object_)
        return pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor("TOOL_CALLS", data)])

    def _tool_calls(self, messages: object, tools: object) -> dict:
        if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
            raise BadRequest("MESSAGES must be a JSON list of {role, content} objects")
        if isinstance(tools, dict) and "judge" in tools:
            return self._judge(messages, tools)
        if isinstance(tools, dict) and "prefill" in tools:
            return self._prefill(tools)
        candidates, allow_none, ranked, distinct = parse_choice(tools)
        if isinstance(tools, dict) and "tools" in tools:
            tools = tools["tools"]
        if isinstance(tools, dict):
            tools = [tools]
        if not isinstance(tools, list) or not tools or not all(isinstance(t, dict) for t in tools):
            raise BadRequest("TOOLS must be a non-empty JSON list of tools")
        with _refusals_as_bad_requests():
            if candidates is None and not allow_none:
                tool = tools[self.engine.choose(messages, tools)]
                result = self.fill.call(messages, tool)
            else:
                result = self.engine.choose_and_call(messages, tools, candidates, allow_none, ranked, distinct)
        if result is None:  # the chooser answered that no tool serves the request
            return {"model": self.engine.model_name, "tool_calls": [], "usage": dict(self.engine.last_choice_usage)}
        return {
            "model": self.model_name,
            "tool_calls": [{
                "id": f"call_{uuid.uuid4().hex[:24]}",
                "type": "function",
                "function": {"name": result["name"],
                             "arguments": json.dumps(result["arguments"], ensure_ascii=False)},
                "missing": result["missing"],
            }],
            "usage": result.get("usage", {}),
        }

    def _prefill(self, tools: dict) -> dict:
        """``TOOLS`` ``{"tools": [tool], "prefill": true}``: evaluate the tool's prompt prefix into
        its llama.cpp slot (the gateway's start-up pre-fill), no arguments; ``tool_calls`` names the
        tool with ``{}`` arguments."""
        unknown = set(tools) - {"tools", "prefill"}
        if unknown:
            raise BadRequest(f"TOOLS: unknown keys beside prefill: {sorted(unknown)}")
        listed = tools.get("tools")
        if tools["prefill"] is not True or not isinstance(listed, list) or len(listed) != 1 or not isinstance(listed[0], dict):
            raise BadRequest("TOOLS with prefill must be {\"tools\": [one tool], \"prefill\": true}")
        with _refusals_as_bad_requests():
            result = self.fill.prefill(listed[0])
        return {"model": self.model_name, "usage": result.get("usage", {}),
                "tool_calls": [{"id": f"call_{uuid.uuid4().hex[:24]}", "type": "function",
                                "function": {"name": result["name"], "arguments": "{}"}, "missing": []}]}

    def _judge(self, messages: list, tools: dict) -> dict:
        """``TOOLS`` ``{"judge": "guard"}``: the engine's yes/no on the last user message;
        ``{"judge": "route", "categories": [...]}``: preference routing's judge on it."""
        unknown = set(tools) - {"judge", "categories"}
        if unknown:
            raise BadRequest(f"TOOLS: unknown keys beside judge: {sorted(unknown)}")
        if tools["judge"] not in JUDGE_KINDS:
            raise BadRequest(f"TOOLS.judge must be one of {list(JUDGE_KINDS)}, got {tools['judge']!r}")
        if ("categories" in tools) != (tools["judge"] == "route"):
            raise BadRequest("TOOLS.categories goes with judge \"route\", and only with it")
        text = next((m.get("content") for m in reversed(messages) if m.get("role") == "user"), None)
        if not isinstance(text, str) or not text.strip():
            raise BadRequest("the judge needs MESSAGES with a last user turn whose content is non-empty text")
        if tools["judge"] == "route":
            return self._judge_route(text, tools["categories"])
        try:
            out = self.engine.judge(text)
        except ValueError as exc:
            raise BadRequest(str(exc)) from exc
        except ContextTooLong as exc:
            raise BadRequest(f"the judge's prompt does not fit the model's window: {exc}") from exc
        return {"model": self.engine.model_name, "tool_calls": [], "judge": tools["judge"], "verdict": out["verdict"],
                "p_yes": out.get("p_yes"), "usage": out.get("usage", {})}

    def _judge_route(self, text: str, categories: object) -> dict:
        """``TOOLS`` ``{"judge": "route", "categories": [{"name", "description"}, ...]}``."""
        if not isinstance(categories, list) or not categories or not all(
                isinstance(c, dict) and isinstance(c.get("name"), str) and isinstance(c.get("description", ""), str)
                for c in categories):
            raise BadRequest("TOOLS.categories must be a non-empty list of {\"name\": str, \"description\": str}")
        with _refusals_as_bad_requests():
            out = self.engine.judge_route(text, [(c["name"], c.get("description", "")) for c in categories])
        return {"model": self.engine.model_name, "tool_calls": [], "judge": "route", "answer": out["answer"], "p": out["p"],
                "p_none": out["p_none"], "usage": out.get("usage", {})}


@contextlib.contextmanager
def _refusals_as_bad_requests() -> Iterator[None]:
    """What the engine refuses for this request alone, as :class:`BadRequest` (INVALID_ARG): no
    user turn or a schema the grammar cannot express (``ValueError``, ``UnsupportedSchema`` among
    them), or a prompt still too long after cutting (many tokens per character, or a huge tool)."""
    try:
        yield
    except ValueError as exc:
        raise BadRequest(str(exc)) from exc
    except ContextTooLong as exc:
        raise BadRequest(f"the prompt does not fit the model's window: {exc}") from exc


def parse_choice(tools: object) -> tuple[list[str] | None, bool, bool, list[str]]:
    """(candidates, allow_none, ranked, distinct) of a ``TOOLS`` document: ``{"tools": [...],
    "candidates": [names], "allow_none": true, "ranked": false, "distinct": [names]}`` chooses
    among ``candidates`` (default: all the tools) or none; ``ranked``: the first candidate or
    none, or the model's sure pick among ``distinct`` (candidates after the first that do
    something else than it). A plain list or one tool object is (None, False, False, []), as
    before. Wrong shapes are :class:`BadRequest`."""
    if not (isinstance(tools, dict) and "tools" in tools):
        return None, False, False, []
    unknown = set(tools) - {"tools", "candidates", "allow_none", "ranked", "distinct"}
    if unknown:
        raise BadRequest(f"TOOLS: unknown keys {sorted(unknown)} (expected tools, candidates, allow_none, ranked, distinct)")
    candidates = tools.get("candidates")
    if candidates is not None and (not isinstance(candidates, list) or not all(isinstance(c, str) for c in candidates)):
        raise BadRequest("TOOLS.candidates must be a list of tool names")
    allow_none = tools.get("allow_none", False)
    if not isinstance(allow_none, bool):
        raise BadRequest("TOOLS.allow_none must be true or false")
    listed = tools["tools"]
    if isinstance(listed, list) and candidates is not None:
        names = {((t.get("function") or t).get("name") if isinstance(t, dict) else None) for t in listed}
        strangers = [c for c in candidates if c not in names]
        if strangers:
            raise BadRequest(f"TOOLS.candidates names tools that are not in TOOLS.tools: {strangers}")
    if candidates == [] and not allow_none:
        raise BadRequest("TOOLS.candidates is empty and allow_none is false: nothing to choose")
    ranked = tools.get("ranked", False)
    if not isinstance(ranked, bool) or (ranked and not allow_none):
        raise BadRequest("TOOLS.ranked must be true or false, and true only with allow_none: true "
                         "(the first candidate or none)")
    distinct = tools.get("distinct", [])
    if not isinstance(distinct, list) or not all(isinstance(d, str) for d in distinct):
        raise BadRequest("TOOLS.distinct must be a list of candidate names")
    if distinct and (not ranked or candidates is None or not set(distinct) <= set(candidates[1:])):
        raise BadRequest("TOOLS.distinct names candidates after the first of a ranked choice "
                         "(ranked: true, candidates given)")
    return candidates, allow_none, ranked, distinct
