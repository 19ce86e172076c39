"""Checks of deploy/ that need no cluster: settings coverage, the Grafana queries (promtool), kustomize fallback. The
alerting rules have their own, check_alerts.py."""

from __future__ import annotations

import argparse
import ast
import json
import math
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

DEPLOY = Path(__file__).resolve().parent
ROOT = DEPLOY.parent
DASHBOARD = DEPLOY / "grafana" / "ocpi-hub-dashboard.json"


def exported_names() -> tuple[str, ...]:
    """The metrics the hub exports on /metrics (hub/metrics.py), as the exposition names them (a counter with
    _total); every one must be on the dashboard. Read, not imported, as the settings are."""
    tree = ast.parse((ROOT / "hub" / "metrics.py").read_text(encoding="utf-8"))
    names = []
    for node in ast.walk(tree):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.args
                and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):  # fmt: skip
            kind = node.func.id
            if kind in ("Counter", "CounterMetricFamily"):
                names.append(f"{node.args[0].value}_total")
            elif kind in ("Histogram", "Gauge", "GaugeMetricFamily", "Summary"):
                names.append(node.args[0].value)
    return tuple(names)


METRICS = exported_names()

# Grafana's variables, as a Prometheus rule evaluation sees them (the test samples are one minute apart).
GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "1h", "$job": ".*", "$receiver": ".*"}

