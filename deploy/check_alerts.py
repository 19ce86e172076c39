"""Checks of deploy/prometheus/ocpi-hub-alerts.yml: every rule is an alert with a severity, a summary and a description
that name only its own labels and metrics the hub exports, and promtool's unit tests (generated from CASES below) see
each alert fire where it should, with the labels and annotations it should have, and stay quiet where it should not.

    python deploy/check_alerts.py [--promtool PATH]   # without promtool: the structure alone
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml
from check import DEPLOY, METRICS, metrics_named, promtool_failures

ALERTS = DEPLOY / "prometheus" / "ocpi-hub-alerts.yml"
SEVERITIES = ("critical", "warning")
_LABEL = re.compile(r"\{\{\s*\$labels\.(\w+)\s*\}\}")  # the one template the annotations use

Series = tuple[str, str]  # a series without its job label, and its values a minute apart (promtool's notation)
Expected = tuple[str, str, list[dict[str, str]]]  # (eval time, alert, the label sets firing then beyond severity)


def _requests(instance: str, status: str, routing: str = "direct") -> str:
    return (f'ocpi_hub_requests_total{{instance="{instance}", module="sessions", method="PUT", routing="{routing}", '
            f'ocpi_status="{status}"}}')  # fmt: skip


_OK = _requests("a", "1000")  # the traffic that went well, beside the failures of a case


def _buckets(metric: str, labels: str, per_minute: dict[str, int], minutes: int) -> list[Series]:
    """A histogram's buckets, each growing by its count (observations up to le) every minute."""
    return [(f'{metric}_bucket{{{labels}, le="{le}"}}', f"0+{count}x{minutes}") for le, count in per_minute.items()]


