"""The ingress prompt pipeline end to end on held-out BFCL: routing, exact arguments, clarifications, latency.

Not the demo: many gateway configs are built from BFCL v4 (``bfcl-eval==2026.3.23``, read as JSON
files, never imported, as ``bench/intent_eval.py`` does) and every prompt goes through the real
stack (Envoy -> ext_proc -> Triton: guard, intent, function_call -> the target's endpoint).

* In scope: ``live_multiple``, ``multiple``, ``live_simple``. Each item's functions become
  Arch-style ``prompt_targets`` (name, description, parameters with name/type/description/
  required/enum/default, ``items`` for arrays) plus one ``default: true`` target. Right: the
  endpoint of the answer's function is called; its arguments are then judged by BFCL's own
  checker (``ast_checker.simple_function_checker``, through ``bench/function_call_eval.py``).
* Out of scope: ``irrelevance``, ``live_irrelevance``: the item's (irrelevant) functions are
  targets too; right: no non-default target, i.e. the default target (or the LLM).
* Observable routing: every non-default target's ``endpoint`` is a local fake app (aiohttp,
  ``testkit/fake_provider.py``'s server with routes, 127.0.0.1, a free port): ``POST /t/<target>``
  with the arguments as the JSON body; it answers 200 with ``{"sidegate_eval": {"target",
  "arguments"}}`` and ``auto_llm_dispatch_on_response: false`` returns that reply as the chat
  answer. The default target's endpoint is ``/__default__`` on the same app (no parameters: no
  model call). ``llm_providers`` points at the same server's OpenAI stand-in: an answer from it
  ("pipeline-eval-llm says: ...") is the "llm" outcome. A clarifying question (``model`` =
  ``sidegate-function-call``) is "clarified"; the guard's answer (``x-sidegate-guard: blocked``)
  is "blocked".
* Configs: ext_proc has no config reload, so items are MERGED into configs of at most
  ``--max-targets`` (default 20) prompt targets, per set; a function that several items share
  (same name, same definition: BFCL live items often reuse one function list) is one target;
  items whose functions clash by name with the group's go to another group. Merging makes intent
  harder than BFCL (the other items' functions are distractors); the report counts routing to
  another item's target separately ("foreign"). One Triton is started once (``local-cpu``) and
  every group runs its own ext_proc + Envoy (sidegate's supervisor, free ports) against it
  (``model_server.mode: remote``), which saves a Triton start (tens of seconds) per config.
* Conversion: BFCL types map to the config's (``float`` -> number, ``dict`` -> object, ``tuple``
  -> array, ...). Not expressible, so the function (and its item) is skipped and counted:
  ``any``-typed parameters, parameter names that are not identifiers, a missing description,
  non-object parameter schemas, two functions of an item with the same sanitised name. Lossy but
  kept (counted as notes): nested ``properties`` of object parameters (the config has no place for
  them), enum values of another type than the parameter (dropped), defaults of another type or
  ``null`` (dropped; the parameter stays optional).
* ``--user-configs [FILE]``: also the half's configs of ``bench/data/user_configs.jsonl`` (8 small configs as a
  new user writes them, 118 prompts: requests that lack a value, follow-ups, how-to questions on the
  config's subject; each its own config, halves by sha256 of the config's name; routing only), or of
  FILE: ``bench/data/user_configs_2.jsonl`` (6 more, 81 prompts, written later, held out whole: all test).
* Held-out discipline: every item is dev or test by sha256 of its id (``intent_eval.split_of``);
  ``--half`` (default test) picks one. Anything tuned (prompts, thresholds, scoring) is tuned on
  dev; report test.

  python -m bench pipeline_eval [--half dev|test] [--limit N] [--seed S] [--sets a,b] [--max-targets 20]
  python -m bench pipeline_eval --dry-run      # convert and group only: no servers

Prints tables and writes ``bench/results/pipeline_eval.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import re
import shutil
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # `python bench/pipeline_eval.py` as well as `python -m bench pipeline_eval`
from bench._harness import free_port, llama_cpp_runtime, load_caption, percentile, print_table, write_results  # noqa: E402
from bench.intent_eval import BFCL_PACKAGE, INSTALL, bfcl_dir, sha256_file, split_of, target_name  # noqa: E402
from ext_proc.names import GUARD_HEADER  # noqa: E402  (the header a client sees on a blocked prompt)

PART = "pipeline_eval"
IN_SCOPE = ("live_multiple", "multiple", "live_simple")
OUT_OF_SCOPE = ("irrelevance", "live_irrelevance")
ALL_SETS = IN_SCOPE + OUT_OF_SCOPE
# Small configs as a new user writes them (bench/data/user_configs.jsonl, BFCL's row format plus
# "config"): each config is one group of its own, never merged; its in-scope prompts are the set
# USER_IN (routing only: ground_truth names the target, no arguments), the others USER_OUT. Halves
# by sha256 of the config's name, so a test config was never seen; the configs tried by hand
# before the file was written are dev (SEEN_CONFIGS).
USER_IN, USER_OUT = "user_configs", "user_configs_out"
USER_SETS = (USER_IN, USER_OUT)
SCORED_IN_SCOPE = (*IN_SCOPE, USER_IN)  # the sets whose prompts are for a target
USER_CONFIGS_FILE = ROOT / "bench" / "data" / "user_configs.jsonl"
SEEN_CONFIGS = ("helpdesk", "pharmacy")  # helpdesk: session 22's trial; pharmacy: session 18's
# Six more configs (restaurant, car rental, library, telecom, clinic, food delivery), written in
# #14's eleventh round before any run of them, after the first file's test half had been read
# while choosing (the sure-pick rule): held out whole, every config of it is test.
USER_CONFIGS_2_FILE = ROOT / "bench" / "data" / "user_configs_2.jsonl"
# Twelve more (#14's twelfth round), written together before any run of them: the third file's six
# (insurance, courier, salon, cinema, utility, university) are dev whole, to choose on; the
# fourth's six (vet, concerts, apartments, payroll, bike share, parking) are held out whole.
USER_CONFIGS_3_FILE = ROOT / "bench" / "data" / "user_configs_3.jsonl"
USER_CONFIGS_4_FILE = ROOT / "bench" / "data" / "user_configs_4.jsonl"
HELD_OUT_FILES = (USER_CONFIGS_2_FILE, USER_CONFIGS_4_FILE)
DEV_FILES = (USER_CONFIGS_3_FILE,)
# the files whose every config is one half, whatever its hash (by resolved path)
_WHOLE_FILES = {**{p.resolve(): "test" for p in HELD_OUT_FILES}, **{p.resolve(): "dev" for p in DEV_FILES}}

DEFAULT_TARGET = "pipeline_eval_default"  # not a BFCL name (checked: a clash skips the item)
APP_ENDPOINT = "eval_app"
LLM_NAME = "pipeline-eval-llm"
LLM_MARKER = f"{LLM_NAME} says:"
GUARD_MESSAGE = "pipeline_eval: blocked by the guard"
FUNCTION_CALL_MODEL = "sidegate-function-call"  # ext_proc.chat.pipeline.FUNCTION_CALL_MODEL

# BFCL parameter type -> the config's (ext_proc/config.py _TYPE_ALIASES accepts the right-hand side)
TYPE_MAP = {
    "string": "string", "str": "string",
    "integer": "integer", "int": "integer",
    "float": "number", "number": "number", "double": "number",
    "boolean": "boolean", "bool": "boolean",
    "array": "array", "list": "array", "tuple": "array",
    "dict": "object", "object": "object",
}
NOT_EXPRESSIBLE_TYPES = ("any",)  # the config has no untyped parameter
_PY = {"string": str, "integer": int, "number": (int, float), "boolean": bool, "array": list, "object": dict}
_PARAM_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

OUTCOMES = ("target", "default", "llm", "clarified", "blocked", "http_error", "other", "not_started")  # not_started: its config did not start


class NotExpressible(ValueError):
    """A BFCL function that a sidegate prompt target cannot express."""


# --------------------------------------------------------------------------- conversion


def config_type(bfcl_type: Any) -> str:
    """The config type for a BFCL parameter type; :class:`NotExpressible` if there is none."""
    if not isinstance(bfcl_type, str) or bfcl_type not in TYPE_MAP:
        raise NotExpressible(f"parameter type {bfcl_type!r} has no config type")
    return TYPE_MAP[bfcl_type]


def _fits(value: Any, ptype: str) -> bool:
    """As ext_proc/config.py's _check_value: ``value`` has the parameter's type (bool is no number)."""
    return isinstance(value, _PY[ptype]) and (ptype == "boolean" or not isinstance(value, bool))


def convert_function(fn: dict[str, Any], *, endpoint: str = APP_ENDPOINT) -> tuple[dict[str, Any], list[str]]:
    """A BFCL function as a prompt target dict (what a user would write in the YAML) and the
    lossy notes; raises :class:`NotExpressible`."""
    raw_name = str(fn.get("name") or "")
    name = target_name(raw_name)
    if name == "_" or not raw_name:
        raise NotExpressible(f"function name {raw_name!r} has no valid target name")
    description = str(fn.get("description") or "").strip()
    if not description:
        raise NotExpressible("no description")
    schema = fn.get("parameters") or {}
    if not isinstance(schema, dict) or schema.get("type", "dict") not in ("dict", "object"):
        raise NotExpressible(f"parameters of type {schema.get('type') if isinstance(schema, dict) else type(schema).__name__}")
    required = set(schema.get("required") or ())
    notes: list[str] = []
    params: list[dict[str, Any]] = []
    for pname, spec in (schema.get("properties") or {}).items():
        spec = spec or {}
        if not _PARAM_NAME.match(pname):
            raise NotExpressible(f"parameter name {pname!r} is not an identifier")
        btype = spec.get("type")
        if btype in NOT_EXPRESSIBLE_TYPES:
            raise NotExpressible(f"parameter {pname!r} of type {btype!r}")
        ptype = config_type(btype)
        p: dict[str, Any] = {"name": pname, "type": ptype, "description": str(spec.get("description") or ""),
                             "required": pname in required}
        enum = spec.get("enum")
        if isinstance(enum, list) and enum:
            if all(_fits(v, ptype) for v in enum):
                p["enum"] = list(enum)
            else:
                notes.append("enum of another type dropped")
        if "default" in spec and pname not in required:
            d = spec["default"]
            if d is None:
                notes.append("null default dropped")
            elif not _fits(d, ptype):
                notes.append("default of another type dropped")
            elif "enum" in p and d not in p["enum"]:
                notes.append("default outside enum dropped")
            else:
                p["default"] = d
        if ptype == "array" and isinstance(spec.get("items"), dict):
            item_type = spec["items"].get("type")
            if item_type in TYPE_MAP:  # the schema accepts items; ext_proc does not read it yet
                p["items"] = {"type": {"string": "string", "integer": "integer", "number": "number", "boolean": "boolean",
                                       "array": "array", "object": "object"}[TYPE_MAP[item_type]]}
            if spec["items"].get("properties") or spec["items"].get("items"):
                notes.append("nested item schema dropped")
        if ptype == "object" and spec.get("properties"):
            notes.append("nested properties dropped")
        params.append(p)
    target: dict[str, Any] = {"name": name, "description": description}
    if params:
        target["parameters"] = params
    target["endpoint"] = {"name": endpoint, "path": f"/t/{name}", "http_method": "POST"}
    target["auto_llm_dispatch_on_response"] = False
    return target, notes


def default_target(endpoint: str = APP_ENDPOINT) -> dict[str, Any]:
    return {
        "name": DEFAULT_TARGET,
        "default": True,
        "description": "Anything no other target answers.",
        "endpoint": {"name": endpoint, "path": "/__default__", "http_method": "POST"},
        "auto_llm_dispatch_on_response": False,
    }


# --------------------------------------------------------------------------- data


@dataclass
class Function:
    bfcl_name: str
    raw: dict[str, Any]  # the BFCL function (what BFCL's checker reads)
    target: dict[str, Any]

    @property
    def name(self) -> str:
        return str(self.target["name"])

    @property
    def fingerprint(self) -> str:
        return json.dumps(self.target, sort_keys=True)


@dataclass
class Item:
    id: str
    set: str
    messages: list[dict[str, Any]]
    functions: list[Function]
    answer: str | None = None  # BFCL name of the right function (in scope)
    ground_truth: dict[str, Any] | None = None  # {bfcl_name: {param: [allowed values]}}
    notes: list[str] = field(default_factory=list)
    half: str = field(init=False)

    def __post_init__(self) -> None:
        self.half = split_of(self.id)

    @property
    def in_scope(self) -> bool:
        return self.answer is not None

    @property
    def answer_target(self) -> str | None:
        return None if self.answer is None else target_name(self.answer)


def convert_item(row: dict[str, Any], set_name: str, ground_truth: dict[str, Any] | None = None) -> Item:
    """One BFCL row as an :class:`Item`; raises :class:`NotExpressible` (with the reason)."""
    if not row.get("function"):
        raise NotExpressible("no functions")
    functions, notes = [], []
    for fn in row["function"]:
        target, n = convert_function(fn)
        functions.append(Function(str(fn["name"]), fn, target))
        notes += n
    names = [f.name for f in functions]
    if len(set(names)) != len(names):
        raise NotExpressible("two functions with the same sanitised name")
    if DEFAULT_TARGET in names:
        raise NotExpressible(f"a function is named {DEFAULT_TARGET}")
    messages = [m for turn in row["question"] for m in turn]
    answer = None
    if ground_truth is not None:
        answer = next(iter(ground_truth))
        if answer not in [f.bfcl_name for f in functions]:
            raise NotExpressible(f"the answer {answer!r} is not among the functions")
    return Item(id=row["id"], set=set_name, messages=messages, functions=functions, answer=answer,
                ground_truth=ground_truth, notes=notes)


def _jsonl(path: Path) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def load_set(folder: Path, set_name: str) -> tuple[list[Item], dict[str, Any]]:
    """The set's items that a config can express, and what was skipped (per reason)."""
    path = folder / f"BFCL_v4_{set_name}.json"
    rows = _jsonl(path)
    prov: dict[str, Any] = {"file": f"bfcl_eval/data/{path.name}", "sha256": sha256_file(path), "rows": len(rows)}
    answers: dict[str, dict[str, Any]] = {}
    if set_name in IN_SCOPE:
        apath = folder / "possible_answer" / path.name
        answers = {a["id"]: a["ground_truth"][0] for a in _jsonl(apath)}
        prov["answers"] = {"file": f"bfcl_eval/data/possible_answer/{path.name}", "sha256": sha256_file(apath)}
    items: list[Item] = []
    skipped: list[dict[str, str]] = []
    for row in rows:
        try:
            items.append(convert_item(row, set_name, answers.get(row["id"]) if set_name in IN_SCOPE else None))
        except NotExpressible as exc:
            skipped.append({"id": row["id"], "half": split_of(row["id"]), "why": str(exc)})
    prov["expressible"] = len(items)
    return items, {"provenance": prov, "skipped": skipped}


