"""bench/stages.py and bench/flow.py without servers: summaries, tables, the JSON they write."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest

from bench import _harness as h
from bench import flow, stages


def _calls(values: list[float], **extra: object) -> list[dict[str, object]]:
    return [{"ms": v, "error": False, "round": 0, "load1": 1.0, **extra} for v in values]


def test_single_summary_has_percentiles_and_targets() -> None:
    rows = stages.summarize_single({
        "guard_embed": _calls([10.0, 12.0, 14.0]),
        "embed": _calls([5.0]) + [{"ms": None, "error": True, "round": 0, "load1": 1.0}],
        "function_call": _calls([900.0, 1100.0, 1300.0], correct=True),
    })
    by = {r["stage"]: r for r in rows}
    assert by["guard_embed"]["p50_ms"] == 12.0 and by["guard_embed"]["meets_target"] is True
    assert by["embed"]["calls"] == 1 and by["embed"]["errors"] == 1 and by["embed"]["meets_target"] is None
    assert by["function_call"]["p50_ms"] == 1100.0 and by["function_call"]["meets_target"] is False
    assert by["function_call"]["correct"] == 3


def test_concurrency_cells_are_medians_over_rounds() -> None:
    cells = [{"stage": "guard", "batching": b, "concurrency": 16, "round": r, "requests": 10, "errors": 0, "rps": rps,
              "p50_ms": 50.0, "p99_ms": 90.0, "mean_ms": 55.0, "mean_batch": 4.0, "loadavg_1m": 1.0}
             for r, (b, rps) in enumerate([("off", 50.0), ("dynamic", 100.0), ("dynamic", 300.0), ("dynamic", 200.0)])]
    out = stages.summarize_cells(cells)
    assert [(c["batching"], c["rounds"]) for c in out] == [("dynamic", 3), ("off", 1)]
    assert out[0]["rps"] == 200.0 and out[0]["requests"] == 30


def test_variant_config_changes_only_name_and_batching() -> None:
    pytest.importorskip("tritonclient.grpc")
    text = (h.REPO_ROOT / "triton_models" / "prompt_guard_head" / "config.pbtxt").read_text()
    off = stages.variant_config(text, "prompt_guard_head_off", "off")
    assert 'name: "prompt_guard_head_off"' in off and "dynamic_batching" not in off and "max_batch_size: 64" in off
    delayed = stages.variant_config(text, "prompt_guard_head_delay2ms", "delay2ms")
    assert "max_queue_delay_microseconds: 2000" in delayed
    assert stages.model_dir_name("prompt_guard_head_delay2ms") == "prompt_guard_head"
    assert stages.model_dir_name("prompt_guard_delay2ms") == "prompt_guard"
    assert stages.model_dir_name("prompt_embed_off") == "prompt_embed"


def test_ensemble_variant_points_its_steps_at_the_variant_copies() -> None:
    pytest.importorskip("tritonclient.grpc")
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2  # type: ignore[import-untyped]

    text = (h.REPO_ROOT / "triton_models" / "prompt_guard" / "config.pbtxt").read_text()
    for batching in ("off", "delay2ms"):
        out = stages.variant_config(text, f"prompt_guard_{batching}", batching)
        msg = text_format.Parse(out, model_config_pb2.ModelConfig())
        assert msg.name == f"prompt_guard_{batching}" and msg.platform == "ensemble"
        assert [s.model_name for s in msg.ensemble_scheduling.step] == [f"prompt_embed_{batching}", f"prompt_guard_head_{batching}"]
        assert not msg.HasField("dynamic_batching") and msg.max_batch_size == 64
    # the default keeps the steps as written
    msg = text_format.Parse(stages.variant_config(text, "prompt_guard", "dynamic"), model_config_pb2.ModelConfig())
    assert [s.model_name for s in msg.ensemble_scheduling.step] == ["prompt_embed", "prompt_guard_head"]


def test_render_repository_copies_steps_and_ensemble_per_variant(tmp_path: Path) -> None:
    pytest.importorskip("tritonclient.grpc")
    models = [m for m in stages.MODELS if m != "function_call"]
    variants = stages.render_repository(tmp_path, ["dynamic", "off"], models, "configs/gpu.pbtxt")
    assert variants == {"dynamic": ("prompt_guard", "prompt_embed"), "off": ("prompt_guard_off", "prompt_embed_off")}
    assert stages.variant_models("dynamic") == []
    assert stages.variant_models("off") == ["prompt_embed_off", "prompt_guard_head_off", "prompt_guard_off"]  # steps first
    names = {p.name for p in tmp_path.iterdir()}
    assert names == {*models, "prompt_embed_off", "prompt_guard_head_off", "prompt_guard_off"}
    for name in names:
        assert (tmp_path / name / "1").is_dir() and (tmp_path / name / "config.pbtxt").is_file()
    # no configs/gpu.pbtxt for the ensemble and its head: their config.pbtxt
    assert 'platform: "ensemble"' in (tmp_path / "prompt_guard" / "config.pbtxt").read_text()
    assert "KIND_CPU" in (tmp_path / "prompt_guard_head_off" / "config.pbtxt").read_text()
    assert (tmp_path / "prompt_guard_head_off" / "1").resolve() == (h.REPO_ROOT / "triton_models" / "prompt_guard_head" / "1").resolve()
    assert 'model_name: "prompt_guard_head_off"' in (tmp_path / "prompt_guard_off" / "config.pbtxt").read_text()


def _mem(rss: int) -> dict[str, int]:
    return {"rss": rss, "hwm": rss + 10, "pss": rss // 2}


def test_tables_print_and_results_are_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    single = stages.summarize_single({"guard_embed": _calls([10.0]), "function_call": _calls([800.0], correct=True)})
    cells = stages.summarize_cells([{"stage": "embed", "batching": "dynamic", "concurrency": 64, "requests": 5, "errors": 0,
                                     "rps": 100.0, "p50_ms": 1.0, "p99_ms": 2.0, "mean_ms": 1.0, "mean_batch": math.nan,
                                     "loadavg_1m": 1.0}])
    rest = {"tritonserver": _mem(40_000), "stub:prompt_embed": _mem(300_000), "stub:prompt_guard_head": _mem(100_000)}
    stack = {"rest": {"envoy": _mem(50_000), "triton:tritonserver": _mem(40_000)},
             "after": {"envoy": _mem(60_000), "triton:tritonserver": _mem(50_000)},
             "supervisor_stand_in": _mem(30_000), "requests": [{"kind": "x", "status": 200, "seconds": 1.0}], "startup_s": 9.0}
    res = {"triton": {"rounds": [{}], "memory_rest": rest, "memory_after": {**rest, "stub:prompt_guard_head_off": _mem(1)}}, "stack": stack}
    stages.print_tables(res, single, cells)
    out = capsys.readouterr().out
    for title in ("one request at a time", "Under concurrency", "Triton memory", "Whole stack memory"):
        assert title in out
    assert "stub:prompt_guard_head_off (not in the sum)" in out
    assert "stub:prompt_guard_head (not in the sum)" not in out and "stub:prompt_embed (not in the sum)" not in out
    # the sum row at rest: tritonserver + both stubs
    assert f"{(40_000 + 300_000 + 100_000) / 1024:,.1f}" in out
    targets = stages.targets_summary(single, stack)
    assert [t["meets"] for t in targets] == [True, True, True]
    assert targets[-1]["value"] == pytest.approx((60_000 + 50_000 + 30_000) * 1024 / 1e9)
    path = h.write_results("stages", {"single": single, "concurrency": cells, "targets": targets}, results_dir=tmp_path)
    doc = json.loads(path.read_text())
    assert doc["part"] == "stages" and "loadavg" in doc["meta"] and doc["concurrency"][0]["mean_batch"] is None


METRICS = """\
sidegate_stage_seconds_count{stage="guard"} 3.0
sidegate_stage_seconds_sum{stage="guard"} 0.030
sidegate_stage_seconds_count{stage="endpoint"} 1.0
sidegate_stage_seconds_sum{stage="endpoint"} 0.002
sidegate_ext_proc_phase_seconds_sum{listener="ingress",phase="request_body"} 0.05
sidegate_ext_proc_phase_seconds_sum{listener="egress",phase="request_body"} 9.0
"""


def test_stage_breakdown_from_metrics_differences() -> None:
    before = flow.parse_stage_metrics(METRICS)
    after = flow.parse_stage_metrics(METRICS.replace("3.0\n", "4.0\n").replace("0.030", "0.042").replace("0.05", "0.065"))
    got = flow.stage_breakdown(before, after)
    assert set(got) == {"guard", "ext_proc_handlers"}  # endpoint's count did not change; egress ignored
    assert got["guard"] == pytest.approx(12.0) and got["ext_proc_handlers"] == pytest.approx(15.0)


def _completion(content: str) -> bytes:
    return json.dumps({"choices": [{"message": {"content": content}}]}).encode()


def test_checks_reject_wrong_answers() -> None:
    weather = SimpleNamespace(path="/weather", json={"location": "Seattle", "days": 10})
    llm = [SimpleNamespace(path="/v1/chat/completions")]
    assert flow.check("full_flow", 200, {}, _completion("fake-llm says: hi"), [weather], llm) is None
    assert flow.check("full_flow", 200, {}, _completion("fake-llm says: hi"), [], llm) is not None
    assert flow.check("guard_blocked", 200, {"x-sidegate-guard": "blocked"}, _completion(flow.GUARD_REPLY), [], []) is None
    assert flow.check("default_target", 200, {"x-sidegate-guard": "blocked"}, _completion("no"), [], []) == "blocked by the guard"
    default = [SimpleNamespace(path="/default", json={})]
    assert flow.check("default_target", 200, {}, _completion(json.dumps(flow.DEFAULT_REPLY)), default, []) is None
    assert flow.check("currency_flow", 500, {}, b"{}", [], []).startswith("status 500")


def test_flow_summary_adds_the_aggregate_row_and_prints(capsys: pytest.CaptureFixture[str]) -> None:
    scs = flow.scenarios()
    reqs = [{"scenario": name, "kind": scs[name].kind, "ms": ms, "ok": True, "problem": None, "loadavg_1m": 1.0,
             "stages_ms": {"guard": 10.0, "function_call": ms - 15} if scs[name].kind == "full_flow" else {"guard": 10.0}}
            for name, ms in [("full_flow_same_tool", 1000.0), ("full_flow_after_switch", 2000.0), ("guard_blocked", 12.0),
                             ("default_target", 14.0)]]
    summary = flow.summarize(reqs, scs)
    names = [r["scenario"] for r in summary]
    assert names == ["full_flow_same_tool", "full_flow_after_switch", "full_flow (all)", "guard_blocked", "default_target"]
    by = {r["scenario"]: r for r in summary}
    assert by["full_flow (all)"]["p50_ms"] == 1500.0 and by["full_flow (all)"]["meets_target"] is False
    assert by["guard_blocked"]["meets_target"] is True and by["guard_blocked"]["stages_p50_ms"]["rest"] == 2.0
    assert by["full_flow_same_tool"]["stages_p50_ms"]["rest"] == 5.0
    flow.print_tables(summary, notes=["a note"], rounds=1, startup_s=1.0)
    out = capsys.readouterr().out
    assert "Prompt-target flow" in out and "a note" in out and "full_flow (all)" in out
