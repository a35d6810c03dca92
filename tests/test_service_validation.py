"""Every bad request gets DESIGN.md's status and error code as JSON, no traceback, and changes no
state."""

from __future__ import annotations

import json
from typing import Any

import pytest
from service_harness import ServiceProcess, call

R = "/v1/models/elnino/streams/{s}/readings"

# (name, path template, raw body, status, code)
CASES: list[tuple[str, str, bytes, int, str]] = [
    ("empty body", R, b"", 400, "invalid_request"),
    ("not json", R, b"{values: [1]}", 400, "invalid_request"),
    ("not utf-8", R, b'{"values": [\xff]}', 400, "invalid_request"),
    ("array body", R, b"[1, 2]", 400, "invalid_request"),
    ("no values", R, b'{"seq": 1}', 400, "invalid_request"),
    ("unknown field", R, b'{"values": [1], "value": 2}', 400, "invalid_request"),
    ("readings not a list", R, b'{"readings": {"values": [1]}}', 400, "invalid_request"),
    ("empty readings", R, b'{"readings": []}', 400, "invalid_request"),
    (
        "readings and values",
        R,
        b'{"readings": [{"values": [1]}], "values": [1]}',
        400,
        "invalid_request",
    ),
    ("reading not an object", R, b'{"readings": [[1]]}', 400, "invalid_request"),
    ("seq is a string", R, b'{"values": [1], "seq": "7"}', 400, "invalid_request"),
    ("seq is a float", R, b'{"values": [1], "seq": 7.5}', 400, "invalid_request"),
    ("seq is a boolean", R, b'{"values": [1], "seq": true}', 400, "invalid_request"),
    ("seq is zero", R, b'{"values": [1], "seq": 0}', 400, "invalid_request"),
    ("seq is negative", R, b'{"values": [1], "seq": -3}', 400, "invalid_request"),
    ("seq over 2^63-1", R, b'{"values": [1], "seq": 9223372036854775808}', 400, "invalid_request"),
    (
        "seq on some readings only",
        R,
        b'{"readings": [{"values": [1], "seq": 1}, {"values": [2]}]}',
        400,
        "invalid_request",
    ),
    (
        "seqs not increasing",
        R,
        b'{"readings": [{"values": [1], "seq": 2}, {"values": [2], "seq": 2}]}',
        400,
        "invalid_request",
    ),
    ("ts is an object", R, b'{"values": [1], "ts": {}}', 400, "invalid_request"),
    ("values not a list", R, b'{"values": 24.5}', 400, "invalid_values"),
    ("too few values", R, b'{"values": []}', 400, "invalid_values"),
    ("too many values", R, b'{"values": [1, 2]}', 400, "invalid_values"),
    ("a string value", R, b'{"values": ["24.5"]}', 400, "invalid_values"),
    ("a boolean value", R, b'{"values": [true]}', 400, "invalid_values"),
    ("a null value", R, b'{"values": [null]}', 400, "invalid_values"),
    ("NaN", R, b'{"values": [NaN]}', 400, "invalid_values"),
    ("infinity", R, b'{"values": [Infinity]}', 400, "invalid_values"),
    ("overflows float32", R, b'{"values": [1e39]}', 400, "invalid_values"),
    (
        "an integer beyond any double",
        R,
        b'{"values": [' + b"9" * 400 + b"]}",
        400,
        "invalid_values",
    ),
    ("nested deeper than the parsers go", R, b"[" * 100_000, 400, "invalid_request"),
    (
        "bad value in a later reading",
        R,
        b'{"readings": [{"values": [1]}, {"values": [1e999]}]}',
        400,
        "invalid_values",
    ),
    (
        "bad stream id",
        "/v1/models/elnino/streams/a%20b/readings",
        b'{"values": [1]}',
        400,
        "invalid_stream_id",
    ),
    (
        "stream id too long",
        "/v1/models/elnino/streams/" + "s" * 129 + "/readings",
        b'{"values": [1]}',
        400,
        "invalid_stream_id",
    ),
    (
        "unknown model",
        "/v1/models/nope/streams/{s}/readings",
        b'{"values": [1]}',
        404,
        "model_not_found",
    ),
    (
        "bulk: unknown model",
        "/v1/models/nope/readings",
        b'{"readings": []}',
        404,
        "model_not_found",
    ),
    ("bulk: no readings", "/v1/models/elnino/readings", b'{"values": [1]}', 400, "invalid_request"),
    ("bulk: empty readings", "/v1/readings", b'{"readings": []}', 400, "invalid_request"),
    (
        "bulk: extra field",
        "/v1/readings",
        b'{"readings": [{"stream": "a", "values": [1]}], "x": 1}',
        400,
        "invalid_request",
    ),
    ("GET unknown model", "/v1/models/nope/streams/{s}", b"", 404, "model_not_found"),
    ("unknown path", "/v1/nothing/here", b"", 404, "not_found"),
]


