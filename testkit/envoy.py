"""Reading a rendered Envoy bootstrap the way a user reads ``envoy.yaml``, and ``envoy --mode validate``."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

from ext_proc.control.envoy_bin import envoy_binary

__all__ = ["clusters", "ext_proc", "hcm", "listener", "route", "routes", "validate"]


def validate(path: Path) -> None:
    proc = subprocess.run(
        [str(envoy_binary()), "--mode", "validate", "-c", str(path), "-l", "error"],
        capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 0, f"envoy --mode validate refused {path}:\n{proc.stderr[-4000:]}"


def listener(d: dict[str, Any], name: str) -> dict[str, Any]:
    return next(x for x in d["static_resources"]["listeners"] if x["name"] == name)


def hcm(d: dict[str, Any], name: str) -> dict[str, Any]:
    return listener(d, name)["filter_chains"][0]["filters"][0]["typed_config"]


def routes(d: dict[str, Any], name: str) -> list[dict[str, Any]]:
    return hcm(d, name)["route_config"]["virtual_hosts"][0]["routes"]


def route(d: dict[str, Any], name: str, cluster: str) -> dict[str, Any]:
    return next(r for r in routes(d, name) if r["name"] == cluster)


def clusters(d: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in d["static_resources"]["clusters"]}


def ext_proc(d: dict[str, Any], name: str) -> dict[str, Any]:
    f = hcm(d, name)["http_filters"][0]
    assert f["name"] == "envoy.filters.http.ext_proc"
    return f["typed_config"]
