"""Intent's cascade swept in process on BFCL: where the confident cut-off and the judge's none margin sit, and who picks the target.

The choices behind ``ext_proc.chat.intent.CONFIDENT_THRESHOLD`` and the function_call engine's
``NONE_MARGIN`` (and the ``ranked`` gate) were made with this part, on the DEV half; it measures
what ``pipeline_eval`` does not isolate: per prompt, the intent verdict and the judge's answer
with the first token's probabilities, so every (cut-off, margin, who picks) is scored from ONE
pass of the model.

* Items and configs as ``pipeline_eval`` builds them (``select`` then ``build_groups``: merged
  configs of at most ``--max-targets`` targets per set, the same seed), converted by the gateway's
  own config loader; out-of-scope sets are right when no non-default target is chosen.
* Intent: all-MiniLM-L6-v2 in process (``bench/intent_eval.py``'s ``Embedder``, its disk cache)
  into the gateway's ``IntentIndex`` (views, embedding + BM25 ranking), on the last user turn
  (the pipeline's second look at earlier turns is not simulated: BFCL's prompts are one turn).
* Judge: the function_call engine in process (``FunctionCaller``, the default weights, ``--threads``
  llama.cpp threads), the gateway's listing (every target, config order) and its
  ``JUDGE_CANDIDATES`` top-ranked candidates, ``allow_none``; every prompt over the unrelated
  cut-off is judged once, whatever its score, and its answer and ``p_none``/``p_cand`` kept.
* Sweep: for each confident cut-off and none margin, a prompt under ``UNRELATED_THRESHOLD`` goes to
  the default target, one at or over the cut-off to the top-ranked target, the rest to the judge:
  none when the model answered none or ``log p_none >= log p_cand - margin``; otherwise the model's
  pick ("model picks") or the top-ranked candidate ("ranked", what the gateway does).

* ``--gate fill|question`` (issue 14, fourth round): also asks the model, in the ranking's first
  candidate's OWN prompt (the one its arguments are filled from, so the conversation it evaluates
  would be cached for the call), whether the request is for that target: ``fill``, the filling
  instructions told to answer none for a request that is not (:func:`_fill_with_none`),
  first token ``{`` or none; ``question``, the unchanged filling prompt with a yes/no question
  after the conversation. A second table scores the gate alone (it would replace the chooser and
  save its pass over the conversation) and the gate's log ratio added to the chooser's, against
  the chooser alone, on the same prompts. Slow: each judged prompt evaluates its target's whole
  prompt (~400-700 tokens, 7-12 s on 2 cores; the gateway pre-fills it at start-up).

* ``--fill``: also fills the ranking's first candidate of every judged prompt (``FunctionCaller.call``,
  grounding included) and scores the filling's evidence as a none rule (:func:`fill_decide`): a
  request for which the target's filling finds no value the user gave, or leaves a required one
  missing, is perhaps not for that target (a third table).

* ``--user-configs [FILE]``: also the half's small configs of ``bench/data/user_configs.jsonl`` (each its
  own config; issue 14, tenth round: the none margin was chosen on them beside BFCL), or of FILE
  (``bench/data/user_configs_2.jsonl``: held out whole, all test; eleventh round; ``user_configs_3.jsonl``:
  dev whole, ``user_configs_4.jsonl``: held out whole; twelfth round).

  python -m bench cascade_sweep [--half dev] [--limit 80] [--confident 0.55,0.65] [--margins 1,1.5,2] [--gate fill]

Prints the table and writes ``bench/results/cascade_sweep.json`` (every prompt's record). The
half and the limit of the shipped choice: ``--half dev --limit 80`` (400 prompts, ~25 min on 2
cores with the 1.5B).
"""

from __future__ import annotations

import argparse
import math
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
from bench.pipeline_eval import ALL_SETS, SCORED_IN_SCOPE, USER_SETS  # noqa: E402

PART = "cascade_sweep"
MODES = {(False, False): "model picks", (True, False): "ranked", (True, True): "ranked, or a sure distinct pick"}


