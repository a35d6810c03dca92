"""Authentication, scopes and quotas at the HTTP edge, against real service processes over real
HTTP: every route answers no token, a malformed one, an unknown one, one without the route's
scope and one with it exactly as it should (and applies nothing when it refuses); a valid token
comes before any 404, 413 or 503; the event routes take ``?access_token=``; the tenants' readings
per second; the metrics token; the secure default; a bad tokens file at start-up; and a test that
every route the app registers is classified."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest
import tritonclient.http as httpclient
from prometheus_harness import PrometheusServer, prometheus_tool
from service_harness import (
    ROOT,
    RedisServer,
    Response,
    ServiceProcess,
    bearer,
    call,
    write_tokens_file,
)
from sse_client import SseStream
from tritonclient.utils import InferenceServerException

from service import Settings, create_app
from service.api.authn import ROUTE_SCOPES, Authenticator
from service.core.settings import SettingsError, check_exposure
from service.process.tokens_cli import new_token
from service.step.model import load_models

READER, WRITER, ADMIN = new_token(), new_token(), new_token()
# Each of these has every scope but one.
NO_READ, NO_WRITE, NO_ADMIN = new_token(), new_token(), new_token()
TOKENS = {
    "reader": (READER, "default", ["read"]),
    "writer": (WRITER, "default", ["write"]),
    "admin": (ADMIN, "default", ["admin"]),
    "no-read": (NO_READ, "default", ["write", "admin"]),
    "no-write": (NO_WRITE, "default", ["read", "admin"]),
    "no-admin": (NO_ADMIN, "default", ["read", "write"]),
}
RIGHT = {"read": READER, "write": WRITER, "admin": ADMIN}
WRONG = {"read": NO_READ, "write": NO_WRITE, "admin": NO_ADMIN}
ORIGIN = "https://dash.example.com"


@pytest.fixture(scope="module")
def tokens_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tokens_file(tmp_path_factory.mktemp("auth") / "tokens.json", TOKENS)


@pytest.fixture(scope="module")
def auth_service(
    redis_server: RedisServer, tokens_file: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServiceProcess]:
    proc = ServiceProcess(
        tmp_path_factory.mktemp("logs"),
        ["--auth-tokens", str(tokens_file), "--cors-origin", ORIGIN],
        env={"REDIS_URL": redis_server.url},
    )
    proc.start()
    yield proc
    proc.stop()


def _path(template: str, stream: str) -> str:
    return (
        template.replace("{model}", "elnino").replace("{stream}", stream).replace("{version}", "1")
    )


def _v2_body(stream: str, steps: int = 1) -> dict[str, Any]:
    values = [24.0 + k for k in range(steps)]
    return {
        "parameters": {"sequence_id": stream},
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [1, steps, 1], "data": values}],
    }


def _body(method: str, template: str, stream: str) -> Any:
    if method != "POST":
        return None
    if template.endswith("/streams/{stream}/readings"):
        return {"values": [24.0]}
    if template.endswith("/readings"):
        return {"readings": [{"stream": stream, "values": [24.0]}]}
    if template.endswith("/infer"):
        return _v2_body(stream)
    if template.endswith("/streams/{stream}/forecast"):
        return {"horizon": 2}
    if template.endswith("/forecast"):
        return {"horizon": 2, "items": [{"stream": stream}]}
    return {}  # /v2/repository/index


def _refused(answer: Response, template: str, status: int, code: str) -> None:
    assert answer.status == status, (template, answer.status, answer.body)
    if template.startswith("/v2"):
        assert isinstance(answer.body["error"], str), answer.body  # v2's form
    else:
        assert answer.body["error"]["code"] == code, (template, answer.body)


def _state(service: ServiceProcess, stream: str) -> int:
    return call("GET", f"{service.url}/v1/streams/{stream}", headers=bearer(READER)).status


def _post(service: ServiceProcess, stream: str, token: str = WRITER, n: int = 1) -> Response:
    body = {"readings": [{"values": [24.0 + k]} for k in range(n)]}
    return call("POST", f"{service.url}/v1/streams/{stream}/readings", body, headers=bearer(token))


async def _websocket_subscribes(url: str, headers: dict[str, str], stream: str) -> None:
    async with (
        aiohttp.ClientSession() as session,
        session.ws_connect(url, headers=headers) as ws,
    ):
        await ws.send_json({"op": "subscribe", "streams": [stream]})
        answer = await ws.receive_json(timeout=10)
        if answer["type"] == "streams":  # the followed set changed, then the acknowledgement
            answer = await ws.receive_json(timeout=10)
        assert answer == {"type": "subscribed", "streams": [stream]}


def _right_scope(service: ServiceProcess, method: str, template: str, stream: str) -> None:
    """The request with a token of exactly the route's scope succeeds."""
    rule = ROUTE_SCOPES[(method, template)]
    assert rule.scope is not None
    headers = bearer(RIGHT[rule.scope])
    url = service.url + _path(template, stream)
    if template.endswith("/events/ws"):
        asyncio.run(_websocket_subscribes(url, headers, stream))
        return
    if template.endswith("/events"):
        query = "?streams=" + stream if "/streams/" not in template else ""
        with SseStream(url + query, headers=headers) as events:
            assert events.status == 200, (template, events.body())
        return
    answer = call(method, url, _body(method, template, stream), headers=headers)
    expected = 204 if method == "DELETE" else 200
    assert answer.status == expected, (template, answer.status, answer.body)


