"""Structured logs: every stderr line one JSON object, a request id per request (the client's when
well formed, echoed back), an access record per request, and never the Redis password or the
values of readings."""

from __future__ import annotations

import json
import logging
import re
import sys
from collections.abc import Callable
from pathlib import Path

from service_harness import RedisServer, ServiceProcess, call, json_log_records

from service.core.logs import REQUEST_ID, JsonFormatter, TextFormatter

# Values no log line could contain by chance.
VALUES = [23.456789012, 21.987654321, 25.112233445]


def test_every_line_is_json_with_request_ids_and_no_secret_or_reading(
    tmp_path: Path, service_factory: Callable[..., ServiceProcess], stream_id: str
) -> None:
    secret = "pw-" + "Zq8v" * 5
    server = RedisServer(tmp_path / "locked", password=secret).start()
    try:
        # Two workers: the supervisor's lines are JSON too.
        service = service_factory(
            "--workers",
            "2",
            "--access-log",
            "on",
            env={"REDIS_URL": server.url, "LSTM_LOG_FORMAT": "json"},
        )
        url = f"{service.url}/v1/streams/{stream_id}/readings"
        given = "trace-0af7651916cd43dd8448eb211c80319c"
        first = call(
            "POST", url, {"values": [VALUES[0]], "seq": 1}, headers={"X-Request-Id": given}
        )
        assert first.status == 200 and first.headers["X-Request-Id"] == given
        made = call("POST", url, {"values": [VALUES[1]], "seq": 2})
        assert made.status == 200 and re.fullmatch(r"[0-9a-f]{16}", made.headers["X-Request-Id"])
        bad = call("POST", url, {"values": [VALUES[2]], "seq": 3}, headers={"X-Request-Id": "a b"})
        assert bad.headers["X-Request-Id"] != "a b"  # not well formed: replaced
        refused = call("POST", url, {"values": ["warm"]}, headers={"X-Request-Id": "err-1"})
        assert refused.status == 400 and refused.headers["X-Request-Id"] == "err-1"
        assert service.stop() == 0
    finally:
        server.stop()

    text = service.log()
    records = json_log_records(text)  # fails on any line that is not a JSON object
    for record in records:
        assert {"ts", "level", "logger", "msg"} <= set(record), record
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", record["ts"])
    access = [r for r in records if r["logger"] == "service.access"]
    by_id = {r["request_id"]: r for r in access}
    for request_id, status in [
        (given, 200),
        (made.headers["X-Request-Id"], 200),
        (bad.headers["X-Request-Id"], 200),
        ("err-1", 400),
    ]:
        record = by_id[request_id]
        assert record["route"] == "/v1/streams/{stream}/readings" and record["status"] == status
        assert record["method"] == "POST" and record["duration_ms"] >= 0
        assert record["worker"] in (0, 1)
    assert any(r["logger"] == "service.process.supervisor" for r in records)
    assert "redis://:***@127.0.0.1" in text  # the URL is logged, redacted
    assert secret not in text
    for value in VALUES:
        assert str(value) not in text and str(value)[:7] not in text
    assert stream_id not in text  # routes are templates, so no stream id either


def test_records_logged_during_a_request_carry_its_id() -> None:
    record = logging.makeLogRecord({"name": "service.x", "levelname": "ERROR", "msg": "m %d"})
    record.args = (7,)
    record.route = "/v1/readings"  # as extra= sets it
    try:
        raise ValueError("boom")
    except ValueError:
        record.exc_info = sys.exc_info()
    token = REQUEST_ID.set("req-9")
    try:
        entry = json.loads(JsonFormatter({"worker": 1}).format(record))
        line = TextFormatter().format(record)
    finally:
        REQUEST_ID.reset(token)
    assert entry["msg"] == "m 7" and entry["level"] == "error" and entry["logger"] == "service.x"
    assert entry["route"] == "/v1/readings" and entry["worker"] == 1
    assert entry["request_id"] == "req-9"
    assert "ValueError: boom" in entry["exc"]
    assert "service.x: m 7" in line and "request_id=req-9" in line and "ValueError" in line
    assert "request_id" not in json.loads(JsonFormatter().format(record))  # outside a request


def test_text_format_is_for_people(
    redis_server: RedisServer, service_factory: Callable[..., ServiceProcess]
) -> None:
    service = service_factory(
        "--access-log", "on", env={"REDIS_URL": redis_server.url, "LSTM_LOG_FORMAT": "text"}
    )
    assert call("GET", service.url + "/healthz").status == 200
    service.stop()
    lines = service.log().splitlines()
    assert any(re.match(r"\S+Z INFO service\.access: GET /healthz 200 ", line) for line in lines)
    assert not any(line.startswith("{") for line in lines)


def test_access_log_off_keeps_request_ids(
    redis_server: RedisServer, service_factory: Callable[..., ServiceProcess]
) -> None:
    service = service_factory(
        "--access-log", "off", env={"REDIS_URL": redis_server.url, "LSTM_LOG_FORMAT": "json"}
    )
    answer = call("GET", service.url + "/healthz", headers={"X-Request-Id": "quiet-1"})
    assert answer.status == 200 and answer.headers["X-Request-Id"] == "quiet-1"
    service.stop()
    records = json_log_records(service.log())
    assert records and not [r for r in records if r["logger"] == "service.access"]
