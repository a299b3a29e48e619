"""What the models read, checked the same way everywhere; no Triton needed (numpy-free).

* :func:`decode_text`: one ``TEXT`` row as str, or the ValueError that answers its request with
  INVALID_ARG (``prompt_embed``, ``prompt_guard_head``, and :mod:`sidegate_models.classifier`
  outside Triton);
* :func:`sha256_file`, :func:`sha256_listing`: weight files against their recorded digests
  (``prompt_embed/1/weights.sha256``, the guard head's JSON, the GGUF table in
  :mod:`sidegate_models.weights`).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

__all__ = ["decode_text", "sha256_file", "sha256_listing"]

_CHUNK = 8 << 20


def decode_text(row: bytes | str, n: int = 0, purpose: str = "check") -> str:
    """TEXT row ``n`` as str; ValueError (-> INVALID_ARG in Triton) when not UTF-8 or empty
    ("there is nothing to ``purpose``")."""
    raw = row if isinstance(row, bytes) else str(row).encode()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"TEXT row {n} is not valid UTF-8 (byte {raw[exc.start]:#04x} at offset {exc.start})") from None
    if not text.strip():
        raise ValueError(f"TEXT row {n} is empty: there is nothing to {purpose}")
    return text


def sha256_file(path: str | os.PathLike[str]) -> str:
    """The hex sha256 of the file at ``path``, read in 8 MiB pieces."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_listing(listing: str | os.PathLike[str]) -> dict[str, str]:
    """``{relative path: sha256}`` from a ``sha256sum``-style file (``<sha256>  <path>`` lines;
    blank lines and ``#`` comments skipped)."""
    out: dict[str, str] = {}
    for line in Path(listing).read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            digest, name = line.split(maxsplit=1)
            out[name.strip()] = digest
    return out