def user_config_half(config: str, path: Path = USER_CONFIGS_FILE) -> str:
    if (whole := _WHOLE_FILES.get(path.resolve())) is not None:
        return whole
    return "dev" if config in SEEN_CONFIGS else split_of(config)


def user_config_groups(half: str, path: Path = USER_CONFIGS_FILE) -> list[Group]:
    """The ``half`` of a user configs file (:data:`USER_CONFIGS_FILE`, one of :data:`HELD_OUT_FILES`,
    all test, or of :data:`DEV_FILES`, all dev): one group per config, in file order."""
    groups: dict[str, Group] = {}
    for row in _jsonl(path):
        if user_config_half(row["config"], path) != half:
            continue
        truth = row.get("ground_truth")
        item = convert_item(row, USER_IN if truth else USER_OUT, truth[0] if truth else None)
        item.half = half
        groups.setdefault(row["config"], Group(USER_IN, len(groups))).add(item)
    return list(groups.values())


def configs_with(groups: Sequence[Group], set_name: str) -> int:
    """How many of ``groups`` hold an item of ``set_name`` (a user config holds both of USER_SETS)."""
    return sum(any(it.set == set_name for it in g.items) for g in groups)


def select(items: Sequence[Item], half: str, limit: int | None, seed: int) -> list[Item]:
    """The ``half`` items, shuffled by ``seed``, the first ``limit`` of them (all when None)."""
    chosen = [it for it in items if it.half == half]
    random.Random(seed).shuffle(chosen)
    return chosen if limit is None else chosen[:limit]