def test_every_route_answers_each_kind_of_token_exactly_and_applies_nothing_it_refuses(
    auth_service: ServiceProcess, stream_id: str
) -> None:
    guarded = [(m, t) for (m, t), rule in ROUTE_SCOPES.items() if rule.scope in RIGHT]
    assert len(guarded) >= 28
    for k, (method, template) in enumerate(guarded):
        stream = f"{stream_id}-{k}"
        url = auth_service.url + _path(template, stream)
        body = _body(method, template, stream)
        existing = template.endswith("/streams/{stream}")  # read or ended: it must exist
        if existing:
            assert _post(auth_service, stream).status == 200
        basic = base64.b64encode(b"user:" + READER.encode()).decode()
        for headers, challenge in [
            ({}, "Bearer"),
            ({"Authorization": f"Basic {basic}"}, 'Bearer error="invalid_token"'),
            ({"Authorization": "Bearer"}, 'Bearer error="invalid_token"'),
            ({"Authorization": f"Bearer {READER} {WRITER}"}, 'Bearer error="invalid_token"'),
            (bearer(new_token()), 'Bearer error="invalid_token"'),
        ]:
            answer = call(method, url, body, headers=headers)
            _refused(answer, template, 401, "unauthenticated")
            assert answer.headers["WWW-Authenticate"] == challenge
            assert READER not in json.dumps(answer.body)
        rule = ROUTE_SCOPES[(method, template)]
        assert rule.scope is not None
        wrong = call(method, url, body, headers=bearer(WRONG[rule.scope]))
        _refused(wrong, template, 403, "forbidden")
        assert "WWW-Authenticate" not in wrong.headers
        if not template.startswith("/v2"):
            assert f"lacks the '{rule.scope}' scope" in wrong.body["error"]["message"]
        # Nothing was applied: no refused write started a stream, no refused DELETE ended one.
        assert _state(auth_service, stream) == (200 if existing else 404), template
        _right_scope(auth_service, method, template, stream)


