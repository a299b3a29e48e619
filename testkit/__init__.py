"""Test support shared by ``tests/`` and ``bench/``: free ports, gateway configs, the fake
OpenAI-compatible provider (:mod:`testkit.fake_provider`), Envoy bootstrap readers
(:mod:`testkit.envoy`) and a stand-in for Triton's python-backend utilities
(:mod:`testkit.triton_stub`). Benchmarks import it instead of ``tests`` (a pytest tree)."""

from testkit.configs import gateway_config
from testkit.ports import free_port, free_ports_spaced

__all__ = ["free_port", "free_ports_spaced", "gateway_config"]
