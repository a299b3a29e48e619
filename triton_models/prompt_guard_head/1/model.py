"""prompt_guard_head: TEXT + EMBEDDING -> PROB (P(jailbreak / prompt injection), FP32) and LABEL ("jailbreak" | "benign").

The second step of the ``prompt_guard`` ensemble (``../../prompt_guard/config.pbtxt``): Triton's
ensemble scheduler runs ``prompt_embed`` on the text and hands this model the text and its
all-MiniLM-L6-v2 vector. Clients call ``prompt_guard``; nothing here calls back into the server
(until 2026-12 this model fetched the embedding itself through BLS).

A thin shell over ``../../prompt_guard/classifier.py`` (which the unit tests,
``bench/guard_eval.py`` and ``train.py`` run without Triton, embedding locally). The stub loads
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

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

EXPECTED_INPUTS = {"TEXT": "TYPE_STRING", "EMBEDDING": "TYPE_FP32"}
EXPECTED_OUTPUTS = {"PROB": "TYPE_FP32", "LABEL": "TYPE_STRING"}
EMBED_MODEL = "prompt_embed"
MODELS = Path(__file__).resolve().parents[2]  # resolved: the rendered repository links 1/ back here
GUARD_DIR = MODELS / "prompt_guard"
ARTEFACT_DIR = GUARD_DIR / "1"  # the shipped head, where train.py writes it
CLASSIFIER_PY = GUARD_DIR / "classifier.py"
EMBED_SHA256 = MODELS / EMBED_MODEL / "1" / "weights.sha256"


def _load_classifier():
    """prompt_guard/classifier.py under a name no other module on sys.path can shadow."""
    spec = importlib.util.spec_from_file_location("sidegate_prompt_guard_classifier", CLASSIFIER_PY)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up here
    spec.loader.exec_module(module)
    return module


def _check_tensors(config, section, expected):
    found = {t["name"]: t["data_type"] for t in config[section]}
    if found != expected:
        raise pb_utils.TritonModelException(f"prompt_guard_head: config {section} must be {expected}, found {found}")


def _check_embed_weights(head_meta):
    """prompt_embed's weights.sha256 must list the safetensors digest the head was trained on."""
    if not EMBED_SHA256.is_file():
        return
    listed = {}
    for line in EMBED_SHA256.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            digest, name = line.split(maxsplit=1)
            listed[name.strip()] = digest
    trained = head_meta["embedder"]["sha256"].get("model.safetensors")
    if trained and listed.get("model.safetensors") not in (None, trained):
        raise pb_utils.TritonModelException(
            f"prompt_guard_head: the head was trained on all-MiniLM-L6-v2 weights with sha256 {trained}, "
            f"but {EMBED_SHA256} pins {listed['model.safetensors']}: retrain the head (prompt_guard/train.py)"
        )


def _invalid(message):
    return pb_utils.InferenceResponse(error=pb_utils.TritonError(message, pb_utils.TritonError.INVALID_ARG))


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        _check_tensors(config, "input", EXPECTED_INPUTS)
        _check_tensors(config, "output", EXPECTED_OUTPUTS)

        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        threshold = float(params["threshold"]) if params.get("threshold") else None
        if threshold is not None and not 0.0 <= threshold <= 1.0:
            raise pb_utils.TritonModelException(f"prompt_guard: threshold must be in [0, 1], got {threshold}")

        if params.get("torch_threads"):  # a setting of the embedder, which this stub does not have
            pb_utils.Logger.log_warn(f"prompt_guard: torch_threads is ignored: set threads on {EMBED_MODEL}, which embeds for the guard")
        head_dir = Path(params["weights"]) if params.get("weights") else ARTEFACT_DIR

        classifier = _load_classifier()
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
        responses = [None] * len(requests)
        texts, vectors = [], []
        spans = []  # (request index, first row, end) into `texts`
        for i, request in enumerate(requests):
            rows = pb_utils.get_input_tensor_by_name(request, "TEXT").as_numpy().reshape(-1)
            emb = np.asarray(pb_utils.get_input_tensor_by_name(request, "EMBEDDING").as_numpy(), dtype=np.float32)
            if emb.shape != (len(rows), self.embedding_dim):
                responses[i] = _invalid(f"prompt_guard: EMBEDDING has shape {emb.shape}, expected ({len(rows)}, {self.embedding_dim})")
                continue
            try:
                decoded = [self.decode_text(row, n) for n, row in enumerate(rows)]
            except ValueError as exc:
                responses[i] = _invalid(str(exc))
                continue
            spans.append((i, len(texts), len(texts) + len(decoded)))
            texts.extend(decoded)
            vectors.append(emb)

        if texts:
            probs = self.head.predict_proba(np.concatenate(vectors, axis=0), texts)
            labels = np.array([label.encode() for label in self.head.labels(probs, self.threshold)], dtype=np.object_)
            for i, start, end in spans:
                responses[i] = pb_utils.InferenceResponse(
                    output_tensors=[
                        pb_utils.Tensor("PROB", probs[start:end].reshape(-1, 1).astype(np.float32)),
                        pb_utils.Tensor("LABEL", labels[start:end].reshape(-1, 1)),
                    ]
                )
        return responses

    def finalize(self):
        self.head = None
