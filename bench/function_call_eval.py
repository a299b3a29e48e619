"""Quality and speed of the ``function_call`` model (engine in-process, no Triton).

Measures, with the real GGUF:

* **exact-argument accuracy** on BFCL v4 ``simple_python`` (package ``bfcl-eval``): a case is
  right when every required parameter is present, every parameter the model returns is in the
  case's list of allowed values (AST-style: types checked, ints accepted for floats, strings
  compared case- and punctuation-insensitively, lists whole and in order) and every parameter
  without ``""`` among its allowed values is present;
* the rate of outputs that parse and validate against the tool's schema (must be 100 %);
* latency p50/p90 of one-sentence prompts against the 3-parameter weather schema, after
  warm-up, with the schema prefix cached (the serving situation), and p50/p90 of the same
  prompts each right after a call for another tool (a gateway with several targets);
* the process's resident memory at the end (engine + model + KV cache of every slot).

Accuracy is decided by BFCL's own checker (``ast_checker.simple_function_checker``, imported
with a stub for its provider table); the local ``case_ok`` is the fallback when it cannot be
imported.

Cases 300..399 are the dev slice used for prompt iteration; the reported sample is taken from
0..299 (``--start/--n``), so nothing reported was tuned on.

Usage::

    python bench/function_call_eval.py                         # 0.5B default, 100 cases
    python bench/function_call_eval.py --n 300 --threads 2
    python bench/function_call_eval.py --model qwen2.5-coder-1.5b --n 100
    python bench/function_call_eval.py --dev                   # the dev slice (iteration only)

Prints a table and writes ``bench/results/function_call.json`` (one entry per model+split).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script: make the bench package importable
    sys.path.insert(0, str(ROOT))

from bench._harness import RESULTS_DIR, load_caption, memory_kib, percentile, print_table, write_results  # noqa: E402
from sidegate_models import function_call as engine  # noqa: E402  (triton_models/sidegate_models/function_call/)
from sidegate_models import weights  # noqa: E402
from sidegate_models.native import kind  # noqa: E402

PART = "function_call"  # bench/results/function_call.json
DEV_SLICE = (300, 400)


# ---------------------------------------------------------------------------- BFCL data

def bfcl_dir() -> Path | None:
    spec = importlib.util.find_spec("bfcl_eval")  # locate without importing (heavy deps)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0]) / "data"


def load_simple() -> list[dict[str, Any]]:
    d = bfcl_dir()
    assert d is not None
    cases = [json.loads(line) for line in open(d / "BFCL_v4_simple_python.json")]
    answers = {a["id"]: a for a in (json.loads(line) for line in open(d / "possible_answer" / "BFCL_v4_simple_python.json"))}
    for c in cases:
        c["answer"] = answers[c["id"]]["ground_truth"][0]
    return cases


# ---------------------------------------------------------------------------- checking

def _std(s: str) -> str:
    return re.sub(r"[ ,./\-_*^]", "", s).lower().replace("'", '"')


def value_ok(got: Any, allowed: list[Any]) -> bool:
    return any(_same(got, a) for a in allowed if a != "")


def _same(got: Any, want: Any) -> bool:
    if isinstance(want, bool) or isinstance(got, bool):
        return got is want
    if isinstance(want, (int, float)) and isinstance(got, (int, float)):
        return float(got) == float(want)
    if isinstance(want, str) and isinstance(got, str):
        return _std(got) == _std(want)
    if isinstance(want, list) and isinstance(got, list):
        return len(got) == len(want) and all(_same(g, w) for g, w in zip(got, want))
    if isinstance(want, dict) and isinstance(got, dict):
        # BFCL dict answers: key -> list of allowed values
        for k, allowed in want.items():
            allowed_l = allowed if isinstance(allowed, list) else [allowed]
            if k not in got:
                if "" not in allowed_l:
                    return False
            elif not value_ok(got[k], allowed_l):
                return False
        return all(k in want for k in got)
    return False


def _bfcl_checker() -> Any:
    """BFCL's own ``simple_function_checker``, or None when it cannot be imported.

    Its module imports ``bfcl_eval.constants.model_config``, which pulls in every provider SDK
    (not installed: ``--no-deps``); the checker only reads that table for function names with a
    dot (``underscore_to_dot``, off for a model that writes the names as given), so a stub
    stands in for it.
    """
    import types

    stub = types.ModuleType("bfcl_eval.constants.model_config")

    class _Cfg:
        underscore_to_dot = False

    class _Table(dict):  # type: ignore[type-arg]
        def __missing__(self, key: str) -> _Cfg:
            return _Cfg()

    stub.MODEL_CONFIG_MAPPING = _Table()  # type: ignore[attr-defined]
    saved = sys.modules.get(stub.__name__)
    sys.modules[stub.__name__] = stub
    try:
        from bfcl_eval.constants.enums import Language
        from bfcl_eval.eval_checker.ast_eval.ast_checker import simple_function_checker
    except Exception:  # noqa: BLE001 - fall back to case_ok
        return None
    finally:
        if saved is not None:
            sys.modules[stub.__name__] = saved

    def check(tool: dict[str, Any], result: dict[str, Any], answer: dict[str, Any]) -> tuple[bool, str]:
        out = simple_function_checker(tool, {result["name"]: result["arguments"]}, answer, Language.PYTHON, "sidegate")
        return bool(out["valid"]), "; ".join(out.get("error") or [])

    return check


def case_ok(result: dict[str, Any], answer: dict[str, Any]) -> tuple[bool, str]:
    (fname, params), = answer.items()
    if result["name"] != fname:
        return False, "name"
    args = result["arguments"]
    for k, v in args.items():
        if k not in params:
            return False, f"unexpected {k}"
        if not value_ok(v, params[k]):
            return False, f"wrong {k}={v!r} want {params[k]!r}"
    for k, allowed in params.items():
        if k not in args and "" not in allowed:
            return False, f"missing {k}"
    return True, ""


# ---------------------------------------------------------------------------- runs

WEATHER_PROMPTS = [
    "What's the weather in Paris for the next 3 days?",
    "Give me a 5 day forecast for Tokyo in fahrenheit.",
    "How will the weather be in Berlin over the next 2 days, in celsius?",
    "Weather for Madrid, 7 days please.",
    "I need the 4-day forecast for Chicago.",
    "Show me the weather in Sydney for 10 days in celsius.",
    "What will the weather be like in Toronto for the next 6 days?",
    "Forecast for Rome for 3 days in fahrenheit, please.",
    "Tell me the weather in Lisbon for the coming 2 days.",
    "What's the forecast for Seoul over 5 days?",
]


# another target, as in a gateway with several: a weather call right after one of these must not
# evaluate the weather prompt again (bench/stages.py measures the same through Triton)
OTHER_TOOL: dict[str, Any] = {"type": "function", "function": {
    "name": "get_exchange_rate", "description": "Get the currency exchange rate from US dollars to another currency.",
    "parameters": {"type": "object", "properties": {"currency_symbol": {
        "type": "string", "enum": ["GBP", "EUR", "JPY", "CHF"], "description": "The three-letter currency code, e.g. GBP"}},
        "required": ["currency_symbol"]}}}
OTHER_PROMPTS = ["How many euros for a dollar?", "Exchange rate to British pounds?", "USD to yen today?"]


def run_latency(fc: Any, repeats: int) -> dict[str, Any]:
    """Weather calls after a weather call (same tool), then each right after a call for another
    tool (switch)."""
    fc.call([{"role": "user", "content": "Weather in Oslo for 2 days?"}], engine.WEATHER_TOOL)  # prefix cached
    fc.call([{"role": "user", "content": OTHER_PROMPTS[0]}], OTHER_TOOL)
    times, ok, tokens = [], 0, []
    for _ in range(repeats):
        for p in WEATHER_PROMPTS:
            t0 = time.perf_counter()
            r = fc.call([{"role": "user", "content": p}], engine.WEATHER_TOOL)
            times.append(time.perf_counter() - t0)
            tokens.append(r["usage"]["predicted_n"])
            ok += not r["missing"]
    switch = []
    for i, p in enumerate(WEATHER_PROMPTS):
        fc.call([{"role": "user", "content": OTHER_PROMPTS[i % len(OTHER_PROMPTS)]}], OTHER_TOOL)
        t0 = time.perf_counter()
        fc.call([{"role": "user", "content": p}], engine.WEATHER_TOOL)
        switch.append(time.perf_counter() - t0)
    return {"n": len(times), "p50_s": round(percentile(times, 50), 3), "p90_s": round(percentile(times, 90), 3),
            "mean_s": round(statistics.mean(times), 3), "generated_tokens_mean": round(statistics.mean(tokens), 1),
            "complete_rate": round(ok / len(times), 3),
            "after_switch": {"n": len(switch), "p50_s": round(percentile(switch, 50), 3),
                             "p90_s": round(percentile(switch, 90), 3)}}


def rss_mb() -> float:
    """This process's resident memory (engine + model), as the Triton python stub would hold."""
    kib = memory_kib(os.getpid())["rss"]
    return round(kib / 1024, 1) if kib is not None else float("nan")