def log_ratio(p: float, q: float) -> float:
    return math.log(p + 1e-12) - math.log(q + 1e-12)


def first_token(rec: dict[str, Any]) -> str | None:
    """The judge's first answer token as the grammar let it through: the likeliest of its top
    alternatives (before the grammar) that begins the name it wrote; None when none does, or
    the record has no alternatives (records before the eleventh round)."""
    judge = rec.get("judge") or {}
    top, pick = judge.get("top_logprobs") or {}, judge.get("text")
    tokens = [t for t in top if t and pick is not None and pick.startswith(t)]
    return max(tokens, key=top.__getitem__) if tokens else None


def sure_pick(rec: dict[str, Any]) -> str | None:
    """What the engine's ranked choice with ``distinct`` answers instead of the first candidate
    (``FunctionCaller.choose``): the model's pick when it is a distinct candidate, its first token
    does not begin the first's name and the candidates' mass is at least ``PICK_SURE``; else None."""
    from sidegate_models.function_call.prompt import PICK_SURE

    judge = rec.get("judge") or {}
    pick, first, token = judge.get("text"), rec["top"][0], first_token(rec)
    if pick is None or pick == first or pick not in rec.get("distinct", ()) or token is None or first.startswith(token):
        return None
    begun = [n for n in rec["top"] if n.startswith(token)]
    if not set(begun) <= set(rec["distinct"]) or judge.get("p_cand", 0.0) < PICK_SURE:
        return None
    return str(pick)


def decide(rec: dict[str, Any], confident: float, margin: float, ranked: bool, unrelated: float,
           sure: bool = False) -> tuple[str | None, str]:
    """(the target chosen for one prompt's record, how: unrelated | confident | judged).
    ``sure`` (with ``ranked``): the model's sure pick of a distinct candidate replaces the first."""
    if rec["best"] < unrelated:
        return None, "unrelated"
    if rec["best"] >= confident:
        return rec["top"][0], "confident"
    judge = rec.get("judge") or {}
    pick = judge.get("text")
    if pick is None or pick not in rec["top"]:  # the model answered none (or nothing usable)
        return None, "judged"
    if "p_none" in judge and log_ratio(judge["p_none"], judge["p_cand"]) >= -margin:
        return None, "judged"
    if ranked and sure and (other := sure_pick(rec)) is not None:
        return other, "judged"
    return (rec["top"][0] if ranked else pick), "judged"


def score(records: Sequence[dict[str, Any]], confident: float, margin: float, ranked: bool, unrelated: float,
          sure: bool = False) -> dict[str, Any]:
    """Per set the share right; in scope / out of scope pooled; the share of in-scope prompts judged."""
    per: dict[str, list[bool]] = {}
    judged_in = 0
    for rec in records:
        got, how = decide(rec, confident, margin, ranked, unrelated, sure)
        per.setdefault(rec["set"], []).append(got == rec["want"])
        judged_in += how == "judged" and rec["want"] is not None
    ins = [ok for s, oks in per.items() if s in SCORED_IN_SCOPE for ok in oks]
    outs = [ok for s, oks in per.items() if s not in SCORED_IN_SCOPE for ok in oks]
    rate = lambda xs: sum(xs) / len(xs) if xs else float("nan")  # noqa: E731
    return {"in_scope": rate(ins), "out_of_scope": rate(outs), "judged_in_scope": judged_in / len(ins) if ins else float("nan"),
            "sets": {s: rate(v) for s, v in per.items()}}


