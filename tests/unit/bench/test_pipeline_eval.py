"""bench/pipeline_eval.py's pure parts: BFCL -> prompt targets, type mapping, grouping, the
dev/test split, outcome classification and scoring. No servers."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from bench import pipeline_eval as pe
from bench.intent_eval import split_of
from ext_proc.chat.intent import asks_what_a_term_means
from ext_proc.chat.targets import tool_schema
from ext_proc.config import load_config
from ext_proc.wire.openai import content_text

WEATHER = {
    "name": "weather.get_forecast",
    "description": "Get the weather forecast for a city.",
    "parameters": {
        "type": "dict",
        "required": ["city"],
        "properties": {
            "city": {"type": "string", "description": "The city"},
            "days": {"type": "integer", "description": "Days ahead", "default": 3},
            "unit": {"type": "string", "enum": ["celsius", "fahrenheit"], "default": "celsius"},
            "ratio": {"type": "float", "description": "a float", "default": None},
            "where": {"type": "tuple", "items": {"type": "float"}, "description": "lat, lon"},
            "opts": {"type": "dict", "properties": {"a": {"type": "string"}}, "description": "options"},
            "kids": {"type": "boolean", "enum": ["True", "False", "dontcare"], "default": "dontcare"},
        },
    },
}
STOCK = {"name": "get_stock", "description": "Stock price of a ticker.",
         "parameters": {"type": "dict", "required": ["ticker"], "properties": {"ticker": {"type": "string", "description": "t"}}}}


def row(item_id: str, functions: list[dict[str, Any]], prompt: str = "weather in Paris?") -> dict[str, Any]:
    return {"id": item_id, "question": [[{"role": "user", "content": prompt}]], "function": functions}


def test_type_map_covers_bfcl_types_and_config_accepts_them() -> None:
    for bfcl, ours in {"string": "string", "integer": "integer", "float": "number", "boolean": "boolean", "array": "array",
                       "dict": "object", "tuple": "array"}.items():
        assert pe.config_type(bfcl) == ours
    with pytest.raises(pe.NotExpressible):
        pe.config_type("any")
    with pytest.raises(pe.NotExpressible):
        pe.config_type(None)


def test_convert_function_to_arch_target() -> None:
    target, notes = pe.convert_function(WEATHER)
    assert target["name"] == "weather_get_forecast"  # sidegate's name rule, as intent_eval.target_name
    assert target["endpoint"] == {"name": pe.APP_ENDPOINT, "path": "/t/weather_get_forecast", "http_method": "POST"}
    assert target["auto_llm_dispatch_on_response"] is False
    p = {x["name"]: x for x in target["parameters"]}
    assert p["city"] == {"name": "city", "type": "string", "description": "The city", "required": True}
    assert p["days"]["type"] == "integer" and p["days"]["default"] == 3 and not p["days"]["required"]
    assert p["unit"]["enum"] == ["celsius", "fahrenheit"] and p["unit"]["default"] == "celsius"
    assert p["ratio"]["type"] == "number" and "default" not in p["ratio"]  # null default dropped
    assert p["where"]["type"] == "array" and p["where"]["items"] == {"type": "number"}
    assert p["opts"]["type"] == "object"
    assert p["kids"]["type"] == "boolean" and "enum" not in p["kids"] and "default" not in p["kids"]
    assert sorted(notes) == sorted(["null default dropped", "nested properties dropped", "enum of another type dropped",
                                    "default of another type dropped"])


@pytest.mark.parametrize("bad, why", [
    ({**STOCK, "parameters": {"type": "dict", "properties": {"x": {"type": "any"}}}}, "type 'any'"),
    ({**STOCK, "parameters": {"type": "dict", "properties": {"año": {"type": "string"}}}}, "not an identifier"),
    ({**STOCK, "description": ""}, "no description"),
    ({**STOCK, "parameters": {"type": "string"}}, "parameters of type"),
])
def test_not_expressible_functions(bad: dict[str, Any], why: str) -> None:
    with pytest.raises(pe.NotExpressible, match=why):
        pe.convert_function(bad)


def test_convert_item_and_skip_reasons() -> None:
    truth = {"weather.get_forecast": {"city": ["Paris"], "days": [3, ""]}}
    item = pe.convert_item(row("live_multiple_1-1-0", [WEATHER, STOCK]), "live_multiple", truth)
    assert item.in_scope and item.answer_target == "weather_get_forecast"
    assert [f.name for f in item.functions] == ["weather_get_forecast", "get_stock"]
    assert item.half == split_of("live_multiple_1-1-0")
    oos = pe.convert_item(row("irrelevance_3", [STOCK]), "irrelevance")
    assert not oos.in_scope and oos.answer_target is None
    with pytest.raises(pe.NotExpressible, match="same sanitised name"):
        pe.convert_item(row("x", [{**STOCK, "name": "get.stock"}, STOCK]), "irrelevance")
    with pytest.raises(pe.NotExpressible, match="no functions"):
        pe.convert_item(row("y", []), "live_irrelevance")


def test_config_from_items_is_valid_and_tool_schema_has_the_types(tmp_path: Path) -> None:
    items = [pe.convert_item(row("a", [WEATHER, STOCK]), "irrelevance"), pe.convert_item(row("b", [STOCK]), "irrelevance")]
    (group,) = pe.build_groups(items, max_targets=20)
    raw = pe.group_config(group, app_port=1234, ports=pe.Ports(*range(20001, 20007)),
                          model_server={"mode": "remote", "endpoint": "grpc://127.0.0.1:8001"}, threshold=0.5)
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(raw))
    cfg = load_config(path)  # the schema and config.py accept it
    names = [t.name for t in cfg.prompt_targets]
    assert names == ["weather_get_forecast", "get_stock", pe.DEFAULT_TARGET]
    default = cfg.prompt_targets[-1]
    assert default.default and not default.parameters and default.endpoint is not None
    assert cfg.jailbreak is not None and cfg.intent_threshold == 0.5
    props = tool_schema(cfg.prompt_targets[0])["function"]["parameters"]["properties"]
    assert {k: v["type"] for k, v in props.items()} == {"city": "string", "days": "integer", "unit": "string",
                                                         "ratio": "number", "where": "array", "opts": "object", "kids": "boolean"}


def test_grouping_shares_identical_functions_and_splits_clashes() -> None:
    other_stock = {**STOCK, "description": "Another definition under the same name."}
    a = pe.convert_item(row("a", [WEATHER, STOCK]), "live_multiple", {"get_stock": {"ticker": ["X"]}})
    b = pe.convert_item(row("b", [STOCK]), "live_multiple", {"get_stock": {"ticker": ["Y"]}})
    c = pe.convert_item(row("c", [other_stock]), "live_multiple", {"get_stock": {"ticker": ["Z"]}})
    d = pe.convert_item(row("d", [{**STOCK, "name": f"f{i}"} for i in range(3)]), "live_multiple", {"f0": {"ticker": ["Z"]}})
    groups = pe.build_groups([a, b, c, d], max_targets=4)
    assert [[it.id for it in g.items] for g in groups] == [["a", "b"], ["c", "d"]]
    assert [len(g.targets) for g in groups] == [2, 4]
    big = pe.convert_item(row("e", [{**STOCK, "name": f"g{i}"} for i in range(6)]), "multiple", {"g0": {"ticker": ["Z"]}})
    (alone,) = pe.build_groups([big], max_targets=4)  # larger than max: a group of its own
    assert len(alone.targets) == 6
    assert {g.set for g in pe.build_groups([a, pe.convert_item(row("i", [STOCK]), "irrelevance")], 20)} == {"live_multiple", "irrelevance"}


def test_split_is_stable_and_select_is_seeded() -> None:
    assert split_of("live_multiple_0-0-0") == split_of("live_multiple_0-0-0")
    ids = [f"live_simple_{i}-0-0" for i in range(200)]
    halves = [split_of(i) for i in ids]
    assert 60 < halves.count("dev") < 140  # roughly half
    items = [pe.convert_item(row(i, [STOCK]), "live_simple", {"get_stock": {"ticker": ["X"]}}) for i in ids]
    test = pe.select(items, "test", None, seed=0)
    assert {it.half for it in test} == {"test"} and len(test) == halves.count("test")
    assert [it.id for it in pe.select(items, "test", 5, seed=1)] == [it.id for it in pe.select(items, "test", 5, seed=1)]
    assert [it.id for it in pe.select(items, "test", 5, seed=1)] != [it.id for it in pe.select(items, "test", 5, seed=2)]


def chat(content: str, model: str = "x", metadata: dict[str, Any] | None = None) -> bytes:
    doc: dict[str, Any] = {"model": model, "choices": [{"index": 0, "message": {"role": "assistant", "content": content}}]}
    if metadata:
        doc["metadata"] = metadata
    return json.dumps(doc).encode()


def test_classify_outcomes() -> None:
    called = chat(json.dumps({"sidegate_eval": {"target": "get_stock", "arguments": {"ticker": "X"}}}), model="get_stock")
    assert pe.classify(200, {}, called) == pe.Outcome("target", 200, target="get_stock", arguments={"ticker": "X"})
    assert pe.classify(200, {}, chat(json.dumps({"sidegate_eval": {"target": "__default__"}}))).kind == "default"
    assert pe.classify(200, {}, chat(f"{pe.LLM_MARKER} hello")).kind == "llm"
    state = json.dumps({"pending_target": "get_stock", "arguments": {}, "messages": []})
    clar = pe.classify(200, {}, chat("Could you tell me the t?", model=pe.FUNCTION_CALL_MODEL, metadata={"x-arch-state": state}))
    assert (clar.kind, clar.target) == ("clarified", "get_stock")
    assert pe.classify(200, {pe.GUARD_HEADER: "blocked"}, chat(pe.GUARD_MESSAGE)).kind == "blocked"
    assert pe.classify(504, {}, b'{"error": {}}').kind == "http_error"
    assert pe.classify(200, {}, b"not json").kind == "other"


def fake_checker(fn: dict[str, Any], result: dict[str, Any], truth: dict[str, Any]) -> tuple[bool, str]:
    (want,) = truth.values()
    ok = all(result["arguments"].get(k) in allowed or ("" in allowed and k not in result["arguments"]) for k, allowed in want.items())
    return ok, "" if ok else "wrong"


def test_score_in_scope_and_out_of_scope() -> None:
    item = pe.convert_item(row("a", [WEATHER, STOCK]), "live_multiple", {"get_stock": {"ticker": ["X"]}})
    right = pe.score(item, pe.Outcome("target", 200, target="get_stock", arguments={"ticker": "X"}), fake_checker)
    assert right == {"routed_right": True, "args_exact": True, "why": "", "foreign": False}
    wrong_args = pe.score(item, pe.Outcome("target", 200, target="get_stock", arguments={"ticker": "Q"}), fake_checker)
    assert wrong_args["routed_right"] and wrong_args["args_exact"] is False
    clarified = pe.score(item, pe.Outcome("clarified", 200, target="get_stock"), fake_checker)
    assert clarified["routed_right"] and clarified["args_exact"] is False
    assert pe.score(item, pe.Outcome("target", 200, target="weather_get_forecast", arguments={}), fake_checker)["routed_right"] is False
    foreign = pe.score(item, pe.Outcome("target", 200, target="someone_else", arguments={}), fake_checker)
    assert foreign["foreign"] and not foreign["routed_right"]
    for kind in ("default", "llm", "blocked", "http_error"):
        assert pe.score(item, pe.Outcome(kind, 200), fake_checker)["routed_right"] is False
    oos = pe.convert_item(row("i", [STOCK]), "irrelevance")
    assert pe.score(oos, pe.Outcome("default", 200), None)["routed_right"]
    assert pe.score(oos, pe.Outcome("llm", 200), None)["routed_right"]
    assert not pe.score(oos, pe.Outcome("target", 200, target="get_stock", arguments={}), None)["routed_right"]
    assert not pe.score(oos, pe.Outcome("clarified", 200, target="get_stock"), None)["routed_right"]
    assert pe.score(oos, pe.Outcome("default", 200), None)["args_exact"] is None


def test_summarize_set() -> None:
    recs = [
        {"outcome": "target", "routed_right": True, "args_exact": True, "foreign": False, "status": 200, "latency_ms": 100.0},
        {"outcome": "clarified", "routed_right": True, "args_exact": False, "foreign": False, "status": 200, "latency_ms": 300.0},
        {"outcome": "default", "routed_right": False, "args_exact": None, "foreign": False, "status": 200, "latency_ms": 10.0},
        {"outcome": "http_error", "routed_right": False, "args_exact": None, "foreign": False, "status": 504, "latency_ms": 50.0},
    ]
    s = pe.summarize_set(recs, in_scope=True)
    assert s["n"] == 4 and s["routing_accuracy"] == 0.5 and s["args_exact_given_routed"] == 0.5
    assert s["clarification_rate"] == 0.25 and s["default_or_llm_rate"] == 0.25
    assert s["status_5xx"] == 1 and s["non_200"] == {"504": 1}
    assert s["latency_ms"]["target"] == {"n": 1, "p50_ms": 100.0, "p99_ms": 100.0}
    assert pe.summarize_set(recs, in_scope=False)["args_exact_given_routed"] is None
    lost = pe.summarize_set([*recs, {"outcome": "not_started", "routed_right": False, "args_exact": None, "foreign": False,
                                     "status": 0, "latency_ms": float("nan")}], in_scope=True)
    assert lost["n"] == 5 and lost["routing_accuracy"] == 0.4 and lost["outcomes"]["not_started"] == 1
    assert lost["non_200"] == {"504": 1} and lost["latency_ms"]["all"] == s["latency_ms"]["all"]


def test_bfcl_checker_accepts_a_right_call_when_installed() -> None:
    checker, name = pe.load_checker()
    if checker is None:
        pytest.skip(name)
    item = pe.convert_item(row("a", [WEATHER]), "live_simple", {"weather.get_forecast": {"city": ["Paris"], "days": [3, ""]}})
    ok = pe.score(item, pe.Outcome("target", 200, target="weather_get_forecast", arguments={"city": "Paris", "days": 3}), checker)
    assert ok["args_exact"], ok["why"]
    bad = pe.score(item, pe.Outcome("target", 200, target="weather_get_forecast", arguments={"city": "Rome"}), checker)
    assert bad["args_exact"] is False


def test_every_bfcl_item_converts_to_a_valid_config_when_installed(tmp_path: Path) -> None:
    folder = pe.bfcl_dir()
    if folder is None:
        pytest.skip("bfcl-eval is not installed")
    for name in pe.ALL_SETS:
        items, info = pe.load_set(folder, name)
        assert len(items) + len(info["skipped"]) == info["provenance"]["rows"]
        assert len(info["skipped"]) < 0.02 * info["provenance"]["rows"]
        for g in pe.build_groups(items, max_targets=200)[:3]:
            raw = pe.group_config(g, app_port=1, ports=pe.Ports(*range(20001, 20007)),
                                  model_server={"mode": "remote", "endpoint": "grpc://127.0.0.1:8001"})
            path = tmp_path / f"{g.set}.yaml"
            path.write_text(yaml.safe_dump(raw))
            load_config(path)


def test_no_bfcl_in_scope_prompt_only_asks_what_a_term_means_when_installed() -> None:
    """README's figure for intent's definition-question rule (ext_proc.chat.intent.asks_what_a_term_means):
    none of BFCL's in-scope prompts has that form, 2 of its out-of-scope ones do, so the rule cannot
    change pipeline_eval's figures."""
    folder = pe.bfcl_dir()
    if folder is None:
        pytest.skip("bfcl-eval is not installed")
    counts = {}
    for scope, sets in (("in", pe.IN_SCOPE), ("out", pe.OUT_OF_SCOPE)):
        items = [it for name in sets for it in pe.load_set(folder, name)[0]]
        last = [content_text(next(m for m in reversed(it.messages) if m["role"] == "user")["content"]) for it in items]
        counts[scope] = (len(items), sum(asks_what_a_term_means(t) for t in last))
    assert counts == {"in": (1500, 0), "out": (1111, 2)}