def selected_items(sets: Sequence[str], half: str, limit: int | None, seed: int) -> list[Item]:
    """:func:`select` over each of ``sets``, in order, as the in-process parts take them; exits
    with what to install when BFCL's data is not there."""
    folder = bfcl_dir()
    if folder is None:
        raise SystemExit(f"BFCL data not found: {INSTALL}")
    return [it for name in sets for it in select(load_set(folder, name)[0], half, limit, seed)]


# --------------------------------------------------------------------------- grouping and configs


@dataclass
class Group:
    set: str
    index: int
    targets: dict[str, Function] = field(default_factory=dict)
    items: list[Item] = field(default_factory=list)

    @property
    def key(self) -> str:
        return f"{self.set}#{self.index}"

    def fits(self, item: Item, max_targets: int) -> bool:
        new = 0
        for f in item.functions:
            have = self.targets.get(f.name)
            if have is None:
                new += 1
            elif have.fingerprint != f.fingerprint:
                return False  # same name, another definition
        return not self.targets or len(self.targets) + new <= max_targets

    def add(self, item: Item) -> None:
        for f in item.functions:
            self.targets.setdefault(f.name, f)
        self.items.append(item)


def build_groups(items: Sequence[Item], max_targets: int) -> list[Group]:
    """First fit: each item into the first group of its set where its functions fit (at most
    ``max_targets`` distinct targets, names unique or the very same function); an item larger
    than ``max_targets`` gets a group of its own."""
    groups: list[Group] = []
    for it in items:
        group = next((g for g in groups if g.set == it.set and g.fits(it, max_targets)), None)
        if group is None:
            group = Group(it.set, sum(g.set == it.set for g in groups))
            groups.append(group)
        group.add(it)
    return groups


