"""Prompt-target arguments and endpoint calls: the rules of DESIGN.md steps 4-5."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest

from ext_proc.chat.targets import (
    CoercionError,
    PendingState,
    clarifying_question,
    coerce,
    endpoint_request,
    finalize_arguments,
    tool_schema,
)
from ext_proc.config import build_config, load_config

RAW = {
    "version": "v0.1",
    "endpoints": {"app": {"endpoint": "127.0.0.1:18083"}},
    "llm_providers": [{"name": "p", "provider_interface": "openai", "endpoint": "http://127.0.0.1:1/v1", "default": True}],
    "prompt_targets": [
        {
            "name": "get_current_weather",
            "description": "Get the weather forecast for a location",
            "parameters": [
                {"name": "location", "type": "str", "description": "The city and state", "required": True},
                {"name": "days", "type": "int", "description": "the number of days for the forecast", "required": True},
                {"name": "units", "type": "str", "enum": ["celsius", "fahrenheit"], "default": "celsius"},
            ],
            "endpoint": {"name": "app", "path": "/weather", "http_method": "POST", "http_headers": {"x-api": "k1"}},
        },
        {
            "name": "get_exchange_rate",
            "description": "Get the exchange rate for a currency",
            "parameters": [
                {"name": "currency_symbol", "type": "str", "required": True, "in_path": True, "enum": ["GBP", "EUR", "JPY"]},
                {"name": "amount", "type": "float"},
                {"name": "verbose", "type": "bool"},
            ],
            "endpoint": {"name": "app", "path": "/exchange/{currency_symbol}", "http_method": "GET"},
        },
    ],
}
CFG = build_config(RAW, env={})
ARCH_CONFIGS = Path(__file__).resolve().parents[2] / "data" / "arch_configs"
WEATHER, RATE = CFG.prompt_targets


def test_tool_schema_is_a_valid_openai_function_schema() -> None:
    schema = tool_schema(WEATHER)
    params = schema["function"]["parameters"]
    jsonschema.Draft202012Validator.check_schema(params)
    assert schema["function"]["name"] == "get_current_weather"
    assert params["required"] == ["location", "days"]
    assert params["properties"]["days"]["type"] == "integer"
    assert params["properties"]["units"]["enum"] == ["celsius", "fahrenheit"]
    jsonschema.validate({"location": "Seattle", "days": 3}, params)


def test_an_array_keeps_the_item_schema_the_config_gives() -> None:
    """BFCL-style targets whose lists hold numbers reached the model as lists of strings
    (bench pipeline_eval: ["3", "2", "1"] where the function wants integers)."""
    raw = json.loads(json.dumps(RAW))
    raw["prompt_targets"][0]["parameters"] += [
        {"name": "hours", "type": "list", "items": {"type": "integer"}, "description": "hours of the day"},
        {"name": "tags", "type": "array"},
    ]
    props = tool_schema(build_config(raw, env={}).prompt_targets[0])["function"]["parameters"]["properties"]
    assert props["hours"]["items"] == {"type": "integer"}
    assert props["tags"]["items"] == {"type": "string"}  # none given: strings, as before
    jsonschema.Draft202012Validator.check_schema({"type": "object", "properties": props})


@pytest.mark.parametrize(
    ("value", "ptype", "expected"),
    [
        ("10", "integer", 10),
        ("1,000", "integer", 1000),
        (10.0, "integer", 10),
        ("2.5", "number", 2.5),
        ("3", "number", 3),
        ("yes", "boolean", True),
        ("False", "boolean", False),
        ("a, b", "array", ["a", "b"]),
        ('["x", "y"]', "array", ["x", "y"]),
        (12, "string", "12"),
        ('{"k": 1}', "object", {"k": 1}),
    ],
)
def test_coerce_to_declared_types(value, ptype, expected) -> None:
    assert coerce(value, ptype) == expected


@pytest.mark.parametrize(("value", "ptype"), [("ten", "integer"), ("2.5", "integer"), (True, "integer"), ("maybe", "boolean"), ([1], "string"), ("nan", "number")])
def test_coerce_refuses_what_does_not_fit(value, ptype) -> None:
    with pytest.raises(CoercionError):
        coerce(value, ptype)


def test_finalize_fills_defaults_coerces_and_reports_missing() -> None:
    args, missing, problems = finalize_arguments(WEATHER, {"location": "Seattle, WA", "days": "10"})
    assert args == {"location": "Seattle, WA", "days": 10, "units": "celsius"}
    assert missing == [] and problems == {}
    args, missing, _ = finalize_arguments(WEATHER, {"location": "Seattle"})
    assert missing == ["days"] and args["units"] == "celsius"


def test_enum_is_enforced_case_insensitively_and_bad_values_are_asked_again() -> None:
    args, missing, _ = finalize_arguments(RATE, {"currency_symbol": "gbp"})
    assert args["currency_symbol"] == "GBP" and missing == []
    args, missing, problems = finalize_arguments(RATE, {"currency_symbol": "DOGE"})
    assert "currency_symbol" not in args and missing == ["currency_symbol"]
    assert "GBP" in problems["currency_symbol"]
    question = clarifying_question(RATE, missing, problems)
    assert "GBP" in question and question.endswith(".")


def test_clarifying_question_names_each_missing_parameter_by_description() -> None:
    q = clarifying_question(WEATHER, ["days"])
    assert q == "Could you tell me the number of days for the forecast?"
    q2 = clarifying_question(WEATHER, ["location", "days"])
    assert q2 == "Could you tell me the city and state and number of days for the forecast?"


def test_post_endpoint_gets_json_body_and_headers() -> None:
    call = endpoint_request(WEATHER, {"location": "Seattle", "days": 10, "units": "celsius"})
    assert call.method == "POST" and call.path == "/weather"
    assert call.json_body == {"location": "Seattle", "days": 10, "units": "celsius"}
    assert call.headers == {"x-api": "k1"}


def test_get_endpoint_fills_path_url_encoded_and_rest_goes_to_query() -> None:
    call = endpoint_request(RATE, {"currency_symbol": "GBP/X Y", "amount": 2.5, "verbose": True})
    assert call.method == "GET" and call.json_body is None
    assert call.path == "/exchange/GBP%2FX%20Y?amount=2.5&verbose=true"


@pytest.mark.parametrize("demo", ["demos__advanced__currency_exchange__config.yaml", "demos__advanced__stock_quote__config.yaml"])
def test_a_target_without_http_method_is_called_with_get_as_arch_does(demo: str) -> None:
    """plano's currency and stock demos call public GET APIs (Frankfurter, Twelve Data) and say no
    http_method: Arch's default is GET. sidegate POSTed a JSON body, which both APIs refuse."""
    cfg = load_config(ARCH_CONFIGS / "plano-HEAD" / demo, env={"OPENAI_API_KEY": "k", "TWELVEDATA_API_KEY": "td"})
    target = next(t for t in cfg.prompt_targets if t.parameters)
    args = {p.name: "GBP" if "currency" in p.name else "AAPL" for p in target.parameters if p.required}
    call = endpoint_request(target, args)
    assert call.method == "GET" and call.json_body is None
    assert call.path in ("/v1/latest?base=USD&symbols=GBP", "/quote?symbol=AAPL")


