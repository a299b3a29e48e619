"""Smoke client for chat_llm: streams one short answer from a running Triton, exits non-zero on failure.

    python triton_models/chat_llm/client.py --url 127.0.0.1:8001

Needs only ``tritonclient[grpc]`` and numpy (not sidegate), so it also checks a remote Triton.
"""

from __future__ import annotations

import argparse
import json
import queue
import sys

import numpy as np
import tritonclient.grpc as grpcclient

MODEL = "chat_llm"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="127.0.0.1:8001", help="Triton gRPC address (host:port)")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds for the whole answer")
    args = parser.parse_args()

    results: queue.Queue = queue.Queue()
    client = grpcclient.InferenceServerClient(url=args.url)
    client.start_stream(callback=lambda result, error: results.put((result, error)))
    inputs = []
    for name, value in (("MESSAGES", [{"role": "user", "content": "Name one primary color."}]), ("PARAMS", {"max_tokens": 16})):
        inp = grpcclient.InferInput(name, [1], "BYTES")
        inp.set_data_from_numpy(np.array([json.dumps(value).encode()], dtype=np.object_))
        inputs.append(inp)
    client.async_stream_infer(MODEL, inputs, enable_empty_final_response=True)
    text, chunks = [], 0
    while True:
        try:
            result, error = results.get(timeout=args.timeout)
        except queue.Empty:
            print(f"FAIL: no answer from {MODEL} within {args.timeout}s")
            return 1
        if error is not None:
            print(f"FAIL: {MODEL}: {error}")
            return 1
        data = result.as_numpy("CHUNK")
        if data is not None and data.size:
            chunk = json.loads(data.reshape(-1)[0])
            chunks += 1
            text.extend((c.get("delta") or {}).get("content") or "" for c in chunk.get("choices") or [])
        if result.get_response().parameters["triton_final_response"].bool_param:
            break
    client.stop_stream()
    answer = "".join(text).strip()
    print(f"{chunks} chunks: {answer!r}")
    if not answer:
        print("FAIL: empty answer")
        return 1
    print("PASS")
    return 0


if __name__ == "__main__":
    sys.exit(main())