def _fill_with_none(instructions: str) -> str:
    """The filling instructions told to answer none for a request the function does not serve,
    with two worked none examples: the ``fill`` gate's prompt (as it would replace INSTRUCTIONS)."""
    told = instructions.replace(
        "For each parameter write",
        "First decide whether the user's last message asks for what this function does. If it does not (the request is "
        "about something else, only about a related topic, or for something this function cannot do), answer none.\n"
        "Otherwise, for each parameter write")
    answer = 'Answer: {"restaurant": "Luigi\'s", "people": 4, "date": null, "seating": "outdoor", "notes": null}\n'
    told = told.replace(answer, answer + "Conversation:\nUser: Which restaurants near me serve vegan food?\nAnswer: none\n"
                                          "Conversation:\nUser: How long should I cook spaghetti?\nAnswer: none\n")
    if told.count("answer none") != 1 or told.count("Answer: none") != 2:
        raise RuntimeError("the function_call INSTRUCTIONS changed: update cascade_sweep's fill gate")
    return told


GATE_QUESTION = ("\n\nQuestion: does the user's last message ask for what the function {name} does "
                 "(not for something else, and not only about a related topic)? Answer yes or no.")


def gate_request(kind: str, instructions: str, tool_text: str, name: str, convo: str) -> tuple[str, str, str]:
    """(system, user, grammar) of one gate: ``fill`` (first token ``{`` or none) or ``question`` (yes or no)."""
    if kind == "fill":
        return _fill_with_none(instructions) + tool_text, convo, 'root ::= "{" | "none"\n'
    if not convo.endswith("\nAnswer:"):
        raise ValueError("a transcript ends with its answer cue")
    return instructions + tool_text, convo[: -len("\nAnswer:")] + GATE_QUESTION.format(name=name), 'root ::= "yes" | "no"\n'


def gate_mass(kind: str, top: dict[str, float]) -> tuple[float, float]:
    """(p of the answer saying the request is not for the tool, p of it saying it is): the first
    token's top alternatives before the grammar."""
    from sidegate_models.function_call.prompt import judge_mass

    if kind == "question":  # the guard judge's yes/no reading
        p_yes, p_no = judge_mass(top)
        return p_no, p_yes
    p_not = p_is = 0.0
    for token, logprob in top.items():
        t = token.strip().lower()
        if t and "none".startswith(t):
            p_not += math.exp(logprob)
        elif t.startswith("{"):
            p_is += math.exp(logprob)
    return p_not, p_is


def gate_decide(rec: dict[str, Any], confident: float, threshold: float, with_chooser: bool, unrelated: float) -> str | None:
    """The target for one prompt when the gate decides none (``with_chooser``: the chooser's none
    answer still stands, and the two log ratios are added) at ``threshold``; the ranking picks."""
    if rec["best"] < unrelated:
        return None
    if rec["best"] >= confident:
        return rec["top"][0]
    gate = rec.get("gate") or {}
    if "p_none" not in gate:
        return None
    value = log_ratio(gate["p_none"], gate["p_call"])
    if with_chooser:
        judge = rec.get("judge") or {}
        if judge.get("text") is None or judge["text"] not in rec["top"] or "p_none" not in judge:
            return None
        value += log_ratio(judge["p_none"], judge["p_cand"])
    return None if value >= threshold else rec["top"][0]


def auc(records: Sequence[dict[str, Any]], value: Any) -> float:
    """How well ``value(record)`` (higher: more likely none) ranks out-of-scope prompts over
    in-scope ones whose top-ranked target is right, among the prompts with a gate record."""
    pos = [value(r) for r in records if r.get("gate") and r["want"] is not None and r["top"][0] == r["want"]]
    neg = [value(r) for r in records if r.get("gate") and r["want"] is None]
    pairs = [(n > p) + 0.5 * (n == p) for p in pos for n in neg]
    return sum(pairs) / len(pairs) if pairs else float("nan")


def chooser_value(rec: dict[str, Any]) -> float:
    judge = rec.get("judge") or {}
    if "p_none" in judge:
        return log_ratio(judge["p_none"], judge["p_cand"])
    return 99.0 if judge.get("text") is None else -99.0


def gate_value(rec: dict[str, Any]) -> float:
    return log_ratio(rec["gate"]["p_none"], rec["gate"]["p_call"])


