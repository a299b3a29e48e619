"""A BERT sentence encoder in numpy: all-MiniLM-L6-v2's forward pass without torch.

Why not torch: the model is 6 layers of 384 floats; numpy's BLAS runs it as fast on this CPU,
and a python stub that never imports torch is ~400 MB smaller (torch's libraries alone are
most of prompt_embed's resident memory). The maths is BERT's (``transformers.BertModel`` in
eval mode), followed by sentence-transformers' mean pooling and L2 normalisation; the vectors
equal SentenceTransformer's to 3e-5, the word-piece table being kept in float16
(``tests/unit/triton_models/test_prompt_embed_encoder.py`` checks).

Inputs are the sentence-transformers folder's own files: ``config.json`` (BERT shape),
``tokenizer.json`` (the fast WordPiece tokenizer, run by the ``tokenizers`` library),
``model.safetensors`` (read with ``safetensors.numpy``), and ``modules.json`` plus
``1_Pooling/config.json``, which must say transformer -> mean pooling -> normalize;
:func:`supported` tells whether a folder is one this module computes exactly.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from scipy.special import erf
from safetensors.numpy import load_file
from tokenizers import Tokenizer


def supported(folder: Path) -> str | None:
    """None when ``folder`` is a BERT model, mean-pooled and normalised; else why not."""
    try:
        config = json.loads((folder / "config.json").read_text())
        modules = [m["type"].rsplit(".", 1)[-1] for m in json.loads((folder / "modules.json").read_text())]
        pooling = json.loads((folder / "1_Pooling" / "config.json").read_text())
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return f"not a sentence-transformers folder ({exc})"
    if config.get("model_type") != "bert" or config.get("hidden_act") != "gelu":
        return f"model_type {config.get('model_type')!r} / hidden_act {config.get('hidden_act')!r} (BERT with gelu only)"
    if config.get("position_embedding_type", "absolute") != "absolute":
        return "position_embedding_type is not absolute"
    if modules != ["Transformer", "Pooling", "Normalize"]:
        return f"modules {modules} (Transformer, Pooling, Normalize only)"
    modes = {k for k, v in pooling.items() if k.startswith("pooling_mode") and v is True}
    if modes != {"pooling_mode_mean_tokens"}:
        return f"pooling {sorted(modes)} (mean only)"
    if not (folder / "tokenizer.json").is_file() or not (folder / "model.safetensors").is_file():
        return "no tokenizer.json or model.safetensors"
    return None


def _linear(x: np.ndarray, weight_bias: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """``x @ W.T + b`` (torch's Linear) computed as ``W @ x.T``: the weight stays in its stored
    (out, in) layout, which OpenBLAS multiplies ~2x faster than the transposed one for the few
    rows (tokens) a prompt has."""
    weight, bias = weight_bias
    rows = x.reshape(-1, x.shape[-1])
    return (weight @ rows.T).T.reshape(*x.shape[:-1], weight.shape[0]) + bias


class BertEncoder:
    """``encode(texts) -> float32[len(texts), hidden]``, L2-normalised mean-pooled vectors."""

    def __init__(self, folder: Path, max_tokens: int = 256) -> None:
        config = json.loads((folder / "config.json").read_text())
        self.heads = int(config["num_attention_heads"])
        self.eps = float(config.get("layer_norm_eps", 1e-12))
        self.max_tokens = min(max_tokens, int(config["max_position_embeddings"]))
        self.dim = int(config["hidden_size"])

        self.tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        self.tokenizer.enable_truncation(self.max_tokens)
        self.tokenizer.enable_padding(pad_id=int(config.get("pad_token_id", 0)))

        w = load_file(str(folder / "model.safetensors"))
        w = {k.removeprefix("bert."): v for k, v in w.items()}
        # the 30k x 384 word-piece table is half the weights but only a few rows are read per
        # prompt: kept in float16 (23 MB less), rows widened on lookup (vectors move by < 3e-5)
        self.word = w["embeddings.word_embeddings.weight"].astype(np.float16)
        self.position = w["embeddings.position_embeddings.weight"]
        self.token_type = w["embeddings.token_type_embeddings.weight"][0]  # one segment
        self.embed_norm = (w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"])
        self.layers = []
        for i in range(int(config["num_hidden_layers"])):
            p = f"encoder.layer.{i}."
            qkv = [w[f"{p}attention.self.{n}.weight"] for n in ("query", "key", "value")]
            qkv_bias = [w[f"{p}attention.self.{n}.bias"] for n in ("query", "key", "value")]
            self.layers.append({
                "qkv": (np.concatenate(qkv), np.concatenate(qkv_bias)),
                "out": (w[f"{p}attention.output.dense.weight"], w[f"{p}attention.output.dense.bias"]),
                "norm1": (w[f"{p}attention.output.LayerNorm.weight"], w[f"{p}attention.output.LayerNorm.bias"]),
                "up": (w[f"{p}intermediate.dense.weight"], w[f"{p}intermediate.dense.bias"]),
                "down": (w[f"{p}output.dense.weight"], w[f"{p}output.dense.bias"]),
                "norm2": (w[f"{p}output.LayerNorm.weight"], w[f"{p}output.LayerNorm.bias"]),
            })

    def encode(self, texts: list[str]) -> np.ndarray:
        batch = self.tokenizer.encode_batch(texts)
        ids = np.array([e.ids for e in batch], dtype=np.int64)
        mask = np.array([e.attention_mask for e in batch], dtype=np.float32)
        n, length = ids.shape

        x = self.word[ids].astype(np.float32) + self.position[:length] + self.token_type
        x = self._norm(x, self.embed_norm)
        # padded keys get -inf-like scores, so they take no attention weight
        key_bias = ((1.0 - mask) * np.finfo(np.float32).min)[:, None, None, :]
        head_dim = self.dim // self.heads
        scale = np.float32(1.0 / np.sqrt(head_dim))
        for layer in self.layers:
            qkv = _linear(x, layer["qkv"])  # [n, length, 3 * dim]
            q, k, v = (qkv[..., i * self.dim:(i + 1) * self.dim].reshape(n, length, self.heads, head_dim).transpose(0, 2, 1, 3)
                       for i in range(3))
            scores = (q @ k.transpose(0, 1, 3, 2)) * scale + key_bias  # [n, heads, length, length]
            scores = np.exp(scores - scores.max(axis=-1, keepdims=True))
            scores /= scores.sum(axis=-1, keepdims=True)
            context = (scores @ v).transpose(0, 2, 1, 3).reshape(n, length, self.dim)
            x = self._norm(x + _linear(context, layer["out"]), layer["norm1"])
            hidden = _linear(x, layer["up"])
            hidden = 0.5 * hidden * (1.0 + erf(hidden * np.float32(1 / np.sqrt(2))))  # exact gelu, as BERT's
            x = self._norm(x + _linear(hidden, layer["down"]), layer["norm2"])

        pooled = (x * mask[..., None]).sum(axis=1) / np.maximum(mask.sum(axis=1, keepdims=True), 1e-9)
        pooled /= np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)
        return np.ascontiguousarray(pooled, dtype=np.float32)

    def _norm(self, x: np.ndarray, weight_bias: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
        mean = x.mean(axis=-1, keepdims=True)
        var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)
        return (x - mean) / np.sqrt(var + self.eps) * weight_bias[0] + weight_bias[1]