@dataclass
class Ports:
    ingress: int
    egress: int
    internal: int
    admin: int
    ext_proc: int
    ext_proc_http: int

    @classmethod
    def free(cls) -> Ports:
        return cls(*(free_port() for _ in range(6)))


def group_config(
    group: Group, *, app_port: int, ports: Ports, model_server: dict[str, Any], guard: bool = True,
    threshold: float | None = None, timeout_s: int = 120,
) -> dict[str, Any]:
    """The gateway config (raw YAML dict) for one group: its targets, the default target, the
    fake app as endpoint and LLM provider."""
    local = "127.0.0.1"
    raw: dict[str, Any] = {
        "version": "v0.1",
        "listeners": {
            "ingress_traffic": {"address": local, "port": ports.ingress, "timeout": f"{timeout_s}s"},
            "egress_traffic": {"address": local, "port": ports.egress, "timeout": f"{timeout_s}s"},
            "internal_traffic": {"address": local, "port": ports.internal},
            "admin": {"address": local, "port": ports.admin},
        },
        "ext_proc": {"address": local, "port": ports.ext_proc, "http_port": ports.ext_proc_http, "message_timeout": f"{timeout_s}s",
                     "workers": 1},
        "llm_providers": [{"name": LLM_NAME, "provider_interface": "openai", "endpoint": f"http://{local}:{app_port}/v1",
                           "model": "fake-model", "default": True}],
        "endpoints": {APP_ENDPOINT: {"endpoint": f"{local}:{app_port}", "timeout": "10s"}},
        "prompt_targets": [f.target for f in group.targets.values()] + [default_target()],
        "model_server": model_server,
    }
    if guard:
        raw["prompt_guards"] = {"input_guards": {"jailbreak": {"on_exception": {"message": GUARD_MESSAGE}}}}
    if threshold is not None:
        raw["overrides"] = {"prompt_target_intent_matching_threshold": threshold}
    return raw


def offline_config(group: Group) -> Any:
    """:func:`group_config` loaded by the gateway's own loader, for parts that run the models in
    process (no servers: the ports and the app are placeholders)."""
    from ext_proc.config import build_config

    return build_config(group_config(group, app_port=1, ports=Ports(*range(20000, 20006)), model_server={}))


# --------------------------------------------------------------------------- outcomes and scoring


@dataclass
class Outcome:
    kind: str  # one of OUTCOMES
    status: int
    target: str | None = None  # the target called ("target"), or asking ("clarified")
    arguments: dict[str, Any] | None = None
    detail: str = ""


def classify(status: int, headers: dict[str, str], body: bytes) -> Outcome:
    """What happened to one request, from the ingress listener's response."""
    text = body.decode("utf-8", "replace")
    if status != 200:
        return Outcome("http_error", status, detail=text[:300])
    if headers.get(GUARD_HEADER) == "blocked":
        return Outcome("blocked", status)
    try:
        doc = json.loads(text)
        message = doc["choices"][0]["message"]
        content = message.get("content") or ""
    except (ValueError, KeyError, IndexError, TypeError):
        return Outcome("other", status, detail=text[:300])
    if doc.get("model") == FUNCTION_CALL_MODEL:
        state = (doc.get("metadata") or {}).get("x-arch-state")
        pending = None
        try:
            pending = json.loads(state).get("pending_target") if isinstance(state, str) else None
        except ValueError:
            pass
        return Outcome("clarified", status, target=pending, detail=content[:300])
    try:
        reply = json.loads(content)
    except ValueError:
        reply = None
    if isinstance(reply, dict) and isinstance(reply.get("sidegate_eval"), dict):
        called = reply["sidegate_eval"]
        if called.get("target") == "__default__":
            return Outcome("default", status, target=DEFAULT_TARGET)
        return Outcome("target", status, target=called.get("target"), arguments=called.get("arguments") or {})
    if content.startswith(LLM_MARKER):
        return Outcome("llm", status)
    return Outcome("other", status, detail=content[:300])