# Two hub instances (a, b) exporting counters that grow linearly, so every rate below is exact.
_LABELS = 'job="ocpi-hub"'
_SERIES = [
    (
        'ocpi_hub_requests_total{%s, instance="a", module="locations", method="GET", routing="direct", '
        'ocpi_status="1000"}',
        "0+30x10",
    ),
    (
        'ocpi_hub_requests_total{%s, instance="b", module="locations", method="GET", routing="direct", '
        'ocpi_status="1000"}',
        "0+30x10",
    ),
    (
        'ocpi_hub_requests_total{%s, instance="a", module="commands", method="POST", routing="open", '
        'ocpi_status="2001"}',
        "0+6x10",
    ),
    (
        'ocpi_hub_requests_total{%s, instance="b", module="tariffs", method="PUT", routing="broadcast", '
        'ocpi_status="3000"}',
        "0+12x10",
    ),
    (
        'ocpi_hub_requests_total{%s, instance="a", module="sessions", method="PUT", routing="rejected", '
        'ocpi_status="4001"}',
        "0+12x10",
    ),
    # 100 forwards a minute to NL-ABC: 50 within 50 ms, 40 more within 100 ms, the last 10 within 500 ms.
    ('ocpi_hub_forward_duration_seconds_bucket{%s, instance="a", receiver="NL-ABC", le="0.05"}', "0+50x10"),
    ('ocpi_hub_forward_duration_seconds_bucket{%s, instance="a", receiver="NL-ABC", le="0.1"}', "0+90x10"),
    ('ocpi_hub_forward_duration_seconds_bucket{%s, instance="a", receiver="NL-ABC", le="0.5"}', "0+100x10"),
    ('ocpi_hub_forward_duration_seconds_bucket{%s, instance="a", receiver="NL-ABC", le="+Inf"}', "0+100x10"),
    ('ocpi_hub_forward_duration_seconds_count{%s, instance="a", receiver="NL-ABC"}', "0+100x10"),
    ('ocpi_hub_forward_duration_seconds_sum{%s, instance="a", receiver="NL-ABC"}', "0+9x10"),
    # 12 waits a minute for a connection: 9 then forwarded (6 for the caller's share, 3 for a connection), 3 not.
    *(
        (f'ocpi_hub_connection_wait_seconds_count{{%s, instance="{i}", waited_for="{w}", result="{r}"}}', v)
        for i, w, r, v in (
            ("a", "caller_share", "forwarded", "0+5x10"),
            ("b", "caller_share", "forwarded", "0+1x10"),
            ("a", "connections", "forwarded", "0+3x10"),
            ("a", "connections", "not_forwarded", "0+3x10"),
        )
    ),
    # 10 group commits a minute writing 120 rows: 2 of at most 1 row, 4 more of at most 10, 4 more of at most 50.
    ('ocpi_hub_routing_log_batch_rows_bucket{%s, instance="a", le="1"}', "0+2x10"),
    ('ocpi_hub_routing_log_batch_rows_bucket{%s, instance="a", le="10"}', "0+6x10"),
    ('ocpi_hub_routing_log_batch_rows_bucket{%s, instance="a", le="50"}', "0+10x10"),
    ('ocpi_hub_routing_log_batch_rows_bucket{%s, instance="a", le="+Inf"}', "0+10x10"),
    ('ocpi_hub_routing_log_batch_rows_count{%s, instance="a"}', "0+10x10"),
    ('ocpi_hub_routing_log_batch_rows_sum{%s, instance="a"}', "0+120x10"),
    # Those 10 commits: 5 within 1 ms, the other 5 within 10 ms.
    ('ocpi_hub_routing_log_commit_seconds_bucket{%s, instance="a", le="0.001"}', "0+5x10"),
    ('ocpi_hub_routing_log_commit_seconds_bucket{%s, instance="a", le="0.01"}', "0+10x10"),
    ('ocpi_hub_routing_log_commit_seconds_bucket{%s, instance="a", le="+Inf"}', "0+10x10"),
    # Writes failed a minute: 2 retried on a, none refused.
    ('ocpi_hub_routing_log_write_failures_total{%s, instance="a", kind="retried"}', "0+2x10"),
    ('ocpi_hub_routing_log_write_failures_total{%s, instance="a", kind="refused"}', "0x10"),
    # Rows waiting for their commit: 120 on a, none on b.
    ('ocpi_hub_routing_log_rows_waiting{%s, instance="a"}', "120x10"),
    ('ocpi_hub_routing_log_rows_waiting{%s, instance="b"}', "0x10"),
    ('ocpi_hub_location_cache_requests_total{%s, instance="a", result="hit"}', "0+180x10"),
    ('ocpi_hub_location_cache_requests_total{%s, instance="a", result="miss"}', "0+60x10"),
    ('ocpi_hub_location_sync_total{%s, instance="a", result="ok", kind="incremental"}', "0+1x10"),
    ('ocpi_hub_location_sync_total{%s, instance="b", result="ok", kind="full"}', "0+0x10"),
    ('ocpi_hub_location_sync_total{%s, instance="a", result="failed", kind="incremental"}', "0+0x10"),
    # ClientInfo pushes: 1/s taken on a, 0.1/s refused on b, none unanswered.
    ('ocpi_hub_client_info_pushes_total{%s, instance="a", result="taken"}', "0+60x10"),
    ('ocpi_hub_client_info_pushes_total{%s, instance="b", result="refused"}', "0+6x10"),
    ('ocpi_hub_client_info_pushes_total{%s, instance="a", result="unanswered"}', "0+0x10"),
    # Owner pulls a minute: 2 of tokens ok on a, 1 of sessions failed on b; objects: 600 + 60 tokens a minute.
    ('ocpi_hub_owner_pull_total{%s, instance="a", module="tokens", result="ok"}', "0+2x10"),
    ('ocpi_hub_owner_pull_total{%s, instance="b", module="sessions", result="failed"}', "0+1x10"),
    ('ocpi_hub_owner_pull_objects_total{%s, instance="a", module="tokens"}', "0+600x10"),
    ('ocpi_hub_owner_pull_objects_total{%s, instance="b", module="tokens"}', "0+60x10"),
    # Refusals a minute: NL-ABC's pages 3 on a and 1 on b, DE-XYZ's results 1; NL-ABC's locations over cap 5.
    ('ocpi_hub_hub_urls_spent_total{%s, instance="a", party="NL-ABC", kind="pages"}', "0+3x10"),
    ('ocpi_hub_hub_urls_spent_total{%s, instance="b", party="NL-ABC", kind="pages"}', "0+1x10"),
    ('ocpi_hub_hub_urls_spent_total{%s, instance="a", party="DE-XYZ", kind="results"}', "0+1x10"),
    ('ocpi_hub_location_cache_over_cap_total{%s, instance="a", party="NL-ABC", cap="locations"}', "0+5x10"),
    # Redis lost its data once a minute, and both instances noticed: shown once, not twice.
    ('ocpi_hub_location_cache_lost_total{%s, instance="a"}', "0+1x10"),
    ('ocpi_hub_location_cache_lost_total{%s, instance="b"}', "0+1x10"),
    ('ocpi_hub_owner_index_lost_total{%s, instance="a", module="tokens"}', "0+2x10"),
    ('ocpi_hub_owner_index_lost_total{%s, instance="b", module="tokens"}', "0+2x10"),
    # Both instances report the same party status: the dashboard must not count a party twice.
    *(
        (f'ocpi_hub_party_status{{%s, instance="{i}", party="NL-ABC", role="CPO", status="{s}", suspended="false"}}', v)
        for i in "ab"
        for s, v in (("CONNECTED", "1x10"), ("OFFLINE", "0x10"))
    ),
    *(
        (
            f'ocpi_hub_party_status{{%s, instance="{i}", party="DE-XYZ", role="EMSP", status="{s}", '
            f'suspended="false"}}',
            v,
        )
        for i in "ab"
        for s, v in (("CONNECTED", "0x10"), ("OFFLINE", "1x10"))
    ),
]

