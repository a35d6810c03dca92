"""Starting the service: settings from flags and environment, bad values named at start-up, the
private server of the no-configuration default, several models and the short paths."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import redis
from service_harness import ROOT, RedisServer, ServiceProcess, call, tls_certificates
from sse_client import SseStream

from service.core.redis_url import parse_sentinel_url
from service.core.settings import OPTIONS, Settings, SettingsError, load_settings, markdown_table


def test_defaults() -> None:
    settings = load_settings([], {})
    assert settings == Settings()
    assert (settings.host, settings.port) == ("127.0.0.1", 8080)
    assert settings.redis_url is None and settings.models == ()


def test_flags_win_over_environment_and_environment_over_defaults() -> None:
    env = {"LSTM_PORT": "9000", "LSTM_STATE_TTL_S": "60", "LSTM_MODELS": "a, b"}
    settings = load_settings(["--port", "9100", "--model", "c"], env)
    assert settings.port == 9100  # flag
    assert settings.state_ttl_s == 60.0 and settings.state_ttl_ms == 60000  # environment
    assert settings.models == (Path("c"),)  # the flag replaces the variable
    assert load_settings([], env).models == (Path("a"), Path("b"))
    assert load_settings(["--model", "x", "--model", "y"], {}).models == (Path("x"), Path("y"))
    origins = {"LSTM_CORS_ORIGINS": "https://a.example, http://b.example:8000/"}
    assert load_settings([], origins).cors_origins == ("https://a.example", "http://b.example:8000")


def test_every_option_has_a_flag_and_an_lstm_variable() -> None:
    fields = set(Settings.__dataclass_fields__)
    assert {o.field for o in OPTIONS} == fields
    for option in OPTIONS:
        assert option.flag.startswith("--")
        assert option.env.startswith("LSTM_") or option.env == "REDIS_URL"


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"LSTM_PORT": "eighty"}, "LSTM_PORT"),
        ({"LSTM_PORT": "70000"}, "LSTM_PORT"),
        ({"LSTM_STATE_TTL_S": "-1"}, "LSTM_STATE_TTL_S"),
        ({"LSTM_STATE_TTL_S": "nan"}, "LSTM_STATE_TTL_S"),
        ({"LSTM_REDIS_TIMEOUT_S": "0"}, "LSTM_REDIS_TIMEOUT_S"),
        ({"LSTM_ON_VERSION_MISMATCH": "ignore"}, "LSTM_ON_VERSION_MISMATCH"),
        ({"LSTM_BATCH_MAX_READINGS": "0"}, "LSTM_BATCH_MAX_READINGS"),
        ({"LSTM_KEY_PREFIX": "a{b}"}, "LSTM_KEY_PREFIX"),
        ({"REDIS_URL": "http://example:6379"}, "REDIS_URL"),
        ({"LSTM_CORS_ORIGINS": "dash.example.com"}, "LSTM_CORS_ORIGINS"),
        ({"LSTM_CORS_ORIGINS": "https://dash.example.com/app"}, "LSTM_CORS_ORIGINS"),
        ({"LSTM_EVENTS_MAX_LEN": "0"}, "LSTM_EVENTS_MAX_LEN"),
        ({"LSTM_SSE_HEARTBEAT_S": "0"}, "LSTM_SSE_HEARTBEAT_S"),
    ],
)
def test_a_bad_value_is_named(env: dict[str, str], named: str) -> None:
    with pytest.raises(SettingsError, match=named):
        load_settings([], env)


def test_the_redis_password_is_never_shown() -> None:
    settings = load_settings([], {"REDIS_URL": "redis://app:s3cret@cache:6379/2"})
    assert "s3cret" not in repr(settings)
    assert settings.redis_url_redacted == "redis://app:***@cache:6379/2"
    with pytest.raises(SettingsError) as caught:
        load_settings([], {"REDIS_URL": "http://app:s3cret@cache:6379"})
    assert "s3cret" not in str(caught.value)


def test_a_sentinel_url_names_the_sentinels_the_service_and_both_passwords() -> None:
    url = (
        "redis+sentinel://:pr%40mary@s1:26380,s2,[::1]:5000/lstm-primary/3"
        "?sentinel_password=s3ntinel"
    )
    settings = load_settings([], {"REDIS_URL": url})
    assert settings.redis_url_redacted == (
        "redis+sentinel://:***@s1:26380,s2,[::1]:5000/lstm-primary/3?sentinel_password=***"
    )
    parsed = parse_sentinel_url(url)
    assert parsed.sentinels == (("s1", 26380), ("s2", 26379), ("::1", 5000))
    assert (parsed.service_name, parsed.db) == ("lstm-primary", 3)
    assert parsed.primary_kwargs() == {"db": 3, "password": "pr@mary"}
    assert parsed.sentinel_kwargs() == {"password": "s3ntinel"}
    assert "s3ntinel" not in repr(parsed) and "pr@mary" not in repr(parsed)
    tls = parse_sentinel_url("rediss+sentinel://s1/lstm-primary?ssl_ca_certs=/etc/ca.pem")
    assert tls.primary_kwargs() == tls.sentinel_kwargs() | {"db": 0}
    assert tls.sentinel_kwargs() == {"ssl": True, "ssl_ca_certs": "/etc/ca.pem"}
    for bad, reason in [
        ("redis+sentinel://s1:26379", "name the service"),
        ("redis+sentinel://s1/lstm-primary/zero", "name the service"),
        ("redis+sentinel://s1:99999/lstm-primary", "port 99999"),
        ("redis+sentinel://s1/lstm-primary?sentinel_pasword=x", "sentinel_pasword"),
        ("redis+sentinel://s1/lstm-primary?ssl_ca_certs=/etc/ca.pem", "rediss"),
    ]:
        with pytest.raises(SettingsError, match=f"REDIS_URL.*{reason}"):
            load_settings([], {"REDIS_URL": bad})


def _run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "service", *args],
        cwd=ROOT,
        env={"PATH": "/usr/bin:/bin", **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_bad_start_up_values_stop_the_service_with_one_line() -> None:
    bad_flag = _run_cli("--batch-max-readings", "lots")
    assert bad_flag.returncode == 2
    assert bad_flag.stderr.strip() == ("lstm-serve: --batch-max-readings='lots': is not a number")
    bad_env = _run_cli(env={"LSTM_ON_VERSION_MISMATCH": "sometimes"})
    assert bad_env.returncode == 2
    assert "LSTM_ON_VERSION_MISMATCH='sometimes': must be one of refuse, reset" in bad_env.stderr


def test_a_bad_model_directory_stops_the_service(tmp_path: Path) -> None:
    missing = _run_cli("--model", str(tmp_path))
    assert missing.returncode == 1
    assert "no model.json here" in missing.stderr and "Traceback" not in missing.stderr
    (tmp_path / "model.json").write_text("{not json")
    broken = _run_cli("--model", str(tmp_path))
    assert broken.returncode == 1 and "cannot be read as JSON" in broken.stderr
    unknown_default = _run_cli("--default-model", "nope")
    assert unknown_default.returncode == 1 and "'nope' is not among" in unknown_default.stderr


def test_without_redis_url_a_private_redis_server_runs_and_is_stopped(
    service_factory: Callable[..., ServiceProcess], tmp_path: Path
) -> None:
    service = service_factory("--redis-dir", str(tmp_path / "data"))
    answer = call("POST", f"{service.url}/v1/streams/s1/readings", {"values": [24.0]})
    assert answer.status == 200
    found = re.search(
        r"a private .+ server \(.+\) on 127\.0\.0\.1:(\d+), data in (.+)", service.log()
    )
    assert found is not None and Path(found.group(2)) == tmp_path / "data"
    private = redis.Redis(port=int(found.group(1)))
    # The stream's state and its event log.
    keys = {b"lstm:{elnino:s1}:state", b"lstm:{elnino:s1}:events"}
    assert set(private.keys()) == keys
    assert private.config_get("appendonly") == {"appendonly": "yes"}
    assert service.stop() == 0
    with pytest.raises(redis.ConnectionError):  # stopped on exit
        private.ping()
    assert (tmp_path / "data" / "appendonlydir").is_dir()
    # Its data directory was given, so the state survives a restart.
    again = service_factory("--redis-dir", str(tmp_path / "data"))
    state = call("GET", f"{again.url}/v1/streams/s1")
    assert state.status == 200 and state.body["seq"] == 1


def test_the_default_private_redis_leaves_nothing_behind(
    service_factory: Callable[..., ServiceProcess], tmp_path: Path
) -> None:
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    service = service_factory(env={"TMPDIR": str(scratch)})
    assert call("POST", f"{service.url}/v1/streams/s1/readings", {"values": [24.0]}).status == 200
    assert len(list(scratch.glob("lstm-serve-redis-*"))) == 1
    assert service.stop() == 0
    assert not list(scratch.glob("lstm-serve-redis-*"))


@pytest.fixture(scope="module")
def second_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo model copied under another name."""
    src = ROOT / "service" / "demo_model"
    out = tmp_path_factory.mktemp("models") / "sst2"
    out.mkdir()
    meta = json.loads((src / "model.json").read_text())
    meta["name"] = "sst2"
    (out / "model.json").write_text(json.dumps(meta))
    (out / "model.onnx").write_bytes((src / "model.onnx").read_bytes())
    return out