def test_tables_print(capsys: pytest.CaptureFixture[str]) -> None:
    recs = [{"outcome": "target", "routed_right": True, "args_exact": True, "foreign": False, "status": 200, "latency_ms": 100.0},
            {"outcome": "not_started", "routed_right": False, "args_exact": None, "foreign": False, "status": 0,
             "latency_ms": float("nan")}]
    summary = {"multiple": {"half_items": 100, "skipped_not_expressible": 1, "configs": 1, **pe.summarize_set(recs, True)},
               "irrelevance": {"half_items": 100, "skipped_not_expressible": 0, "configs": 1, **pe.summarize_set(recs[1:], False)}}
    pe._print_tables(summary, {"half": "test", "limit": 5, "checker": "x"})
    out = capsys.readouterr().out
    assert "multiple" in out and "irrelevance" in out and "latency per outcome" in out


def _check_user_config(g: pe.Group, tmp_path: Path) -> None:
    """One user config: in- and out-of-scope prompts, in-scope ones name its own targets, and the
    gateway's loader takes the config pipeline_eval writes for it."""
    assert {it.set for it in g.items} == set(pe.USER_SETS)
    assert all(it.answer_target in g.targets for it in g.items if it.in_scope)
    raw = pe.group_config(g, app_port=1234, ports=pe.Ports(*range(20001, 20007)),
                          model_server={"mode": "remote", "endpoint": "grpc://127.0.0.1:8001"})
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(raw))
    load_config(tmp_path / "c.yaml")


