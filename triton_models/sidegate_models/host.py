"""Threads and memory for the models' engines: how many cores to use, how llama.cpp holds a model.

* :func:`auto_threads`: the cores that are free when a model loads (``prompt_embed``'s BLAS
  threads, ``function_call``'s and ``chat_llm``'s llama.cpp threads, unless a setting names them);
* :func:`limit_blas`: numpy's BLAS threads (``prompt_embed``'s numpy engine);
* :func:`memory_params`: the memory settings both llama.cpp models give ``xllamacpp.CommonParams``.
"""

from __future__ import annotations

import os
import time
from typing import Any

__all__ = ["KV_CACHE_TYPES", "auto_threads", "limit_blas", "memory_params"]


def auto_threads(sample_s: float = 0.3) -> int:
    """llama.cpp threads for this machine: the cores that are actually free, at least 1.

    Spinning llama.cpp threads on cores other processes use collapses throughput (measured
    30 s vs 1.7 s per call with 2 threads on 2 busy cores), so leave busy cores alone. "Busy" is
    measured now, over ``sample_s`` of ``/proc/stat`` on the cores this process may use, not by
    the one-minute load average, which still counts the model loads that just finished (it
    gave the 1.5B one thread on an idle 2-core machine: 1.6 s per call instead of 0.9 s).
    """
    try:
        cores = sorted(os.sched_getaffinity(0))
    except AttributeError:
        cores = list(range(os.cpu_count() or 1))
    try:
        first = _cpu_jiffies(cores)
        time.sleep(sample_s)
        last = _cpu_jiffies(cores)
        busy = sum((b1 - b0) / max(t1 - t0, 1) for (b0, t0), (b1, t1) in zip(first, last))
    except (OSError, ValueError):
        busy = os.getloadavg()[0]
    return max(1, min(len(cores), round(len(cores) - busy + 0.49)))


def _cpu_jiffies(cores: list[int]) -> list[tuple[int, int]]:
    """(busy, total) jiffies of each core in ``cores``, from ``/proc/stat``."""
    wanted = {f"cpu{c}" for c in cores}
    out = []
    with open("/proc/stat") as f:
        for line in f:
            name, *fields = line.split()
            if name in wanted:
                values = [int(v) for v in fields[:8]]  # user nice system idle iowait irq softirq steal
                idle = values[3] + values[4]
                out.append((sum(values) - idle, sum(values)))
    if len(out) != len(cores):
        raise ValueError("cores missing from /proc/stat")
    return out


def limit_blas(threads: int) -> None:
    """numpy's BLAS threads (threads on cores another process is using collapse throughput)."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # then OPENBLAS_NUM_THREADS in Triton's environment decides
        return
    threadpool_limits(limits=threads, user_api="blas")


KV_CACHE_TYPES = ("q8_0", "f16")


def memory_params(p: Any, *, mmap: bool = False, kv_cache: str = "q8_0", n_ubatch: int = 128) -> None:
    """The memory settings both llama.cpp models (function_call, chat_llm) give ``p``
    (an ``xllamacpp.CommonParams``).

    * ``mmap`` false reads the GGUF instead of mapping it: llama.cpp repacks most CPU weights
      into its own (faster) layout anyway, and a mapped file's pages stay resident beside the
      repacked copy (1.5B: 1.98 GB RSS mapped vs 1.39 GB read; same speed).
    * ``kv_cache`` ``q8_0`` stores keys and values in 8 bits (with flash attention, which
      quantised values need): half the KV memory of ``f16`` (1.5B, 4 slots x 2048 tokens: 235 ->
      118 MB; RSS 1.42 -> 1.31 GB) for ~10 % more time per call on this CPU.
    * the runtime's host-memory prompt cache (``cache_ram_mib``, up to 8 GiB by default) is off:
      requests name their slot, whose KV cache is the prompt cache.
    * ``n_ubatch`` 128-token micro-batches (llama.cpp's default is 512) keep the compute buffers
      smaller (1.5B: ~27 MB; 0.5B: RSS 632 -> 617 MB after a 350-token prompt) at the same speed
      on this CPU: a function call evaluates ~20 new prompt tokens, and only a long prompt (a
      tool prefix, a chat history) fills more than one micro-batch.
    """
    import xllamacpp

    if kv_cache not in KV_CACHE_TYPES:
        raise ValueError(f"kv_cache must be one of {KV_CACHE_TYPES}, not {kv_cache!r}")
    if not mmap and hasattr(xllamacpp, "llama_load_mode"):
        p.load_mode = xllamacpp.llama_load_mode.LLAMA_LOAD_MODE_NONE
    if kv_cache == "q8_0":
        p.cache_type_k = p.cache_type_v = xllamacpp.ggml_type.GGML_TYPE_Q8_0
        p.flash_attn_type = xllamacpp.llama_flash_attn_type.LLAMA_FLASH_ATTN_TYPE_ENABLED
    p.cache_ram_mib = 0
    p.n_ubatch = n_ubatch