Checker = Callable[[dict[str, Any], dict[str, Any], dict[str, Any]], "tuple[bool, str]"]


def score(item: Item, outcome: Outcome, checker: Checker | None) -> dict[str, Any]:
    """``routed_right``: the answer's target was chosen (called or asking a clarifying question),
    or, out of scope, no non-default target (default target or LLM). ``args_exact``: the
    endpoint got arguments BFCL's checker accepts (None unless routed right in scope).
    ``foreign``: a target of another item of the merged config was chosen."""
    chosen = outcome.target if outcome.kind in ("target", "clarified") else None
    own = {f.name for f in item.functions}
    r: dict[str, Any] = {"routed_right": False, "args_exact": None, "why": "", "foreign": chosen is not None and chosen not in own}
    if not item.in_scope:
        r["routed_right"] = outcome.kind in ("default", "llm")
        return r
    r["routed_right"] = chosen == item.answer_target
    if not r["routed_right"] or item.set == USER_IN:  # the user configs' prompts are scored on routing only
        return r
    if outcome.kind != "target":
        r["args_exact"], r["why"] = False, "clarifying question instead of a call"
        return r
    assert item.answer is not None and item.ground_truth is not None
    fn = next(f.raw for f in item.functions if f.bfcl_name == item.answer)
    result = {"name": item.answer, "arguments": outcome.arguments or {}}
    truth = {item.answer: item.ground_truth[item.answer]}
    if checker is None:
        from bench.function_call_eval import case_ok

        ok, why = case_ok(result, truth)
    else:
        ok, why = checker(fn, result, truth)
    r["args_exact"], r["why"] = bool(ok), why
    return r


def load_checker() -> tuple[Checker | None, str]:
    """BFCL's own checker as ``bench/function_call_eval.py`` imports it (or None: its local one)."""
    try:
        from bench.function_call_eval import _bfcl_checker
    except Exception as exc:  # noqa: BLE001 - e.g. the function_call engine cannot be loaded here
        return None, f"local case_ok (function_call_eval not importable: {type(exc).__name__})"
    check = _bfcl_checker()
    return check, "bfcl_eval ast_checker.simple_function_checker" if check else "local case_ok (bfcl checker not importable)"


def _rate(num: int, den: int) -> float | None:
    return round(num / den, 4) if den else None


def summarize_set(records: Sequence[dict[str, Any]], in_scope: bool) -> dict[str, Any]:
    n = len(records)
    kinds = Counter(r["outcome"] for r in records)
    routed = [r for r in records if r["routed_right"]]
    judged = [r for r in routed if r.get("args_exact") is not None]  # none for the user configs (routing only)
    exact = sum(bool(r["args_exact"]) for r in judged)
    statuses = Counter(r["status"] for r in records if r["status"] != 200 and r["outcome"] != "not_started")
    lat: dict[str, dict[str, Any]] = {}
    for kind in OUTCOMES:
        values = [r["latency_ms"] for r in records if r["outcome"] == kind and kind != "not_started"]
        if values:
            lat[kind] = {"n": len(values), "p50_ms": round(percentile(values, 50), 1), "p99_ms": round(percentile(values, 99), 1)}
    every = [r["latency_ms"] for r in records if r["outcome"] != "not_started"]
    out = {
        "n": n,
        "routing_accuracy": _rate(len(routed), n),
        "args_exact_given_routed": _rate(exact, len(judged)) if in_scope else None,
        "args_exact_overall": _rate(exact, n) if in_scope and judged else None,
        "clarification_rate": _rate(kinds["clarified"], n),
        "default_or_llm_rate": _rate(kinds["default"] + kinds["llm"], n),
        "foreign_target_rate": _rate(sum(r["foreign"] for r in records), n),
        "outcomes": dict(kinds),
        "status_5xx": sum(v for s, v in statuses.items() if 500 <= s < 600),
        "non_200": {str(s): v for s, v in sorted(statuses.items())},
        "latency_ms": {"all": {"p50_ms": round(percentile(every, 50), 1), "p99_ms": round(percentile(every, 99), 1)} if every else {},
                       **lat},
    }
    return out


# --------------------------------------------------------------------------- the stack


def app_routes() -> dict[str, Callable[[Any], tuple[int, Any]]]:
    """The fake app's endpoints: ``/t/<target>`` (arguments = JSON body) and ``/__default__``."""

    def target(req: Any) -> tuple[int, Any]:
        return 200, {"sidegate_eval": {"target": req.path[len("/t/"):], "arguments": req.json if isinstance(req.json, dict) else {}}}

    def default(req: Any) -> tuple[int, Any]:
        return 200, {"sidegate_eval": {"target": "__default__"}}

    return {"/t/": target, "/__default__": default}


