"""A client's fault is one warning line in the log, never an error with a traceback, so that no
client can flood the error log: requests aiohttp cannot parse (an oversized header line, a
malformed request line, ...) and bodies the service cannot read (an encoding that does not
decode, a connection lost halfway), each sent raw to a real service."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import pytest
from service_harness import RedisServer, ServiceProcess, json_log_records

# Bytes of the client's no log line may show.
MARKER = b"Xq7Marker"

READINGS = b"POST /v1/streams/faulty/readings HTTP/1.1\r\nHost: x\r\n"

# (what, the raw request, whether the client hangs up instead of reading the answer, the
# logger of the one line, words of its message)
FAULTS = [
    (
        "a header line over the 64 KiB limit",
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + MARKER * 8000 + b"\r\n\r\n",
        False,
        "aiohttp.server",
        "LineTooLong",
    ),
    (
        "a request line over the limit",
        b"GET /" + MARKER * 1000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
        False,
        "aiohttp.server",
        "LineTooLong",
    ),
    (
        "a malformed request line",
        b"GET /healthz HTTP/9." + MARKER + b"\r\nHost: x\r\n\r\n",
        False,
        "aiohttp.server",
        "Bad status line",
    ),
    (
        "a malformed header line",
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nNo Colon " + MARKER + b"\r\n\r\n",
        False,
        "aiohttp.server",
        "Invalid header token",
    ),
    (
        "a Content-Length that is no number",
        READINGS + b"Content-Length: " + MARKER + b"\r\n\r\n",
        False,
        "aiohttp.server",
        "Content-Length",
    ),
    (
        "a broken chunk",
        READINGS + b"Transfer-Encoding: chunked\r\n\r\n" + MARKER + b"\r\n",
        False,
        "aiohttp.server",
        "chunk size",
    ),
    (
        "a body whose gzip encoding does not decode",
        READINGS + b"Content-Encoding: gzip\r\nContent-Length: 9\r\n\r\n" + MARKER,
        False,
        "service.api.routes_v1",
        "ContentEncodingError",
    ),
    (
        "a connection lost halfway through the body",
        READINGS + b'Content-Length: 100\r\n\r\n{"values": [',
        True,
        "service.api.routes_v1",
        "ConnectionResetError",
    ),
]


@pytest.fixture(scope="module")
def json_service(
    redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServiceProcess]:
    proc = ServiceProcess(
        tmp_path_factory.mktemp("faults"),
        env={"REDIS_URL": redis_server.url, "LSTM_LOG_FORMAT": "json"},
    )
    proc.start()
    yield proc
    proc.stop()


def send_raw(port: int, raw: bytes, hang_up: bool) -> bytes:
    """Send ``raw``; the first bytes of the answer, or nothing when hanging up first."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        conn.sendall(raw)
        if hang_up:
            time.sleep(0.2)  # the service is reading the body when the connection goes
            return b""
        return conn.recv(4096)


def new_lines(service: ServiceProcess, before: int) -> list[str]:
    return service.log().splitlines()[before:]


@pytest.mark.parametrize(
    ("raw", "hang_up", "logger", "words"),
    [fault[1:] for fault in FAULTS],
    ids=[fault[0] for fault in FAULTS],
)
def test_a_client_fault_is_one_warning_line_without_a_traceback(
    json_service: ServiceProcess, raw: bytes, hang_up: bool, logger: str, words: str
) -> None:
    before = len(json_service.log().splitlines())
    answer = send_raw(json_service.port, raw, hang_up)
    if not hang_up:
        assert answer.startswith((b"HTTP/1.0 400 ", b"HTTP/1.1 400 ")), answer[:200]
    deadline = time.monotonic() + 10
    while not any('"level": "info"' not in line for line in new_lines(json_service, before)):
        assert time.monotonic() < deadline, "the fault was not logged"
        time.sleep(0.05)
    time.sleep(0.5)  # and nothing more follows (aiohttp reports some faults twice)
    records = json_log_records("\n".join(new_lines(json_service, before)))
    assert not [r for r in records if "exc" in r], "a traceback was logged"
    # (Info lines of the service's own, such as the expiry watcher's start, may come too.)
    (record,) = [r for r in records if r["level"] != "info"]
    assert record["level"] == "warning", record
    assert record["logger"] == logger, record
    assert words in record["msg"], record
    assert MARKER.decode() not in json_service.log()  # the client's bytes are not repeated