# (panel title, refId) -> the samples that query must give at 10m on the series above, worked out by hand.
EXPECTED: dict[tuple[str, str], list[tuple[str, float]]] = {
    ("Requests/s", "A"): [("{}", 1.5)],  # (30 + 30 + 6 + 12 + 12) per minute
    ("Error ratio", "A"): [("{}", 0.5 / 1.5)],
    ("Request rate by module", "A"): [
        ('{module="locations"}', 1.0),
        ('{module="commands"}', 0.1),
        ('{module="tariffs"}', 0.2),
        ('{module="sessions"}', 0.2),
    ],
    ("Request rate by OCPI status", "A"): [
        ('{ocpi_status="1000"}', 1.0),
        ('{ocpi_status="2001"}', 0.1),
        ('{ocpi_status="3000"}', 0.2),
        ('{ocpi_status="4001"}', 0.2),
    ],
    ("Error rate", "A"): [("{}", 0.1)],
    ("Error rate", "B"): [("{}", 0.2)],
    ("Error rate", "C"): [("{}", 0.2)],
    ("Error rate", "D"): [("{}", 0.5 / 1.5)],
    # rank 50 of 100 ends the 50 ms bucket; rank 95 and 99 fall in (0.1, 0.5], which holds ranks 90..100.
    ("Forward latency by receiver (all quantiles)", "A"): [('{receiver="NL-ABC"}', 0.05)],
    ("Forward latency by receiver (all quantiles)", "B"): [('{receiver="NL-ABC"}', 0.1 + 0.4 * 5 / 10)],
    ("Forward latency by receiver (all quantiles)", "C"): [('{receiver="NL-ABC"}', 0.1 + 0.4 * 9 / 10)],
    ("Forward latency p95 by receiver", "A"): [('{receiver="NL-ABC"}', 0.3)],
    ("Forwards/s by receiver", "A"): [('{receiver="NL-ABC"}', 100 / 60)],
    ("Waits for a connection by what was waited for and result", "A"): [
        ('{waited_for="caller_share", result="forwarded"}', 0.1),
        ('{waited_for="connections", result="forwarded"}', 0.05),
        ('{waited_for="connections", result="not_forwarded"}', 0.05),
    ],
    # rank 5 of 10 falls in (1, 10], which holds ranks 2..6.
    ("Routing-log batch size", "A"): [("{}", 1 + 9 * 3 / 4)],
    ("Routing-log batch size", "D"): [("{}", 12.0)],
    ("Routing-log commit latency", "A"): [("{}", 0.001)],
    ("Routing-log commit latency", "C"): [("{}", 0.001 + 0.009 * 4.9 / 5)],
    ("Routing-log rows and commits per second", "A"): [("{}", 2.0)],
    ("Routing-log rows and commits per second", "B"): [("{}", 10 / 60)],
    ("Routing-log writes failed", "A"): [('{kind="retried"}', 2.0), ('{kind="refused"}', 0.0)],
    ("Routing-log rows waiting", "A"): [('{instance="a"}', 120.0), ('{instance="b"}', 0.0)],
    ("Location cache hit ratio", "A"): [("{}", 0.75)],
    ("Location cache requests", "A"): [('{result="hit"}', 3.0), ('{result="miss"}', 1.0)],
    ("Location sync results", "A"): [('{result="ok"}', 1.0), ('{result="failed"}', 0.0)],
    ("ClientInfo pushes by result", "A"): [
        ('{result="taken"}', 1.0),
        ('{result="refused"}', 0.1),
        ('{result="unanswered"}', 0.0),
    ],
    ("Owner index pulls by module and result", "A"): [
        ('{module="tokens", result="ok"}', 2.0),
        ('{module="sessions", result="failed"}', 1.0),
    ],
    ("Objects pulled into the owner index", "A"): [('{module="tokens"}', 11.0)],
    ("Requests refused: a platform's hub URLs for the day spent", "A"): [
        ('{party="NL-ABC", kind="pages"}', 4.0),
        ('{party="DE-XYZ", kind="results"}', 1.0),
    ],
    ("Locations not cached: a CPO's cache at its cap", "A"): [('{party="NL-ABC", cap="locations"}', 5.0)],
    ("Redis data lost (caches and owner index found without their mark)", "A"): [("{}", 1.0)],
    ("Redis data lost (caches and owner index found without their mark)", "B"): [('{module="tokens"}', 2.0)],
    ("Party roles by status", "A"): [('{status="CONNECTED"}', 1.0), ('{status="OFFLINE"}', 1.0)],
    ("Parties not CONNECTED", "A"): [("{}", 1.0)],
    ("Party roles not CONNECTED", "A"): [('{party="DE-XYZ", role="EMSP", status="OFFLINE", suspended="false"}', 1.0)],
}


