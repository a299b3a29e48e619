"""Smoke client for prompt_embed: checks a running Triton's output, exits non-zero on any failure.

    python triton_models/prompt_embed/client.py --url 127.0.0.1:8001

Needs only ``tritonclient[grpc]`` and numpy (not sidegate), so it also checks a remote Triton.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

MODEL = "prompt_embed"
TEXTS = [
    "What is the weather like in Seattle today?",
    "Will it rain in Seattle this afternoon?",
    "Convert 100 US dollars to euros.",
]


def embed(client: grpcclient.InferenceServerClient, texts: list[bytes], timeout: float) -> np.ndarray:
    text = grpcclient.InferInput("TEXT", [len(texts), 1], "BYTES")
    text.set_data_from_numpy(np.array(texts, dtype=np.object_).reshape(-1, 1))
    result = client.infer(MODEL, [text], outputs=[grpcclient.InferRequestedOutput("EMBEDDING")], client_timeout=timeout)
    return result.as_numpy("EMBEDDING")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="127.0.0.1:8001", help="Triton gRPC address (host:port)")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds per call")
    args = parser.parse_args()

    client = grpcclient.InferenceServerClient(url=args.url)
    failures = []
    try:
        vectors = embed(client, [t.encode() for t in TEXTS], args.timeout)
    except InferenceServerException as exc:
        print(f"FAIL: {MODEL} at {args.url}: {exc}")
        return 1

    if vectors.shape != (len(TEXTS), 384) or vectors.dtype != np.float32:
        failures.append(f"EMBEDDING is {vectors.dtype}{list(vectors.shape)}, expected float32[{len(TEXTS)}, 384]")
    else:
        norms = np.linalg.norm(vectors, axis=1)
        if not np.allclose(norms, 1.0, atol=1e-4):
            failures.append(f"embeddings are not unit vectors: norms {norms}")
        same, other = float(vectors[0] @ vectors[1]), float(vectors[0] @ vectors[2])
        print(f"cosine(weather, rain) = {same:.3f}, cosine(weather, currency) = {other:.3f}")
        if not same > other:
            failures.append("similar prompts are not closer than unrelated ones")

    try:
        embed(client, [b""], args.timeout)
        failures.append("an empty TEXT was accepted")
    except InferenceServerException as exc:
        print(f"empty TEXT rejected as expected: {exc}")

    for failure in failures:
        print(f"FAIL: {failure}")
    if not failures:
        print(f"PASS: {MODEL} at {args.url}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