# Each case is a promtool test of its own: its series, and what fires when. An empty list is an alert expected quiet.
CASES: list[tuple[str, list[Series], list[Expected]]] = [
    (
        "writes retried for minutes on one instance, once on another",
        [
            ('ocpi_hub_routing_log_write_failures_total{instance="a", kind="retried"}', "0x5 1+1x20"),
            ('ocpi_hub_routing_log_write_failures_total{instance="b", kind="retried"}', "0x5 1x20"),
            ('ocpi_hub_routing_log_write_failures_total{instance="a", kind="refused"}', "0x25"),
        ],
        [
            ("4m", "OcpiHubRoutingLogWritesFailing", []),
            ("8m", "OcpiHubRoutingLogWritesFailing", []),  # failing for 3 minutes, not yet: a blip never fires
            ("15m", "OcpiHubRoutingLogWritesFailing", [{"instance": "a"}]),
            ("15m", "OcpiHubRoutingLogRowsRefused", []),
        ],
    ),
    (
        "rows refused once, then none for a quarter of an hour",
        [
            ('ocpi_hub_routing_log_write_failures_total{instance="a", kind="refused"}', "0x10 1x30"),
            ('ocpi_hub_routing_log_write_failures_total{instance="b", kind="refused"}', "0x40"),
            ('ocpi_hub_routing_log_write_failures_total{instance="b", kind="retried"}', "0+1x40"),
        ],
        [
            ("5m", "OcpiHubRoutingLogRowsRefused", []),
            ("15m", "OcpiHubRoutingLogRowsRefused", [{"instance": "a"}]),
            ("40m", "OcpiHubRoutingLogRowsRefused", []),
        ],
    ),
    (
        "commits within 100 ms on one instance, most over 250 ms on another",
        [
            *_buckets("ocpi_hub_routing_log_commit_seconds", 'instance="a"', {"0.1": 10, "1": 10, "+Inf": 10}, 30),
            *_buckets("ocpi_hub_routing_log_commit_seconds", 'instance="b"', {"0.25": 1, "1": 10, "+Inf": 10}, 30),
        ],
        [
            ("8m", "OcpiHubRoutingLogCommitsSlow", []),
            ("20m", "OcpiHubRoutingLogCommitsSlow", [{"instance": "b"}]),
        ],
    ),
    (
        "rows piling up on one instance for minutes, a burst of them on another",
        [
            ('ocpi_hub_routing_log_rows_waiting{instance="a"}', "0x5 6000+1000x20"),
            ('ocpi_hub_routing_log_rows_waiting{instance="b"}', "0x5 9000x3 0x15"),
        ],
        [
            ("8m", "OcpiHubRoutingLogRowsPiling", []),  # over 5,000 for 3 minutes on both: neither yet
            ("15m", "OcpiHubRoutingLogRowsPiling", [{"instance": "a"}]),
        ],
    ),
    (
        "one request in eleven answered 4000, from the tenth minute",
        [(_OK, "0+600x40"), (_requests("b", "4000"), "0x10 0+60x30")],
        [("10m", "OcpiHubAnswering4000", []), ("35m", "OcpiHubAnswering4000", [{}])],
    ),
    (
        "one request in a hundred answered 4000",
        [(_OK, "0+600x40"), (_requests("a", "4000"), "0+6x40")],
        [("35m", "OcpiHubAnswering4000", [])],
    ),
    (
        "receivers not reached or too slow for about one request in eight, from the tenth minute",
        [(_OK, "0+600x40"), (_requests("a", "4003"), "0x10 0+60x30"), (_requests("b", "4002"), "0x10 0+30x30")],
        [("10m", "OcpiHubReceiversUnreachable", []), ("35m", "OcpiHubReceiversUnreachable", [{}])],
    ),
    (
        "half of a trickle of requests not reaching their receiver: below the floor of one a minute",
        [(_OK, "0+0.5x40"), (_requests("a", "4003"), "0+0.5x40")],
        [("35m", "OcpiHubReceiversUnreachable", [])],
    ),
    (
        "one receiver answering within 50 ms, another in 10 to 30 s",
        [
            *_buckets(
                "ocpi_hub_forward_duration_seconds", 'instance="a", receiver="NL-ABC"', {"0.05": 60, "+Inf": 60}, 40
            ),
            *_buckets(
                "ocpi_hub_forward_duration_seconds",
                'instance="a", receiver="DE-XYZ"',
                {"10": 6, "30": 60, "+Inf": 60},
                40,
            ),
        ],
        [("10m", "OcpiHubReceiverSlow", []), ("30m", "OcpiHubReceiverSlow", [{"receiver": "DE-XYZ"}])],
    ),
    (
        "a party OFFLINE on both instances; one suspended; one OFFLINE ten minutes, then CONNECTED",
        [
            *(
                (
                    f'ocpi_hub_party_status{{instance="{i}", party="NL-ABC", role="CPO", status="OFFLINE", '
                    'suspended="false"}',
                    "1x40",
                )
                for i in "ab"
            ),
            (
                'ocpi_hub_party_status{instance="a", party="DE-XYZ", role="EMSP", status="OFFLINE", suspended="true"}',
                "1x40",
            ),
            (
                'ocpi_hub_party_status{instance="a", party="FR-QQQ", role="CPO", status="OFFLINE", suspended="false"}',
                "1x9 stale",
            ),
            (
                'ocpi_hub_party_status{instance="a", party="FR-QQQ", role="CPO", status="CONNECTED", '
                'suspended="false"}',
                "_x9 1x30",
            ),
        ],
        [("10m", "OcpiHubPartyOffline", []), ("30m", "OcpiHubPartyOffline", [{"party": "NL-ABC", "role": "CPO"}])],
    ),
    (
        "10 requests a second refused before routing, 2 routed",
        [(_OK, "0+120x40"), (_requests("a", "2000", "rejected"), "0+600x40")],
        [("10m", "OcpiHubMostRequestsRejected", []), ("30m", "OcpiHubMostRequestsRejected", [{}])],
    ),
    (
        "10 requests a second refused before routing, 100 routed",
        [(_OK, "0+6000x40"), (_requests("a", "2000", "rejected"), "0+600x40")],
        [("30m", "OcpiHubMostRequestsRejected", [])],
    ),
    (
        "every request refused, one a second: below the floor of five",
        [(_requests("a", "2000", "rejected"), "0+60x40")],
        [("30m", "OcpiHubMostRequestsRejected", [])],
    ),
    (
        "location caches lost at the twentieth minute, seen by both instances",
        [
            ('ocpi_hub_location_cache_lost_total{instance="a"}', "0x19 1x20"),
            ('ocpi_hub_location_cache_lost_total{instance="b"}', "0x19 1x20"),
            ('ocpi_hub_owner_index_lost_total{instance="a", module="tokens"}', "0x40"),
        ],
        [
            ("15m", "OcpiHubRedisDataLost", []),
            ("25m", "OcpiHubRedisDataLost", [{}]),
            ("35m", "OcpiHubRedisDataLost", []),
        ],
    ),
    (
        "the owner index lost at the twentieth minute, the location caches not",
        [
            ('ocpi_hub_location_cache_lost_total{instance="a"}', "0x40"),
            ('ocpi_hub_owner_index_lost_total{instance="a", module="sessions"}', "0x19 2x20"),
        ],
        [("25m", "OcpiHubRedisDataLost", [{}])],
    ),
    (
        "a location sync failing every ten minutes",
        [
            (
                'ocpi_hub_location_sync_total{instance="a", result="failed", kind="incremental"}',
                "0x9 1x9 2x9 3x9 4x9 5x9 6x9",
            ),
            ('ocpi_hub_location_sync_total{instance="b", result="ok", kind="incremental"}', "0+1x69"),
        ],
        [("25m", "OcpiHubLocationSyncsFailing", []), ("69m", "OcpiHubLocationSyncsFailing", [{}])],
    ),
    (
        "owner pulls of tokens failing every minute, of sessions going well",
        [
            ('ocpi_hub_owner_pull_total{instance="a", module="tokens", result="failed"}', "0+1x70"),
            ('ocpi_hub_owner_pull_total{instance="a", module="sessions", result="failed"}', "0x70"),
            ('ocpi_hub_owner_pull_total{instance="b", module="sessions", result="ok"}', "0+5x70"),
        ],
        [("2m", "OcpiHubOwnerPullsFailing", []), ("70m", "OcpiHubOwnerPullsFailing", [{"module": "tokens"}])],
    ),
    (
        "ClientInfo pushes refused once a minute from the thirtieth",
        [
            ('ocpi_hub_client_info_pushes_total{instance="a", result="refused"}', "0x30 1+1x40"),
            ('ocpi_hub_client_info_pushes_total{instance="a", result="taken"}', "0+10x70"),
            ('ocpi_hub_client_info_pushes_total{instance="b", result="unanswered"}', "0+10x70"),
        ],
        [("30m", "OcpiHubClientInfoRefused", []), ("70m", "OcpiHubClientInfoRefused", [{}])],
    ),
    (
        "one party's paging links refused from the tenth minute",
        [
            ('ocpi_hub_hub_urls_spent_total{instance="a", party="NL-ABC", kind="pages"}', "0x10 1+1x20"),
            ('ocpi_hub_hub_urls_spent_total{instance="b", party="DE-XYZ", kind="results"}', "0x30"),
        ],
        [("5m", "OcpiHubHubUrlsSpent", []), ("20m", "OcpiHubHubUrlsSpent", [{"party": "NL-ABC", "kind": "pages"}])],
    ),
    (
        "one CPO's locations over its cap from the tenth minute",
        [
            ('ocpi_hub_location_cache_over_cap_total{instance="a", party="NL-ABC", cap="locations"}', "0x10 5+5x20"),
            ('ocpi_hub_location_cache_over_cap_total{instance="a", party="DE-XYZ", cap="bytes"}', "0x30"),
        ],
        [
            ("5m", "OcpiHubLocationCacheAtCap", []),
            ("20m", "OcpiHubLocationCacheAtCap", [{"party": "NL-ABC", "cap": "locations"}]),
        ],
    ),
]


