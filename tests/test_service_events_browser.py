"""A real browser subscribes: headless Chromium runs ``EventSource`` on a page served from another
origin, which the service allows with ``--cors-origin``; a page from an origin it does not allow is
refused by the browser. Also the CORS answers themselves, over plain HTTP."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from service_harness import RedisServer, ServiceProcess, call, free_port

PAGE = """<!doctype html>
<html><body><script>
const report = (path, body) => fetch(path, {method: "POST", body: JSON.stringify(body)});
const got = [];
const source = new EventSource(%(url)s);
source.onopen = () => report("/opened", {});
source.onmessage = (e) => {
  got.push({id: e.lastEventId, data: JSON.parse(e.data)});
  if (got.length === %(count)d) { source.close(); report("/events", got); }
};
source.onerror = () => { if (source.readyState === EventSource.CLOSED) report("/failed", {}); };
</script></body></html>
"""


class PageServer:
    """Serves the page on its own origin and collects what the page reports back."""

    def __init__(self, page: str, port: int | None = None) -> None:
        self.port = port if port is not None else free_port()
        self.origin = f"http://127.0.0.1:{self.port}"
        self.reports: dict[str, object] = {}
        self.arrived = threading.Condition()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = page.encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/html")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self) -> None:
                data = self.rfile.read(int(self.headers["Content-Length"]))
                with outer.arrived:
                    outer.reports[self.path] = json.loads(data)
                    outer.arrived.notify_all()
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def wait_for(self, path: str, timeout: float = 60) -> object:
        with self.arrived:
            if not self.arrived.wait_for(lambda: path in self.reports, timeout):
                raise AssertionError(f"the page never reported {path}; it reported {self.reports}")
            return self.reports[path]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        if os.environ.get("LSTM_TEST_REQUIRE_BROWSER"):
            raise AssertionError("chromium is not installed (Debian package: chromium)")
        pytest.skip("chromium is not installed (Debian package: chromium)")
    return found


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Callable[[str], None]]:
    """Open URLs in headless Chromium; every browser is killed afterwards."""
    binary = _chromium()
    procs: list[subprocess.Popen[bytes]] = []

    def open_page(url: str) -> None:
        profile = tmp_path / f"profile-{len(procs)}"
        args = [binary, "--headless=new", "--no-sandbox", "--disable-gpu"]
        args += ["--disable-dev-shm-usage", "--no-first-run", f"--user-data-dir={profile}", url]
        procs.append(subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))

    yield open_page
    for proc in procs:
        proc.kill()
        proc.wait()


def test_a_browser_on_another_origin_receives_events(
    redis_server: RedisServer,
    service_factory: Callable[..., ServiceProcess],
    browser: Callable[[str], None],
    stream_id: str,
) -> None:
    page_port = free_port()
    service = service_factory(
        "--cors-origin", f"http://127.0.0.1:{page_port}", env={"REDIS_URL": redis_server.url}
    )
    url = f"{service.url}/v1/streams/{stream_id}/events?from=start"
    before = [
        call("POST", f"{service.url}/v1/streams/{stream_id}/readings", {"values": [24.0 + k]})
        for k in range(3)
    ]
    allowed = PageServer(PAGE % {"url": json.dumps(url), "count": 6}, port=page_port)
    try:
        browser(allowed.origin + "/")
        allowed.wait_for("/opened")  # replayed the first three; the rest arrive live
        after = [
            call("POST", f"{service.url}/v1/streams/{stream_id}/readings", {"values": [20.0 + k]})
            for k in range(3)
        ]
        got = allowed.wait_for("/events")
    finally:
        allowed.close()
    assert isinstance(got, list)
    answers = [a.body for a in before + after]
    generation = answers[0]["generation"]
    assert [e["id"] for e in got] == [f"{generation}-{k}" for k in range(1, 7)]
    assert [e["data"]["prediction"] for e in got] == [
        a["results"][0]["prediction"] for a in answers
    ]

    # The same page from an origin the service does not name: the browser refuses the stream.
    stranger = PageServer(PAGE % {"url": json.dumps(url), "count": 6})
    try:
        browser(stranger.origin + "/")
        stranger.wait_for("/failed")
        assert "/events" not in stranger.reports
    finally:
        stranger.close()


def test_cors_answers(
    redis_server: RedisServer, service_factory: Callable[..., ServiceProcess], stream_id: str
) -> None:
    dash = "https://dash.example.com"
    env = {"REDIS_URL": redis_server.url}
    service = service_factory("--cors-origin", dash, env=env)
    path = f"{service.url}/v1/streams/{stream_id}/readings"
    preflight = {
        "Origin": dash,
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type, x-evil",
    }
    answer = call("OPTIONS", path, headers=preflight)
    assert answer.status == 204
    assert answer.headers["Access-Control-Allow-Methods"] == "GET, POST, DELETE"
    assert answer.headers["Access-Control-Allow-Headers"] == "content-type"
    refused = call("OPTIONS", path, headers={**preflight, "Origin": "https://evil.example"})
    assert refused.status == 403 and refused.body["error"]["code"] == "origin_not_allowed"

    posted = call("POST", path, {"values": [24.0]}, headers={"Origin": dash})
    assert posted.status == 200
    assert posted.headers["Access-Control-Allow-Origin"] == dash
    assert posted.headers["Vary"] == "Origin"
    assert "Retry-After" in posted.headers["Access-Control-Expose-Headers"]
    # Errors carry the header too, so the page can read them.
    bad = call("POST", path, {"values": []}, headers={"Origin": dash})
    assert bad.status == 400 and bad.headers["Access-Control-Allow-Origin"] == dash
    stranger = call("POST", path, {"values": [24.0]}, headers={"Origin": "https://evil.example"})
    assert "Access-Control-Allow-Origin" not in stranger.headers

    # By default no origin is allowed.
    closed = service_factory(env=env)
    plain = call(
        "POST",
        f"{closed.url}/v1/streams/{stream_id}/readings",
        {"values": [1.0]},
        headers={"Origin": dash},
    )
    assert plain.status == 200 and "Access-Control-Allow-Origin" not in plain.headers
    any_origin = service_factory("--cors-origin", "*", env=env)
    star = call("GET", f"{any_origin.url}/v1/models", headers={"Origin": "https://x.example"})
    assert star.headers["Access-Control-Allow-Origin"] == "*"