def run_bfcl(fc: Any, cases: list[dict[str, Any]], verbose: bool) -> dict[str, Any]:
    checker = _bfcl_checker()
    right = valid = unsupported = disagree = 0
    errors: list[dict[str, Any]] = []
    times = []
    for i, c in enumerate(cases):
        tool = c["function"][0]
        messages = c["question"][0]
        t0 = time.perf_counter()
        try:
            r = fc.call(messages, tool)
        except engine.UnsupportedSchema as exc:
            unsupported += 1
            errors.append({"id": c["id"], "why": f"unsupported schema: {exc}"})
            continue
        times.append(time.perf_counter() - t0)
        norm = engine.normalize_tool(tool)
        relaxed = {**norm.parameters, "required": [k for k in norm.required if k not in r["missing"]]}
        import jsonschema

        try:
            json.dumps(r)
            jsonschema.validate(r["arguments"], relaxed)
            valid += 1
        except Exception as exc:  # noqa: BLE001 - counted, reported
            errors.append({"id": c["id"], "why": f"invalid output: {exc}"[:300]})
        good, why = case_ok(r, c["answer"])
        if checker is not None:  # BFCL's own verdict is the one reported
            local = good
            good, bfcl_why = checker(tool, r, c["answer"])
            why = bfcl_why if not good else ""
            disagree += local != good
        right += good
        if not good:
            errors.append({"id": c["id"], "why": why, "args": r["arguments"], "dropped": r.get("dropped", {}),
                           "missing": r["missing"]})
        if verbose:
            print(f"{i:4d} {c['id']:>20} {'ok ' if good else 'BAD'} {time.perf_counter() - t0:5.2f}s {why[:150]} "
                  f"{json.dumps(r['arguments'])[:120]} {json.dumps(r.get('dropped', {}))[:100]}", flush=True)
    n = len(cases)
    return {"n": n, "accuracy": round(right / n, 4), "right": right,
            "checker": "bfcl_eval ast_checker.simple_function_checker" if checker else "local (bfcl checker not importable)",
            "local_checker_disagreements": disagree if checker else None,
            "valid_rate": round(valid / max(1, n - unsupported), 4), "unsupported": unsupported,
            "p50_s": round(percentile(times, 50), 3) if times else None, "errors": errors}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="function_call accuracy (BFCL simple) and latency")
    ap.add_argument("--model", default=weights.DEFAULT_MODEL, help="packaged model name or GGUF path")
    ap.add_argument("--threads", type=int, default=0, help="llama.cpp threads (0 = free cores)")
    ap.add_argument("--start", type=int, default=0)
    ap.add_argument("--n", type=int, default=100, help="BFCL cases from --start (reported sample: 0..299)")
    ap.add_argument("--dev", action="store_true", help="run the dev slice 300..399 instead (not reported)")
    ap.add_argument("--latency-repeats", type=int, default=2)
    ap.add_argument("--skip-latency", action="store_true")
    ap.add_argument("--skip-bfcl", action="store_true")
    ap.add_argument("--ground", default="all", choices=["optional", "all", "none"])
    ap.add_argument("--slots", type=int, default=4, help="llama.cpp slots, one cached tool prompt each (1 = the old single slot)")
    ap.add_argument("--ctx", type=int, default=2048, help="context tokens per slot")
    ap.add_argument("--no-repack", action="store_true",
                    help="keep the weights as mapped from the GGUF (llama.cpp no_extra_bufts): less memory, slower?")
    ap.add_argument("--object-mode", action="store_true", help="one grammar for the whole object (default: values only)")
    ap.add_argument("--verbose", "-v", action="store_true")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args(argv)

    if not args.skip_bfcl and bfcl_dir() is None:
        print("function_call: bfcl-eval is not installed (pip install --no-deps bfcl-eval==2026.3.23)")
        return 1
    try:
        path = weights.resolve(args.model)
    except weights.WeightsError as exc:
        print(f"function_call: skipped, weights not installed: {exc}")
        return 0
    load_avg = os.getloadavg()
    t0 = time.perf_counter()
    rss_before = rss_mb()
    fc = engine.FunctionCaller(model_path=str(path), n_threads=args.threads, ground=args.ground,
                               values_only=not args.object_mode, warmup=False, n_slots=args.slots, n_ctx=args.ctx,
                               llama_params={"no_extra_bufts": True} if args.no_repack else None)
    load_s = time.perf_counter() - t0
    warm_s = fc.warm_up()
    print(f"model {args.model}: load {load_s:.1f}s, warm-up {warm_s:.1f}s, {fc.n_threads} threads, "
          f"load average {load_avg[0]:.2f}", flush=True)

    out: dict[str, Any] = {"model": args.model, "gguf": os.path.basename(path), "threads": fc.n_threads,
                           "ground": args.ground, "values_only": not args.object_mode,
                           "load_s": round(load_s, 2), "warmup_s": round(warm_s, 2),
                           "loadavg_start": round(load_avg[0], 2), "n_slots": args.slots, "n_ctx_per_slot": args.ctx,
                           "runtime": kind(fc.runtime_info), "runtime_info": fc.runtime_info}
    if not args.skip_latency:
        out["latency"] = run_latency(fc, args.latency_repeats)
    if not args.skip_bfcl:
        cases = load_simple()
        lo, hi = DEV_SLICE if args.dev else (args.start, args.start + args.n)
        if not args.dev and hi > DEV_SLICE[0]:
            print(f"note: cases {DEV_SLICE[0]}..{DEV_SLICE[1] - 1} are the dev slice (prompt iteration)")
        out["bfcl"] = {"split": "dev" if args.dev else "report", "range": [lo, hi],
                       **run_bfcl(fc, cases[lo:hi], args.verbose)}
    out["loadavg_end"] = round(os.getloadavg()[0], 2)
    out["when"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    out["rss_mb"] = {"before_load": rss_before, "end": rss_mb()}
    fc.close()

    key = f"{args.model}{'/dev' if args.dev else ''}/{fc.n_threads}t{'/native' if out['runtime'] == 'native' else ''}"
    runs = _previous_runs()
    earlier, record = runs.get(key, {}), dict(out)
    for part in ("latency", "bfcl"):  # a run that skipped a part keeps the last measured one
        if part not in out and part in earlier:
            record[part] = {**earlier[part], "from_earlier_run": earlier[part].get("from_earlier_run") or earlier.get("when")}
    runs[key] = record
    b, lat = out.get("bfcl", {}), out.get("latency", {})
    print_table(
        "function_call: BFCL simple_python exact arguments, weather latency (3 params)",
        ["model", "runtime", "threads", "slots", "BFCL acc", "n", "split", "parse+validate", "p50 s", "p90 s", "p50 after switch s",
         "RSS MB", "load avg"],
        [[args.model, out["runtime"], fc.n_threads, args.slots, b.get("accuracy"), b.get("n"), b.get("split"), b.get("valid_rate"),
          lat.get("p50_s"), lat.get("p90_s"), lat.get("after_switch", {}).get("p50_s"), out["rss_mb"]["end"],
          f"{out['loadavg_start']}->{out['loadavg_end']}"]],
        caption=load_caption(f"load {load_s:.1f}s, warm-up {warm_s:.1f}s"), digits=3)
    if not args.no_write:
        path_out = write_results(PART, {"runs": runs})
        print(f"wrote {path_out.relative_to(ROOT)} [{key}]")
    return 0


def _previous_runs() -> dict[str, Any]:
    """Runs of other models/splits already in the results file (one file, one entry per run)."""
    try:
        doc = json.loads((RESULTS_DIR / f"{PART}.json").read_text())
    except (OSError, ValueError):
        return {}
    runs = doc.get("runs")
    if isinstance(runs, dict):
        return runs
    return {k: v for k, v in doc.items() if isinstance(v, dict) and "model" in v}


if __name__ == "__main__":
    sys.exit(main())