def _rules() -> dict[str, dict[str, Any]]:
    """The alerts of the rule file by name."""
    groups = yaml.safe_load(ALERTS.read_text(encoding="utf-8"))["groups"]
    return {rule.get("alert", rule.get("record", "?")): rule for group in groups for rule in group["rules"]}


def structure(rules: dict[str, dict[str, Any]]) -> list[str]:
    problems = []
    known = set(METRICS)
    for name, rule in rules.items():
        if "alert" not in rule:
            problems.append(f"alerts: {name} is not an alert")
            continue
        if rule.get("labels", {}).get("severity") not in SEVERITIES:
            problems.append(f"alerts: {name} has no severity of {', '.join(SEVERITIES)}")
        annotations = rule.get("annotations", {})
        for key in ("summary", "description"):
            if not annotations.get(key):
                problems.append(f"alerts: {name} has no {key}")
            elif "{{" in _LABEL.sub("", annotations[key]):
                problems.append(f"alerts: {name}'s {key} has a template other than {{{{ $labels.NAME }}}}")
        problems += [f"alerts: {name} reads {metric}, which hub/metrics.py does not export"
                     for metric in sorted(metrics_named(rule["expr"]) - known)]  # fmt: skip
    for name in rules:
        expectations = [firing for _, _, checks in CASES for _, alert, firing in checks if alert == name]
        if not any(expectations):
            problems.append(f"alerts: no case sees {name} fire")
        if all(expectations):
            problems.append(f"alerts: no case sees {name} stay quiet")
    problems += [f"alerts: a case expects {alert}, which the rule file does not have"
                 for _, _, checks in CASES for _, alert, _ in checks if alert not in rules]  # fmt: skip
    return problems


def _expected(rule: dict[str, Any], labels: dict[str, str]) -> dict[str, Any]:
    """An alert as promtool sees it fire: its labels and its annotations as Prometheus renders them."""
    annotations = {key: _LABEL.sub(lambda found: labels[found[1]], text) for key, text in rule["annotations"].items()}
    return {"exp_labels": labels | rule["labels"], "exp_annotations": annotations}


def promtool_tests(promtool: str, rules: dict[str, dict[str, Any]]) -> list[str]:
    tests = {
        "evaluation_interval": "1m",
        "rule_files": [str(ALERTS)],
        "tests": [
            {
                "name": name,
                "interval": "1m",
                "input_series": [
                    {"series": series.replace("{", '{job="ocpi-hub", ', 1), "values": values}
                    for series, values in series_list
                ],
                "alert_rule_test": [
                    {
                        "eval_time": at,
                        "alertname": alert,
                        "exp_alerts": [_expected(rules[alert], labels) for labels in firing],
                    }
                    for at, alert, firing in checks
                ],
            }
            for name, series_list, checks in CASES
        ],
    }
    with tempfile.TemporaryDirectory() as tmp:
        Path(tmp, "test.yml").write_text(yaml.safe_dump(tests, sort_keys=False), encoding="utf-8")
        commands = [[promtool, "check", "rules", str(ALERTS)], [promtool, "test", "rules", "test.yml"]]
        return promtool_failures("alerts", commands, tmp)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--promtool", help="also run the cases through promtool test rules")
    args = parser.parse_args(argv)
    rules = _rules()
    problems = structure(rules)
    if args.promtool and not problems:
        problems = promtool_tests(args.promtool, rules)
    for problem in problems:
        print(problem, file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