def settings_coverage() -> list[str]:
    """Problems: a setting (hub/settings_variables.py) missing from the Kubernetes config, or unknown in deploy/."""
    tree = ast.parse((ROOT / "hub" / "settings_variables.py").read_text(encoding="utf-8"))
    variables = next(  # read, not imported: the check needs none of the hub's dependencies
        ast.literal_eval(node.value)
        for node in tree.body
        if isinstance(node, ast.AnnAssign)
        and isinstance(node.target, ast.Name)
        and node.target.id == "VARIABLES"
        and node.value is not None
    )
    known = {name for name, _, _ in variables}
    config = yaml.safe_load((DEPLOY / "kubernetes" / "configmap.yaml").read_text(encoding="utf-8"))["data"]
    secret = yaml.safe_load((DEPLOY / "kubernetes" / "secret.yaml").read_text(encoding="utf-8"))["stringData"]
    problems = [f"kubernetes: {name} is neither in configmap.yaml nor in secret.yaml"
                for name in sorted(known - set(config) - set(secret))]  # fmt: skip
    for path in (DEPLOY / "docker-compose.yml", DEPLOY / ".env.example", *sorted(DEPLOY.glob("kubernetes/*.yaml"))):
        for name in sorted(set(re.findall(r"\bOCPI_HUB_[A-Z0-9_]+", path.read_text(encoding="utf-8")))):
            if name not in known and name not in ("OCPI_HUB_IMAGE", "OCPI_HUB_PORT"):
                problems.append(f"{path.relative_to(ROOT)}: {name} is not a setting of hub/settings_variables.py")
    return problems


def _queries(dashboard: dict[str, Any]) -> dict[tuple[str, str], str]:
    queries = {}
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            expr = target["expr"]
            for variable, value in GRAFANA_VARIABLES.items():
                expr = expr.replace(variable, value)
            queries[(panel["title"], target["refId"])] = expr
    return queries


def metrics_named(text: str) -> set[str]:
    """The hub's metrics a text of queries names, a histogram's by its own name rather than its series'."""
    return {re.sub(r"_(bucket|count|sum)$", "", name) for name in re.findall(r"\bocpi_hub_\w+", text)}


