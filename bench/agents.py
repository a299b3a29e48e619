"""Agent routing (#19): accuracy of the agent a conversation turn goes to, multi-turn, vs "always the default".

``python -m bench agents [--half dev|test|all] [--threads N] [--latency N] [--stack N]``

The set: BFCL v4 ``multi_turn_base`` (the ``bfcl-eval`` wheel, pinned in requirements-bench.txt):
200 conversations of 3-6 user turns in which a user works with one or two of eight systems and
moves between them mid-conversation (files, then a tweet about them, ...). Each system is an agent
with a one-line description as a user would write it (:data:`AGENTS`, written from the systems'
own descriptions in ``multi_turn_func_doc/``, not from the questions). A turn's label is the
system of the functions the ground truth calls in that turn (``possible_answer/``); a turn whose
calls span two systems counts as right when either is chosen, a turn with no call is context only.

Each turn is decided as the agent listener decides it (``ext_proc.chat.agent_choice.decide``): the
conversation so far, its user turns only (the agents' answers are not in the set). Conversations
are split into halves by sha256(id) (``bench.intent_eval.split_of``, fixed); weights and
thresholds were chosen on ``dev``; the reported figure is ``test``. Embeddings: all-MiniLM-L6-v2 in
process (the weights prompt_embed serves, sha256-checked). Latency: the decision of one request
timed in process (the embedding model as prompt_embed runs it, 1 thread by default, without the
gRPC hop to Triton): its new turn embedded (the earlier ones are in prompt_embed's cache from the
conversation's previous requests) plus the decision; and, as an upper bound, every user turn
embedded in one batch; medians over ``--latency`` requests. ``--stack N``: the added latency end to
end as well, through the real stack (Envoy, ext_proc, a local Triton's prompt_embed, one fake agent
process): N conversations of the chosen half, each request sent to the agent listener and the same
body to the egress listener (a pass-through to the same fake), in turn on one keep-alive
connection each; added = p50(agent listener) - p50(egress). Every request's last turn is new to
prompt_embed (the conversation's earlier turns were sent before, as a client would).

Turns that fit no agent: the ShareGPT first turns of preference routing's set
(``bench/routing_eval.py``: code generation, summarization, translation, creative writing and
prompts fitting none of those; its math rows left out, since the calculator agent fits many of
them), same halves as there, each sent as a conversation's first turn: the share that goes to the
default agent. They were not read one by one against the eight agents: a few fit one ("Summarize
the first message" and the messaging agent), so 1.0 is not the ceiling.

A second config nothing here was tuned on, whose agents do the generic tasks the ordinary-chat
lines stand beside: preference routing's five preferences as agents (their one-line
descriptions) and a general agent as the default (:data:`GENERAL_AGENT`), over the same ShareGPT
turns with their routing-set labels (the general agent for "none"), math included.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bench._harness import FakeProviderProcess, SidegateStack, load_caption, loadavg, print_table, write_results
from bench.intent_eval import Embedder, bfcl_dir, sha256_file, split_of
from ext_proc.chat.agent_choice import CONTEXT_TURNS, AgentSpec, agent_decider, agent_texts, decide

# system (BFCL class, its func_doc file) -> the agent a user would configure for it
AGENTS: dict[str, tuple[str, str, str]] = {
    "GorillaFileSystem": ("gorilla_file_system", "file_agent",
                          "Works with the files and folders of my workspace: list, create, move, copy, remove and compare "
                          "files and directories, show a file's lines, search a file for a word, sort a file, count its words."),
    "MathAPI": ("math_api", "math_agent",
                "Calculator: add, subtract, multiply, divide, percentages, powers, square roots, logarithms, rounding, "
                "averages, minimum, maximum, standard deviation and unit conversions."),
    "MessageAPI": ("message_api", "messaging_agent",
                   "Messaging between users of the workspace: send a message to a user, view sent and received messages, "
                   "search or delete messages, add contacts, look up user ids."),
    "TwitterAPI": ("posting_api", "social_media_agent",
                   "My Twitter account: post tweets with hashtags and mentions, retweet, comment on tweets, follow and "
                   "unfollow users, search tweets."),
    "TicketAPI": ("ticket_api", "support_ticket_agent",
                  "The company's support ticket system: create a ticket, look up my tickets, edit their priority or "
                  "description, resolve and close tickets."),
    "TradingBot": ("trading_bot", "trading_agent",
                   "Stock trading account: stock prices and information, watchlists, place, check and cancel buy or sell "
                   "orders, order history, account balance, deposits and withdrawals."),
    "TravelAPI": ("travel_booking", "travel_agent",
                  "Travel booking: nearest airports, flight costs, book and cancel flights, invoices, travel insurance, "
                  "credit cards on file, budget limits, currency exchange, traveler verification, customer support."),
    "VehicleControlAPI": ("vehicle_control", "car_agent",
                          "Controls my car: start the engine, lock the doors, fuel the tank, liters and gallons, tire pressure, "
                          "climate, headlights, brakes, cruise control, navigation, distance between cities and whether the car can make a trip."),
}
DEFAULT_AGENT = 0  # the baseline: always the first agent (plano's default without default: true)
GENERAL_AGENT = AgentSpec("general_agent", "A general assistant for everything else: questions, advice, conversation.")
_CALL = re.compile(r"\s*([\w.]+)\(")


@dataclass
class Turn:
    conv: str
    n: int  # turn number in the conversation
    texts: list[str]  # this turn's user text, then earlier user turns, most recent first
    labels: set[int]  # agents counted right (empty: context only)
    split: str


def load_turns(folder: Path) -> tuple[list[Turn], dict[str, Any]]:
    owner: dict[str, int] = {}
    for i, (doc, _, _) in enumerate(AGENTS.values()):
        for line in (folder / "multi_turn_func_doc" / f"{doc}.json").read_text().splitlines():
            if line.strip():
                owner[json.loads(line)["name"]] = i
    qpath = folder / "BFCL_v4_multi_turn_base.json"
    apath = folder / "possible_answer" / qpath.name
    answers = {r["id"]: r["ground_truth"] for r in map(json.loads, apath.read_text().splitlines()) if r}
    turns: list[Turn] = []
    for row in map(json.loads, qpath.read_text().splitlines()):
        users: list[str] = []
        for n, (question, calls) in enumerate(zip(row["question"], answers[row["id"]])):
            text = "\n".join(m["content"] for m in question if m.get("role") == "user")
            if not text.strip():
                continue
            users.append(text)
            labels = {owner[m.group(1)] for c in calls if (m := _CALL.match(c)) and m.group(1) in owner}
            turns.append(Turn(row["id"], n, [users[-1], *reversed(users[-1 - CONTEXT_TURNS:-1])], labels, split_of(row["id"])))
    prov = {"questions": {"file": f"bfcl_eval/data/{qpath.name}", "sha256": sha256_file(qpath)},
            "answers": {"file": f"bfcl_eval/data/possible_answer/{apath.name}", "sha256": sha256_file(apath)}}
    return turns, prov


def evaluate(turns: list[Turn], index: Any, vectors: dict[str, Any], **kw: Any) -> dict[str, Any]:
    scored = [t for t in turns if t.labels]
    right = right_first = right_follow = n_first = 0
    switches = right_switch = 0
    how: dict[str, int] = {}
    prev: dict[str, set[int]] = {}
    for t in scored:
        c = decide(index, t.texts, [vectors[x] for x in t.texts], default=DEFAULT_AGENT, **kw)
        ok = c.index in t.labels
        right += ok
        how[c.how] = how.get(c.how, 0) + 1
        if t.n == 0:
            n_first += 1
            right_first += ok
        else:
            right_follow += ok
            if prev.get(t.conv) is not None and not (t.labels & prev[t.conv]):
                switches += 1
                right_switch += ok
        prev[t.conv] = t.labels
    baseline = sum(DEFAULT_AGENT in t.labels for t in scored)
    n = len(scored)
    return {"turns": n, "accuracy": right / n if n else 0.0, "baseline_default": baseline / n if n else 0.0,
            "first_turns": n_first, "accuracy_first": right_first / n_first if n_first else 0.0,
            "follow_ups": n - n_first, "accuracy_follow_ups": right_follow / (n - n_first) if n > n_first else 0.0,
            "topic_changes": switches, "accuracy_topic_changes": right_switch / switches if switches else 0.0, "how": how}


def stack_latency(turns: list[Turn], conversations: int) -> dict[str, Any]:
    """The agent listener vs the egress pass-through, end to end (see the module docstring)."""
    import http.client

    names = [a[1] for a in AGENTS.values()]
    convs: dict[str, list[Turn]] = {}
    for t in turns:
        convs.setdefault(t.conv, []).append(t)
    chosen = list(convs.values())[:conversations]
    with FakeProviderProcess(name="fake-agent") as fp:
        url = f"http://127.0.0.1:{fp.port}"
        from testkit.ports import free_port

        extra = {"agents": [{"id": n, "url": url} for n in names],
                 "listeners": {"agent_traffic": [{"type": "agent", "name": "bench", "port": free_port(),
                                                  "agents": [{"id": a[1], "description": a[2]} for a in AGENTS.values()]}]},
                 "model_server": {"mode": "local-cpu", "http_port": free_port(), "grpc_port": free_port(),
                                  "metrics_port": free_port(), "timeout": "30s"}}
        with SidegateStack(fp.port, extra=extra) as sg:
            agent_port = sg.cfg.agent_listeners[0].listener.port
            conns = {k: http.client.HTTPConnection("127.0.0.1", port, timeout=30) for k, port in
                     (("agent", agent_port), ("egress", sg.egress_port))}
            lat: dict[str, list[float]] = {"agent": [], "egress": []}
            right = sent = 0

            def post(kind: str, body: bytes) -> tuple[int, str]:
                conn = conns[kind]
                conn.request("POST", "/v1/chat/completions", body=body, headers={"content-type": "application/json"})
                resp = conn.getresponse()
                resp.read()
                return resp.status, resp.getheader("x-sidegate-agent") or ""

            post("agent", json.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "warm up"}]}).encode())
            for conv in chosen:
                messages: list[dict[str, str]] = []
                for t in conv:
                    messages.append({"role": "user", "content": t.texts[0]})
                    body = json.dumps({"model": "gpt-4o-mini", "messages": messages}).encode()
                    for kind in ("agent", "egress"):
                        t0 = time.perf_counter()
                        status, agent = post(kind, body)
                        lat[kind].append((time.perf_counter() - t0) * 1000.0)
                        if status != 200:
                            raise RuntimeError(f"{kind} answered {status}:\n{sg.logs()}")
                        if kind == "agent":
                            sent += 1
                            right += agent in {names[i] for i in t.labels}
                    messages.append({"role": "assistant", "content": "done."})
            for c in conns.values():
                c.close()
    p50 = {k: statistics.median(v) for k, v in lat.items()}
    return {"requests": sent, "right": right, "agent_p50_ms": p50["agent"], "egress_p50_ms": p50["egress"],
            "added_p50_ms": p50["agent"] - p50["egress"], "agent_p90_ms": float(np.percentile(lat["agent"], 90))}


def embedded_agents(embedder: Any, specs: list[AgentSpec]) -> tuple[Any, Any]:
    """(index, anchors) of ``specs`` as the agent listener builds them: their views and the
    ordinary-chat lines embedded in one call."""
    texts = agent_texts(specs)
    vv = embedder.embed(texts)
    return agent_decider(specs, np.stack([vv[t] for t in texts]))


def task_agents(embedder: Any, items: list[Any]) -> dict[str, Any]:
    """The second config (module docstring) over the routing set's ``items``: accuracy with and
    without the ordinary-chat lines."""
    from bench.routing_eval import NONE, PREFERENCES

    specs = [*(AgentSpec(p.name.replace(" ", "_") + "_agent", p.description) for p in PREFERENCES), GENERAL_AGENT]
    label = {p.name: i for i, p in enumerate(PREFERENCES)} | {NONE: len(PREFERENCES)}
    index, anchors = embedded_agents(embedder, specs)
    vecs = embedder.embed([it.text for it in items])
    out: dict[str, Any] = {"turns": len(items), "fitting_none": sum(it.label == NONE for it in items)}
    for key, kw in (("with", {"anchors": anchors}), ("without", {})):
        right = [decide(index, [it.text], [vecs[it.text]], default=label[NONE], **kw).index == label[it.label] for it in items]
        out[key] = {"accuracy": float(np.mean(right)),
                    "fitting_one": float(np.mean([r for r, it in zip(right, items) if it.label != NONE])),
                    "fitting_none": float(np.mean([r for r, it in zip(right, items) if it.label == NONE]))}
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench agents", description=__doc__.split("\n", 1)[0])
    ap.add_argument("--half", choices=("dev", "test", "all"), default="test")
    ap.add_argument("--threads", type=int, default=1, help="torch threads for the embedding (prompt_embed's default: 1)")
    ap.add_argument("--latency", type=int, default=200, help="requests timed for the decision's latency (0: none)")
    ap.add_argument("--stack", type=int, default=0, help="conversations sent through the real stack (0: none)")
    ap.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "sidegate-bench" / "embeddings",
                    help="embedding cache folder (accuracy only; latency always embeds)")
    args = ap.parse_args(argv)
    folder = bfcl_dir()
    if folder is None:
        print("bfcl_eval is not installed: pip install -r requirements-bench.txt")
        return 2
    turns, prov = load_turns(folder)
    chosen = [t for t in turns if args.half == "all" or t.split == args.half]
    print(f"{len(chosen)} turns of {len({t.conv for t in chosen})} conversations ({args.half} half); embedding ...", flush=True)
    embedder = Embedder(args.threads, args.cache)
    specs = [AgentSpec(name, description) for _, name, description in AGENTS.values()]
    index, anchors = embedded_agents(embedder, specs)
    vectors = embedder.embed([x for t in chosen for x in t.texts])
    result = evaluate(chosen, index, vectors, anchors=anchors)
    bare = evaluate(chosen, index, vectors)
    result["without_anchors"] = {k: bare[k] for k in ("accuracy", "accuracy_first", "accuracy_follow_ups")}
    from bench.routing_eval import load_set

    sharegpt = [it for it in load_set()[0] if args.half == "all" or it.half == args.half]
    unrelated = [it for it in sharegpt if it.label != "math"]
    uvecs = embedder.embed([it.text for it in unrelated])
    result["unrelated_turns"] = len(unrelated)
    for key, kw in (("unrelated_to_default", {"anchors": anchors}), ("unrelated_to_default_without_anchors", {})):
        result[key] = float(np.mean([decide(index, [it.text], [uvecs[it.text]], default=DEFAULT_AGENT, **kw).how == "default"
                                     for it in unrelated]))
    result["task_agents"] = task_agents(embedder, sharegpt)
    # latency of one request's decision, in process: a new turn embedded alone (prompt_embed has the
    # earlier turns in its cache from the conversation's previous requests), and nothing cached
    # (all its user turns in one batch); both plus the decision itself
    lat_new: list[float] = []
    lat_cold: list[float] = []
    timed = [t for t in chosen if t.labels][: args.latency]
    for t in timed:
        t0 = time.perf_counter()
        (last,) = embedder.encode(t.texts[:1])
        decide(index, t.texts, [last, *(vectors[x] for x in t.texts[1:])], default=DEFAULT_AGENT, anchors=anchors)
        lat_new.append((time.perf_counter() - t0) * 1000.0)
        t0 = time.perf_counter()
        decide(index, t.texts, list(embedder.encode(t.texts)), default=DEFAULT_AGENT, anchors=anchors)
        lat_cold.append((time.perf_counter() - t0) * 1000.0)
    result["decision_ms_p50"] = statistics.median(lat_new) if lat_new else None
    result["decision_ms_p90"] = float(np.percentile(lat_new, 90)) if lat_new else None
    result["decision_cold_ms_p50"] = statistics.median(lat_cold) if lat_cold else None
    result["decision_cold_ms_p90"] = float(np.percentile(lat_cold, 90)) if lat_cold else None
    if args.stack:
        result["stack"] = stack_latency([t for t in chosen if t.labels], args.stack)
    rows = [
        ("turns scored", result["turns"], ""),
        ("accuracy, all turns", result["accuracy"], "target >= 0.90"),
        ("accuracy, first turns", result["accuracy_first"], f"{result['first_turns']} turns"),
        ("accuracy, follow-up turns", result["accuracy_follow_ups"], f"{result['follow_ups']} turns"),
        ("accuracy, topic changes", result["accuracy_topic_changes"], f"{result['topic_changes']} turns"),
        ("baseline: always the default agent", result["baseline_default"], AGENTS["GorillaFileSystem"][1]),
        ("without the ordinary-chat lines: all / first turns", f"{result['without_anchors']['accuracy']:.3f} / "
         f"{result['without_anchors']['accuracy_first']:.3f}", "the score threshold alone"),
        ("unrelated first turns to the default agent", result["unrelated_to_default"],
         f"{result['unrelated_turns']} ShareGPT turns; {result['unrelated_to_default_without_anchors']:.3f} without the lines"),
        ("task agents + a general default: all turns right", f"{result['task_agents']['with']['accuracy']:.3f} / "
         f"{result['task_agents']['without']['accuracy']:.3f}", f"with / without the lines; {result['task_agents']['turns']} turns"),
        ("task agents: turns fitting an agent / fitting none", f"{result['task_agents']['with']['fitting_one']:.3f} / "
         f"{result['task_agents']['with']['fitting_none']:.3f}", f"without the lines {result['task_agents']['without']['fitting_one']:.3f} / "
         f"{result['task_agents']['without']['fitting_none']:.3f}"),
        ("decision p50 ms: new turn embedded", result["decision_ms_p50"], f"target <= 30; {len(lat_new)} requests"),
        ("decision p90 ms: new turn embedded", result["decision_ms_p90"], ""),
        ("decision p50 ms: every turn embedded", result["decision_cold_ms_p50"], f"nothing cached: up to {1 + CONTEXT_TURNS} texts"),
        ("decision p90 ms: every turn embedded", result["decision_cold_ms_p90"], ""),
    ]
    if args.stack:
        st = result["stack"]
        rows += [None, ("through the stack: agent listener p50 ms", st["agent_p50_ms"], f"{st['requests']} requests"),
                 ("through the stack: egress pass-through p50 ms", st["egress_p50_ms"], "same bodies, same fake"),
                 ("through the stack: added p50 ms", st["added_p50_ms"], "target <= 30"),
                 ("through the stack: agents right", st["right"], f"of {st['requests']}")]
    print_table(f"agent routing, {args.half} half", ["measure", "value", "note"], rows, caption=load_caption(), digits=3)
    print("decided by:", result["how"])
    path = write_results("agents", {"half": args.half, "result": result, "data": prov, "agents": {a[1]: a[2] for a in AGENTS.values()},
                                    "loadavg": loadavg()})
    print(f"wrote {path}")
    return 0