def test_user_configs_are_one_config_each_and_split_by_config(tmp_path: Path) -> None:
    """bench/data/user_configs.jsonl: every row converts; each config is one group of its own in one
    half (the configs tried by hand first are dev); its in-scope prompts name one of its own
    targets; both halves have in- and out-of-scope prompts; a clarifying question for the right
    target counts as routed right and no arguments are judged."""
    rows = pe._jsonl(pe.USER_CONFIGS_FILE)
    configs = {r["config"] for r in rows}
    assert set(pe.SEEN_CONFIGS) <= configs and len(configs) >= 6
    seen: set[str] = set()
    for half in ("dev", "test"):
        groups = pe.user_config_groups(half)
        for g in groups:
            (config,) = {it.id.rsplit("_", 1)[0] for it in g.items}
            assert config not in seen and pe.user_config_half(config.removeprefix("user_")) == half
            seen.add(config)
            _check_user_config(g, tmp_path)
    assert seen == {f"user_{c}" for c in configs}
    assert all(pe.user_config_half(c) == "dev" for c in pe.SEEN_CONFIGS)
    item = next(it for g in pe.user_config_groups("dev") for it in g.items if it.in_scope)
    asked = pe.score(item, pe.Outcome("clarified", 200, target=item.answer_target), None)
    assert asked["routed_right"] and asked["args_exact"] is None
    assert not pe.score(item, pe.Outcome("default", 200, target=pe.DEFAULT_TARGET), None)["routed_right"]