def test_the_default_target_is_posted_the_conversation_as_arch_does() -> None:
    """plano's RAG demo: its default target ("Summarize the user's request ...") got ``{}``."""
    cfg = load_config(ARCH_CONFIGS / "plano-HEAD" / "demos__advanced__multi_turn_rag__config.yaml", env={"OPENAI_API_KEY": "k"})
    default = next(t for t in cfg.prompt_targets if t.default)
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "what is wind?"}]
    call = endpoint_request(default, {}, messages)
    assert (call.method, call.path, call.json_body) == ("POST", "/default_target", {"messages": messages})
    unset = json.loads(json.dumps(RAW))  # no http_method on a default target: POST too (Arch always POSTs it)
    unset["prompt_targets"].append({"name": "fallback", "default": True, "description": "anything else",
                                    "endpoint": {"name": "app", "path": "/fallback"}})
    fallback = build_config(unset, env={}).prompt_targets[-1]
    assert endpoint_request(fallback, {}, messages[-1:]).json_body == {"messages": messages[-1:]}
    assert endpoint_request(RATE, {"currency_symbol": "GBP"}, messages).json_body is None  # other targets: their arguments only


def test_pending_state_round_trips_and_ignores_foreign_metadata() -> None:
    st = PendingState(target="get_current_weather", arguments={"location": "Seattle"})
    meta = {"x-arch-state": st.encode()}
    back = PendingState.decode(json.loads(json.dumps(meta)))
    assert back is not None and back.target == "get_current_weather" and back.arguments == {"location": "Seattle"}
    assert PendingState.decode({"x-arch-state": "not json"}) is None
    assert PendingState.decode({"user": "abc"}) is None
    assert PendingState.decode(None) is None
