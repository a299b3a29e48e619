"""prompt_guard: TEXT (UTF-8 prompts) -> PROB (P(jailbreak / prompt injection), FP32) and LABEL ("jailbreak" | "benign").

Triton python backend model, a thin shell over ``../classifier.py`` (which the unit tests,
``bench/guard_eval.py`` and ``train.py`` run without Triton, embedding locally). Inside Triton
the all-MiniLM-L6-v2 embeddings come from the ``prompt_embed`` model through BLS (business logic
scripting): this stub loads only numpy and the trained head (``guard_head.npz`` +
``guard_head.json`` beside this file, or in the folder the ``weights`` parameter names), never
torch or a second copy of the weights, so the two models share one embedder process.
``prompt_embed`` must therefore be loaded whenever this model is
(``ext_proc.model_repo.needed_models`` adds it).

``initialize`` parses the config once, checks the tensors, reads ``threshold`` from
``parameters``, loads the head and warms the numpy part up; if ``prompt_embed`` is already
ready it also runs one BLS call (Triton may load the two models in parallel, so it is not an
error when it is not: the first request then pays the first call). ``execute`` takes every
request of a dynamic batch, sends all their texts to ``prompt_embed`` in ONE BLS request, scores
them with the numpy head and returns one response per request, in order. A request with an
empty or non-UTF-8 text gets its own INVALID_ARG error and the others in the batch are still
answered; when the BLS call fails every pending request gets an error naming ``prompt_embed``
(UNAVAILABLE when it is not loaded or failed, INVALID_ARG when it refused the input).

The head was trained on the embeddings of the weights whose sha256 ``guard_head.json`` records;
``prompt_embed`` checks its default weights against its own ``1/weights.sha256``, and
``initialize`` checks that the two records agree (when the repository holds both files).
"""

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

EXPECTED_INPUTS = {"TEXT": "TYPE_STRING"}
EXPECTED_OUTPUTS = {"PROB": "TYPE_FP32", "LABEL": "TYPE_STRING"}
EMBED_MODEL = "prompt_embed"
EMBED_BATCH = 64  # prompt_embed's max_batch_size
VERSION_DIR = Path(__file__).resolve().parent  # holds the artefact (resolved: the rendered repository links 1/ back here)
CLASSIFIER_PY = VERSION_DIR.parent / "classifier.py"
EMBED_SHA256 = VERSION_DIR.parent.parent / EMBED_MODEL / "1" / "weights.sha256"


def _load_classifier():
    """../classifier.py under a name no other module on sys.path can shadow."""
    spec = importlib.util.spec_from_file_location("sidegate_prompt_guard_classifier", CLASSIFIER_PY)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up here
    spec.loader.exec_module(module)
    return module


def _check_tensors(config, section, expected):
    found = {t["name"]: t["data_type"] for t in config[section]}
    if found != expected:
        raise pb_utils.TritonModelException(f"prompt_guard: config {section} must be {expected}, found {found}")


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
            f"prompt_guard: the head was trained on all-MiniLM-L6-v2 weights with sha256 {trained}, "
            f"but {EMBED_SHA256} pins {listed['model.safetensors']}: retrain the head (train.py)"
        )


