"""Prometheus for the alert tests: finding ``promtool`` and ``prometheus`` (Debian package:
prometheus), and a real Prometheus server on a free port of 127.0.0.1, with its own configuration
and storage in a temporary directory, scraping given targets every second and evaluating given
rule files every second.

Without the binaries the tests skip, unless ``LSTM_TEST_REQUIRE_PROMETHEUS`` or ``CI`` is set
(.ci/run sets the first, having installed them): there a missing binary fails the test."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import yaml
from service_harness import call, free_port


def prometheus_required() -> bool:
    if os.environ.get("LSTM_TEST_REQUIRE_PROMETHEUS"):
        return True
    return os.environ.get("CI", "").lower() not in ("", "0", "false")


def prometheus_tool(name: str) -> str:
    """The path of ``promtool`` or ``prometheus``; skips (or, where required, fails) without."""
    found = shutil.which(name)
    if found is None:
        message = f"{name} is not installed (Debian package: prometheus)"
        if prometheus_required():
            raise AssertionError(message)
        pytest.skip(message)
    return found


class PrometheusServer:
    """``prometheus`` scraping ``targets`` as job ``job`` and evaluating ``rule_files``, both
    every ``interval_s``; its log is kept for failing tests to show."""

    def __init__(
        self,
        directory: Path,
        targets: Sequence[str],
        rule_files: Sequence[Path] = (),
        job: str = "lstm-serve",
        interval_s: int = 1,
    ) -> None:
        self.directory = directory
        self.directory.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.config = {
            "global": {
                "scrape_interval": f"{interval_s}s",
                "scrape_timeout": f"{interval_s}s",
                "evaluation_interval": f"{interval_s}s",
            },
            "rule_files": [str(path) for path in rule_files],
            "scrape_configs": [{"job_name": job, "static_configs": [{"targets": list(targets)}]}],
        }
        self.log_path = directory / "prometheus.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 30) -> PrometheusServer:
        config_file = self.directory / "prometheus.yml"
        config_file.write_text(yaml.safe_dump(self.config))
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [
                    prometheus_tool("prometheus"),
                    f"--config.file={config_file}",
                    f"--storage.tsdb.path={self.directory / 'data'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                ],
                cwd=self.directory,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout_s
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"prometheus exited at start-up:\n{self.log()}")
            try:
                if call("GET", self.url + "/-/ready", timeout=1).status == 200:
                    return self
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"prometheus did not become ready:\n{self.log()}")
            time.sleep(0.1)

    def api(self, path: str) -> Any:
        """The ``data`` of a successful answer of the HTTP API (``/api/v1/...``)."""
        answer = call("GET", f"{self.url}/api/v1/{path}", timeout=5)
        assert answer.status == 200 and answer.body["status"] == "success", answer.body
        return answer.body["data"]

    def alerts(self) -> list[dict[str, Any]]:
        """The alerts pending or firing now."""
        found: list[dict[str, Any]] = self.api("alerts")["alerts"]
        return found

    def query(self, expr: str) -> list[tuple[dict[str, str], float]]:
        """An instant query's samples: (labels, value)."""
        data = self.api("query?query=" + quote(expr, safe=""))
        return [(s["metric"], float(s["value"][1])) for s in data["result"]]

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> None:
        if self.process is not None:
            if self.process.poll() is None:
                self.process.terminate()
                try:
                    self.process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    self.process.kill()
                    self.process.wait()
            self.process = None