def test_the_later_user_configs_files_are_dev_or_held_out_whole(tmp_path: Path) -> None:
    """bench/data/user_configs_2.jsonl (written after the first file's test half had been read) and
    _3 / _4 (written together, before any run of them): the second's and the fourth's configs are
    all test, the third's all dev, whatever their hash; no config name or prompt id repeats an
    earlier file's; every row converts into a config of its own with in- and out-of-scope prompts."""
    seen_configs = {r["config"] for r in pe._jsonl(pe.USER_CONFIGS_FILE)}
    seen_ids = {r["id"] for r in pe._jsonl(pe.USER_CONFIGS_FILE)}
    for path, half, other in ((pe.USER_CONFIGS_2_FILE, "test", "dev"), (pe.USER_CONFIGS_3_FILE, "dev", "test"),
                              (pe.USER_CONFIGS_4_FILE, "test", "dev")):
        rows = pe._jsonl(path)
        configs = {r["config"] for r in rows}
        assert len(configs) == 6 and not configs & seen_configs
        assert pe.user_config_groups(other, path) == []
        groups = pe.user_config_groups(half, path)
        assert len(groups) == len(configs) and sum(len(g.items) for g in groups) == len(rows)
        ids = {it.id for g in groups for it in g.items}
        assert not ids & seen_ids
        for g in groups:
            _check_user_config(g, tmp_path)
        assert all(pe.user_config_half(c, path) == half for c in configs)
        seen_configs |= configs
        seen_ids |= ids
