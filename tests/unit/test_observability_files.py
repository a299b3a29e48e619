"""deploy/observability/: every file loads, and the Grafana dashboard names only metrics that exist.

sidegate_* names are checked against a fresh :class:`ext_proc.metrics.Metrics` registry; Envoy
(envoy_*) and Triton (nv_*) names against ``known_metrics.txt``, captured from a real Envoy and
a real tritonserver (how and when is written at the top of that file).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from ext_proc.metrics import Metrics

OBS = Path(__file__).resolve().parents[2] / "deploy" / "observability"
DASHBOARD = OBS / "grafana" / "sidegate.json"

# PromQL words that look like identifiers but are no metric
_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless",
             "offset", "inf", "nan"}


def _sidegate_series() -> dict[str, set[str]]:
    """Series name -> label names, for every family of a fresh Metrics registry.

    Each metric gets one labelled child so that ``collect()`` shows its real series names and labels.
    """
    metrics = Metrics()
    for collector in vars(metrics).values():
        if hasattr(collector, "labels"):
            collector.labels(*["x"] * len(collector._labelnames))  # noqa: SLF001
    out: dict[str, set[str]] = {}
    for family in metrics.registry.collect():
        assert family.samples, family.name
        for sample in family.samples:
            out.setdefault(sample.name, set()).update(sample.labels)
    return out


def _known_external() -> dict[str, str]:
    """Series name -> source (envoy/triton) from known_metrics.txt."""
    out: dict[str, str] = {}
    for line in (OBS / "known_metrics.txt").read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        source, name, kind = line.split()
        # Envoy and Triton print counters under their own names (no _total appended)
        for suffix in ("_bucket", "_sum", "_count") if kind == "histogram" else ("",):
            out[name + suffix] = source
    return out


def _strip(expr: str) -> str:
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # string literals
    expr = re.sub(r"\{[^{}]*\}", "", expr)  # label matchers
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # range selectors
    return expr


def metric_names(expr: str) -> set[str]:
    """Metric names in a PromQL expression: identifiers that are no function, keyword or label list."""
    expr = _strip(expr)
    expr = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", expr)
    names = set()
    for m in re.finditer(r"(?<![\w.$])([a-zA-Z_:][a-zA-Z0-9_:]*)\b(\s*\()?", expr):
        if m.group(2) or m.group(1).lower() in _KEYWORDS:
            continue  # a function call or a keyword
        names.add(m.group(1))
    return names


def grouping_labels(expr: str) -> set[str]:
    expr = _strip(expr)
    labels: set[str] = set()
    for m in re.finditer(r"\b(?:by|without)\s*\(([^)]*)\)", expr):
        labels |= {x.strip() for x in m.group(1).split(",") if x.strip()}
    return labels


def _panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for p in dashboard["panels"]:
        out.append(p)
        out.extend(p.get("panels", []))
    return out


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def _exprs(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    return [(p["title"], t["expr"]) for p in _panels(dashboard) for t in p.get("targets", [])]


# -- the parser itself ----------------------------------------------------------------------------
def test_metric_names_parser() -> None:
    e = ('histogram_quantile(0.99, sum by (le, stage) (rate(sidegate_stage_seconds_bucket{job=~"a|b", x="rate(y)"}[5m])))'
         " / on (model) group_left nv_inference_count + sum without (instance) (up)")
    assert metric_names(e) == {"sidegate_stage_seconds_bucket", "nv_inference_count", "up"}
    assert grouping_labels(e) == {"le", "stage", "instance"}
    assert metric_names("rate(envoy_http_downstream_rq_total[$__rate_interval])") == {"envoy_http_downstream_rq_total"}


# -- each file loads ------------------------------------------------------------------------------
def test_otel_collector_config() -> None:
    cfg = yaml.safe_load((OBS / "otel-collector.yaml").read_text())
    protocols = cfg["receivers"]["otlp"]["protocols"]
    assert protocols["grpc"]["endpoint"].endswith(":4317")
    assert protocols["http"]["endpoint"].endswith(":4318")
    assert "batch" in cfg["processors"]
    assert "debug" in cfg["exporters"]
    otlp = [name for name in cfg["exporters"] if name.split("/")[0] == "otlp"]
    assert otlp, "no OTLP exporter to a tracing backend"
    traces = cfg["service"]["pipelines"]["traces"]
    assert traces["receivers"] == ["otlp"] and "batch" in traces["processors"]
    assert set(traces["exporters"]) == {"debug", *otlp}
    # every component a pipeline names is defined (the collector refuses to start otherwise)
    for kind in ("receivers", "processors", "exporters"):
        for name in traces[kind]:
            assert name in cfg[kind], f"pipeline names undefined {kind[:-1]} {name}"
    for name in cfg["service"].get("extensions", []):
        assert name in cfg["extensions"]


def test_prometheus_scrape_config() -> None:
    cfg = yaml.safe_load((OBS / "prometheus.yml").read_text())
    jobs = {j["job_name"]: j for j in cfg["scrape_configs"]}
    assert len(jobs) == len(cfg["scrape_configs"]), "duplicate job_name"
    by_target = {t: j.get("metrics_path", "/metrics") for j in jobs.values()
                 for sc in j["static_configs"] for t in sc["targets"]}
    assert by_target == {"127.0.0.1:8080": "/metrics", "127.0.0.1:9901": "/stats/prometheus", "127.0.0.1:8002": "/metrics"}


def test_known_metrics_file_says_where_it_came_from() -> None:
    text = (OBS / "known_metrics.txt").read_text()
    assert "Captured" in text and "1.40" in text and "2.51.0" in text
    sources = {line.split()[0] for line in text.splitlines() if line and not line.startswith("#")}
    assert sources == {"envoy", "triton"}


def test_dashboard_shape(dashboard: dict[str, Any]) -> None:
    assert dashboard["schemaVersion"] >= 39 and dashboard["uid"] and dashboard["title"]
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["DS_PROMETHEUS"]["type"] == "datasource" and variables["DS_PROMETHEUS"]["query"] == "prometheus"
    ids = [p["id"] for p in _panels(dashboard)]
    assert len(ids) == len(set(ids)), "panel ids repeat"
    for p in _panels(dashboard):
        if p["type"] == "row":
            continue
        assert p["datasource"]["uid"] == "${DS_PROMETHEUS}", p["title"]
        assert p["targets"], p["title"]
        refs = [t["refId"] for t in p["targets"]]
        assert len(refs) == len(set(refs)), p["title"]
        for t in p["targets"]:
            assert t["datasource"]["uid"] == "${DS_PROMETHEUS}", p["title"]
            assert t["expr"].count("(") == t["expr"].count(")"), f"unbalanced parentheses in {p['title']}"
        g = p["gridPos"]
        assert 0 <= g["x"] and g["x"] + g["w"] <= 24, p["title"]


def test_dashboard_covers_the_issue(dashboard: dict[str, Any]) -> None:
    used = set().union(*(metric_names(e) for _, e in _exprs(dashboard)))
    wanted = {
        "sidegate_requests_total", "sidegate_ext_proc_phase_seconds_bucket", "sidegate_stage_seconds_bucket",
        "sidegate_guard_verdicts_total", "sidegate_intent_matches_total", "sidegate_llm_tokens_total",
        "sidegate_time_to_first_token_seconds_bucket", "sidegate_errors_total", "sidegate_model_server_errors_total",
        "sidegate_upstream_responses_total", "envoy_http_downstream_rq_total", "nv_inference_queue_duration_us",
    }
    assert wanted <= used, wanted - used
    # every family of the ext_proc registry is on the dashboard
    families = {f.name for f in Metrics().registry.collect()}
    assert {f for f in families if not any(n.startswith(f) for n in used)} == set()


def test_dashboard_names_only_metrics_that_exist(dashboard: dict[str, Any]) -> None:
    sidegate = _sidegate_series()
    external = _known_external()
    for title, expr in _exprs(dashboard):
        names = metric_names(expr)
        assert names, f"{title}: no metric in {expr}"
        for name in names:
            if name.startswith("sidegate_"):
                assert name in sidegate, f"{title}: {name} is not in ext_proc.metrics.Metrics"
            else:
                assert name in external, f"{title}: {name} was not seen on a real Envoy/Triton (known_metrics.txt)"
        # labels grouped by exist on the sidegate metrics queried (Envoy/Triton labels: job, model, envoy_*)
        side = [n for n in names if n.startswith("sidegate_")]
        if side:
            allowed = set().union(*(sidegate[n] for n in side)) | {"job", "instance"}
            assert grouping_labels(expr) <= allowed, f"{title}: groups by {grouping_labels(expr) - allowed}"


def test_dashboard_variables_name_existing_metrics(dashboard: dict[str, Any]) -> None:
    known = set(_sidegate_series()) | set(_known_external())
    for v in dashboard["templating"]["list"]:
        if v["type"] == "query":
            m = re.fullmatch(r"label_values\((\w+),\s*(\w+)\)", v["definition"])
            assert m and m.group(1) in known, v["name"]


def test_readme_lists_every_sidegate_metric() -> None:
    text = (OBS / "README.md").read_text()
    for family in Metrics().registry.collect():
        assert family.name in text, family.name