def test_several_models_and_the_default_model(
    redis_server: RedisServer,
    service_factory: Callable[..., ServiceProcess],
    second_model: Path,
) -> None:
    env = {"REDIS_URL": redis_server.url}
    demo = str(ROOT / "service" / "demo_model")
    both = service_factory("--model", demo, "--model", str(second_model), env=env)
    names = [m["name"] for m in call("GET", both.url + "/v1/models").body["models"]]
    assert names == ["elnino", "sst2"]
    short = call("POST", both.url + "/v1/streams/m1/readings", {"values": [24.0]})
    assert short.status == 404 and short.body["error"]["code"] == "model_not_found"
    assert "--default-model" in short.body["error"]["message"]
    a = call("POST", both.url + "/v1/models/elnino/streams/m1/readings", {"values": [24.0]})
    b = call("POST", both.url + "/v1/models/sst2/streams/m1/readings", {"values": [24.0]})
    # One stream id under two models is two streams.
    assert a.body["results"][0]["seq"] == b.body["results"][0]["seq"] == 1

    chosen = service_factory(
        "--model", demo, "--model", str(second_model), "--default-model", "sst2", env=env
    )
    short = call("POST", chosen.url + "/v1/streams/m1/readings", {"values": [25.0]})
    assert short.status == 200 and short.body["model"] == "sst2"
    assert short.body["results"][0]["seq"] == 2