def test_open_routes_need_no_token_and_cors_allows_the_authorization_header(
    auth_service: ServiceProcess,
) -> None:
    for path in ("/healthz", "/readyz", "/openapi.json", "/v2/health/live", "/v2/health/ready"):
        assert call("GET", auth_service.url + path).status == 200, path
    assert call("GET", auth_service.url + "/metrics").status == 200  # no metrics token given
    preflight = call(
        "OPTIONS",
        auth_service.url + "/v1/streams/s/readings",
        headers={
            "Origin": ORIGIN,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type",
        },
    )
    assert preflight.status == 204
    assert preflight.headers["Access-Control-Allow-Headers"] == "authorization, content-type"
    refused = call("GET", auth_service.url + "/v1/models", headers={"Origin": ORIGIN})
    assert refused.status == 401
    assert "WWW-Authenticate" in refused.headers["Access-Control-Expose-Headers"]


def test_a_valid_token_comes_before_any_404_413_or_unknown_path(
    auth_service: ServiceProcess,
) -> None:
    url = auth_service.url
    for method, path, body in [
        ("GET", "/v1/nothing", None),
        ("GET", "/v1/models/nope", None),
        ("POST", "/v1/models/nope/streams/s/readings", {"values": [1.0]}),
        ("PUT", "/v1/streams/s", {"values": [1.0]}),  # a method the path does not take
        ("GET", "/v2/nothing", None),
        ("GET", "/v2/models/nope/config", None),
        ("GET", "/", None),
    ]:
        answer = call(method, url + path, body)
        assert answer.status == 401, (path, answer.body)
        assert answer.headers["WWW-Authenticate"] == "Bearer"
        with_token = call(method, url + path, body, headers=bearer(NO_ADMIN))
        assert with_token.status in (404, 405), (path, with_token.body)
    big = b'{"values": [1.0], "ts": "' + b"x" * (2 * 1024 * 1024) + b'"}'
    assert call("POST", url + "/v1/streams/s/readings", raw=big).status == 401
    assert call("POST", url + "/v1/streams/s/readings", raw=big, headers=bearer(WRITER)).status == (
        413
    )


def test_a_valid_token_comes_before_a_503(
    redis_factory: Callable[[], RedisServer],
    service_factory: Callable[..., ServiceProcess],
    tokens_file: Path,
    stream_id: str,
) -> None:
    """A full queue (readings stuck behind a frozen Redis: two batches in flight, one reading
    queued) answers 503 only to requests with a valid token."""
    redis = redis_factory()
    service = service_factory(
        "--auth-tokens", str(tokens_file), "--queue-max-readings", "1",
        "--request-max-readings", "1",
        env={"REDIS_URL": redis.url, "LSTM_REDIS_TIMEOUT_S": "10"},
    )  # fmt: skip
    url = f"{service.url}/v1/streams/{stream_id}"
    assert redis.process is not None
    os.kill(redis.process.pid, signal.SIGSTOP)
    try:
        with ThreadPoolExecutor(4) as pool:
            stuck = [
                pool.submit(
                    call, "POST", f"{url}-{k}/readings", {"values": [1.0]}, headers=bearer(WRITER)
                )
                for k in range(4)
            ]
            time.sleep(1.5)
            full = call("POST", url + "/readings", {"values": [24.0]}, headers=bearer(WRITER))
            assert full.status == 503 and full.body["error"]["code"] == "overloaded"
            for headers in ({}, bearer(new_token())):
                refused = call("POST", url + "/readings", {"values": [1.0]}, headers=headers)
                assert refused.status == 401, refused.body
            os.kill(redis.process.pid, signal.SIGCONT)
            assert {f.result().status for f in stuck} <= {200, 503}
    finally:
        os.kill(redis.process.pid, signal.SIGCONT)


