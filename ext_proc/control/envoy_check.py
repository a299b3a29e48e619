"""``envoy --mode validate`` on the bootstrap a config renders: what ``sidegate validate`` runs after the config checks.

Usage::

    from ext_proc.control.envoy_check import EnvoyRefused, check_bootstrap
    try:
        check_bootstrap(cfg)          # renders into a temporary folder, runs Envoy, removes the folder
    except EnvoyRefused as exc:
        print(exc)                    # Envoy's own error lines

Envoy parses the whole bootstrap in validate mode (listeners, clusters, filters, Lua, TLS contexts)
without binding ports or resolving hosts: about a quarter of a second.
"""

from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path

from ext_proc.config import Config
from ext_proc.control.envoy_bin import envoy_binary

__all__ = ["EnvoyRefused", "check_bootstrap"]

TIMEOUT_S = 60.0


class EnvoyRefused(Exception):
    """Envoy does not accept the bootstrap rendered from a config: the message is Envoy's."""


def check_bootstrap(cfg: Config) -> None:
    """Render ``cfg``'s Envoy bootstrap and have Envoy validate it; :class:`EnvoyRefused` with Envoy's error if it refuses.

    Raises :class:`~ext_proc.control.envoy_bin.EnvoyNotFound` when the Envoy binary is not installed."""
    from ext_proc.control.envoy_bootstrap import write_bootstrap  # betterproto2 and the protos load in ~1 s

    binary = envoy_binary()
    with tempfile.TemporaryDirectory(prefix="sidegate-validate-") as tmp:
        path = write_bootstrap(cfg, Path(tmp))
        try:
            proc = subprocess.run(
                [str(binary), "--mode", "validate", "-c", str(path), "-l", "error"],
                capture_output=True, text=True, timeout=TIMEOUT_S, check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise EnvoyRefused(f"envoy --mode validate did not finish in {TIMEOUT_S:.0f} s") from exc
    if proc.returncode != 0:
        lines = [ln for ln in (proc.stderr or proc.stdout).splitlines() if ln.strip()]
        raise EnvoyRefused("\n".join(lines[-20:]) or f"envoy --mode validate exited {proc.returncode}")
