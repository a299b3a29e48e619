"""ext_proc.workers (issue 21 item 3): the config key, Envoy's ext_proc cluster, the supervisor's services."""

from __future__ import annotations

import sqlite3

from pathlib import Path
from typing import Any

import pytest

from ext_proc.config import ConfigError, cpu_limit, free_cores
from ext_proc.control import supervisor as sv
from ext_proc.control.envoy_bootstrap import EXT_PROC_CLUSTER, bootstrap_dict
from ext_proc.names import BUCKETS_FILE, CACHE_FILE, MULTIPROC_ENV, STATE_FILE, WORKERS_STATE_ENV
from testkit.configs import cfg_from, raw_config


def _cfg(**ext_proc: Any) -> Any:
    raw = raw_config()
    raw["ext_proc"].update(port=50051, http_port=8080)
    raw["ext_proc"].pop("workers", None)
    raw["ext_proc"].update(ext_proc)
    return cfg_from(raw)


def _ext_proc_cluster(cfg: Any) -> dict[str, Any]:
    return next(c for c in bootstrap_dict(cfg)["static_resources"]["clusters"] if c["name"] == EXT_PROC_CLUSTER)


def test_default_is_the_cpus_this_process_may_use() -> None:
    assert _cfg().ext_proc.workers == free_cores() >= 1
    assert _cfg(workers=3).ext_proc.workers == 3


@pytest.mark.parametrize("files, limit", [
    ({"cpu.max": "max 100000\n"}, None),  # cgroup v2, no limit
    ({"cpu.max": "150000 100000\n"}, 2),  # 1.5 CPUs (limits.cpu: 1500m): rounded up
    ({"cpu.max": "25000 100000\n"}, 1),  # 250m
    ({"cpu/cpu.cfs_quota_us": "300000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 3),  # cgroup v1
    ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, None),  # v1, no limit
    ({}, None),  # nothing readable
])
def test_a_cgroup_cpu_limit_caps_the_default(tmp_path: Path, files: dict[str, str], limit: int | None) -> None:
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    assert cpu_limit(tmp_path) == limit
    assert free_cores(tmp_path) == (free_cores(tmp_path / "none") if limit is None else min(limit, free_cores(tmp_path / "none")))


@pytest.mark.parametrize("bad", [0, -1, "two", 1.5, True, 65])
def test_a_bad_workers_value_is_refused_naming_the_key(bad: Any) -> None:
    with pytest.raises(ConfigError) as err:
        _cfg(workers=bad)
    assert "ext_proc.workers" in str(err.value)


def test_a_worker_port_that_collides_is_refused() -> None:
    raw = raw_config()
    ingress = raw["listeners"]["ingress_traffic"]["port"]
    raw["ext_proc"].update(workers=2, http_port=ingress - 1)  # worker 2 would listen on the ingress port
    with pytest.raises(ConfigError) as err:
        cfg_from(raw)
    assert "ext_proc.workers" in str(err.value) and str(ingress) in str(err.value) and "ingress_traffic" in str(err.value)


def test_one_worker_keeps_the_single_endpoint_cluster() -> None:
    cluster = _ext_proc_cluster(_cfg(workers=1))
    (locality,) = cluster["load_assignment"]["endpoints"]
    assert len(locality["lb_endpoints"]) == 1
    assert "health_checks" not in cluster


def test_n_workers_are_n_health_checked_endpoints_behind_least_request() -> None:
    cluster = _ext_proc_cluster(_cfg(workers=3))
    assert cluster["lb_policy"] == "LEAST_REQUEST"
    (locality,) = cluster["load_assignment"]["endpoints"]
    got = [(e["endpoint"]["address"]["socket_address"]["port_value"], e["endpoint"]["health_check_config"]["port_value"])
           for e in locality["lb_endpoints"]]
    assert got == [(50051, 8080), (50052, 8081), (50053, 8082)]
    (hc,) = cluster["health_checks"]
    assert hc["http_health_check"]["path"] == "/healthz"
    assert cluster["outlier_detection"]["max_ejection_percent"] == 50


def test_the_supervisor_starts_each_worker_as_its_own_service(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SIDEGATE_HOME", str(tmp_path))
    cfg = _cfg(workers=2)
    services = sv.ext_proc_services(cfg, "x.yaml", None, {})
    assert [s.name for s in services] == ["ext_proc-1", "ext_proc-2"]
    assert [s.argv[-2:] for s in services] == [["--worker", "1"], ["--worker", "2"]]
    assert [s.health_url for s in services] == ["http://127.0.0.1:8080/healthz", "http://127.0.0.1:8081/healthz"]
    metrics_dir = Path(services[0].env[MULTIPROC_ENV])
    assert metrics_dir.is_dir() and services[1].env[MULTIPROC_ENV] == str(metrics_dir)
    # one directory of shared state (token budgets, response cache) for both, emptied: what an
    # earlier `up` left there (a spent budget, cached answers) is gone; the two files are created in
    # WAL mode before any worker opens them (shared_store.prepare_workers_state)
    state = Path(services[0].env[WORKERS_STATE_ENV])
    assert services[1].env[WORKERS_STATE_ENV] == str(state)
    for name in (BUCKETS_FILE, CACHE_FILE, STATE_FILE):
        assert sqlite3.connect(state / name).execute("PRAGMA journal_mode").fetchone() == ("wal",)
        assert sqlite3.connect(state / name).execute("SELECT name FROM sqlite_master").fetchall() == []
    (state / "left-over").write_text("spent budget")
    sv.ext_proc_services(cfg, "x.yaml", None, {})
    assert sorted(p.name for p in state.iterdir() if not p.name.endswith(("-wal", "-shm"))) == sorted([BUCKETS_FILE, CACHE_FILE, STATE_FILE])
    (one,) = sv.ext_proc_services(_cfg(workers=1), "x.yaml", None, {})
    assert one.name == "ext_proc" and MULTIPROC_ENV not in one.env and WORKERS_STATE_ENV not in one.env and "--worker" not in one.argv
