"""Changing the tokens file under a running service, over real HTTP, SSE and WebSocket: a token
added (made by lstm-token) works within seconds, a revoked one is refused and its open
subscriptions end with ``token_revoked``, a broken file keeps the tokens loaded before, SIGHUP
reaches every worker; and no token, hash or metrics token ever reaches a log line."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from service_harness import (
    ROOT,
    RedisServer,
    ServiceProcess,
    bearer,
    call,
    json_log_records,
    write_tokens_file,
)
from sse_client import SseEvent, SseStream
from ws_client import WsSubscriber

from service.core.auth import hash_token
from service.process.tokens_cli import new_token


def _wait_for(check: Callable[[], bool], timeout_s: float = 8.0) -> float:
    """Seconds until ``check()`` held; fails after ``timeout_s``."""
    start = time.monotonic()
    while not check():
        assert time.monotonic() - start < timeout_s, "not within the time allowed"
        time.sleep(0.1)
    return time.monotonic() - start


def _status(service: ServiceProcess, token: str) -> int:
    return call("GET", service.url + "/v1/models", headers=bearer(token)).status


def _post(service: ServiceProcess, stream: str, token: str) -> dict[str, Any]:
    url = f"{service.url}/v1/streams/{stream}/readings"
    answer = call("POST", url, {"values": [24.0]}, headers=bearer(token))
    assert answer.status == 200, answer.body
    return dict(answer.body)


def _lstm_token(*args: str) -> dict[str, Any]:
    made = subprocess.run(
        [sys.executable, "-m", "service.process.tokens_cli", *args, "--json"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    made_token: dict[str, Any] = json.loads(made.stdout)
    return made_token


def _closed(events: SseStream) -> SseEvent:
    """The next non-data event of an SSE connection, which must be its last."""
    while True:
        event = events.next()
        assert event is not None, "the stream ended without a closed event"
        if event.kind != "message":
            assert events.next() is None  # the service ends the connection after it
            return event


def test_tokens_added_and_revoked_take_effect_and_revoked_subscriptions_end(
    redis_server: RedisServer,
    service_factory: Callable[..., ServiceProcess],
    tmp_path: Path,
    stream_id: str,
) -> None:
    a, b = new_token(), new_token()
    scopes = ["read", "write"]
    path = write_tokens_file(
        tmp_path / "tokens.json", {"a": (a, "default", scopes), "b": (b, "default", scopes)}
    )
    service = service_factory("--auth-tokens", str(path), env={"REDIS_URL": redis_server.url})
    _post(service, stream_id, a)
    made = _lstm_token("new", "--name", "c", "--scopes", "read")
    c = made["token"]
    assert _status(service, c) == 401

    async def scenario() -> None:
        url = f"{service.url}/v1/streams/{stream_id}/events"
        single = SseStream(url, headers=bearer(a))
        multi = SseStream(f"{service.url}/v1/events?streams={stream_id}&access_token={a}")
        kept = SseStream(url, headers=bearer(b))
        assert single.status == multi.status == kept.status == 200
        assert multi.next() is not None  # its "streams" event: subscribed
        ws = await WsSubscriber.open(f"{service.url}/v1/events/ws?access_token={a}")
        await ws.send({"op": "subscribe", "streams": [stream_id]})
        await ws.until("subscribed")

        # Revoke a, add c: the file is replaced as an editor would (rename over it).
        doc = json.loads(path.read_text())
        doc["tokens"] = [e for e in doc["tokens"] if e["name"] != "a"] + [made["entry"]]
        (tmp_path / "next.json").write_text(json.dumps(doc))
        os.replace(tmp_path / "next.json", path)
        started = time.monotonic()
        for events in (single, multi):
            closed = _closed(events)
            assert closed.kind == "closed" and closed.json()["code"] == "token_revoked"
            assert "(a) was revoked" in closed.json()["message"]
            assert a not in closed.data
        message = await ws.until("closed")
        assert message["code"] == "token_revoked"
        assert await ws.next() is None and ws.ws.close_code == 1008
        assert time.monotonic() - started < 5  # checked every 2 s
        await ws.close()

        # b's subscription carries on.
        event = _post(service, stream_id, b)
        got = kept.next()
        assert got is not None and got.json()["generation"] == event["generation"]
        for events in (single, multi, kept):
            events.close()

    asyncio.run(scenario())
    assert _status(service, a) == 401
    _wait_for(lambda: _status(service, c) == 200)  # the same reload
    assert "tokens file" in service.log() and "reloaded on a change" in service.log()
    assert "ended 3 subscription(s) opened with tokens no longer valid" in service.log()


def test_a_broken_file_at_reload_keeps_the_tokens_loaded_before(
    redis_server: RedisServer, service_factory: Callable[..., ServiceProcess], tmp_path: Path
) -> None:
    a, b = new_token(), new_token()
    path = write_tokens_file(tmp_path / "tokens.json", {"a": (a, "default", ["read"])})
    service = service_factory("--auth-tokens", str(path), env={"REDIS_URL": redis_server.url})
    good = path.read_text()
    path.write_text(good.replace('"read"', '"reed"'))
    _wait_for(lambda: "not reloaded" in service.log())
    assert "tokens[0] (a): 'scopes' must be a non-empty list" in service.log()
    assert "keeping what was loaded before" in service.log()
    assert _status(service, a) == 200
    path.write_text("")  # a file truncated while it is rewritten
    _wait_for(lambda: "is not valid JSON" in service.log())
    assert _status(service, a) == 200
    time.sleep(2.5)  # a fault is logged once, not at each check
    assert service.log().count("is not valid JSON") == 1
    write_tokens_file(path, {"b": (b, "default", ["read"])})
    _wait_for(lambda: _status(service, b) == 200)
    assert _status(service, a) == 401


def test_sighup_reaches_every_worker(
    redis_server: RedisServer, service_factory: Callable[..., ServiceProcess], tmp_path: Path
) -> None:
    """The new file keeps the old one's inode, size and modification time, so that only SIGHUP
    (not the check every 2 s) can have read it."""
    a, b = new_token(), new_token()
    path = write_tokens_file(tmp_path / "tokens.json", {"tok-a": (a, "default", ["read"])})
    service = service_factory(
        "--workers", "2", "--auth-tokens", str(path),
        env={"REDIS_URL": redis_server.url, "LSTM_LOG_FORMAT": "json"},
    )  # fmt: skip
    _wait_for(lambda: "workers serving on" in service.log(), 60)
    before = path.stat()
    write_tokens_file(path, {"tok-b": (b, "default", ["read"])})
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = path.stat()
    assert (after.st_ino, after.st_size, after.st_mtime_ns) == (
        before.st_ino, before.st_size, before.st_mtime_ns,
    )  # fmt: skip
    time.sleep(2.5)  # the checks see nothing to read
    assert _status(service, a) == 200 and _status(service, b) == 401

    assert service.process is not None
    os.kill(service.process.pid, signal.SIGHUP)

    def reloaded_workers() -> set[int]:
        return {
            r["worker"]
            for r in json_log_records(service.log())
            if "worker" in r and "reloaded on SIGHUP" in r["msg"]
        }

    _wait_for(lambda: reloaded_workers() == {0, 1})
    assert "SIGHUP: forwarded to 2 worker(s)" in service.log()
    for _ in range(10):  # new connections, spread over both workers
        assert _status(service, b) == 200 and _status(service, a) == 401
    assert service.process.poll() is None
    assert service.stop() == 0


def test_sighup_without_token_files_changes_nothing(
    service: ServiceProcess,
) -> None:
    assert service.process is not None
    os.kill(service.process.pid, signal.SIGHUP)
    _wait_for(lambda: "SIGHUP: nothing to reload" in service.log())
    assert service.process.poll() is None
    assert call("GET", service.url + "/v1/models").status == 200


def test_no_token_hash_or_metrics_token_reaches_a_log_line(
    redis_server: RedisServer,
    service_factory: Callable[..., ServiceProcess],
    tmp_path: Path,
    stream_id: str,
) -> None:
    a, b, unknown, scrape = new_token(), new_token(), new_token(), new_token()
    path = write_tokens_file(
        tmp_path / "tokens.json",
        {"a": (a, "default", ["read", "write", "admin"]), "b": (b, "default", ["read"])},
    )
    (tmp_path / "metrics-token").write_text(scrape)
    service = service_factory(
        "--auth-tokens", str(path), "--metrics-token-file", str(tmp_path / "metrics-token"),
        "--access-log", "on", "--log-level", "debug",
        env={"REDIS_URL": redis_server.url, "LSTM_LOG_FORMAT": "json"},
    )  # fmt: skip
    url = service.url
    _post(service, stream_id, a)
    for token in (a, b, unknown, f"{a} {b}"):
        call("GET", f"{url}/v1/streams/{stream_id}", headers=bearer(token))
        call("DELETE", f"{url}/v1/streams/nothing-{stream_id}", headers=bearer(token))
        call("POST", f"{url}/v2/models/elnino/infer", raw=b"{broken", headers=bearer(token))
        query = token.replace(" ", "%20")
        call("GET", f"{url}/v1/nothing?access_token={query}", headers=bearer(token))
        call("GET", f"{url}/metrics", headers=bearer(token))
    call("GET", f"{url}/metrics", headers=bearer(scrape))
    call("GET", f"{url}/v1/models", headers={"Authorization": f"Basic {a}"})
    with SseStream(f"{url}/v1/streams/{stream_id}/events?from=start&access_token={b}") as sse:
        assert sse.take(1)[0].kind == "message"
    with SseStream(f"{url}/v1/events?streams={stream_id}&access_token={unknown}") as sse:
        assert sse.status == 401

    async def websocket() -> None:
        ws = await WsSubscriber.open(f"{url}/v1/events/ws?access_token={b}")
        await ws.send({"op": "subscribe", "streams": [stream_id]})
        await ws.until("subscribed")
        await ws.close()

    asyncio.run(websocket())
    path.write_text("{not json " + hash_token(a))  # a broken reload
    _wait_for(lambda: "not reloaded" in service.log())
    write_tokens_file(path, {"b": (b, "default", ["read"])})  # a revoked
    _wait_for(lambda: _status(service, a) == 401)
    assert service.process is not None
    os.kill(service.process.pid, signal.SIGHUP)
    _wait_for(lambda: "SIGHUP" in service.log())
    assert service.stop() == 0

    log = service.log()
    records = json_log_records(log)
    assert any(r["logger"] == "service.access" and r["status"] == 401 for r in records)
    assert any(r["logger"] == "service.access" and r["status"] == 200 for r in records)
    for secret in (a, b, unknown, scrape):
        assert secret not in log
        assert hash_token(secret) not in log
        assert hash_token(secret)[:16] not in log
    assert "Bearer" not in log and "access_token=" not in log