def promtool_failures(what: str, commands: list[list[str]], cwd: str) -> list[str]:
    """A problem for each promtool command that fails, run in cwd, with what it printed."""
    problems = []
    for command in commands:
        done = subprocess.run(command, cwd=cwd, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            problems.append(f"{what}: {' '.join(command[1:])} failed:\n{done.stdout}{done.stderr}")
    return problems


def dashboard_structure(dashboard: dict[str, Any]) -> list[str]:
    problems = []
    ids = [panel["id"] for panel in dashboard["panels"]]
    if len(ids) != len(set(ids)):
        problems.append("dashboard: panel ids are not unique")
    text = json.dumps(dashboard["panels"])
    problems += [f"dashboard: no panel shows {metric}" for metric in METRICS if metric not in text]
    problems += [f"dashboard: a query names {name}, which hub/metrics.py does not export"
                 for name in sorted(metrics_named(text) - set(METRICS))]  # fmt: skip
    queries = _queries(dashboard)
    problems += [f"dashboard: no query {key} to test" for key in EXPECTED if key not in queries]
    problems += [f"dashboard: {key} uses an unknown Grafana variable" for key, expr in queries.items() if "$" in expr]
    return problems


# promtool compares floats exactly: both sides are rounded the way PromQL's round() does it.
_ROUND = 1e-9


def _round(value: float) -> float:
    return math.floor(value * (1.0 / _ROUND) + 0.5) / (1.0 / _ROUND)


def dashboard_promql(dashboard: dict[str, Any], promtool: str) -> list[str]:
    """Every query parses (promtool check rules); the ones in EXPECTED give the hand-computed values."""
    queries = _queries(dashboard)
    rules = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [{"record": f"dashboard:panel:{i}", "expr": expr} for i, expr in enumerate(queries.values())],
            }
        ]
    }
    tests = {
        "evaluation_interval": "1m",
        "rule_files": ["rules.yml"],
        "tests": [
            {
                "interval": "1m",
                "input_series": [{"series": series % _LABELS, "values": values} for series, values in _SERIES],
                "promql_expr_test": [
                    {
                        "expr": f"round({queries[key]}, {_ROUND})",
                        "eval_time": "10m",
                        "exp_samples": [{"labels": labels, "value": _round(value)} for labels, value in samples],
                    }
                    for key, samples in EXPECTED.items()
                    if key in queries
                ],
            }
        ],
    }
    with tempfile.TemporaryDirectory() as tmp:
        Path(tmp, "rules.yml").write_text(yaml.safe_dump(rules), encoding="utf-8")
        Path(tmp, "test.yml").write_text(yaml.safe_dump(tests), encoding="utf-8")
        commands = [[promtool, "check", "rules", "rules.yml"], [promtool, "test", "rules", "test.yml"]]
        return promtool_failures("dashboard", commands, tmp)


def exported_metrics(exposition: str) -> list[str]:
    """Problems: a metric of hub/metrics.py, as read here, that a hub's /metrics output does not declare, or one it
    declares that the reading missed, and with it the dashboard check (a single-process hub declares them all; a
    worker of several only those it has values of)."""
    declared = {m for m in re.findall(r"^# TYPE (ocpi_hub_\w+) ", exposition, flags=re.MULTILINE)
                if not m.endswith("_created")}  # fmt: skip
    problems = [f"/metrics: {metric} is not exported" for metric in METRICS if metric not in declared]
    problems += [f"/metrics: {metric} is exported, but deploy/check.py does not find it in hub/metrics.py"
                 for metric in sorted(declared - set(METRICS))]  # fmt: skip
    return problems


def render_kustomization(directory: Path) -> str:
    """What `kubectl kustomize` gives for this kustomization (namespace, labels, image), where kubectl is missing."""
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text(encoding="utf-8"))
    labels = {k: v for entry in kustomization.get("labels", []) for k, v in entry["pairs"].items()}
    images = {image["name"]: f"{image.get('newName', image['name'])}:{image['newTag']}"
              for image in kustomization.get("images", [])}  # fmt: skip
    documents = []
    for resource in kustomization["resources"]:
        for document in yaml.safe_load_all((directory / resource).read_text(encoding="utf-8")):
            if document["kind"] != "Namespace":
                document["metadata"]["namespace"] = kustomization["namespace"]
            document["metadata"].setdefault("labels", {}).update(labels)
            spec = document.get("spec", {})
            spec = spec.get("jobTemplate", {}).get("spec", spec)  # a CronJob's pods are one level further down
            pod = spec.get("template", {}).get("spec", {})
            for container in pod.get("containers", []):
                container["image"] = images.get(container["image"], container["image"])
            documents.append(document)
    return yaml.safe_dump_all(documents, sort_keys=False)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("check", choices=("settings", "dashboard", "metrics", "kustomize"))
    parser.add_argument("--promtool", help="run the dashboard's queries through promtool test rules")
    parser.add_argument("--exposition", type=Path, help="a hub's /metrics output, for the metrics check")
    args = parser.parse_args(argv)
    if args.check == "kustomize":
        print(render_kustomization(DEPLOY / "kubernetes"), end="")
        return 0
    if args.check == "settings":
        problems = settings_coverage()
    elif args.check == "metrics":
        problems = exported_metrics(args.exposition.read_text(encoding="utf-8"))
    else:
        dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
        problems = dashboard_structure(dashboard)
        if args.promtool and not problems:
            problems = dashboard_promql(dashboard, args.promtool)
    for problem in problems:
        print(problem, file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