def test_the_event_routes_take_the_token_as_access_token(
    auth_service: ServiceProcess, stream_id: str
) -> None:
    first = _post(auth_service, stream_id)
    url = f"{auth_service.url}/v1/streams/{stream_id}/events?from=start&access_token="
    with SseStream(url + READER) as events:
        assert events.status == 200
        assert events.take(1)[0].id == f"{first.body['generation']}-1"
    with SseStream(f"{auth_service.url}/v1/events?streams={stream_id}&access_token={READER}") as e:
        assert e.status == 200
    for token, status in [(new_token(), 401), (WRITER, 403), ("", 401)]:
        with SseStream(url + token) as refused:
            assert refused.status == status
    # The header wins over the query.
    with SseStream(url + new_token(), headers=bearer(READER)) as events:
        assert events.status == 200
    # Only the event routes take it.
    for path in ("/v1/models", f"/v1/streams/{stream_id}"):
        answer = call("GET", f"{auth_service.url}{path}?access_token={READER}")
        assert answer.status == 401 and "access_token" not in answer.body["error"]["message"]
    ws_url = f"{auth_service.url}/v1/events/ws?access_token={READER}"
    asyncio.run(_websocket_subscribes(ws_url, {}, stream_id))


def test_kserve_clients_send_the_token_as_a_header(auth_service: ServiceProcess) -> None:
    client = httpclient.InferenceServerClient(url=f"127.0.0.1:{auth_service.port}")
    try:
        x = httpclient.InferInput("x", [1, 2, 1], "FP32")
        x.set_data_from_numpy(np.array([[[24.1], [24.6]]], np.float32))
        with pytest.raises(InferenceServerException) as caught:
            client.infer("elnino", [x], sequence_id=4711)
        assert caught.value.status() == "401"
        answer = client.infer("elnino", [x], sequence_id=4711, headers=bearer(WRITER))
        assert answer.as_numpy("y").shape == (1, 2, 1)
        assert client.is_server_ready()  # open
        assert client.is_model_ready("elnino", headers=bearer(READER))
        with pytest.raises(InferenceServerException):
            client.get_inference_statistics("elnino", headers=bearer(READER))  # admin only
        assert client.get_inference_statistics("elnino", headers=bearer(ADMIN))
    finally:
        client.close()


def test_a_tenants_readings_per_second_with_retry_after(
    redis_server: RedisServer,
    service_factory: Callable[..., ServiceProcess],
    tmp_path: Path,
    stream_id: str,
) -> None:
    """Bulk requests are charged all their readings, v2 requests their steps, before anything is
    queued; a request over what is left is refused whole (nothing applied)."""
    slow, other = new_token(), new_token()
    path = write_tokens_file(
        tmp_path / "tokens.json",
        {
            "slow": (slow, "plant-a", ["read", "write"]),
            "other": (other, "plant-b", ["read", "write"]),
        },
        {"plant-a": {"readings_per_s": 5}, "plant-b": {"max_streams": 10}},
    )
    service = service_factory("--auth-tokens", str(path), env={"REDIS_URL": redis_server.url})
    bulk = f"{service.url}/v1/readings"

    def items(tag: str, n: int) -> dict[str, Any]:
        return {
            "readings": [{"stream": f"{stream_id}-{tag}{k}", "values": [24.0]} for k in range(n)]
        }

    assert call("POST", bulk, items("a", 4), headers=bearer(slow)).status == 200
    over = call("POST", bulk, items("b", 3), headers=bearer(slow))
    assert over.status == 429 and over.body["error"]["code"] == "quota_exceeded"
    assert over.headers["Retry-After"] == "1"
    assert "plant-a" in over.body["error"]["message"]
    for k in range(3):  # refused whole: none of its items was applied
        state = call("GET", f"{service.url}/v1/streams/{stream_id}-b{k}", headers=bearer(slow))
        assert state.status == 404
    infer = f"{service.url}/v2/models/elnino/infer"
    v2 = call("POST", infer, _v2_body(f"{stream_id}-v2", 3), headers=bearer(slow))
    assert v2.status == 429 and isinstance(v2.body["error"], str)
    assert v2.headers["Retry-After"] == "1"
    # Another tenant has its own quota (none here).
    assert call("POST", bulk, items("c", 50), headers=bearer(other)).status == 200
    # A second later the bucket holds five readings again, and a request of more than a
    # second's worth passes from the full bucket, leaving it in debt.
    time.sleep(1.05)
    assert call("POST", bulk, items("d", 12), headers=bearer(slow)).status == 200
    invalid = call("POST", bulk, {"readings": [{"stream": "bad id", "values": [1.0]}]},
                   headers=bearer(slow))  # fmt: skip
    assert invalid.status == 200  # nothing to queue, nothing to charge: the item's own error
    assert invalid.body["results"][0]["error"]["code"] == "invalid_stream_id"
    one = call("POST", infer, _v2_body(f"{stream_id}-v2", 1), headers=bearer(slow))
    assert one.status == 429 and one.headers["Retry-After"] == "2"  # 7 owed, 1 more: 1.6 s