class Stack:
    """One Triton (local-cpu, started once) and, per group, ext_proc + Envoy against it."""

    def __init__(self, home: Path, *, timeout_s: int, function_call: dict[str, Any] | None = None) -> None:
        self.home = home
        self.timeout_s = timeout_s
        self.function_call = function_call or {}  # model_server.models.function_call for the Triton this starts
        self.triton: Any = None
        self.grpc_port = 0
        self.started_s = 0.0

    def model_server(self) -> dict[str, Any]:
        return {"mode": "remote", "endpoint": f"grpc://127.0.0.1:{self.grpc_port}", "timeout": f"{self.timeout_s}s"}

    def _services(self, raw: dict[str, Any], name: str) -> tuple[Any, list[Any]]:
        import yaml

        from ext_proc.config import load_config
        from ext_proc.control import supervisor as sv
        from ext_proc.control.envoy_bootstrap import write_bootstrap

        path = self.home / f"{name}.yaml"
        path.write_text(yaml.safe_dump(raw, sort_keys=False))
        cfg = load_config(path)
        bootstrap = write_bootstrap(cfg, sv.home() / "run")
        return cfg, sv.services_for(cfg, str(path), demo=False, bootstrap=bootstrap)

    def start_triton(self, raw: dict[str, Any]) -> None:
        """Triton with the models ``raw`` (a group config) needs, from the repository, on CPU."""
        from ext_proc.control import supervisor as sv

        self.grpc_port = free_port()
        local = {**raw, "model_server": {"mode": "local-cpu", "http_port": free_port(), "grpc_port": self.grpc_port,
                                         "metrics_port": free_port(), "timeout": f"{self.timeout_s}s",
                                         **({"models": {"function_call": self.function_call}} if self.function_call else {})}}
        _, services = self._services(local, "triton")
        services = [s for s in services if s.name.startswith("triton")]
        t0 = time.perf_counter()
        self.triton = sv.Supervisor(services, config_path=str(self.home / "triton.yaml"), on_event=lambda s, st: None)
        if not self.triton.start_all():
            self.triton.stop_all()
            raise RuntimeError(f"Triton did not start:\n{self.logs()}")
        self.started_s = time.perf_counter() - t0

    def start_group(self, raw: dict[str, Any], name: str) -> tuple[Any, Any, float]:
        from ext_proc.control import supervisor as sv

        cfg, services = self._services(raw, name)
        services = [s for s in services if not s.name.startswith("triton")]
        t0 = time.perf_counter()
        sup = sv.Supervisor(services, config_path=str(self.home / f"{name}.yaml"), on_event=lambda s, st: None)
        if not sup.start_all():
            sup.stop_all()
            raise RuntimeError(f"group {name} did not start:\n{self.logs()}")
        return cfg, sup, time.perf_counter() - t0

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}" for p in sorted((self.home / "logs").glob("*.log")))

    def stop(self) -> None:
        if self.triton is not None:
            self.triton.stop_all()
            self.triton = None


async def send_all(port: int, items: Sequence[Item], *, timeout_s: int, verbose: bool,
                   on_result: Callable[[Item, Outcome, float], None]) -> None:
    """Each item's conversation to the ingress listener, one at a time (the latency of one
    request through an otherwise idle gateway)."""
    import aiohttp

    url = f"http://127.0.0.1:{port}/v1/chat/completions"
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout_s + 30)) as session:
        for it in items:
            body = {"model": "any", "messages": it.messages}
            t0 = time.perf_counter()
            try:
                async with session.post(url, json=body) as resp:
                    data = await resp.read()
                    outcome = classify(resp.status, {k.lower(): v for k, v in resp.headers.items()}, data)
            except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                outcome = Outcome("http_error", 0, detail=f"{type(exc).__name__}: {exc}")
            on_result(it, outcome, (time.perf_counter() - t0) * 1000)


# --------------------------------------------------------------------------- main


