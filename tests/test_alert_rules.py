"""The Prometheus rules of deploy/prometheus/alerts.yml: promtool accepts them and their unit
tests (deploy/prometheus/alerts_test.yml) pass, every alert carries a severity, a summary and a
runbook link to its section of the README, and the unit tests make every alert fire on its fault
and every group stay silent on healthy series.

promtool comes with Prometheus (Debian package: prometheus). Without it these tests skip, unless
``LSTM_TEST_REQUIRE_PROMETHEUS`` or ``CI`` is set (.ci/run sets the first): there they fail."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families
from prometheus_harness import prometheus_tool
from service_harness import ROOT, ServiceProcess, call

RULES_DIR = ROOT / "deploy" / "prometheus"
RULES = RULES_DIR / "alerts.yml"
RULE_TESTS = RULES_DIR / "alerts_test.yml"
README = ROOT / "README.md"
SEVERITIES = {"critical", "warning"}


def rule_groups() -> list[dict[str, Any]]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    assert isinstance(groups, list) and groups
    return groups


def alerts() -> dict[str, dict[str, Any]]:
    """Every alerting rule by name."""
    found: dict[str, dict[str, Any]] = {}
    for group in rule_groups():
        for rule in group["rules"]:
            if "alert" in rule:
                assert rule["alert"] not in found, f"{rule['alert']} defined twice"
                found[rule["alert"]] = rule
    return found


def github_anchors(markdown: str) -> set[str]:
    """The anchors GitHub gives the headings of a Markdown text (outside code blocks)."""
    anchors = set()
    fenced = False
    for line in markdown.splitlines():
        if line.startswith("```"):
            fenced = not fenced
        heading = re.match(r"#{1,6} (.+)", line)
        if heading and not fenced:
            text = heading.group(1).strip().lower()
            anchors.add(re.sub(r"[^\w\- ]", "", text).replace(" ", "-"))
    return anchors


def run_promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [prometheus_tool("promtool"), *args],
        cwd=RULES_DIR,
        capture_output=True,
        text=True,
        timeout=240,
    )


def test_promtool_accepts_the_rules() -> None:
    checked = run_promtool("check", "rules", RULES.name)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS" in checked.stdout


@pytest.mark.slow
def test_the_rules_unit_tests_pass() -> None:
    tested = run_promtool("test", "rules", RULE_TESTS.name)
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "SUCCESS" in tested.stdout


def test_promtool_accepts_the_compose_prometheus_configuration(tmp_path: Path) -> None:
    """deploy/prometheus.yml as the compose file's Prometheus reads it, its rule file where the
    compose file mounts it (here: the repository's)."""
    config = yaml.safe_load((ROOT / "deploy" / "prometheus.yml").read_text())
    assert config["rule_files"] == ["/etc/prometheus/alerts.yml"]
    config["rule_files"] = [str(RULES)]
    copy = tmp_path / "prometheus.yml"
    copy.write_text(yaml.safe_dump(config))
    checked = run_promtool("check", "config", str(copy))
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_every_alert_has_a_severity_a_summary_and_a_runbook_section() -> None:
    anchors = github_anchors(README.read_text())
    assert "operating-it" in anchors
    found = alerts()
    assert len(found) >= 8
    for name, rule in found.items():
        assert re.fullmatch(r"Lstm[A-Za-z]+", name), name
        assert rule.get("labels", {}).get("severity") in SEVERITIES, name
        annotations = rule.get("annotations", {})
        assert annotations.get("summary", "").strip(), f"{name} has no summary"
        # One link form throughout: the README's section named after the alert.
        assert annotations.get("runbook_url") == f"README.md#{name.lower()}", name
        assert name.lower() in anchors, f"the README has no runbook section {name}"
        assert set(annotations) == {"summary", "runbook_url"}, name


def rule_expressions() -> list[str]:
    return [str(rule["expr"]) for group in rule_groups() for rule in group["rules"]]


def test_every_metric_the_rules_use_is_one_the_service_exports(service: ServiceProcess) -> None:
    answer = call("GET", service.url + "/metrics")
    assert answer.status == 200
    families = {f.name: f.type for f in text_string_to_metric_families(answer.body)}
    exported = {name: kind for name, kind in families.items() if name.startswith("lstm_")}
    exported |= {f"{name}_total": kind for name, kind in exported.items() if kind == "counter"}
    used = set()
    for expr in rule_expressions():
        for name in re.findall(r"(?<![:\w])lstm_[a-z_]+", expr):
            base = re.sub(r"_(bucket|sum|count)$", "", name)
            assert base in exported, f"{name} in {expr!r} is not a metric the service exports"
            if name != base:
                assert exported[base] == "histogram", f"{name}: {base} is no histogram"
            elif exported[base] == "counter":
                # A counter only makes sense through rate() or increase().
                assert re.search(rf"(rate|increase)\({name}[{{\[]", expr), expr
            used.add(base)
    assert {"lstm_redis_up", "lstm_http_errors_total", "lstm_worker_restarts_total"} <= used


def test_every_recorded_name_is_a_level_colon_name_recorded_once() -> None:
    recorded = [r["record"] for g in rule_groups() for r in g["rules"] if "record" in r]
    assert len(recorded) == len(set(recorded))
    for name in recorded:
        assert re.fullmatch(r"lstm:[a-z0-9_]+:[a-z0-9_]+", name), name


def test_the_unit_tests_fire_every_alert_and_silence_every_group() -> None:
    cases = yaml.safe_load(RULE_TESTS.read_text())
    assert cases["rule_files"] == [RULES.name]
    tests = cases["tests"]
    firing: set[str] = set()
    silent_cases: list[set[str]] = []
    for case in tests:
        assert case.get("name"), "every case says what it shows"
        silent = set()
        for check in case.get("alert_rule_test", []):
            if check["exp_alerts"]:
                firing.add(check["alertname"])
            else:
                silent.add(check["alertname"])
        silent_cases.append(silent)
    names = set(alerts())
    assert names <= firing, f"never shown firing: {sorted(names - firing)}"
    for group in rule_groups():
        in_group = {r["alert"] for r in group["rules"] if "alert" in r}
        assert any(in_group <= silent for silent in silent_cases), (
            f"no healthy case keeps every alert of {group['name']} silent"
        )