GATE_THRESHOLDS = (-2.5, -3.0, -3.5, -4.0, -4.5)
SUM_THRESHOLDS = (-3.0, -4.0, -4.5, -5.0, -5.5, -6.0)


def gate_rows(records: Sequence[dict[str, Any]], confident: float, margins: Sequence[float], unrelated: float) -> list[list[Any]]:
    """The chooser alone (ranked, each margin), the gate alone and the two added, at ``confident``."""
    ins = [r for r in records if r["want"] is not None]
    outs = [r for r in records if r["want"] is None]

    def rates(pick: Any) -> tuple[float, float]:
        return (sum(pick(r) == r["want"] for r in ins) / max(len(ins), 1), sum(pick(r) is None for r in outs) / max(len(outs), 1))

    rows: list[list[Any]] = []
    for m in margins:
        rows.append(["the chooser's none (margin)", m, *rates(lambda r: decide(r, confident, m, True, unrelated)[0])])
    for t in GATE_THRESHOLDS:
        rows.append(["the gate alone (threshold)", t, *rates(lambda r: gate_decide(r, confident, t, False, unrelated))])
    for t in SUM_THRESHOLDS:
        rows.append(["chooser + gate (threshold on the sum)", t, *rates(lambda r: gate_decide(r, confident, t, True, unrelated))])
    return [[*row, row[2] + row[3]] for row in rows]


FILL_RULES = ("no value", "a required value missing")


def fill_decide(rec: dict[str, Any], confident: float, margin: float, unrelated: float, rule: str | None,
                sure: bool = False) -> str | None:
    """The gateway's choice (ranked; ``sure``: or the model's sure distinct pick) for one record,
    then, for a judged prompt routed to a target with parameters, none when its filling found no
    value the user gave (``no value``) or left a required one missing (``a required value
    missing``): the filling's evidence that the request is not for that target (``--fill``).
    ``rule`` None: the chooser alone."""
    got, how = decide(rec, confident, margin, True, unrelated, sure)
    fill = rec.get("fill") if got == rec["top"][0] else rec.get("fill_pick")
    if rule is None or how != "judged" or got is None or not fill or not fill["params"]:
        return got
    weak = fill["arguments"] == 0 if rule == FILL_RULES[0] else fill["missing"] > 0
    return None if weak else got


def fill_rows(records: Sequence[dict[str, Any]], confident: float, margins: Sequence[float], unrelated: float) -> list[list[Any]]:
    """The chooser alone and with each filling rule, per margin, at ``confident``: in scope, out of scope, sum."""
    ins = [r for r in records if r["want"] is not None]
    outs = [r for r in records if r["want"] is None]
    rows: list[list[Any]] = []
    for sure in (False, True):
        for m in margins:
            for rule in (None, *FILL_RULES):
                pick = [(r, fill_decide(r, confident, m, unrelated, rule, sure)) for r in records]
                a = sum(p == r["want"] for r, p in pick if r["want"] is not None) / max(len(ins), 1)
                b = sum(p is None for r, p in pick if r["want"] is None) / max(len(outs), 1)
                rows.append([MODES[True, sure], m, rule or "the chooser alone", a, b, a + b])
    return rows


BANDS = (0.2, 0.45, 0.5, 0.55, 0.6, 0.65, 0.7)
BAND_MARGIN = 1.0  # the none margin before the third round: the bands compare the picks at it


def bands(records: Sequence[dict[str, Any]], unrelated: float, margin: float = BAND_MARGIN) -> list[list[Any]]:
    """Per band of the best embedding score: in-scope prompts, how many the ranking has right
    first, how many the model picks right (its own pick, none at ``margin``); out-of-scope
    prompts and how many the model keeps away."""
    rows = []
    for lo, hi in zip(BANDS, BANDS[1:]):
        inside = [r for r in records if lo <= r["best"] < hi]
        ins = [r for r in inside if r["want"] is not None]
        outs = [r for r in inside if r["want"] is None]
        model = [decide(r, math.inf, margin, False, unrelated)[0] for r in ins]
        kept = sum(decide(r, math.inf, margin, False, unrelated)[0] is None for r in outs)
        rows.append([f"{lo:.2f}-{hi:.2f}", len(ins), sum(r["top"][0] == r["want"] for r in ins),
                     sum(m == r["want"] for m, r in zip(model, ins)), len(outs), kept])
    return rows