def test_the_metrics_token(
    redis_server: RedisServer,
    service_factory: Callable[..., ServiceProcess],
    tokens_file: Path,
    tmp_path: Path,
) -> None:
    secret = new_token()
    (tmp_path / "metrics-token").write_text(secret + "\n")
    for extra in ([], ["--auth-tokens", str(tokens_file)]):
        service = service_factory(
            "--metrics-token-file", str(tmp_path / "metrics-token"), *extra,
            env={"REDIS_URL": redis_server.url},
        )  # fmt: skip
        url = service.url + "/metrics"
        missing = call("GET", url)
        assert missing.status == 401 and missing.body["error"]["code"] == "unauthenticated"
        assert missing.headers["WWW-Authenticate"] == "Bearer"
        for token in (new_token(), ADMIN):  # an API token, even an admin's, is not it
            wrong = call("GET", url, headers=bearer(token))
            assert wrong.status == 401
            assert wrong.headers["WWW-Authenticate"] == 'Bearer error="invalid_token"'
        scraped = call("GET", url, headers=bearer(secret))
        assert scraped.status == 200
        assert 'lstm_http_errors_total{code="unauthenticated"}' in scraped.body
        assert call("GET", service.url + "/healthz").status == 200


@pytest.mark.slow
def test_prometheus_scrapes_with_the_metrics_token_from_a_credentials_file(
    redis_server: RedisServer, service_factory: Callable[..., ServiceProcess], tmp_path: Path
) -> None:
    """What deploy/prometheus.yml's comment says to do, with a real Prometheus."""
    prometheus_tool("prometheus")
    secret = tmp_path / "metrics-token"
    secret.write_text(new_token() + "\n")
    service = service_factory(
        "--metrics-token-file", str(secret), env={"REDIS_URL": redis_server.url}
    )
    wrong = tmp_path / "wrong-token"
    wrong.write_text(new_token())
    target = f"127.0.0.1:{service.port}"
    prometheus = PrometheusServer(tmp_path / "prometheus", [target])
    job = prometheus.config["scrape_configs"][0]
    prometheus.config["scrape_configs"] = [
        {**job, "authorization": {"credentials_file": str(secret)}},
        {**job, "job_name": "wrong", "authorization": {"credentials_file": str(wrong)}},
    ]
    prometheus.start()
    try:
        deadline = time.monotonic() + 30
        while True:
            up = {labels["job"]: value for labels, value in prometheus.query("up")}
            if len(up) == 2:
                break
            assert time.monotonic() < deadline, prometheus.log()
            time.sleep(0.25)
        assert up == {"lstm-serve": 1.0, "wrong": 0.0}
        assert prometheus.query('lstm_redis_up{job="lstm-serve"}')[0][1] == 1.0
    finally:
        prometheus.stop()


# -- start-up ----------------------------------------------------------------------------------


