"""``lstm-replay`` and ``lstm-tail`` as a user runs them (real processes, real service, real Redis):
a full replay whose output matches the service's log and the reference, pacing, a replay killed
mid-run and resumed with no step lost or doubled, and a tail that survives a service restart."""

from __future__ import annotations

import csv
import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from conftest import DemoReference, sea_temperatures
from service_harness import RedisServer, ServiceProcess, call
from sse_client import SseStream

pytestmark = pytest.mark.slow


def _csv(path: Path, values: list[float]) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["ts", "sst"])
        for k, v in enumerate(values):
            writer.writerow([f"2000-{k:04d}", v])
    return path


def _client(name: str, *args: str) -> list[str]:
    return [sys.executable, "-m", f"lstm_clients.{name}", *args]


def _rows(path: Path) -> list[list[str]]:
    with path.open(newline="") as handle:
        return list(csv.reader(handle))


def _log(service: ServiceProcess, stream: str, n: int) -> list[tuple[int, float]]:
    with SseStream(f"{service.url}/v1/streams/{stream}/events?from=start") as events:
        return [(e.json()["seq"], e.json()["prediction"][0]) for e in events.take(n)]


@pytest.fixture
def service(
    redis_server: RedisServer, service_factory: Callable[..., ServiceProcess]
) -> ServiceProcess:
    return service_factory("--events-max-len", "1000", env={"REDIS_URL": redis_server.url})


def test_a_full_replay_writes_what_the_service_computed(
    service: ServiceProcess, stream_id: str, tmp_path: Path, demo_reference: DemoReference
) -> None:
    values = sea_temperatures(300, seed=11)
    source = _csv(tmp_path / "sst.csv", values)
    out = tmp_path / "predictions.csv"
    run = subprocess.run(
        _client("replay", str(source), "--stream", stream_id, "--url", service.url,
                "--out", str(out), "--batch", "120"),
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert "300/300 rows" in run.stderr  # the progress bar's last state
    rows = _rows(out)
    assert rows[0] == ["seq", "ts", "nino12_next"] or rows[0][:2] == ["seq", "ts"]
    assert [int(r[0]) for r in rows[1:]] == list(range(1, 301))
    assert [r[1] for r in rows[1:]] == [f"2000-{k:04d}" for k in range(300)]
    got = [float(r[2]) for r in rows[1:]]
    assert np.abs(np.array(got) - demo_reference.predictions(values)).max() < 1e-3
    assert _log(service, stream_id, 300) == [(k + 1, got[k]) for k in range(300)]
    # Run again: everything is applied already, nothing is sent or written twice.
    again = subprocess.run(
        _client("replay", str(source), "--stream", stream_id, "--url", service.url,
                "--out", str(out)),
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert again.returncode == 0, again.stderr
    assert _rows(out) == rows
    assert call("GET", f"{service.url}/v1/streams/{stream_id}").body["seq"] == 300


def test_a_paced_replay_to_stdout(service: ServiceProcess, stream_id: str, tmp_path: Path) -> None:
    source = _csv(tmp_path / "sst.csv", sea_temperatures(20, seed=3))
    started = time.monotonic()
    run = subprocess.run(
        _client("replay", str(source), "--stream", stream_id, "--url", service.url,
                "--rate", "40", "--columns", "sst"),
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert time.monotonic() - started >= 19 / 40
    lines = list(csv.reader(run.stdout.splitlines()))
    assert lines[0][:2] == ["seq", "ts"] and [int(r[0]) for r in lines[1:]] == list(range(1, 21))
    bad = subprocess.run(
        _client("replay", str(source), "--stream", stream_id, "--url", service.url,
                "--columns", "nope"),
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert bad.returncode == 1 and "no column 'nope'" in bad.stderr


def test_a_killed_replay_resumes_with_no_gap_and_no_duplicate(
    service: ServiceProcess, stream_id: str, tmp_path: Path
) -> None:
    total = 150
    source = _csv(tmp_path / "sst.csv", sea_temperatures(total, seed=8))
    out = tmp_path / "predictions.csv"
    args = ["--stream", stream_id, "--url", service.url, "--out", str(out)]
    first = subprocess.Popen(
        _client("replay", str(source), *args, "--rate", "60"),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 20
    while (not out.exists() or len(_rows(out)) < 25) and time.monotonic() < deadline:
        time.sleep(0.05)
    first.send_signal(signal.SIGKILL)
    first.wait()
    applied = call("GET", f"{service.url}/v1/streams/{stream_id}").body["seq"]
    assert 20 <= applied < total
    second = subprocess.run(
        _client("replay", str(source), *args), capture_output=True, text=True, timeout=60
    )
    assert second.returncode == 0, second.stderr
    rows = _rows(out)
    assert [int(r[0]) for r in rows[1:]] == list(range(1, total + 1))  # each row once, in order
    log = _log(service, stream_id, total)
    assert [seq for seq, _ in log] == list(range(1, total + 1))
    assert [float(r[2]) for r in rows[1:]] == [p for _, p in log]


def test_tail_prints_events_and_resumes_after_a_service_restart(
    redis_server: RedisServer, service_factory: Callable[..., ServiceProcess], stream_id: str
) -> None:
    env = {"REDIS_URL": redis_server.url}
    followed, other = service_factory(env=env), service_factory(env=env)
    a, b = f"{stream_id}-a", f"{stream_id}-b"
    tail = subprocess.Popen(
        _client("tail", a, b, "--url", followed.url, "--count", "8"),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        time.sleep(1.0)  # subscribed (a tail that starts late would miss live events)

        def post(stream: str) -> None:
            answer = call("POST", f"{other.url}/v1/streams/{stream}/readings", {"values": [24.0]})
            assert answer.status == 200, answer.body

        for stream in (a, b, a):
            post(stream)
        assert tail.stdout is not None
        first = [json.loads(tail.stdout.readline()) for _ in range(3)]
        assert [(e["stream"], e["seq"]) for e in first] == [(a, 1), (b, 1), (a, 2)]
        followed.stop()
        for stream in (b, a, b):  # while the tail's service is down
            post(stream)
        followed.start()
        time.sleep(0.3)
        for stream in (a, b):
            post(stream)
        rest = [json.loads(tail.stdout.readline()) for _ in range(5)]
        assert sorted((e["stream"], e["seq"]) for e in rest) == [
            (a, 3), (a, 4), (b, 2), (b, 3), (b, 4),
        ]  # fmt: skip
        assert tail.wait(timeout=10) == 0
        assert tail.stderr is not None and "disconnected" in tail.stderr.read()
    finally:
        tail.kill()
        tail.wait()
        for pipe in (tail.stdout, tail.stderr):
            if pipe is not None:
                pipe.close()


def test_tail_table_and_ctrl_c(service: ServiceProcess, stream_id: str) -> None:
    call("POST", f"{service.url}/v1/streams/{stream_id}/readings", {"values": [24.0], "seq": 1})
    tail = subprocess.Popen(
        _client("tail", stream_id, "--url", service.url, "--table", "--from-start"),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert tail.stdout is not None
    header = tail.stdout.readline().split()
    assert header[:3] == ["stream", "seq", "ts"]
    row = tail.stdout.readline().split()
    assert row[0] == stream_id and row[1] == "1"
    tail.send_signal(signal.SIGINT)
    assert tail.wait(timeout=10) == 0
    tail.stdout.close()
    assert tail.stderr is not None
    tail.stderr.close()
