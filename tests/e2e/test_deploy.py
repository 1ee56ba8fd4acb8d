"""The Grafana dashboard and the Prometheus alert rules in deploy/ name only what the
gateway's /metrics exports: every metric, every label, every closed-set label value."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from exitgate.errors import Code
from exitgate.model import NodeKind, NodeState, Protocol
from exitgate.observe.metrics import FAMILIES
from exitgate.observe.stats import AUTH_REASONS, LIMIT_KINDS
from tests.support.gateway import GatewayThread

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
DASHBOARD = DEPLOY / "grafana" / "exitgate.json"
ALERTS = DEPLOY / "prometheus" / "alerts.yml"

METRIC = re.compile(r"\b(exitgate_[a-zA-Z0-9_]+)\s*(\{[^}]*\})?")
MATCHER = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*"([^"]*)"')
TARGET_LABELS = {"instance", "job"}  # added by Prometheus, not by the gateway
CLOSED_VALUES: dict[str, set[str]] = {
    "code": {"OK", "ABORTED", *(c.value for c in Code)},
    "protocol": {p.value for p in Protocol},
    "kind": {k.value for k in NodeKind},
    "state": {s.value for s in NodeState},
    "direction": {"up", "down"},
    "limit": set(LIMIT_KINDS),
    "reason": set(AUTH_REASONS),
}
SUFFIXES = {
    "counter": ("_total",),
    "gauge": ("",),
    "histogram": ("_bucket", "_sum", "_count"),
    "info": ("_info",),
}


def expressions_in_dashboard() -> Iterator[str]:
    def walk(node: Any) -> Iterator[str]:
        if isinstance(node, dict):
            for k, v in node.items():
                if k == "expr" and isinstance(v, str):
                    yield v
                else:
                    yield from walk(v)
        elif isinstance(node, list):
            for item in node:
                yield from walk(item)

    dashboard = json.loads(DASHBOARD.read_text())
    yield from walk(dashboard["panels"])
    yield from walk(dashboard["templating"])


def expressions_in_alerts() -> Iterator[str]:
    rules = yaml.safe_load(ALERTS.read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            assert {"alert", "expr", "labels", "annotations"} <= set(rule), rule
            assert rule["labels"]["severity"] in ("warning", "critical")
            yield rule["expr"]


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[str, ...]]:
    """Sample name → the family's labels, as the real gateway's /metrics says."""
    gw = GatewayThread(tmp_path_factory.mktemp("deploy"))
    try:
        text = httpx.get(f"{gw.bound.admin_url}/metrics", timeout=5).text
    finally:
        gw.stop()
    names: dict[str, tuple[str, ...]] = {}
    for family in text_string_to_metric_families(text):
        base = family.name + {"counter": "_total", "info": "_info"}.get(family.type, "")
        labels = FAMILIES[base]
        for suffix in SUFFIXES[family.type]:
            names[family.name + suffix] = labels + (("le",) if suffix == "_bucket" else ())
    return names


@pytest.mark.parametrize(
    "source", [expressions_in_dashboard, expressions_in_alerts], ids=["grafana", "alerts"]
)
def test_every_metric_label_and_value_in_deploy_is_exported(
    exported: dict[str, tuple[str, ...]], source: Any
) -> None:
    expressions = list(source())
    assert expressions
    for expr in expressions:
        # every expression is about the gateway (the one exception: the scrape's own `up`)
        assert METRIC.search(expr) or expr.startswith('up{job="exitgate"}'), expr
        for match in METRIC.finditer(expr):
            name, selector = match.group(1), match.group(2) or ""
            assert name in exported, f"{name} (in {expr!r}) is not exported by /metrics"
            for label, op, val in MATCHER.findall(selector):
                if label in TARGET_LABELS:
                    continue
                assert label in exported[name], f"{name} has no label {label!r}: {expr!r}"
                closed = CLOSED_VALUES.get(label)
                if closed is None:
                    continue
                values = val.split("|") if op in ("=~", "!~") else [val]
                unknown = {v for v in values if v not in closed}
                assert not unknown, f"{label} values {unknown} never exported: {expr!r}"
    if source is expressions_in_dashboard:  # the dashboard shows every family
        shown = {m.group(1) for e in expressions for m in METRIC.finditer(e)}
        families = {n.removesuffix("_bucket") for n in shown} | shown
        for family in FAMILIES:
            assert any(f.startswith(family.removesuffix("_total")) for f in families), family


def test_a_wrong_name_would_fail(exported: dict[str, tuple[str, ...]]) -> None:
    """The check itself: a misspelt metric is not among the exported names."""
    assert "exitgate_requests_total" in exported
    assert "exitgate_request_total" not in exported
    assert "exitgate_bytes_total" in exported and "exitgate_bytes" not in exported