def _method(path: str, body: bytes) -> str:
    return "POST" if path.endswith("readings") else "GET"


@pytest.mark.parametrize(
    ("path", "raw", "status", "code"),
    [pytest.param(p, b, s, c, id=name) for name, p, b, s, c in CASES],
)
def test_bad_requests_get_a_json_error_and_change_nothing(
    service: ServiceProcess, stream_id: str, path: str, raw: bytes, status: int, code: str
) -> None:
    answer = call(_method(path, raw), service.url + path.format(s=stream_id), raw=raw)
    assert answer.status == status, answer.body
    _assert_error(answer.body, code)
    state = call("GET", f"{service.url}/v1/models/elnino/streams/{stream_id}")
    assert state.status == 404  # nothing was written


def _assert_error(body: Any, code: str) -> None:
    assert isinstance(body, dict) and set(body) == {"error"}, body
    assert body["error"]["code"] == code
    message = body["error"]["message"]
    assert isinstance(message, str) and message and "Traceback" not in message


def test_bulk_item_errors_are_per_item(service: ServiceProcess, stream_id: str) -> None:
    items: list[Any] = [
        "not an object",
        {"values": [1]},
        {"stream": 7, "values": [1]},
        {"stream": stream_id, "values": [1, 2]},
        {"stream": stream_id, "values": [1], "colour": "red"},
        {"stream": stream_id, "values": [24.0]},
    ]
    answer = call("POST", f"{service.url}/v1/readings", {"readings": items})
    assert answer.status == 200
    codes = [r.get("error", {}).get("code") for r in answer.body["results"]]
    expected = [
        "invalid_request", "invalid_stream_id", "invalid_stream_id", "invalid_values",
        "invalid_request", None,
    ]  # fmt: skip
    assert codes == expected
    assert answer.body["results"][5]["results"][0]["seq"] == 1


def test_body_over_the_limit_is_413(service: ServiceProcess, stream_id: str) -> None:
    raw = json.dumps({"values": [1], "ts": "x" * 10, "pad": " " * (1024 * 1024)}).encode()
    answer = call("POST", service.url + R.format(s=stream_id), raw=raw)
    assert answer.status == 413
    _assert_error(answer.body, "payload_too_large")


def test_too_many_readings_in_one_request_is_413(service: ServiceProcess, stream_id: str) -> None:
    body = {"readings": [{"values": [1.0]} for _ in range(2001)]}
    answer = call("POST", service.url + R.format(s=stream_id), body)
    assert answer.status == 413
    _assert_error(answer.body, "payload_too_large")
    bulk = {"readings": [{"stream": f"{stream_id}-{k}", "values": [1.0]} for k in range(2001)]}
    answer = call("POST", f"{service.url}/v1/readings", bulk)
    assert answer.status == 413
    _assert_error(answer.body, "payload_too_large")


@pytest.mark.parametrize("content_type", [None, "text/plain", "application/x-www-form-urlencoded"])
def test_bodies_are_json_whatever_the_content_type(
    service: ServiceProcess, stream_id: str, content_type: str | None
) -> None:
    headers = {} if content_type is None else {"Content-Type": content_type}
    answer = call(
        "POST", service.url + R.format(s=stream_id), raw=b'{"values": [24.5]}', headers=headers
    )
    assert answer.status == 200 and answer.body["results"][0]["seq"] == 1


def test_unknown_stream_and_wrong_method(service: ServiceProcess, stream_id: str) -> None:
    url = f"{service.url}/v1/models/elnino/streams/{stream_id}"
    for method in ("GET", "DELETE"):
        answer = call(method, url)
        assert answer.status == 404
        _assert_error(answer.body, "stream_not_found")
    wrong = call("PUT", url, {"values": [1]})
    assert wrong.status == 405
    _assert_error(wrong.body, "method_not_allowed")
    assert "allowed: DELETE, GET, HEAD" in wrong.body["error"]["message"]
    assert set(wrong.headers["Allow"].split(",")) == {"DELETE", "GET", "HEAD"}