class EmbedError(Exception):
    """The BLS call to prompt_embed failed; ``code`` is the TritonError code to answer with."""

    def __init__(self, message, code):
        super().__init__(message)
        self.code = code


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        _check_tensors(config, "input", EXPECTED_INPUTS)
        _check_tensors(config, "output", EXPECTED_OUTPUTS)

        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        threshold = float(params["threshold"]) if params.get("threshold") else None
        if threshold is not None and not 0.0 <= threshold <= 1.0:
            raise pb_utils.TritonModelException(f"prompt_guard: threshold must be in [0, 1], got {threshold}")

        if params.get("torch_threads"):  # a setting of the embedder, which this stub no longer has
            pb_utils.Logger.log_warn(f"prompt_guard: torch_threads is ignored: set threads on {EMBED_MODEL}, which embeds for the guard")
        head_dir = Path(params["weights"]) if params.get("weights") else VERSION_DIR

        classifier = _load_classifier()
        self.decode_text = classifier.decode_text  # ValueError for empty / non-UTF-8 rows
        self.embedding_dim = classifier.EMBEDDING_DIM
        try:
            self.head = classifier.GuardHead.load(head_dir)
        except classifier.ArtefactError as exc:
            raise pb_utils.TritonModelException(f"prompt_guard: {exc}") from exc
        if head_dir == VERSION_DIR:
            _check_embed_weights(self.head.meta)
        else:  # prompt_embed may serve other weights too: it is up to the user to pair them
            trained_on = self.head.meta["embedder"]["sha256"].get("model.safetensors", "?")
            pb_utils.Logger.log_info(f"prompt_guard: head from {head_dir}, trained on embedder weights with sha256 {trained_on}")
        self.threshold = self.head.threshold if threshold is None else threshold
        self.max_chars = int(self.head.meta["embedder"]["max_chars"])  # prompt_embed cuts there too: send no more

        # the numpy head's first calls build its lookup paths: pay now, not on the first request
        warm = np.zeros((2, self.embedding_dim), dtype=np.float32)
        self.head.predict_proba(warm, ["warm up", "warm up " * 300])
        # No BLS call here: while Triton starts, a stub-to-server call (even is_model_ready) raced the
        # loading of prompt_embed and aborted tritonserver (boost::interprocess::lock_exception, seen
        # in about 1 start in 4). The first request pays for the first BLS call instead (a few ms).
        meta = self.head.meta
        pb_utils.Logger.log_info(
            f"prompt_guard: head {meta['artefact']['sha256'][:12]}, threshold {self.threshold:.4f}, "
            f"embeddings from {EMBED_MODEL} via BLS (first call on the first request)"
        )

    def _embed(self, texts):
        """float32 [n, 384] from prompt_embed, in chunks of its max batch size; EmbedError on failure."""
        out = []
        for start in range(0, len(texts), EMBED_BATCH):
            chunk = texts[start : start + EMBED_BATCH]
            rows = np.array([t[: self.max_chars].encode("utf-8") for t in chunk], dtype=np.object_).reshape(-1, 1)
            kwargs = {}
            if hasattr(pb_utils, "PreferredMemory"):  # a GPU prompt_embed answers in host memory for numpy
                kwargs["preferred_memory"] = pb_utils.PreferredMemory(pb_utils.TRITONSERVER_MEMORY_CPU, 0)
            request = pb_utils.InferenceRequest(
                model_name=EMBED_MODEL,
                requested_output_names=["EMBEDDING"],
                inputs=[pb_utils.Tensor("TEXT", rows)],
                **kwargs,
            )
            try:
                response = request.exec()
            except Exception as exc:  # noqa: BLE001 - the stub raises on transport failures
                raise EmbedError(f"prompt_guard: BLS call to {EMBED_MODEL} failed: {exc}", pb_utils.TritonError.UNAVAILABLE) from exc
            if response.has_error():
                err = response.error()
                code = err.code() if hasattr(err, "code") else None
                if code == pb_utils.TritonError.INVALID_ARG:
                    raise EmbedError(f"prompt_guard: {EMBED_MODEL} refused the text: {err.message()}", code)
                # not the python backend's "is not healthy" verbatim: a client that reloads the model whose
                # stub died must not take this answer for a dead prompt_guard stub
                message = err.message().replace("is not healthy", "is down (its stub died)")
                raise EmbedError(
                    f"prompt_guard needs the {EMBED_MODEL} model for its embeddings (load it with prompt_guard): {message}",
                    pb_utils.TritonError.UNAVAILABLE,
                )
            tensor = pb_utils.get_output_tensor_by_name(response, "EMBEDDING")
            emb = None if tensor is None else np.asarray(tensor.as_numpy(), dtype=np.float32)
            if emb is None or emb.shape != (len(chunk), self.embedding_dim):
                shape = None if emb is None else emb.shape
                raise EmbedError(
                    f"prompt_guard: {EMBED_MODEL} returned EMBEDDING of shape {shape}, expected ({len(chunk)}, {self.embedding_dim})",
                    pb_utils.TritonError.INTERNAL,
                )
            out.append(emb)
        return np.concatenate(out, axis=0)

    def execute(self, requests):
        responses = [None] * len(requests)
        texts = []
        spans = []  # (request index, first text, end) into `texts`
        for i, request in enumerate(requests):
            rows = pb_utils.get_input_tensor_by_name(request, "TEXT").as_numpy().reshape(-1)
            try:
                decoded = [self.decode_text(row, n) for n, row in enumerate(rows)]
            except ValueError as exc:
                responses[i] = pb_utils.InferenceResponse(error=pb_utils.TritonError(str(exc), pb_utils.TritonError.INVALID_ARG))
                continue
            spans.append((i, len(texts), len(texts) + len(decoded)))
            texts.extend(decoded)

        if texts:
            try:
                embeddings = self._embed(texts)  # one BLS request (per 64 texts) for the whole batch
            except EmbedError as exc:
                for i, _, _ in spans:
                    responses[i] = pb_utils.InferenceResponse(error=pb_utils.TritonError(str(exc), exc.code))
                return responses
            probs = self.head.predict_proba(embeddings, texts)
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