def _run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "service", *args],
        cwd=ROOT,
        env={"PATH": "/usr/bin:/bin", **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_a_bad_token_file_at_start_up_stops_the_service_with_one_line(tmp_path: Path) -> None:
    broken = tmp_path / "tokens.json"
    broken.write_text(json.dumps({"tokens": [{"name": "a", "sha256": "00", "tenant": "t",
                                              "scopes": ["read"]}]}))  # fmt: skip
    for args in (["--auth-tokens", str(broken)], ["--auth-tokens", str(broken), "--workers", "2"]):
        run = _run_cli(*args)
        assert run.returncode == 2
        assert run.stderr.strip() == (
            f"lstm-serve: --auth-tokens {broken}: tokens[0] (a): 'sha256' must be the SHA-256 "
            "of the token as 64 hexadecimal digits"
        )
    missing = _run_cli(env={"LSTM_METRICS_TOKEN_FILE": str(tmp_path / "none")})
    assert missing.returncode == 2
    assert missing.stderr.strip() == (
        f"lstm-serve: --metrics-token-file {tmp_path / 'none'}: cannot be read (No such file or "
        "directory)"
    )


@pytest.mark.parametrize("host", ["127.0.0.1", "127.8.9.10", "::1", "[::1]", "localhost"])
def test_loopback_addresses_need_no_tokens(host: str) -> None:
    assert check_exposure(Settings(host=host)) is None


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "10.1.2.3", "", "lstm.example.com"])
def test_other_addresses_need_tokens_or_allow_anonymous(host: str, tokens_file: Path) -> None:
    with pytest.raises(SettingsError, match="not a loopback address and no --auth-tokens"):
        check_exposure(Settings(host=host))
    assert check_exposure(Settings(host=host, auth_tokens=tokens_file)) is None
    warning = check_exposure(Settings(host=host, allow_anonymous=True))
    assert warning is not None and "without authentication" in warning


def test_the_secure_default_over_the_command_line(
    service_factory: Callable[..., ServiceProcess], redis_server: RedisServer, tokens_file: Path
) -> None:
    refused = _run_cli("--host", "0.0.0.0")
    assert refused.returncode == 2
    assert refused.stderr.strip() == (
        "lstm-serve: --host 0.0.0.0 is not a loopback address and no --auth-tokens is given: "
        "anyone who reaches it could read, write and end every stream; give --auth-tokens FILE, "
        "or --allow-anonymous to serve without authentication"
    )
    env = {"REDIS_URL": redis_server.url}
    for args, variables in [
        (["--host", "0.0.0.0", "--allow-anonymous"], {}),
        (["--host", "0.0.0.0"], {"LSTM_ALLOW_ANONYMOUS": "yes"}),
    ]:
        open_service = service_factory(*args, env={**env, **variables})
        assert call("GET", open_service.url + "/v1/models").status == 200
        assert "serving without authentication on 0.0.0.0 (--allow-anonymous)" in (
            open_service.log()
        )
    guarded = service_factory("--host", "0.0.0.0", "--auth-tokens", str(tokens_file), env=env)
    assert call("GET", guarded.url + "/v1/models").status == 401
    assert "without authentication" not in guarded.log()


# -- the route table -----------------------------------------------------------------------------


def test_every_registered_route_is_classified_and_every_classified_route_exists(
    tokens_file: Path,
) -> None:
    models = load_models((), 1)
    app = create_app(Settings(auth_tokens=tokens_file), models=models)
    registered = {
        ("GET" if r.method == "HEAD" else r.method, r.resource.canonical)
        for r in app.router.routes()
        if r.resource is not None
    }
    assert registered == set(ROUTE_SCOPES)
    open_routes = {route for route, rule in ROUTE_SCOPES.items() if rule.scope is None}
    assert open_routes == {
        ("GET", "/healthz"), ("GET", "/readyz"), ("GET", "/openapi.json"),
        ("GET", "/v2/health/live"), ("GET", "/v2/health/ready"),
    }  # fmt: skip
    # A route added without a rule stops the app from being built, with or without tokens.
    for settings in (Settings(auth_tokens=tokens_file), Settings()):
        app = create_app(settings, models=models)
        app.router.add_post("/v1/streams/{stream}/reset", _never_called)
        with pytest.raises(LookupError, match=r"POST /v1/streams/\{stream\}/reset"):
            Authenticator(None, None).classify(app.router)


async def _never_called(request: Any) -> Any:
    raise AssertionError("not served")