def _print_tables(summary: dict[str, Any], meta: dict[str, Any]) -> None:
    rows = []
    for name, s in summary.items():
        scope = "in" if name in SCORED_IN_SCOPE else "out"
        rows.append([name, scope, s["half_items"], s["skipped_not_expressible"], s["n"], s["configs"], s["routing_accuracy"],
                     s["args_exact_given_routed"], s["clarification_rate"], s["default_or_llm_rate"], s["foreign_target_rate"],
                     s["outcomes"].get("blocked", 0), s["status_5xx"], sum(s["non_200"].values()) - s["status_5xx"],
                     s["outcomes"].get("not_started", 0),
                     s["latency_ms"].get("all", {}).get("p50_ms"), s["latency_ms"].get("all", {}).get("p99_ms")])
    print_table(
        f"pipeline_eval: BFCL v4 through Envoy + ext_proc + Triton, {meta['half']} half"
        + (f", limit {meta['limit']} per set" if meta["limit"] else "") + (f", {meta['llama_cpp_runtime']} llama.cpp" if meta.get("llama_cpp_runtime") else ""),
        ["set", "scope", "items in half", "skipped (not expressible)", "n run", "configs", "routing acc",
         "args exact | routed", "clarified", "default/LLM", "foreign target", "blocked", "5xx", "other non-200",
         "config not started", "p50 ms", "p99 ms"],
        rows, caption=load_caption(f"routing acc: right target (in scope) or default/LLM (out of scope); "
                                   f"args: {meta['checker']}"), digits=3,
    )
    rows = []
    for name, s in summary.items():
        for kind, v in s["latency_ms"].items():
            if kind != "all":
                rows.append([name, kind, v["n"], v["p50_ms"], v["p99_ms"]])
    print_table("pipeline_eval: latency per outcome (ms, whole request at the ingress listener)",
                ["set", "outcome", "n", "p50 ms", "p99 ms"], rows, digits=1)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--half", choices=["dev", "test"], default="test", help="held-out half by sha256(id) (default test)")
    ap.add_argument("--limit", type=int, default=None, help="items per set (default: all of the half)")
    ap.add_argument("--seed", type=int, default=0, help="shuffle of the half before --limit")
    ap.add_argument("--sets", default=",".join(ALL_SETS), help=f"comma-separated, from {', '.join(ALL_SETS)}")
    ap.add_argument("--user-configs", nargs="?", const=str(USER_CONFIGS_FILE), default=None, metavar="FILE",
                    help=f"also the half's configs of a user configs file (default {USER_CONFIGS_FILE.name}; "
                         f"{USER_CONFIGS_3_FILE.name}: dev whole; {USER_CONFIGS_2_FILE.name}, {USER_CONFIGS_4_FILE.name}: held out "
                         "whole, --half test); each its own config, --limit does not apply")
    ap.add_argument("--max-targets", type=int, default=20, help="prompt targets per merged config (the default target not counted)")
    ap.add_argument("--no-guard", action="store_true", help="configure no jailbreak guard")
    ap.add_argument("--threshold", type=float, default=None, help="intent threshold override (default: the config default)")
    ap.add_argument("--timeout", type=int, default=120, help="seconds: model server, listener and ext_proc timeouts")
    ap.add_argument("--fc-weights", default=None, help="function_call weights (model_server.models.function_call.weights), "
                    "e.g. qwen2.5-coder-0.5b; default: the config default")
    ap.add_argument("--fc-threads", type=int, default=None,
                    help="llama.cpp threads of function_call (model_server.models.function_call.threads); default: "
                         "the cores free when it loads")
    ap.add_argument("--fc-param", action="append", default=[], metavar="KEY=VALUE",
                    help="a function_call parameter (model_server.models.function_call.parameters), repeatable")
    ap.add_argument("--dry-run", action="store_true", help="convert, group and validate the configs; start nothing")
    ap.add_argument("--out", type=Path, default=None, help="results folder (default bench/results)")
    ap.add_argument("--verbose", "-v", action="store_true")
    args = ap.parse_args(argv)
    sets = [s.strip() for s in args.sets.split(",") if s.strip()]
    if bad := [s for s in sets if s not in ALL_SETS]:
        ap.error(f"unknown sets {bad}; known: {', '.join(ALL_SETS)}")

    folder = bfcl_dir()
    if folder is None:
        print(f"pipeline_eval needs {BFCL_PACKAGE}: {INSTALL}", file=sys.stderr)
        return 2
    t_start = time.perf_counter()
    data: dict[str, Any] = {}
    chosen: dict[str, list[Item]] = {}
    for name in sets:
        items, info = load_set(folder, name)
        half_items = [it for it in items if it.half == args.half]
        skipped = [s for s in info["skipped"] if s["half"] == args.half]
        chosen[name] = select(items, args.half, args.limit, args.seed)
        data[name] = {**info["provenance"], "half_items": len(half_items) + len(skipped),
                      "skipped_not_expressible": len(skipped), "skipped_why": dict(Counter(s["why"] for s in skipped)),
                      "skipped_ids": [s["id"] for s in skipped],
                      "lossy_notes_in_run": dict(Counter(n for it in chosen[name] for n in it.notes))}
    groups = [g for name in sets for g in build_groups(chosen[name], args.max_targets)]
    if args.user_configs:
        user_file = Path(args.user_configs).resolve()
        user = user_config_groups(args.half, user_file)
        groups += user
        source = {"file": str(user_file.relative_to(ROOT)) if user_file.is_relative_to(ROOT) else str(user_file),
                  "sha256": sha256_file(user_file)}
        for name in USER_SETS:
            data[name] = {**source, "half_items": sum(it.set == name for g in user for it in g.items), "skipped_not_expressible": 0}
        sets = [*sets, *USER_SETS]
    print(f"{sum(len(g.items) for g in groups)} items in {len(groups)} configs "
          f"({', '.join(f'{n}: {configs_with(groups, n)}' for n in sets)})", flush=True)

    home = Path(tempfile.mkdtemp(prefix="sidegate-pipeline-eval-"))
    function_call: dict[str, Any] = {}
    if args.fc_weights:
        function_call["weights"] = args.fc_weights
    if args.fc_threads is not None:
        function_call["threads"] = args.fc_threads
    for kv in args.fc_param:
        key, sep, value = kv.partition("=")
        if not sep:
            ap.error(f"--fc-param wants KEY=VALUE, got {kv!r}")
        function_call.setdefault("parameters", {})[key] = value
    stack = Stack(home, timeout_s=args.timeout, function_call=function_call)
    if args.dry_run:
        import yaml

        from ext_proc.config import load_config

        for g in groups:
            raw = group_config(g, app_port=free_port(), ports=Ports.free(), guard=not args.no_guard, threshold=args.threshold,
                               model_server={"mode": "remote", "endpoint": "grpc://127.0.0.1:1"})
            path = home / f"{g.key.replace('#', '_')}.yaml"
            path.write_text(yaml.safe_dump(raw, sort_keys=False))
            load_config(path)
            print(f"{g.key}: {len(g.items)} items, {len(g.targets)} targets: valid")
        shutil.rmtree(home, ignore_errors=True)
        return 0

    from testkit.fake_provider import FakeProvider

    checker, checker_name = load_checker()
    records: list[dict[str, Any]] = []
    group_info: list[dict[str, Any]] = []
    old_home = os.environ.get("SIDEGATE_HOME")
    os.environ["SIDEGATE_HOME"] = str(home)
    try:
        with FakeProvider(name=LLM_NAME, routes=app_routes()) as app:
            if groups:
                first = group_config(groups[0], app_port=app.port, ports=Ports.free(), guard=not args.no_guard,
                                     threshold=args.threshold, model_server={})
                print("starting Triton (local-cpu) ...", flush=True)
                stack.start_triton(first)
                print(f"Triton up in {stack.started_s:.0f}s", flush=True)
            for gi, g in enumerate(groups):
                raw = group_config(g, app_port=app.port, ports=Ports.free(), model_server=stack.model_server(),
                                   guard=not args.no_guard, threshold=args.threshold, timeout_s=args.timeout)
                try:
                    cfg, sup, up_s = stack.start_group(raw, g.key.replace("#", "_"))
                except RuntimeError as exc:  # counted, not fatal: the other configs still run
                    print(f"[{gi + 1}/{len(groups)}] {g.key}: did not start: {str(exc)[:2000]}", flush=True)
                    for it in g.items:
                        records.append({"id": it.id, "set": it.set, "config": g.key, "expected": it.answer_target or "default/llm",
                                        "outcome": "not_started", "target": None, "status": 0, "latency_ms": math.nan,
                                        **score(it, Outcome("not_started", 0), checker), "arguments": None,
                                        "detail": "its config did not start"})
                    group_info.append({"config": g.key, "items": len(g.items), "targets": len(g.targets), "error": str(exc)[:3000]})
                    continue
                warning = next((s.warning for s in sup.services if s.name == "ext_proc"), "")
                print(f"[{gi + 1}/{len(groups)}] {g.key}: {len(g.items)} items, {len(g.targets)} targets, up in {up_s:.0f}s"
                      + (f" ({warning})" if warning else ""), flush=True)
                t0 = time.perf_counter()

                def on_result(it: Item, outcome: Outcome, ms: float, g: Group = g) -> None:
                    sc = score(it, outcome, checker)
                    rec = {"id": it.id, "set": it.set, "config": g.key, "expected": it.answer_target or "default/llm",
                           "outcome": outcome.kind, "target": outcome.target, "status": outcome.status,
                           "latency_ms": round(ms, 1), **sc,
                           "arguments": outcome.arguments, "detail": outcome.detail}
                    records.append(rec)
                    if args.verbose:
                        mark = "ok " if sc["routed_right"] else "BAD"
                        exact = "" if sc["args_exact"] is None else (" args ok" if sc["args_exact"] else f" args BAD {sc['why'][:120]}")
                        print(f"  {mark} {it.id:<28} {outcome.kind:<10} {str(outcome.target)[:40]:<40} want "
                              f"{rec['expected'][:40]:<40} {ms:7.0f} ms{exact}", flush=True)

                try:
                    asyncio.run(send_all(cfg.ingress.port, g.items, timeout_s=args.timeout, verbose=args.verbose, on_result=on_result))
                finally:
                    sup.stop_all()
                group_info.append({"config": g.key, "items": len(g.items), "targets": len(g.targets), "up_s": round(up_s, 1),
                                   "run_s": round(time.perf_counter() - t0, 1), "warm_warning": warning})
    finally:
        stack.stop()
        if old_home is None:
            os.environ.pop("SIDEGATE_HOME", None)
        else:
            os.environ["SIDEGATE_HOME"] = old_home

    summary: dict[str, Any] = {}
    for name in sets:
        recs = [r for r in records if r["set"] == name]
        summary[name] = {"half_items": data[name]["half_items"], "skipped_not_expressible": data[name]["skipped_not_expressible"],
                         "configs": configs_with(groups, name), **summarize_set(recs, name in SCORED_IN_SCOPE)}
    meta = {"half": args.half, "limit": args.limit, "seed": args.seed, "max_targets": args.max_targets,
            "guard": not args.no_guard, "threshold": args.threshold if args.threshold is not None else "config default",
            "checker": checker_name, "function_call": function_call or "config default", "llama_cpp_runtime": llama_cpp_runtime()}
    _print_tables(summary, meta)
    results = {
        "what": "BFCL v4 prompts through the real ingress pipeline (Envoy + ext_proc + Triton on CPU); targets' endpoints "
                "on a fake app that records the target and arguments; merged configs of <= max_targets targets per set",
        "settings": meta,
        "data": {"source": "Berkeley Function Calling Leaderboard v4", "package": f"{BFCL_PACKAGE}=={metadata.version(BFCL_PACKAGE)}",
                 "license": "Apache-2.0", "split_rule": "sha256(item id)[:8] as an int: even -> dev, odd -> test (intent_eval.split_of)",
                 "sets": data},
        "summary": summary,
        "configs": group_info,
        "triton_start_s": round(stack.started_s, 1),
        "total_s": round(time.perf_counter() - t_start, 1),
        "records": records,
    }
    path = write_results(PART, results, results_dir=args.out)
    print(f"{len(records)} requests in {time.perf_counter() - t_start:.0f}s; wrote {path}")
    if not any("error" in g for g in group_info):
        shutil.rmtree(home, ignore_errors=True)  # configs and logs; kept when a config did not start
    else:
        print(f"configs and logs kept in {home}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
