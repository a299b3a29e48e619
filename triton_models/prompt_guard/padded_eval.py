"""Attacks hidden in benign text, on VALIDATION data only (issue 17): how the guard scores a long
prompt, and whether also scoring its sentence windows helps.

  flock /tmp/sidegate-cpu.lock python triton_models/prompt_guard/padded_eval.py [--pad 1500] [--windows 150,250,400]
      [--window-thresholds 0.8237,0.95,0.99] [--head DIR]

Rows, all from the validation parts train.py knows (report-only sources R1-R3 are never read):

* ``padded-attacks``: 300 S-Labs + neuralchemy validation attacks (a seeded sample), each put at the
  start, the end or the middle of ``--pad`` characters of benign validation text (chitchat turns,
  BFCL user turns, neuralchemy's benign rows, joined);
* ``long-benign``: 300 such benign texts with no attack;
* every validation part as it is.

Each row is scored whole (what the guard does), then, for prompts over 400 characters, also by
windows: the prompt cut at sentence ends and packed into windows of at most W characters; a window
at or over its threshold flags the prompt. Embeddings are cached as train.py caches them.
"""

from __future__ import annotations

import argparse
import random
import re
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))

from bench._harness import load_module  # noqa: E402
from sidegate_models import classifier as C  # noqa: E402

T = load_module("sidegate_prompt_guard_train", HERE / "train.py")
SENTENCE_END = re.compile(r"(?<=[.!?\n])\s+")
MIN_CHARS = 400  # prompts longer than this are also scored by windows
SAMPLE = 300
SHOWN = ("s-labs", "neuralchemy", "bfcl", "templates", "chitchat", "padded-attacks", "long-benign")


def windows(text: str, width: int) -> list[str]:
    """``text`` cut at sentence ends, packed into windows of at most ``width`` characters (a longer
    sentence is cut at a space)."""
    out: list[str] = []
    cur = ""
    for s in SENTENCE_END.split(text):
        while len(s) > width:
            cut = s.rfind(" ", 0, width)
            cut = cut if cut > width // 2 else width
            if cur:
                out.append(cur)
                cur = ""
            out.append(s[:cut])
            s = s[cut:].lstrip()
        if cur and len(cur) + 1 + len(s) > width:
            out.append(cur)
            cur = s
        else:
            cur = f"{cur} {s}" if cur else s
    if cur.strip():
        out.append(cur)
    return [w for w in out if w.strip()]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pad", type=int, default=1500, help="characters of benign text around each attack")
    ap.add_argument("--windows", default="150,250,400", help="window widths to try (characters)")
    ap.add_argument("--window-thresholds", default="", help="a window's flag threshold (default: the head's)")
    ap.add_argument("--head", type=Path, default=HERE / "1")
    args = ap.parse_args(argv)

    val = {s: T.load_any(s, "validation") for s in T.ALL_SOURCES}
    rng = random.Random(0)
    benign = [x for s in ("chitchat", "bfcl") for x in val[s][0]] + [x for x, y in zip(*val["neuralchemy"][:2]) if y == 0]

    def pad(n: int) -> str:
        out = ""
        while len(out) < n:
            out += rng.choice(benign).strip() + ("\n" if rng.random() < 0.3 else " ")
        return out

    attacks = rng.sample([x for s in ("s-labs", "neuralchemy") for x, y in zip(*val[s][:2]) if y == 1], SAMPLE)
    padded = []
    for i, a in enumerate(attacks):
        p, where = pad(args.pad), i % 3
        padded.append(a + "\n" + p if where == 0 else p + "\n" + a if where == 1 else p[: args.pad // 2] + "\n" + a + "\n" + p[args.pad // 2:])
    long_benign = [pad(args.pad) for _ in range(SAMPLE)]
    groups = [(s, val[s][0], val[s][1]) for s in T.ALL_SOURCES]
    groups += [("padded-attacks", padded, np.ones(SAMPLE, np.int64)), ("long-benign", long_benign, np.zeros(SAMPLE, np.int64))]
    texts = [t for _, ts, _ in groups for t in ts]

    weights = C.default_weights_dir()
    sha = {n: C.sha256_file(weights / n) for n in T.WEIGHT_FILES}

    def embedder() -> C.MiniLMEmbedder:
        return C.MiniLMEmbedder(weights, expected_sha256=sha, threads=2, max_tokens=T.EMBEDDER["max_tokens"], max_chars=T.EMBEDDER["max_chars"])

    head = C.GuardHead.load(args.head)
    whole = head.predict_proba(T.embed_cached(texts, sha["model.safetensors"], T.DEFAULT_CACHE, embedder), texts)
    n_real = sum(len(ts) for _, ts, _ in groups[:-2])
    y_real = np.concatenate([y for _, _, y in groups[:-2]])
    print(f"head {args.head} (threshold {head.threshold:.4f}); windows for prompts over {MIN_CHARS} characters")
    for width in (int(w) for w in args.windows.split(",")):
        owner, parts = [], []
        for i, t in enumerate(texts):
            if len(t) > MIN_CHARS:
                ws = windows(t, width)
                parts += ws
                owner += [i] * len(ws)
        pw = head.predict_proba(T.embed_cached(parts, sha["model.safetensors"], T.DEFAULT_CACHE, embedder), parts)
        for cut in [float(c) for c in args.window_thresholds.split(",") if c] or [head.threshold]:
            flagged = whole >= head.threshold
            np.logical_or.at(flagged, np.array(owner, dtype=np.int64), pw >= cut)
            print(f"== windows of <= {width} chars ({len(parts)} windows of {len(set(owner))} prompts), a window flags at >= {cut:g}")
            print(f"{'validation':16s} {'n':>5s}  recall whole -> +windows   FPR % whole -> +windows")
            off = 0
            for name, ts, y in groups:
                n = len(ts)
                a = T.binary_metrics(y, (whole[off:off + n] >= head.threshold).astype(int))
                b = T.binary_metrics(y, flagged[off:off + n].astype(int))
                off += n
                if name in SHOWN:
                    print(f"{name:16s} {n:5d}  {a['recall']:.4f} -> {b['recall']:.4f}          {a['fpr'] * 100:5.2f} -> {b['fpr'] * 100:5.2f}")
            a = T.binary_metrics(y_real, (whole[:n_real] >= head.threshold).astype(int))
            b = T.binary_metrics(y_real, flagged[:n_real].astype(int))
            print(f"{'pooled (real)':16s} {n_real:5d}  {a['recall']:.4f} -> {b['recall']:.4f}          {a['fpr'] * 100:5.2f} -> {b['fpr'] * 100:5.2f}"
                  f"   F1 {a['f1']:.4f} -> {b['f1']:.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
