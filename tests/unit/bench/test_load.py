"""The pure parts of ``python -m bench load``: mix and kill parsing, the request schedule, outcome
accounting, recovery after a kill, answer checks, the RSS table and the config it starts."""

from __future__ import annotations

import collections
import json
import math

import pytest

from bench import load as bl
from bench.load import Outcome

# --------------------------------------------------------------------------- --mix, --kill


def test_parse_mix_reads_weights_and_bare_names() -> None:
    assert bl.parse_mix(bl.DEFAULT_MIX) == {"guard": 3, "default": 3, "egress_json": 2, "egress_sse": 2}
    assert bl.parse_mix(" guard = 2 , egress_sse ,") == {"guard": 2, "egress_sse": 1}
    assert bl.parse_mix("guard=0,default=1") == {"default": 1}  # weight 0: not sent


@pytest.mark.parametrize(("text", "message"), [
    ("guard=3,bogus=1", "unknown kind 'bogus'"),
    ("guard=3,guard=1", "given twice"),
    ("guard=x", "must be an integer"),
    ("guard=-1", ">= 0"),
    ("guard=0", "sends nothing"),
    ("", "sends nothing"),
])
def test_parse_mix_refuses_bad_mixes(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        bl.parse_mix(text)


def test_parse_kill() -> None:
    assert bl.parse_kill("triton@20") == ("triton", 20.0)
    assert bl.parse_kill("ext_proc@2.5") == ("ext_proc", 2.5)
    assert bl.parse_kill("envoy") == ("envoy", None)
    for bad in ("triton@soon", "triton@-1", "@5", "tri ton", "triton@nan"):
        with pytest.raises(ValueError):
            bl.parse_kill(bad)


def test_parse_args_defaults_and_checks() -> None:
    args = bl.parse_args([])
    assert (args.concurrency, args.duration, args.max_requests, args.kill_parsed) == (32, 60.0, None, None)
    assert args.mix_parsed == bl.parse_mix(bl.DEFAULT_MIX)
    args = bl.parse_args(["--with-function-call", "--kill", "triton", "--duration", "30"])
    assert args.mix_parsed["function_call"] == bl.FUNCTION_CALL_WEIGHT
    assert args.kill_parsed == ("triton", 10.0)  # default: a third into the run
    for bad in (["--mix", "function_call=1"], ["--kill", "redis@1"], ["--kill", "triton@60"], ["--concurrency", "0"],
                ["--mix", "nope=1"]):
        with pytest.raises(SystemExit):
            bl.parse_args(bad)


def test_mix_sequence_is_exact_and_spread_out() -> None:
    mix = {"guard": 3, "default": 3, "egress_json": 2, "egress_sse": 2}
    seq = bl.mix_sequence(mix)
    assert collections.Counter(seq) == mix
    assert all(a != b for a, b in zip(seq, seq[1:])), seq  # no kind twice in a row with this mix
    assert bl.mix_sequence({"guard": 1}) == ["guard"]
    assert bl.mix_sequence({"a": 5, "b": 1}) == ["a", "a", "a", "b", "a", "a"]


# --------------------------------------------------------------------------- outcome accounting


def _o(kind: str, start: float, end: float, status: int | None = 200, error: str | None = None, wrong: str | None = None) -> Outcome:
    return Outcome(kind, start, end, status, error, wrong)


def test_outcome_labels_and_ok() -> None:
    assert _o("guard", 0, 0.01).ok and _o("guard", 0, 0.01).label == "200"
    assert not _o("guard", 0, 1, 503).ok and _o("guard", 0, 1, 503).label == "503"
    timeout = _o("guard", 0, 30, None, "timeout")
    assert not timeout.ok and timeout.label == "timeout"
    assert not _o("default", 0, 1, 200, wrong="blocked by the guard").ok
    assert _o("guard", 1.0, 1.25).ms == pytest.approx(250)


def test_kind_summary_counts_statuses_wrong_answers_and_latency_of_correct_ones() -> None:
    outs = [_o("guard", 0, 0.010), _o("guard", 0, 0.020), _o("guard", 0, 5.0, 503), _o("guard", 0, 30, None, "timeout"),
            _o("default", 0, 0.1), _o("default", 0, 0.2, wrong="blocked by the guard")]
    s = bl.kind_summary(outs, elapsed_s=2.0)
    assert list(s) == ["guard", "default"]  # in KINDS order
    g = s["guard"]
    assert (g["requests"], g["ok"], g["wrong"]) == (4, 2, 0)
    assert g["statuses"] == {"200": 2, "503": 1, "timeout": 1}
    assert g["p50_ms"] == pytest.approx(15) and g["ok_per_s"] == 1.0  # the 503 and the timeout are not latencies
    d = s["default"]
    assert (d["ok"], d["wrong"], d["statuses"], d["wrong_examples"]) == (1, 1, {"200": 2}, ["blocked by the guard"])
    assert math.isnan(bl.kind_summary([_o("egress_sse", 0, 1, 502)], 1.0)["egress_sse"]["p50_ms"])


def test_unexpected_skips_200s_and_failures_a_kill_explains() -> None:
    outs = [_o("guard", 0, 1), _o("guard", 0, 2, 503), _o("guard", 0, 11, 503), _o("egress_json", 0, 12, None, "ConnectionResetError"),
            _o("default", 0, 3, 200, wrong="blocked by the guard")]
    assert bl.unexpected(outs) == {"egress_json": {"ConnectionResetError": 1}, "guard": {"503": 2}}
    assert bl.unexpected(outs, [(10.0, 11.5)]) == {"egress_json": {"ConnectionResetError": 1}, "guard": {"503": 1}}
    assert bl.unexpected(outs, [(0.0, 100.0)]) == {}


def test_recovery_after_a_kill() -> None:
    kill = 10.0
    outs = [
        _o("guard", 9.0, 9.5),  # before the kill: not counted
        _o("guard", 9.5, 9.9, 503),  # a failure before the kill is no part of it
        _o("guard", 9.8, 10.2, 503),  # in flight at the kill, failed
        _o("guard", 10.3, 10.4, 503),
        _o("guard", 10.5, 12.0),  # started before the last failure, ended after it: first success after it → 2.0 s
        _o("guard", 11.0, 11.5, 503),  # the last guard failure
        _o("guard", 11.6, 13.0),
        _o("guard", 13.0, 13.1),
        _o("egress_json", 9.9, 10.1),  # in flight, fine: egress does not go through Triton
        _o("egress_json", 10.1, 10.2),
        _o("default", 10.0, 14.0, None, "timeout"),  # never succeeded again
    ]
    r = bl.recovery(outs, kill)
    assert r["failed"] == 4 and r["failed_by_kind"] == {"guard": 3, "default": 1, "egress_json": 0}
    assert r["in_flight"] == 2  # started before the kill, ended after it (guard 9.8-10.2, egress 9.9-10.1)
    assert r["last_failure_s"]["guard"] == pytest.approx(1.5) and r["last_failure_s"]["egress_json"] is None
    assert r["recovered_s"]["guard"] == pytest.approx(2.0)
    assert r["recovered_s"]["egress_json"] == 0.0
    assert r["recovered_s"]["default"] is None
    assert r["serving_again_s"] is None  # one kind never came back
    r = bl.recovery([o for o in outs if o.kind != "default"], kill)
    assert r["serving_again_s"] == pytest.approx(2.0)


def test_recovery_with_no_failures_is_zero() -> None:
    r = bl.recovery([_o("guard", 0, 1), _o("guard", 5, 6)], 3.0)
    assert r["failed"] == 0 and r["recovered_s"] == {"guard": 0.0} and r["serving_again_s"] == 0.0


def test_back_healthy_wants_a_new_pid_after_the_kill() -> None:
    events = [
        {"t": 5.0, "service": "triton", "status": "healthy", "pid": 100},
        {"t": 10.5, "service": "triton", "status": "restarting (exited -9)", "pid": 100},
        {"t": 10.6, "service": "envoy", "status": "healthy", "pid": 300},
        {"t": 14.0, "service": "triton", "status": "healthy", "pid": 200},
    ]
    assert bl.back_healthy(events, "triton", 10.0, 100) == 14.0
    assert bl.back_healthy(events, "ext_proc", 10.0, 5) is None


def test_timeline_buckets_by_end_time() -> None:
    tl = bl.timeline([_o("guard", 0, 0.5), _o("guard", 0, 0.7, 503), _o("egress_sse", 1, 1.2)])
    assert tl == [{"t": 0.0, "guard": {"ok": 1, "failed": 1}}, {"t": 1.0, "egress_sse": {"ok": 1, "failed": 0}}]


# --------------------------------------------------------------------------- answers


def _chat(content: str) -> bytes:
    return json.dumps({"choices": [{"message": {"role": "assistant", "content": content}}]}).encode()


def test_check_answer() -> None:
    blocked = {"x-sidegate-guard": "blocked"}
    assert bl.check_answer("guard", 200, blocked, _chat(bl.GUARD_REPLY)) is None
    assert bl.check_answer("guard", 200, {}, _chat("fake-llm says: hi")) == "not blocked by the guard"
    assert bl.check_answer("default", 200, {}, _chat("fake-llm says: tell me a joke")) is None
    assert bl.check_answer("default", 200, blocked, _chat(bl.GUARD_REPLY)) == "blocked by the guard"
    assert bl.check_answer("target", 200, {}, _chat(json.dumps(bl.HOURS_REPLY))) is None
    assert "store_hours" in (bl.check_answer("target", 200, {}, _chat("fake-llm says: x")) or "")
    assert bl.check_answer("egress_json", 200, {}, b"not json").startswith("not a chat completion")  # type: ignore[union-attr]
    sse = {"content-type": "text/event-stream"}
    assert bl.check_answer("egress_sse", 200, sse, b'data: {"x": 1}\n\ndata: [DONE]\n\n') is None
    assert bl.check_answer("egress_sse", 200, sse, b'data: {"x": 1}\n\n') == "SSE stream without data: [DONE]"
    assert bl.check_answer("egress_sse", 200, {"content-type": "application/json"}, b"{}").startswith("not SSE")
    assert bl.check_answer("guard", 503, {}, b"") is None  # a status is not a wrong answer


def test_bodies_make_new_default_prompts_and_egress_streams() -> None:
    bodies = bl.Bodies()
    prompts = [json.loads(bodies("default"))["messages"][-1]["content"] for _ in range(20)]
    assert len(set(prompts)) == 20
    assert json.loads(bodies("egress_sse"))["stream"] is True
    assert json.loads(bodies("egress_json"))["stream"] is False
    assert json.loads(bodies("guard"))["messages"][-1]["content"] in bl.JAILBREAK_PROMPTS


# --------------------------------------------------------------------------- memory, services, config


def test_rss_change_matches_processes_by_label() -> None:
    before = {"envoy/envoy": {"service": "envoy", "pid": 10, "rss_kib": 1000},
              "triton/tritonserver": {"service": "triton", "pid": 20, "rss_kib": 2000},
              "triton/stub prompt_embed": {"service": "triton", "pid": 21, "rss_kib": 500}}
    after = {"envoy/envoy": {"service": "envoy", "pid": 10, "rss_kib": 1100},
             "triton/tritonserver": {"service": "triton", "pid": 30, "rss_kib": 1800}}
    rows = {r["process"]: r for r in bl.rss_change(before, after)}
    assert rows["envoy/envoy"]["change_pct"] == pytest.approx(10.0) and rows["envoy/envoy"]["same_process"]
    assert rows["triton/tritonserver"]["change_pct"] == pytest.approx(-10.0)
    assert not rows["triton/tritonserver"]["same_process"]  # restarted
    assert rows["triton/stub prompt_embed"]["rss_end_kib"] is None and rows["triton/stub prompt_embed"]["change_pct"] is None


def test_growth_during_the_load_is_measured_from_the_settled_sample_of_the_same_process() -> None:
    before = {"envoy/envoy": {"service": "envoy", "pid": 10, "rss_kib": 1000},
              "triton/tritonserver": {"service": "triton", "pid": 20, "rss_kib": 2000}}
    settled = {"envoy/envoy": {"service": "envoy", "pid": 10, "rss_kib": 1100},
               "triton/tritonserver": {"service": "triton", "pid": 20, "rss_kib": 2400}}
    after = {"envoy/envoy": {"service": "envoy", "pid": 10, "rss_kib": 1122},
             "triton/tritonserver": {"service": "triton", "pid": 30, "rss_kib": 2400}}
    rows = {r["process"]: r for r in bl.rss_change(before, after, settled)}
    assert rows["envoy/envoy"]["change_pct"] == pytest.approx(12.2)  # idle start -> end: the warm-up counts
    assert rows["envoy/envoy"]["change_settled_pct"] == pytest.approx(2.0)  # during the load
    assert rows["triton/tritonserver"]["change_settled_pct"] is None  # restarted after the sample: not comparable
    assert bl.rss_change(before, after)[0]["change_settled_pct"] is None  # no sample taken


def test_find_service_exact_then_prefix() -> None:
    state = {"services": [{"name": "triton-0", "pid": 1}, {"name": "triton-1", "pid": 2}, {"name": "ext_proc", "pid": 3}]}
    assert bl.find_service(state, "triton")["pid"] == 1  # type: ignore[index]
    assert bl.find_service(state, "triton-1")["pid"] == 2  # type: ignore[index]
    assert bl.find_service(state, "ext_proc")["pid"] == 3  # type: ignore[index]
    assert bl.find_service(state, "envoy") is None and bl.find_service(None, "envoy") is None


def test_config_is_loopback_with_guard_and_parameterless_default_target() -> None:
    raw = bl.load_config("http://127.0.0.1:1234/v1", 4321, with_function_call=False)
    assert bl.loopback_only(raw) == []
    assert raw["prompt_guards"]["input_guards"]["jailbreak"]["on_exception"]["message"] == bl.GUARD_REPLY
    targets = {t["name"]: t for t in raw["prompt_targets"]}
    assert set(targets) == {"store_hours", "default_target"}
    assert targets["default_target"]["default"] is True
    assert not any(t.get("parameters") for t in targets.values())
    assert "message_timeout" not in raw["ext_proc"]  # derived from the model deadlines
    with_fc = bl.load_config("http://127.0.0.1:1234/v1", 4321, with_function_call=True)
    assert [t["name"] for t in with_fc["prompt_targets"] if t.get("parameters")] == ["get_current_weather"]
    raw["llm_providers"][0]["endpoint"] = "https://api.openai.com/v1"
    assert bl.loopback_only(raw) == ["llm_providers.fake-llm.endpoint=https://api.openai.com/v1"]


def test_config_loads(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import yaml

    from ext_proc.config import load_config

    monkeypatch.setenv("SIDEGATE_HOME", str(tmp_path / "home"))
    for fc in (False, True):
        path = tmp_path / f"load-{fc}.yaml"
        path.write_text(yaml.safe_dump(bl.load_config("http://127.0.0.1:1234/v1", 4321, with_function_call=fc)))
        cfg = load_config(path)
        assert len(cfg.prompt_targets) == (3 if fc else 2)
