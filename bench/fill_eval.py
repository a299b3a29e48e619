"""Exact arguments with the right target given: the function_call engine's filling alone, on held-out BFCL.

``pipeline_eval`` scores arguments only for prompts routed right, through the whole stack, ~11 min
for 15 items per set; this part isolates the filling step so a change to it (the filling prompt,
grounding, the weights) can be measured on more items in less time:

* Items: BFCL v4 ``live_multiple``, ``multiple``, ``live_simple`` as ``pipeline_eval`` selects them
  (``--half``, ``--limit``, ``--seed``: the same dev/test split by sha256 of the id), each alone in
  a config built by ``pipeline_eval.group_config`` and converted by the gateway's own loader, so the
  tool the engine sees is the one the gateway would send (``ext_proc.chat.targets.tool_schema``).
* The engine in process (``FunctionCaller``, the default weights or ``--weights``, ``--threads``
  llama.cpp threads) fills the answer's target from the item's messages (``call``: the gateway's
  grounding and ``missing`` included); the arguments are judged by BFCL's own checker as
  ``pipeline_eval.score`` judges an endpoint's body. A required parameter left missing (the gateway
  would ask a clarifying question) is a miss, as it is there.
* ``--sets followups``: conversations where the last user turn changes or adds one value ("and
  for euros?", "make it 3 people", "4 days please" after a clarifying question), written for this
  part in BFCL's format (``bench/data/followups.jsonl``, 42 items over 13 tools, split into
  halves as BFCL's are); the expected arguments are those after the last turn. BFCL's own
  prompts are single turns, so they do not measure this.
* ``--instructions FILE``: the filling prompt's fixed instructions (``prompt.INSTRUCTIONS``) read
  from FILE instead, to compare a variant with the shipped prompt on the same items (run both).

  python -m bench fill_eval [--half dev|test] [--limit 25] [--sets live_multiple,...,followups] [--instructions FILE]

Prints a table per set and writes ``bench/results/fill_eval.json`` with every item's arguments,
the expected ones and the checker's reason for each miss.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
if str(ROOT / "triton_models") not in sys.path:
    sys.path.insert(0, str(ROOT / "triton_models"))
from bench._harness import load_caption, percentile, print_table, write_results  # noqa: E402
from bench.pipeline_eval import IN_SCOPE  # noqa: E402

PART = "fill_eval"
FOLLOWUPS = "followups"
FOLLOWUPS_FILE = ROOT / "bench" / "data" / "followups.jsonl"
SETS = (*IN_SCOPE, FOLLOWUPS)


def followup_items(half: str, limit: int | None, seed: int) -> list[Any]:
    """The ``half`` of :data:`FOLLOWUPS_FILE` as ``pipeline_eval`` items (BFCL's row format)."""
    from bench import pipeline_eval as pe

    rows = pe._jsonl(FOLLOWUPS_FILE)
    return pe.select([pe.convert_item(r, FOLLOWUPS, r["ground_truth"][0]) for r in rows], half, limit, seed)


def summarize(records: Sequence[dict[str, Any]], sets: Sequence[str]) -> list[list[Any]]:
    """One row per set, then all: items, exact, the share exact, p50 / p90 seconds of a call."""
    rows = []
    for name in [*sets, "all"]:
        part = [r for r in records if name in ("all", r["set"])]
        secs = [r["seconds"] for r in part]
        exact = sum(bool(r["exact"]) for r in part)
        rows.append([name, len(part), exact, round(exact / len(part), 3) if part else None,
                     round(percentile(secs, 50), 2) if secs else None, round(percentile(secs, 90), 2) if secs else None])
    return rows


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    from bench import pipeline_eval as pe
    from ext_proc.chat.targets import tool_schema
    from sidegate_models import weights
    from sidegate_models.function_call import engine

    if args.instructions is not None:
        engine.INSTRUCTIONS = args.instructions.read_text()  # the engine reads its module's name at each call
    checker, how = pe.load_checker()
    bfcl = [s for s in args.sets if s != FOLLOWUPS]
    items = pe.selected_items(bfcl, args.half, args.limit, args.seed) if bfcl else []
    if FOLLOWUPS in args.sets:
        items += followup_items(args.half, args.limit, args.seed)
    print(f"{len(items)} items, checker: {how}; loading {args.weights} ...", flush=True)
    fc = engine.FunctionCaller(model_path=str(weights.resolve(args.weights)), n_threads=args.threads, warmup=False)
    records: list[dict[str, Any]] = []
    try:
        for n, it in enumerate(items, 1):
            group = pe.build_groups([it], 20)[0]
            cfg = pe.offline_config(group)
            target = next(t for t in cfg.prompt_targets if t.name == it.answer_target)
            started = time.perf_counter()
            result = fc.call(it.messages, tool_schema(target))
            seconds = time.perf_counter() - started  # the tool's prefix included: every item has its own tool
            outcome = pe.Outcome(kind="target", status=200, target=it.answer_target, arguments=result.get("arguments"))
            verdict = pe.score(it, outcome, checker)
            records.append({"id": it.id, "set": it.set, "exact": bool(verdict["args_exact"]), "why": str(verdict["why"]),
                            "arguments": result.get("arguments"), "missing": result.get("missing"),
                            "expected": it.ground_truth, "seconds": round(seconds, 3)})
            if args.verbose or n % 10 == 0:
                print(f"{n}/{len(items)}: {sum(r['exact'] for r in records)} exact", flush=True)
    finally:
        fc.close()
    return records


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench fill_eval", description=__doc__.split("\n", 1)[0])
    ap.add_argument("--half", choices=("dev", "test"), default="dev")
    ap.add_argument("--limit", type=int, default=25, help="items per set (default 25)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--sets", default=",".join(IN_SCOPE), type=lambda s: [x for x in s.split(",") if x])
    ap.add_argument("--threads", type=int, default=2, help="llama.cpp threads")
    ap.add_argument("--weights", default=None, help="packaged model name or GGUF path (default: function_call's default)")
    ap.add_argument("--instructions", type=Path, default=None, help="a file with the filling prompt's instructions to try")
    ap.add_argument("--out", type=Path, default=None, help="results folder (default bench/results)")
    ap.add_argument("--verbose", "-v", action="store_true")
    args = ap.parse_args(argv)
    if args.weights is None:
        from sidegate_models import weights

        args.weights = weights.DEFAULT_MODEL
    unknown = [s for s in args.sets if s not in SETS]
    if unknown:
        ap.error(f"--sets: {', '.join(unknown)} (one of: {', '.join(SETS)})")
    started = time.perf_counter()
    records = run(args)
    rows = summarize(records, args.sets)
    caption = load_caption()
    print_table(f"fill_eval: exact arguments, the right target given ({args.half} half, {args.weights}, "
                f"{'instructions from ' + str(args.instructions) if args.instructions else 'shipped instructions'})",
                ["set", "items", "exact", "share", "call p50 s", "call p90 s"], rows, caption=caption)
    write_results(PART, {"half": args.half, "limit": args.limit, "sets": args.sets, "weights": args.weights,
                         "instructions": str(args.instructions) if args.instructions else None,
                         "wall_s": round(time.perf_counter() - started, 1), "table": rows, "records": records}, results_dir=args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