def _fill(fc: Any, messages: list[dict[str, Any]], tools: list[dict[str, Any]], name: str) -> dict[str, Any]:
    """Fill the target ``name`` (``FunctionCaller.call``, grounding included): what ``--fill``
    records, its parameter count, the arguments found, the required ones missing, the time."""
    tool = next(x for x in tools if x["function"]["name"] == name)
    started = time.perf_counter()
    filled = fc.call(messages, tool)
    return {"params": len((tool["function"].get("parameters") or {}).get("properties") or {}),
            "arguments": len(filled.get("arguments") or {}), "missing": len(filled.get("missing") or []),
            "seconds": round(time.perf_counter() - started, 3)}


def collect(args: argparse.Namespace) -> list[dict[str, Any]]:
    """One pass: every selected prompt's intent verdict and (over the unrelated cut-off) the judge's answer."""
    import numpy as np

    from bench import pipeline_eval as pe
    from bench.intent_eval import Embedder
    from ext_proc.chat.intent import JUDGE_CANDIDATES, UNRELATED_THRESHOLD, IntentIndex
    from ext_proc.chat.targets import tool_schema
    from sidegate_models import weights
    from sidegate_models.function_call.engine import FunctionCaller
    from sidegate_models.function_call.prompt import INSTRUCTIONS, CHOICE_TOP_LOGPROBS, describe_tool, transcript
    from sidegate_models.function_call.schema import normalize_tool

    if args.examples != "auto":  # one set for every config, to compare with the served choice
        import functools

        from sidegate_models.function_call import engine, prompt
        engine.choice_prompt = functools.partial(prompt.choice_prompt, examples=prompt.CHOICE_EXAMPLES[int(args.examples)])
    items = pe.selected_items(args.sets, args.half, args.limit, args.seed)
    groups = pe.build_groups(items, args.max_targets)
    if args.user_configs:
        groups += pe.user_config_groups(args.half, Path(args.user_configs))
    print(f"{sum(len(g.items) for g in groups)} prompts in {len(groups)} configs; loading the embedder and {weights.DEFAULT_MODEL} ...", flush=True)
    embedder = Embedder(args.threads, None if args.no_cache else Path("/tmp/sidegate-intent-cache"))
    fc = FunctionCaller(model_path=str(weights.resolve(weights.DEFAULT_MODEL)), n_threads=args.threads, warmup=False)
    records: list[dict[str, Any]] = []
    try:
        for g in groups:
            cfg = pe.offline_config(g)
            targets = [t for t in cfg.prompt_targets if not t.default]
            _, views, _ = IntentIndex.layout(targets)
            vectors = embedder.embed(views)
            index = IntentIndex.for_targets(targets, np.stack([vectors[v] for v in views]))
            tools = [tool_schema(t) for t in targets]
            started = time.perf_counter()
            fc.choose([{"role": "user", "content": "hello"}], tools, [], allow_none=True)  # the listing, as the start-up pre-fill
            print(f"{g.key}: {len(tools)} targets, listing evaluated in {time.perf_counter() - started:.1f} s", flush=True)
            for it in g.items:
                text = next(m for m in reversed(it.messages) if m.get("role") == "user")["content"]
                text = text if isinstance(text, str) else str(text)
                vec = embedder.embed([text])[text]
                scores = index.scores(vec)
                ranking = index.ranking(scores, text)
                order = [index.names[int(i)] for i in np.argsort(-ranking, kind="stable")]
                rec: dict[str, Any] = {"id": it.id, "set": it.set, "text": text, "want": it.answer_target if it.in_scope else None,
                                       "best": round(float(np.max(scores)), 4), "top": order[:JUDGE_CANDIDATES]}
                rec["distinct"] = index.distinct(order[0], rec["top"][1:])  # what the gateway sends the engine
                if rec["best"] >= UNRELATED_THRESHOLD:
                    started = time.perf_counter()
                    i = fc.choose(it.messages, tools, rec["top"], allow_none=True)
                    # last_choice has the name the model wrote and the probabilities, or nothing
                    # when it wrote none: then "text" is None
                    rec["judge"] = {"text": fc.last_choice.get("text"),
                                    **{k: v for k, v in fc.last_choice.items() if k in ("p_none", "p_cand")},
                                    **({"top_logprobs": dict(fc.last_top_logprobs)} if fc.last_choice else {}),
                                    "answer": None if i is None else tools[i]["function"]["name"],
                                    "seconds": round(time.perf_counter() - started, 3)}
                    if args.gate:
                        tool = normalize_tool(next(x for x in tools if x["function"]["name"] == rec["top"][0]))
                        stats: dict[str, int] = {}
                        convo = fc._capped(transcript(it.messages)[0], stats)
                        system, user, grammar = gate_request(args.gate, INSTRUCTIONS, describe_tool(tool), tool.name, convo)
                        started = time.perf_counter()
                        fc._complete(system, user, "", grammar, None, stats, max_tokens=1, top_logprobs=CHOICE_TOP_LOGPROBS)
                        p_not, p_is = gate_mass(args.gate, fc.last_top_logprobs)
                        rec["gate"] = {"p_none": p_not, "p_call": p_is, "seconds": round(time.perf_counter() - started, 3),
                                       "prompt_n": stats.get("prompt_n", 0)}
                if args.fill and rec["best"] < max(args.confident) and "judge" in rec:
                    rec["fill"] = _fill(fc, it.messages, tools, rec["top"][0])
                    if (other := sure_pick(rec)) is not None:  # the engine would fill the model's pick instead
                        rec["fill_pick"] = _fill(fc, it.messages, tools, other)
                records.append(rec)
                if args.verbose:
                    print(rec, flush=True)
    finally:
        fc.close()
    return records


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench cascade_sweep", description=__doc__.split("\n", 1)[0])
    ap.add_argument("--half", choices=("dev", "test"), default="dev")
    ap.add_argument("--limit", type=int, default=80, help="items per set (default 80)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--sets", default=",".join(ALL_SETS), type=lambda s: [x for x in s.split(",") if x])
    ap.add_argument("--user-configs", nargs="?", const=str(ROOT / "bench" / "data" / "user_configs.jsonl"), default=None, metavar="FILE",
                    help="also the half's small configs of bench/data/user_configs.jsonl, or of FILE "
                         "(user_configs_3.jsonl: dev whole; user_configs_2.jsonl, user_configs_4.jsonl: held out whole, --half test)")
    ap.add_argument("--max-targets", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2, help="llama.cpp and torch threads")
    ap.add_argument("--confident", default="0.5,0.55,0.6,0.65", type=lambda s: [float(x) for x in s.split(",")])
    ap.add_argument("--margins", default="0.5,1,1.5,2,2.5,3", type=lambda s: [float(x) for x in s.split(",")])
    ap.add_argument("--gate", choices=("fill", "question"), default=None,
                    help="also gate each judged prompt in its first candidate's own prompt (slow: see the docstring)")
    ap.add_argument("--fill", action="store_true",
                    help="also fill the first candidate of every judged prompt and score its evidence as a none rule (slower)")
    ap.add_argument("--examples", choices=("auto", "0", "1"), default="auto",
                    help="the chooser's worked examples: auto (the set furthest from the listing's subject, as served) "
                         "or that set of prompt.CHOICE_EXAMPLES for every config (0: the weather/currency set, alone before)")
    ap.add_argument("--no-cache", action="store_true", help="recompute every embedding")
    ap.add_argument("--out", type=Path, default=None, help="results folder (default bench/results)")
    ap.add_argument("--verbose", "-v", action="store_true")
    args = ap.parse_args(argv)
    from ext_proc.chat.intent import CONFIDENT_THRESHOLD, UNRELATED_THRESHOLD
    from sidegate_models.function_call.prompt import NONE_MARGIN

    started = time.time()
    records = collect(args)
    set_names = [*args.sets, *(USER_SETS if args.user_configs else ())]
    rows, table = [], []
    for ranked, sure in MODES:
        for confident in args.confident:
            for margin in args.margins:
                s = score(records, confident, margin, ranked, UNRELATED_THRESHOLD, sure)
                shipped = ranked and sure and confident == CONFIDENT_THRESHOLD and margin == NONE_MARGIN
                rows.append({"who_picks": MODES[ranked, sure], "confident": confident, "none_margin": margin, "shipped": shipped, **s})
                table.append([MODES[ranked, sure] + (" (shipped)" if shipped else ""), confident, margin, s["in_scope"], s["out_of_scope"],
                              s["in_scope"] + s["out_of_scope"], s["judged_in_scope"], *(s["sets"].get(n) for n in set_names)])
    judged = [r["judge"]["seconds"] for r in records if r.get("judge")]
    print_table("cascade swept (in process): routed right in scope, kept away out of scope",
                ["who picks", "confident", "none margin", "in scope", "out of scope", "sum", "in scope judged", *set_names], table,
                caption=load_caption(f"{args.half} half, {args.limit} per set, {len(records)} prompts; judge p50 "
                                     f"{percentile(judged, 50):.2f} s over {len(judged)} calls, {args.threads} threads"), digits=3)
    band_rows = bands(records, UNRELATED_THRESHOLD)
    print_table(f"who picks better, per band of the best embedding score (the model's none at margin {BAND_MARGIN:g})",
                ["band", "in scope", "ranking's first right", "model's pick right", "out of scope", "model kept away"], band_rows)
    gated: list[list[Any]] = []
    if args.gate:
        gated = gate_rows(records, CONFIDENT_THRESHOLD, args.margins, UNRELATED_THRESHOLD)
        aucs = {"chooser": auc(records, chooser_value), "gate": auc(records, gate_value),
                "sum": auc(records, lambda r: chooser_value(r) + gate_value(r))}
        seconds = [r["gate"]["seconds"] for r in records if r.get("gate")]
        print_table(f"the {args.gate} gate in the first candidate's own prompt against the chooser's none (ranked, confident "
                    f"{CONFIDENT_THRESHOLD:g})", ["rule", "at", "in scope", "out of scope", "sum"], gated,
                    caption=f"AUC (out of scope over in scope with the right first target): chooser {aucs['chooser']:.3f}, "
                            f"gate {aucs['gate']:.3f}, sum {aucs['sum']:.3f}; gate p50 {percentile(seconds, 50):.2f} s "
                            "with its target's prompt evaluated", digits=3)
    filled: list[list[Any]] = []
    if args.fill:
        filled = fill_rows(records, CONFIDENT_THRESHOLD, args.margins, UNRELATED_THRESHOLD)
        seconds = [r["fill"]["seconds"] for r in records if r.get("fill")]
        print_table(f"the filling's evidence as a none rule for judged prompts (ranked, confident {CONFIDENT_THRESHOLD:g})",
                    ["who picks", "none margin", "rule", "in scope", "out of scope", "sum"], filled,
                    caption=f"{len(seconds)} judged prompts filled, p50 {percentile(seconds, 50):.2f} s a call", digits=3)
    path = write_results(PART, {"gate_rows": gated, "fill_rows": filled, "settings": {k: v for k, v in vars(args).items() if k not in ("out", "verbose")},
                                "unrelated_threshold": UNRELATED_THRESHOLD, "judge_p50_s": percentile(judged, 50),
                                "rows": rows, "bands": band_rows, "records": records, "total_s": round(time.time() - started, 1)}, results_dir=args.out)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
