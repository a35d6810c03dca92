"""A private ``redis-server`` for running without ``REDIS_URL``.

It listens on a free port of 127.0.0.1 only, keeps an append-only file in its data directory, and
is stopped when the service exits. With no data directory configured it uses a temporary one and
removes it afterwards.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import redis

__all__ = ["EmbeddedRedis", "EmbeddedRedisError", "find_redis_server"]

# Another program may take the free port between our probe and redis-server's bind: try again.
_PORT_ATTEMPTS = 3


class EmbeddedRedisError(RuntimeError):
    """The private redis-server could not be found or started."""


def find_redis_server() -> str:
    found = shutil.which("redis-server")
    if found is None:
        raise EmbeddedRedisError(
            "no REDIS_URL is set and no redis-server is on PATH: install Redis "
            "(Debian/Ubuntu: apt-get install redis-server; macOS: brew install redis) "
            "or point REDIS_URL at a running server"
        )
    return found


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class EmbeddedRedis:
    def __init__(self, data_dir: Path | None) -> None:
        self._owned_dir = data_dir is None
        self.data_dir = (
            Path(tempfile.mkdtemp(prefix="lstm-serve-redis-")) if data_dir is None else data_dir
        )
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout_s: float = 10.0) -> None:
        binary = find_redis_server()
        try:
            self.data_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise EmbeddedRedisError(
                f"cannot create the Redis directory {self.data_dir}: {exc}"
            ) from None
        for attempt in range(_PORT_ATTEMPTS):
            self.port = _free_port()
            args = [
                binary,
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
            self.process = subprocess.Popen(
                args,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
            if self._wait_ready(timeout_s):
                return
            if attempt + 1 == _PORT_ATTEMPTS or self.process.poll() is None:
                break
        log_file = self.data_dir / "redis.log"
        tail = log_file.read_text(errors="replace")[-500:].strip() if log_file.exists() else ""
        self.stop()
        raise EmbeddedRedisError(f"the private redis-server did not start: {tail or 'no log'}")

    def _wait_ready(self, timeout_s: float) -> bool:
        """True once it answers PING; False if it exited or did not answer in time."""
        assert self.process is not None
        client = redis.Redis(port=self.port, socket_timeout=0.5, socket_connect_timeout=0.5)
        deadline = time.monotonic() + timeout_s
        try:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    return False
                with contextlib.suppress(redis.RedisError):
                    if client.ping():
                        return True
                time.sleep(0.02)
            return False
        finally:
            client.close()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()  # SIGTERM: Redis flushes its append-only file and exits
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None
        if self._owned_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)