def test_help_lists_every_option() -> None:
    answer = subprocess.run(
        [sys.executable, "-m", "service", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "COLUMNS": "400"},  # no wrapping inside the texts looked for
    )
    assert answer.returncode == 0, answer.stderr
    for opt in OPTIONS:
        assert opt.flag in answer.stdout and opt.env in answer.stdout
    assert "20-35% of throughput" in answer.stdout  # a literal % survives argparse


def test_the_readme_configuration_table_is_the_settings_table() -> None:
    readme = (ROOT / "README.md").read_text()
    assert markdown_table() in readme, "regenerate it with: python -m service.core.settings"


def test_request_limit_above_queue_limit_is_refused() -> None:
    with pytest.raises(SettingsError, match="could never be queued"):
        load_settings(["--request-max-readings", "100", "--queue-max-readings", "50"], {})


def test_a_password_protected_redis_works_and_the_password_is_never_logged(
    tmp_path: Path, service_factory: Callable[..., ServiceProcess]
) -> None:
    secret = "pw-" + "x7Kq9" * 4
    server = RedisServer(tmp_path / "locked", password=secret).start()
    try:
        service = service_factory("--log-level", "debug", env={"REDIS_URL": server.url})
        answer = call("POST", f"{service.url}/v1/streams/s1/readings", {"values": [24.0]})
        assert answer.status == 200
        assert server.client().dbsize() == 2  # the stream's state and its event log
        with SseStream(f"{service.url}/v1/streams/s1/events?from=start") as events:
            assert events.take(1)[0].id == f"{answer.body['generation']}-1"
        service.stop()
        log = service.log()
        assert "Redis: redis://:***@127.0.0.1" in log
        assert secret not in log
    finally:
        server.stop()


def test_rediss_urls_talk_tls(
    tmp_path: Path, service_factory: Callable[..., ServiceProcess]
) -> None:
    server = RedisServer(tmp_path / "tls-redis", tls=tls_certificates(tmp_path / "certs")).start()
    try:
        assert server.url.startswith("rediss://localhost:")
        service = service_factory(env={"REDIS_URL": server.url})
        answer = call("POST", f"{service.url}/v1/streams/s1/readings", {"values": [24.0]})
        assert answer.status == 200
        assert server.client().dbsize() == 2  # the stream's state and its event log
        with SseStream(f"{service.url}/v1/streams/s1/events?from=start") as events:
            assert events.take(1)[0].id == f"{answer.body['generation']}-1"
        plain = redis.Redis(port=server.port, socket_timeout=1)
        with pytest.raises(redis.ConnectionError):  # the port speaks TLS only
            plain.ping()
    finally:
        server.stop()


def test_request_limit_fits_the_record() -> None:
    with pytest.raises(SettingsError, match="at most 65535"):
        load_settings(["--request-max-readings", "70000", "--queue-max-readings", "100000"], {})


def test_a_model_version_that_cannot_be_stored_is_refused(tmp_path: Path) -> None:
    src = ROOT / "service" / "demo_model"
    meta = json.loads((src / "model.json").read_text())
    meta["version"] = "v" * 300
    (tmp_path / "model.json").write_text(json.dumps(meta))
    (tmp_path / "model.onnx").write_bytes((src / "model.onnx").read_bytes())
    refused = _run_cli("--model", str(tmp_path))
    assert refused.returncode == 1 and "model version" in refused.stderr
