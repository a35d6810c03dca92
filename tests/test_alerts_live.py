"""The alert rules in a real Prometheus, scraping a real service on a real Redis: Redis stopped
makes LstmRedisUnavailable pending, and Redis back ends it.

The rules file is deploy/prometheus/alerts.yml as shipped, with its production ``for: 1m``: the
test waits for the alert to become pending (its expression holds; it would fire a minute later),
not firing. That takes seconds, not minutes, because the expression reads ``lstm_redis_up``,
which each scrape sets from its own PING of Redis: Prometheus scrapes and evaluates every second
here, so the alert turns pending within a scrape and an evaluation of Redis stopping, and ends
within a scrape and an evaluation of its return. No traffic is needed for either."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from prometheus_harness import PrometheusServer, prometheus_tool
from service_harness import ROOT, RedisServer, ServiceProcess

RULES = ROOT / "deploy" / "prometheus" / "alerts.yml"
WAIT_S = 30.0


def ours(alerts: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [a for a in alerts if a["labels"]["alertname"].startswith("Lstm")]


def wait_for(
    prometheus: PrometheusServer,
    what: str,
    done: Callable[[list[dict[str, Any]]], bool],
) -> list[dict[str, Any]]:
    """Poll the alerts until ``done`` holds for them; the alerts then."""
    deadline = time.monotonic() + WAIT_S
    seen: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        seen = ours(prometheus.alerts())
        if done(seen):
            return seen
        time.sleep(0.25)
    raise AssertionError(
        f"{what} within {WAIT_S:.0f} s; the alerts: {seen}\nprometheus log:\n{prometheus.log()}"
    )


def named(alerts: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [a for a in alerts if a["labels"]["alertname"] == name]


@pytest.mark.slow
def test_redis_stopped_makes_the_redis_alert_pending_and_its_return_ends_it(
    redis_factory: Callable[[], RedisServer],
    service_factory: Callable[..., ServiceProcess],
    tmp_path: Path,
) -> None:
    prometheus_tool("prometheus")  # skips (or fails where required) before starting anything
    redis = redis_factory()
    service = service_factory(env={"REDIS_URL": redis.url, "LSTM_REDIS_TIMEOUT_S": "0.5"})
    target = f"127.0.0.1:{service.port}"
    prometheus = PrometheusServer(tmp_path / "prometheus", [target], [RULES]).start()
    try:
        # Healthy: the service is scraped, Redis answers, and no alert of ours is active (the
        # first evaluations, before the first scrape, may see no target: LstmServeDown pending).
        deadline = time.monotonic() + WAIT_S
        while prometheus.query('lstm_redis_up{job="lstm-serve"}') != [
            ({"__name__": "lstm_redis_up", "instance": target, "job": "lstm-serve"}, 1.0)
        ]:
            assert time.monotonic() < deadline, prometheus.log()
            time.sleep(0.25)
        wait_for(prometheus, "a healthy service still had alerts", lambda alerts: not alerts)

        redis.stop()
        alerts = wait_for(
            prometheus,
            "LstmRedisUnavailable did not become pending or firing",
            lambda alerts: any(
                a["state"] in ("pending", "firing") for a in named(alerts, "LstmRedisUnavailable")
            ),
        )
        (alert,) = named(alerts, "LstmRedisUnavailable")
        assert alert["labels"] == {
            "alertname": "LstmRedisUnavailable",
            "instance": target,
            "job": "lstm-serve",
            "severity": "critical",
        }
        assert alert["annotations"]["runbook_url"] == "README.md#lstmredisunavailable"
        assert target in alert["annotations"]["summary"]
        # The service itself is up all along: only the Redis alert is about this outage.
        assert {a["labels"]["alertname"] for a in alerts} == {"LstmRedisUnavailable"}

        redis.start()  # the same port and data
        wait_for(
            prometheus,
            "LstmRedisUnavailable did not end once Redis was back",
            lambda alerts: not named(alerts, "LstmRedisUnavailable"),
        )
        assert prometheus.query("up") == [
            ({"__name__": "up", "instance": target, "job": "lstm-serve"}, 1.0)
        ]
    finally:
        prometheus.stop()
