"""prompt_guard_head: TEXT + EMBEDDING -> PROB (P(jailbreak / prompt injection), FP32) and LABEL ("jailbreak" | "benign").

The second step of the ``prompt_guard`` ensemble (``../../prompt_guard/config.pbtxt``): Triton's
ensemble scheduler runs ``prompt_embed`` on the text and hands this model the text and its
all-MiniLM-L6-v2 vector. Clients call ``prompt_guard``; nothing here calls back into the server
(an ensemble, not a BLS call: Triton's scheduler chains the two steps, and the head needs no gRPC client).

A thin shell over ``sidegate_models.classifier`` (which the unit tests, ``bench/guard_eval.py``
and ``prompt_guard/train.py`` run without Triton, embedding locally). The stub loads
only numpy and the trained head (``guard_head.npz`` + ``guard_head.json`` in
``../../prompt_guard/1/``, or in the folder the ``weights`` parameter names), never torch or a
second copy of the embedder's weights.

``initialize`` parses the config once, checks the tensors, reads ``threshold`` from
``parameters``, loads the head and warms the numpy part up. ``execute`` takes every request of a
dynamic batch, scores all their rows with the numpy head at once and returns one response per
request, in order. A request with an empty or non-UTF-8 text, or an embedding of the wrong
width, gets its own INVALID_ARG error and the others in the batch are still answered.

The head was trained on the embeddings of the weights whose sha256 ``guard_head.json`` records;
``prompt_embed`` checks its default weights against its own ``1/weights.sha256``, and
``initialize`` checks that the two records agree.
"""

from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

from sidegate_models import classifier
from sidegate_models.backend import collect_batch, parameters, read_config
from sidegate_models.inputs import sha256_listing

EXPECTED_INPUTS = {"TEXT": "TYPE_STRING", "EMBEDDING": "TYPE_FP32"}
EXPECTED_OUTPUTS = {"PROB": "TYPE_FP32", "LABEL": "TYPE_STRING"}
EMBED_MODEL = "prompt_embed"
MODELS = Path(__file__).resolve().parents[2]  # resolved: the rendered repository links 1/ back here
GUARD_DIR = MODELS / "prompt_guard"
ARTEFACT_DIR = GUARD_DIR / "1"  # the shipped head, where train.py writes it
EMBED_SHA256 = MODELS / EMBED_MODEL / "1" / "weights.sha256"


def _check_embed_weights(head_meta):
    """prompt_embed's weights.sha256 must list the safetensors digest the head was trained on."""
    if not EMBED_SHA256.is_file():
        return
    listed = sha256_listing(EMBED_SHA256)
    trained = head_meta["embedder"]["sha256"].get("model.safetensors")
    if trained and listed.get("model.safetensors") not in (None, trained):
        raise pb_utils.TritonModelException(
            f"prompt_guard_head: the head was trained on all-MiniLM-L6-v2 weights with sha256 {trained}, "
            f"but {EMBED_SHA256} pins {listed['model.safetensors']}: retrain the head (prompt_guard/train.py)"
        )


class TritonPythonModel:
    def initialize(self, args):
        config = read_config(args, "prompt_guard_head", EXPECTED_INPUTS, EXPECTED_OUTPUTS)

        params = parameters(config)
        threshold = float(params["threshold"]) if params.get("threshold") else None
        if threshold is not None and not 0.0 <= threshold <= 1.0:
            raise pb_utils.TritonModelException(f"prompt_guard: threshold must be in [0, 1], got {threshold}")

        if params.get("torch_threads"):  # a setting of the embedder, which this stub does not have
            pb_utils.Logger.log_warn(f"prompt_guard: torch_threads is ignored: set threads on {EMBED_MODEL}, which embeds for the guard")
        head_dir = Path(params["weights"]) if params.get("weights") else ARTEFACT_DIR

        self.decode_text = classifier.decode_text  # ValueError for empty / non-UTF-8 rows
        self.embedding_dim = classifier.EMBEDDING_DIM
        try:
            self.head = classifier.GuardHead.load(head_dir)
        except classifier.ArtefactError as exc:
            raise pb_utils.TritonModelException(f"prompt_guard: {exc}") from exc
        if head_dir == ARTEFACT_DIR:
            _check_embed_weights(self.head.meta)
        else:  # prompt_embed may serve other weights too: it is up to the user to pair them
            trained_on = self.head.meta["embedder"]["sha256"].get("model.safetensors", "?")
            pb_utils.Logger.log_info(f"prompt_guard: head from {head_dir}, trained on embedder weights with sha256 {trained_on}")
        self.threshold = self.head.threshold if threshold is None else threshold

        # the numpy head's first calls build its lookup paths: pay now, not on the first request
        warm = np.zeros((2, self.embedding_dim), dtype=np.float32)
        self.head.predict_proba(warm, ["warm up", "warm up " * 300])
        pb_utils.Logger.log_info(
            f"prompt_guard: head {self.head.meta['artefact']['sha256'][:12]}, threshold {self.threshold:.4f}, "
            f"embeddings from {EMBED_MODEL} (ensemble step)"
        )

    def execute(self, requests):
        batch = collect_batch(requests, self._rows)  # a request with a bad row is answered alone
        if not batch.rows:
            return batch.responses
        texts = [text for text, _ in batch.rows]
        probs = self.head.predict_proba(np.stack([vector for _, vector in batch.rows]), texts)
        labels = np.array([label.encode() for label in self.head.labels(probs, self.threshold)], dtype=np.object_)
        return batch.answer(lambda start, end: [
            pb_utils.Tensor("PROB", probs[start:end].reshape(-1, 1).astype(np.float32)),
            pb_utils.Tensor("LABEL", labels[start:end].reshape(-1, 1)),
        ])

    def _rows(self, request):
        """(text, embedding) per row; ValueError for an embedding of the wrong shape, an empty or
        non-UTF-8 text."""
        rows = pb_utils.get_input_tensor_by_name(request, "TEXT").as_numpy().reshape(-1)
        emb = np.asarray(pb_utils.get_input_tensor_by_name(request, "EMBEDDING").as_numpy(), dtype=np.float32)
        if emb.shape != (len(rows), self.embedding_dim):
            raise ValueError(f"prompt_guard: EMBEDDING has shape {emb.shape}, expected ({len(rows)}, {self.embedding_dim})")
        return list(zip([self.decode_text(row, n) for n, row in enumerate(rows)], emb))

    def finalize(self):
        self.head = None
