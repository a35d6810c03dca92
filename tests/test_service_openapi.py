"""The OpenAPI document at /openapi.json is valid OpenAPI, documents exactly the routes the app
registers, and every answer a real service gives over real HTTP (successes and every error we can
provoke, Redis outages and a full queue included) is one the document allows.

The real services run with authentication on (a tokens file and a metrics token), so that their
documents carry the security of every operation, and the 401, 403 and 429 answers are checked
against them like any other; the fuzzer gets a token too."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from conftest import DEMO_MODEL_DIR
from jsonschema import Draft202012Validator, FormatChecker
from jsonschema.exceptions import ValidationError
from openapi_spec_validator import validate as validate_openapi
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012
from service_harness import (
    RedisServer,
    Response,
    ServiceProcess,
    bearer,
    call,
    write_tokens_file,
)
from sse_client import SseStream

from service import Settings, create_app
from service.api.authn import ROUTE_SCOPES
from service.api.openapi import openapi_document
from service.core.errors import ServiceError
from service.process.tokens_cli import new_token
from service.step.model import load_models

LONG = "/v1/models/{model}"
SHORT = "/v1"
V2_MODEL = "/v2/models/{model}"
V2_VERSION = V2_MODEL + "/versions/{version}"
BINARY = "application/octet-stream"
HEADER_LENGTH = "Inference-Header-Content-Length"

# Every scope; each of every scope but one (403s); a tenant whose quota is spent at once (429s).
ALL, NO_READ, NO_WRITE, NO_ADMIN, SPENT = (new_token() for _ in range(5))
WITHOUT = {"read": NO_READ, "write": NO_WRITE, "admin": NO_ADMIN}
METRICS_TOKEN = new_token()


@pytest.fixture(scope="module")
def auth_args(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """The flags that turn authentication on, with the tokens above."""
    directory = tmp_path_factory.mktemp("auth")
    tokens = write_tokens_file(
        directory / "tokens.json",
        {
            "all": (ALL, "default", ["read", "write", "admin"]),
            "no-read": (NO_READ, "default", ["write", "admin"]),
            "no-write": (NO_WRITE, "default", ["read", "admin"]),
            "no-admin": (NO_ADMIN, "default", ["read", "write"]),
            "spent": (SPENT, "spent", ["write"]),
        },
        {"spent": {"readings_per_s": 0.001}},
    )
    (directory / "metrics-token").write_text(METRICS_TOKEN)
    return ["--auth-tokens", str(tokens), "--metrics-token-file", str(directory / "metrics-token")]


@pytest.fixture(scope="module")
def service(
    redis_server: RedisServer,
    auth_args: list[str],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[ServiceProcess]:
    """The service on the bundled demo model with authentication on, shared by this module."""
    proc = ServiceProcess(
        tmp_path_factory.mktemp("logs"), auth_args, env={"REDIS_URL": redis_server.url}
    )
    proc.start()
    yield proc
    proc.stop()


def token_for(template: str) -> dict[str, str]:
    """The header a request to ``template`` is let through with."""
    return bearer(METRICS_TOKEN if template == "/metrics" else ALL)


def registered_routes(app: Any) -> set[tuple[str, str]]:
    """(method, path template) of every route; HEAD, which aiohttp adds beside each GET, is
    implied by the GET (RFC 9110: HEAD is GET without a body) and checked to have one."""
    routes = {(r.method, r.resource.canonical) for r in app.router.routes()}
    heads = {(m, p) for m, p in routes if m == "HEAD"}
    assert all(("GET", p) in routes for _, p in heads), heads
    return routes - heads


def documented_routes(doc: dict[str, Any]) -> set[tuple[str, str]]:
    return {(method.upper(), path) for path, item in doc["paths"].items() for method in item}


def route_mismatches(
    registered: set[tuple[str, str]], documented: set[tuple[str, str]]
) -> tuple[set[tuple[str, str]], set[tuple[str, str]]]:
    """(registered but undocumented, documented but not registered)."""
    return registered - documented, documented - registered


# -- checking real answers against the document -------------------------------------------------


class Contract:
    """Validates real responses against one served document and records what was exercised."""

    BASE = "urn:lstm-serve:openapi"

    def __init__(self, doc: dict[str, Any], seen: set[tuple[str, str, str]]) -> None:
        validate_openapi(doc)
        self.doc = doc
        self.seen = seen
        self.registry: Registry[Any] = Registry().with_resource(
            self.BASE, Resource.from_contents(doc, default_specification=DRAFT202012)
        )

    def _resolve(self, obj: dict[str, Any], pointer: str) -> tuple[dict[str, Any], str]:
        while "$ref" in obj:
            pointer = obj["$ref"].removeprefix("#")
            obj = self.doc
            for part in pointer.strip("/").split("/"):
                obj = obj[part.replace("~1", "/").replace("~0", "~")]
        return obj, pointer

    def _validate(self, pointer: str, instance: Any) -> None:
        schema = {"$ref": f"{self.BASE}#{pointer}"}
        validator = Draft202012Validator(
            schema, registry=self.registry, format_checker=FormatChecker()
        )
        validator.validate(instance)

    def check(self, method: str, template: str, answer: Response) -> Response:
        """``answer`` (to ``method`` on the path ``template``) is allowed by the document."""
        op = self.doc["paths"][template][method.lower()]
        status = str(answer.status)
        assert status in op["responses"], (method, template, status, answer.body)
        escaped = template.replace("~", "~0").replace("/", "~1")
        pointer = f"/paths/{escaped}/{method.lower()}/responses/{status}"
        self._check_response(op["responses"][status], pointer, answer)
        self.seen.add((method, template, status))
        return answer

    def check_component(self, name: str, answer: Response) -> Response:
        """``answer`` is the component response ``name`` (UnknownPath, MethodNotAllowed)."""
        self._check_response({"$ref": f"#/components/responses/{name}"}, "", answer)
        return answer

    def _check_response(self, response: dict[str, Any], pointer: str, answer: Response) -> None:
        response, pointer = self._resolve(response, pointer)
        headers = {k.lower(): v for k, v in answer.headers.items()}
        for name, spec in response.get("headers", {}).items():
            value = headers.get(name.lower())
            if value is None:
                assert not spec.get("required"), f"header {name} missing: {answer.headers}"
                continue
            schema = spec["schema"]
            self._validate_inline(schema, int(value) if schema.get("type") == "integer" else value)
        content = response.get("content")
        if content is None:
            assert answer.body is None, answer.body
            return
        media = headers["content-type"].split(";")[0].strip()
        assert media in content, (media, list(content))
        escaped = media.replace("~", "~0").replace("/", "~1")
        if isinstance(answer.body, bytes):
            assert content[media]["schema"]["contentMediaType"] == media == BINARY
            self._check_binary(f"{pointer}/content/{escaped}", headers, answer.body)
            return
        self._validate(f"{pointer}/content/{escaped}/schema", answer.body)

    def _check_binary(self, pointer: str, headers: dict[str, str], body: bytes) -> None:
        """A binary inference answer: its first Inference-Header-Content-Length bytes are JSON
        that the media type's ``x-inference-header`` allows, the rest exactly its outputs'
        binary_data_size bytes."""
        length = int(headers[HEADER_LENGTH.lower()])
        head = json.loads(body[:length])
        self._validate(f"{pointer}/x-inference-header", head)
        sizes = [output["parameters"]["binary_data_size"] for output in head["outputs"]]
        assert len(body) == length + sum(sizes), (len(body), length, sizes)

    def validate_schema(self, name: str, instance: Any) -> None:
        self._validate(f"/components/schemas/{name}", instance)

    def _validate_inline(self, schema: dict[str, Any], instance: Any) -> None:
        Draft202012Validator(schema, format_checker=FormatChecker()).validate(instance)

    def expected(self, registered: set[tuple[str, str]]) -> set[tuple[str, str, str]]:
        """Every (method, template, status) the document promises for a registered route."""
        return {
            (method.upper(), path, status)
            for path, item in self.doc["paths"].items()
            for method, op in item.items()
            if (method.upper(), path) in registered
            for status in op["responses"]
        }


# -- (a) and (b): the document itself ------------------------------------------------------------


@pytest.fixture(scope="module")
def demo_models() -> dict[str, Any]:
    return load_models((), 1)


def test_the_document_is_valid_openapi_for_any_configuration(
    demo_models: dict[str, Any], tmp_path: Path
) -> None:
    validate_openapi(openapi_document(Settings(), demo_models))
    several = load_models((DEMO_MODEL_DIR, _model_copy(tmp_path, "sst")), 1)
    doc = openapi_document(Settings(default_model="sst", request_max_readings=7), several)
    validate_openapi(doc)
    schemas = doc["components"]["schemas"]
    assert doc["components"]["parameters"]["Model"]["schema"]["enum"] == ["elnino", "sst"]
    assert schemas["ReadingList"]["properties"]["readings"]["maxItems"] == 7
    assert schemas["Values"]["minItems"] == schemas["Values"]["maxItems"] == 1
    shape = schemas["V2InferRequest"]["properties"]["inputs"]["items"]["properties"]["shape"]
    assert shape["prefixItems"] == [{"const": 1}, {"type": "integer", "minimum": 1, "maximum": 7},
                                    {"const": 1}]  # fmt: skip
    assert doc["components"]["parameters"]["Version"]["schema"]["enum"][0] == "1"


def test_every_error_class_is_documented_under_its_status(demo_models: dict[str, Any]) -> None:
    schemas = openapi_document(Settings(), demo_models)["components"]["schemas"]
    classes = ServiceError.__subclasses__()
    assert len(classes) >= 10
    for error in classes:
        codes = schemas[f"Error{error.status}"]["properties"]["error"]["properties"]["code"]
        assert error.code in codes["enum"], (error.__name__, error.status, error.code)


def test_each_operation_says_the_token_and_scope_it_needs_and_the_refusals_it_gives(
    demo_models: dict[str, Any],
) -> None:
    guarded = Settings(auth_tokens=Path("tokens.json"), metrics_token_file=Path("metrics"))
    doc = openapi_document(guarded, demo_models)
    validate_openapi(doc)
    schemes = doc["components"]["securitySchemes"]
    assert schemes["bearerToken"] == {**schemes["bearerToken"], "type": "http", "scheme": "bearer"}
    assert schemes["accessToken"]["in"] == "query" and schemes["accessToken"]["name"] == (
        "access_token"
    )
    for path, item in doc["paths"].items():
        v2 = "V2" if path.startswith("/v2") else ""
        for method, op in item.items():
            rule = ROUTE_SCOPES[(method.upper(), path)]
            statuses = set(op["responses"])
            if rule.scope is None:
                assert op["security"] == [] and not statuses & {"401", "403", "429"}, path
            elif rule.scope == "metrics":
                assert op["security"] == [{"metricsToken": []}] and "403" not in statuses
                assert op["responses"]["401"] == {"$ref": "#/components/responses/Unauthorized"}
            else:
                expected = [{"bearerToken": [rule.scope]}]
                if rule.query_token:
                    expected.append({"accessToken": [rule.scope]})
                assert op["security"] == expected, path
                assert op["responses"]["401"]["$ref"].endswith(f"/{v2}Unauthorized")
                assert op["responses"]["403"]["$ref"].endswith(f"/{v2}Forbidden")
                assert ("429" in statuses) == (rule.scope == "write"), path
    # Without authentication, the deployment's document asks for no token anywhere.
    anonymous = openapi_document(Settings(), demo_models)
    assert anonymous["components"]["securitySchemes"] == {}
    for item in anonymous["paths"].values():
        for op in item.values():
            assert op["security"] == [] and not set(op["responses"]) & {"401", "403", "429"}


def test_every_route_is_documented_and_every_documented_route_exists(
    demo_models: dict[str, Any],
) -> None:
    app = create_app(Settings(), models=demo_models)
    registered = registered_routes(app)
    doc = openapi_document(Settings(), demo_models)
    undocumented, missing = route_mismatches(registered, documented_routes(doc))
    assert not undocumented, f"routes missing from service/api/openapi.py: {sorted(undocumented)}"
    assert not missing, f"documented routes the app does not register: {sorted(missing)}"
    # The check can fail: an added route is caught, and so is a route that disappears.
    app.router.add_post("/v1/models/{model}/streams/{stream}/reset", _never_called)
    undocumented, _ = route_mismatches(registered_routes(app), documented_routes(doc))
    assert undocumented == {("POST", "/v1/models/{model}/streams/{stream}/reset")}
    _, missing = route_mismatches(registered - {("GET", "/metrics")}, documented_routes(doc))
    assert missing == {("GET", "/metrics")}


async def _never_called(request: Any) -> Any:
    raise AssertionError("not served")


def test_the_contract_check_rejects_what_the_document_does_not_allow(
    demo_models: dict[str, Any],
) -> None:
    contract = Contract(openapi_document(Settings(), demo_models), set())
    path = LONG + "/streams/{stream}/readings"
    good = {
        "model": "elnino", "model_version": "v", "stream": "s", "generation": 1,
        "results": [{"seq": 1, "prediction": [1.0]}],
    }  # fmt: skip
    json_type = {"Content-Type": "application/json"}
    contract.check("POST", path, Response(200, json_type, good))
    for bad in [
        Response(200, json_type, {k: v for k, v in good.items() if k != "generation"}),
        Response(200, json_type, {**good, "colour": "red"}),
        Response(200, json_type, {**good, "results": [{"seq": 1, "prediction": [1.0, 2.0]}]}),
        Response(400, json_type, {"error": {"code": "stale_seq", "message": "m"}}),
        Response(409, json_type, {"error": {"code": "stale_seq", "message": "m"}}),
        Response(503, json_type, {"error": {"code": "overloaded", "message": "m"}}),
        Response(500, json_type, {"error": {"code": "internal_error", "message": "m"}}),
        Response(200, {"Content-Type": "text/plain"}, "ok"),
    ]:
        with pytest.raises((ValidationError, AssertionError)):
            contract.check("POST", path, bad)


# -- (c): a real service over real HTTP ----------------------------------------------------------


def _model_copy(tmp_path: Path, name: str, version: str | None = None) -> Path:
    """The demo model under another name and/or version (same weights)."""
    target = tmp_path / f"{name}-{version or 'same'}"
    shutil.copytree(DEMO_MODEL_DIR, target)
    meta = json.loads((target / "model.json").read_text())
    meta["name"] = name
    if version is not None:
        meta["version"] = version
    (target / "model.json").write_text(json.dumps(meta))
    return target


class Driver:
    """Requests to one service, each answer checked against that service's own document."""

    def __init__(self, service: ServiceProcess, seen: set[tuple[str, str, str]]) -> None:
        self.url = service.url
        doc = call("GET", self.url + "/openapi.json")
        assert doc.status == 200
        self.contract = Contract(doc.body, seen)
        self.contract.check("GET", "/openapi.json", doc)

    def __call__(
        self,
        method: str,
        template: str,
        model: str = "elnino",
        stream: str = "",
        query: str = "",
        version: str = "1",
        auth: dict[str, str] | None = None,
        **kw: Any,
    ) -> Response:
        """``auth``: the request's Authorization header (default: a token it is let through
        with; ``{}`` for none)."""
        path = template.replace("{model}", model).replace("{stream}", stream) + query
        path = path.replace("{version}", version)
        kw["headers"] = {**(token_for(template) if auth is None else auth), **kw.get("headers", {})}
        return self.contract.check(method, template, _call(method, self.url + path, **kw))


def _call(method: str, url: str, binary: bool = False, **kw: Any) -> Response:
    """``call``; with ``binary``, a request whose answer is binary: its body is kept as bytes."""
    if not binary:
        return call(method, url, **kw)
    data = kw["raw"] if "raw" in kw else json.dumps(kw["body"]).encode()
    request = urllib.request.Request(url, data, kw.get("headers", {}), method=method)
    with urllib.request.urlopen(request, timeout=30) as answer:
        return Response(answer.status, dict(answer.headers.items()), answer.read())


def _readings_scenarios(api: Driver, prefix: str, stream: str) -> None:
    readings = prefix + "/streams/{stream}/readings"
    bulk = prefix + "/readings"
    state = prefix + "/streams/{stream}"

    def status(answer: Response) -> int:
        return answer.status

    assert status(api("POST", readings, stream=stream, body={"values": [24.0], "seq": 1})) == 200
    many = {"readings": [{"values": [24.5], "seq": 2}, {"values": [25.0], "seq": 3, "ts": "x"}]}
    assert status(api("POST", readings, stream=stream, body=many)) == 200
    retry = api("POST", readings, stream=stream, body=many)
    assert retry.body["duplicate"] is True
    stale = api("POST", readings, stream=stream, body={"values": [24.0], "seq": 1})
    assert (stale.status, stale.body["error"]["current_seq"]) == (409, 3)
    for body, code in [
        ({"values": [24.0], "seq": 0}, "invalid_request"),
        ({"values": [24.0, 1.0]}, "invalid_values"),
    ]:
        assert api("POST", readings, stream=stream, body=body).body["error"]["code"] == code
    assert api("POST", readings, stream="a%20b", body={"values": [1]}).status == 400
    big = {"values": [1.0], "ts": "x" * (1024 * 1024 + 10)}
    assert api("POST", readings, stream=stream, body=big).status == 413
    too_many = {"readings": [{"values": [1.0]}] * 2001}
    assert api("POST", readings, stream=stream, body=too_many).status == 413

    items: list[Any] = [
        {"stream": stream, "values": [25.5]},
        {"stream": stream + "-b", "readings": [{"values": [1.0]}, {"values": [2.0]}]},
        {"stream": stream, "values": [25.5], "seq": 1},
        {"stream": "bad id", "values": [1.0]},
        {"stream": 7, "values": [1.0]},
        {"stream": stream, "values": ["warm"]},
        "not an object",
    ]
    mixed = api("POST", bulk, body={"readings": items})
    codes = [r.get("error", {}).get("code") for r in mixed.body["results"]]
    assert codes == [
        None, None, "stale_seq", "invalid_stream_id", "invalid_stream_id", "invalid_values",
        "invalid_request",
    ]  # fmt: skip
    assert api("POST", bulk, body={"readings": []}).status == 400
    assert api("POST", bulk, raw=b"[" * 10 + b" " * (1024 * 1024)).status == 413

    got = api("GET", state, stream=stream)
    assert (got.status, got.body["seq"]) == (200, 4)
    assert api("GET", state, stream="x" * 129).status == 400
    assert api("DELETE", state, stream=stream).status == 204
    for method in ("GET", "DELETE"):
        assert api(method, state, stream=stream).body["error"]["code"] == "stream_not_found"
    assert api("DELETE", state, stream="a%2Cb").status == 400


def _forecast_scenarios(api: Driver, prefix: str, stream: str) -> None:
    """The forecast routes' answers: forecasts, what-ifs, per-item errors, bad requests."""
    one = prefix + "/streams/{stream}/forecast"
    many = prefix + "/forecast"
    api("POST", prefix + "/streams/{stream}/readings", stream=stream, body={"values": [24.0]})
    answer = api("POST", one, stream=stream, body={"horizon": 3})
    assert (answer.status, answer.body["seq"], len(answer.body["forecast"])) == (200, 1, 3)
    what_if = {"horizon": 2, "readings": [{"values": [25.0], "seq": 9}, {"values": [26.0]}]}
    assert len(api("POST", one, stream=stream, body=what_if).body["results"]) == 2
    fresh = api("POST", one, stream=stream + "-new", body={"horizon": 1})
    assert (fresh.body["generation"], fresh.body["seq"]) == (None, None)
    for body, code in [
        ({"horizon": -1}, "invalid_request"),
        ({"horizon": 1, "readings": [{"values": [1.0, 2.0]}]}, "invalid_values"),
        ({"horizon": 1, "covariates": [{"month_sin": 0.0}]}, "invalid_values"),
    ]:
        assert api("POST", one, stream=stream, body=body).body["error"]["code"] == code
    assert api("POST", one, stream="a%20b", body={"horizon": 1}).status == 400
    assert api("POST", one, stream=stream, body={"horizon": 257}).status == 413
    items: list[Any] = [
        {"stream": stream},
        {"stream": stream, "readings": [{"values": [25.0]}]},
        {"stream": "bad id"},
        {"stream": stream, "readings": [{"values": ["warm"]}]},
        {"stream": stream, "extra": 1},
        "not an object",
    ]
    mixed = api("POST", many, body={"horizon": 2, "items": items})
    codes = [r.get("error", {}).get("code") for r in mixed.body["forecasts"]]
    assert codes == [
        None, None, "invalid_stream_id", "invalid_values", "invalid_request", "invalid_request",
    ]  # fmt: skip
    assert api("POST", many, body={"horizon": 2, "items": []}).status == 400
    wide = {"horizon": 200, "items": [{"stream": stream}] * 11}
    assert api("POST", many, body=wide).status == 413


def _events_scenario(api: Driver, prefix: str, stream: str) -> None:
    """The SSE route's answers."""
    events = prefix + "/streams/{stream}/events"
    api("POST", prefix + "/streams/{stream}/readings", stream=stream, body={"values": [24.0]})
    url = api.url + events.replace("{model}", "elnino").replace("{stream}", stream)
    fields: dict[str, str] = {}
    request = urllib.request.Request(url + "?from=start", headers=bearer(ALL))
    with urllib.request.urlopen(request, timeout=10) as answer:
        assert answer.status == 200
        assert answer.headers["Content-Type"].split(";")[0] == "text/event-stream"
        for line in answer:  # up to the blank line that ends the first event
            text = line.decode().rstrip("\r\n")
            if not text and "data" in fields:
                break
            if text and not text.startswith(":"):
                key, _, value = text.partition(":")
                fields[key] = value.removeprefix(" ")
    event = json.loads(fields["data"])
    api.contract.validate_schema("PredictionEvent", event)
    assert fields["id"] == f"{event['generation']}-{event['seq']}"
    api.contract.seen.add(("GET", events, "200"))
    bad = api("GET", events, stream=stream, query="?after=not-an-id")
    assert bad.body["error"]["code"] == "invalid_request"
    if prefix == LONG:
        assert api("GET", events, model="nope", stream=stream).status == 404


def _subscriptions_scenario(api: Driver, prefix: str, stream: str) -> None:
    """The multi-stream SSE route's and the WebSocket route's answers."""
    multi = prefix + "/events"
    readings = prefix + "/streams/{stream}/readings"
    api("POST", readings, stream=stream, body={"values": [24.0]})
    url = api.url + multi.replace("{model}", "elnino") + f"?streams={stream},{stream}-b&from=start"
    with SseStream(url, headers=bearer(ALL)) as events:
        assert events.status == 200
        assert events.headers["Content-Type"].split(";")[0] == "text/event-stream"
        first = events.take(2)
    assert [e.kind for e in first] == ["message", "streams"]
    api.contract.validate_schema("PredictionEvent", first[0].json())
    cursor_schema = api.contract.doc["components"]["parameters"]["LastEventCursor"]["schema"]
    for event in first:
        assert re.fullmatch(cursor_schema["pattern"], event.id or ""), event.id
    api.contract.seen.add(("GET", multi, "200"))
    assert api("GET", multi, query="?prefix=a&streams=b").status == 400
    assert api("GET", multi, query=f"?streams={stream}&after=nope").status == 400
    ws_path = multi + "/ws"
    assert api("GET", ws_path).body["error"]["code"] == "invalid_request"  # not an upgrade
    if prefix == LONG:
        assert api("GET", multi, model="nope", query="?streams=a").status == 404
        assert api("GET", ws_path, model="nope").status == 404

    async def websocket() -> dict[str, Any]:
        async with (
            aiohttp.ClientSession() as session,
            session.ws_connect(
                api.url + ws_path.replace("{model}", "elnino"), headers=bearer(ALL)
            ) as ws,
        ):
            await ws.send_json({"op": "subscribe", "streams": [stream], "from": "start"})
            while True:
                body: dict[str, Any] = await ws.receive_json(timeout=10)
                if body["type"] == "event":
                    return body

    event = asyncio.run(websocket())
    assert event.pop("type") == "event"
    assert event.pop("id") == f"{event['generation']}-{event['seq']}"
    api.contract.validate_schema("PredictionEvent", event)
    api.contract.seen.add(("GET", ws_path, "101"))


def _v2_infer_body(
    sequence_id: int | str, values: list[float], seq: int | None = None, **parameters: Any
) -> dict[str, Any]:
    """A v2 inference request: ``values`` as the steps of the demo model's one input."""
    if seq is not None:
        parameters["seq"] = seq
    return {
        "id": f"{sequence_id}-{seq}",
        "parameters": {"sequence_id": sequence_id, **parameters},
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [1, len(values), 1], "data": values}],
    }


def _v2_binary(body: dict[str, Any], values: list[float]) -> tuple[bytes, dict[str, str]]:
    """``body`` with its input's values as binary tensor data: the raw body and its headers."""
    tensor = body["inputs"][0]
    del tensor["data"]
    tensor["parameters"] = {"binary_data_size": 4 * len(values)}
    head = json.dumps(body).encode()
    return head + struct.pack(f"<{len(values)}f", *values), {HEADER_LENGTH: str(len(head))}


def _v2_scenarios(api: Driver, stream_id: str) -> None:
    """The KServe v2 routes' answers: metadata, health, config, statistics, JSON and binary
    inference, and every error in v2's form."""
    for path in ("/v2", "/v2/health/live", "/v2/health/ready", "/v2/models/stats"):
        assert api("GET", path).status == 200
    index = api("POST", "/v2/repository/index", body={"ready": True})
    assert [m["name"] for m in index.body] == ["elnino"]
    fingerprint = api("GET", LONG).body["version"]
    for base, version in [(V2_MODEL, "1"), (V2_VERSION, "1"), (V2_VERSION, fingerprint)]:
        for suffix in ("", "/ready", "/config", "/stats"):
            assert api("GET", base + suffix, version=version).status == 200
    for base, model, version in [(V2_MODEL, "nope", "1"), (V2_VERSION, "nope", "1"),
                                 (V2_VERSION, "elnino", "2")]:  # fmt: skip
        for suffix in ("", "/ready", "/config", "/stats"):
            answer = api("GET", base + suffix, model=model, version=version)
            assert answer.status == 404 and isinstance(answer.body["error"], str)
        body = _v2_infer_body(stream_id, [24.0])
        assert api("POST", base + "/infer", model=model, version=version, body=body).status == 404

    for k, base in enumerate((V2_MODEL, V2_VERSION)):
        infer = base + "/infer"
        stream = f"{stream_id}-v2-{k}"
        start = _v2_infer_body(stream, [24.0, 24.5], 1, sequence_start=True)
        first = api("POST", infer, body=start)
        assert first.body["parameters"]["seq"] == 2
        assert first.body["outputs"][0]["shape"] == [1, 2, 1]
        retry = api("POST", infer, body=start)
        assert retry.body["parameters"]["duplicate"] is True
        assert retry.body["outputs"] == first.body["outputs"]
        raw, headers = _v2_binary(_v2_infer_body(stream, [25.0, 25.5], 3), [25.0, 25.5])
        assert api("POST", infer, raw=raw, headers=headers).body["parameters"]["seq"] == 4
        asked = _v2_infer_body(stream, [26.0], 5, binary_data_output=True)
        binary = api("POST", infer, body=asked, binary=True)
        assert binary.headers["Content-Type"] == BINARY
        stale = api("POST", infer, body=_v2_infer_body(stream, [24.0, 24.5], 1))
        assert stale.status == 409 and isinstance(stale.body["error"], str)
        number = uuid.uuid4().int % 2**64 or 1  # an integer sequence_id
        ended = api("POST", infer, body=_v2_infer_body(number, [24.0], sequence_end=True))
        assert ended.body["parameters"]["stream"] == str(number)

        good = _v2_infer_body(stream, [24.0])
        tensor = good["inputs"][0]
        for bad in [
            {"raw": b"{not json"},
            {"body": {**good, "parameters": {"sequence_id": 0}}},
            {"body": {**good, "parameters": {"sequence_id": "a b"}}},
            {"body": {**good, "inputs": [{**tensor, "datatype": "FP64"}]}},
            {"body": {**good, "inputs": [{**tensor, "shape": [2, 1, 1]}]}},
            {"body": {**good, "inputs": [{**tensor, "name": "z"}]}},
            {"body": {**good, "inputs": [{**tensor, "data": ["warm"]}]}},
            {"body": {**good, "outputs": [{"name": "z"}]}},
            {"raw": json.dumps(good).encode(), "headers": {HEADER_LENGTH: "9999"}},
            {"raw": b"[" * 100_000},  # nested beyond the JSON parser's recursion limit
            {"body": {**good, "inputs": [{**tensor, "data": [10**400]}]}},  # beyond a double
        ]:
            answer = api("POST", infer, **bad)
            assert answer.status == 400 and isinstance(answer.body["error"], str), (bad, answer)
        too_many = _v2_infer_body(stream, [24.0] * 2001)
        assert api("POST", infer, body=too_many).status == 413
        assert api("POST", infer, raw=b"{" + b" " * (1024 * 1024)).status == 413


def _valid_body(method: str, template: str, stream: str) -> Any:
    """A body the route would take (so that only the token can be what refuses it)."""
    if method != "POST":
        return None
    if template.endswith("/streams/{stream}/readings"):
        return {"values": [24.0]}
    if template.endswith("/readings"):
        return {"readings": [{"stream": stream, "values": [24.0]}]}
    if template.endswith("/infer"):
        return _v2_infer_body(stream, [24.0])
    if template.endswith("/streams/{stream}/forecast"):
        return {"horizon": 2}
    if template.endswith("/forecast"):
        return {"horizon": 2, "items": [{"stream": stream}]}
    return {}


def _auth_scenarios(api: Driver, stream_id: str) -> None:
    """Every guarded operation answers a request without a token 401 and one whose token lacks
    its scope 403; every writing one answers a tenant whose quota is spent 429."""
    for template, item in api.contract.doc["paths"].items():
        for lower, op in item.items():
            method = lower.upper()
            responses = op["responses"]
            stream = f"{stream_id}-auth"
            body = _valid_body(method, template, stream)
            if "401" in responses:
                for auth in ({}, bearer(new_token())):
                    assert api(method, template, stream=stream, body=body, auth=auth).status == 401
            if "403" in responses:
                scope = ROUTE_SCOPES[(method, template)].scope
                assert scope is not None
                lacking = bearer(WITHOUT[scope])
                assert api(method, template, stream=stream, body=body, auth=lacking).status == 403
            if "429" in responses:
                # The tenant's bucket holds one reading, refilled in 1000 s: the first of these
                # requests (of all the writing routes) may pass, the second never does.
                for _ in range(2):
                    spent = api(method, template, stream=stream, body=body, auth=bearer(SPENT))
                assert spent.status == 429, (template, spent.body)
    for path, component in (("/v1/nothing", "Unauthorized"), ("/v2/nothing", "V2Unauthorized")):
        api.contract.check_component(component, call("GET", api.url + path))


def test_every_answer_of_a_real_service_is_documented(
    service: ServiceProcess,
    auth_args: list[str],
    redis_server: RedisServer,
    redis_factory: Callable[[], RedisServer],
    service_factory: Callable[..., ServiceProcess],
    stream_id: str,
    tmp_path: Path,
) -> None:
    seen: set[tuple[str, str, str]] = set()
    api = Driver(service, seen)
    for path in ("/healthz", "/readyz", "/metrics", "/v1/models"):
        assert api("GET", path).status == 200
    assert api("GET", "/v1/models/{model}").status == 200
    assert api("GET", "/v1/models/{model}", model="nope").status == 404
    registered = registered_routes(create_app(Settings(), models=load_models((), 1)))
    for prefix in (LONG, SHORT):
        _readings_scenarios(api, prefix, f"{stream_id}-{prefix.count('/')}")
        _forecast_scenarios(api, prefix, f"{stream_id}-forecast-{prefix.count('/')}")
        _events_scenario(api, prefix, f"{stream_id}-events-{prefix.count('/')}")
        _subscriptions_scenario(api, prefix, f"{stream_id}-subs-{prefix.count('/')}")
    for template in (LONG + "/streams/{stream}/readings", LONG + "/streams/{stream}"):
        method = "POST" if template.endswith("readings") else "GET"
        answer = api(method, template, model="nope", stream=stream_id, body={"values": [1]})
        assert answer.body["error"]["code"] == "model_not_found"
    assert api("POST", LONG + "/readings", model="nope", body={"readings": []}).status == 404
    for template, body in [
        (LONG + "/streams/{stream}/forecast", {"horizon": 1}),
        (LONG + "/forecast", {"horizon": 1, "items": [{"stream": stream_id}]}),
    ]:
        answer = api("POST", template, model="nope", stream=stream_id, body=body)
        assert answer.body["error"]["code"] == "model_not_found"
    let_in = bearer(ALL)
    nothing = call("GET", service.url + "/v1/nothing", headers=let_in)
    api.contract.check_component("UnknownPath", nothing)
    wrong = call("PUT", f"{service.url}/v1/streams/{stream_id}", {"values": [1]}, headers=let_in)
    api.contract.check_component("MethodNotAllowed", wrong)
    _v2_scenarios(api, stream_id)
    nothing = call("GET", service.url + "/v2/nothing", headers=let_in)
    api.contract.check_component("V2UnknownPath", nothing)
    wrong = call("PUT", f"{service.url}/v2/models/elnino/infer", {"inputs": []}, headers=let_in)
    api.contract.check_component("V2MethodNotAllowed", wrong)
    _auth_scenarios(api, stream_id)

    _several_models(service, redis_server, service_factory, stream_id, tmp_path, seen, auth_args)
    _outage(redis_factory, service_factory, stream_id, seen, auth_args)

    missed = api.contract.expected(registered) - seen
    assert not missed, f"documented answers never exercised: {sorted(missed)}"


def _several_models(
    service: ServiceProcess,
    redis_server: RedisServer,
    service_factory: Callable[..., ServiceProcess],
    stream_id: str,
    tmp_path: Path,
    seen: set[tuple[str, str, str]],
    auth_args: list[str],
) -> None:
    """Two models and no default (the short paths answer 404), one of them a new version of the
    demo model on the same Redis (streams the demo model wrote answer 409)."""
    newer = _model_copy(tmp_path, "elnino", version="0000000000000001")
    other = _model_copy(tmp_path, "sst")
    multi = service_factory(
        "--model", str(newer), "--model", str(other), *auth_args,
        env={"REDIS_URL": redis_server.url},
    )  # fmt: skip
    api = Driver(multi, seen)
    assert api.contract.doc["components"]["parameters"]["Model"]["schema"]["enum"] == [
        "elnino",
        "sst",
    ]
    old = f"{stream_id}-old"
    call(
        "POST", f"{service.url}/v1/streams/{old}/readings", {"values": [24.0]}, headers=bearer(ALL)
    )
    path = LONG + "/streams/{stream}/readings"
    refused = api("POST", path, stream=old, body={"values": [24.0]})
    assert refused.body["error"]["code"] == "model_version_mismatch"
    item = api("POST", LONG + "/readings", body={"readings": [{"stream": old, "values": [1.0]}]})
    assert item.body["results"][0]["error"]["code"] == "model_version_mismatch"
    refused = api("POST", LONG + "/streams/{stream}/forecast", stream=old, body={"horizon": 1})
    assert refused.body["error"]["code"] == "model_version_mismatch"
    item = api("POST", LONG + "/forecast", body={"horizon": 1, "items": [{"stream": old}]})
    assert item.body["forecasts"][0]["error"]["code"] == "model_version_mismatch"
    # a stream the newer version wrote, forecast by the first service's default model
    newer_stream = f"{stream_id}-newer"
    written = api("POST", path, stream=newer_stream, body={"values": [24.0]})
    assert written.status == 200
    first = Driver(service, seen)
    refused = first(
        "POST", SHORT + "/streams/{stream}/forecast", stream=newer_stream, body={"horizon": 1}
    )
    assert refused.body["error"]["code"] == "model_version_mismatch"
    for method, template, body in [
        ("POST", SHORT + "/streams/{stream}/readings", {"values": [1.0]}),
        ("POST", SHORT + "/readings", {"readings": [{"stream": old, "values": [1.0]}]}),
        ("POST", SHORT + "/streams/{stream}/forecast", {"horizon": 1}),
        ("POST", SHORT + "/forecast", {"horizon": 1, "items": [{"stream": old}]}),
        ("GET", SHORT + "/streams/{stream}", None),
        ("DELETE", SHORT + "/streams/{stream}", None),
        ("GET", SHORT + "/streams/{stream}/events", None),
        ("GET", SHORT + "/events", None),
        ("GET", SHORT + "/events/ws", None),
    ]:
        answer = api(method, template, stream=old, body=body)
        assert answer.body["error"]["code"] == "model_not_found"
    assert api("GET", "/v1/models").body["default_model"] is None
    mismatch = api("POST", V2_MODEL + "/infer", body=_v2_infer_body(old, [24.0]))
    assert mismatch.status == 409 and "version" in mismatch.body["error"]
    newer_version = {"model": "elnino", "version": "0000000000000001"}
    assert api("GET", V2_VERSION + "/ready", **newer_version).status == 200


def _outage(
    redis_factory: Callable[[], RedisServer],
    service_factory: Callable[..., ServiceProcess],
    stream_id: str,
    seen: set[tuple[str, str, str]],
    auth_args: list[str],
) -> None:
    """A frozen Redis (SIGSTOP: connections hang) behind a queue of one reading: requests time out
    with 503 redis_unavailable, or find the queue full and get 503 overloaded at once."""
    redis = redis_factory()
    unavailable = service_factory(
        "--queue-max-readings", "1", "--request-max-readings", "1", *auth_args,
        env={"REDIS_URL": redis.url, "LSTM_REDIS_TIMEOUT_S": "1"},
    )  # fmt: skip
    api = Driver(unavailable, seen)
    assert api("GET", "/readyz").status == 200
    wanted = {
        (method, prefix + suffix, "503")
        for prefix in (LONG, SHORT)
        for method, suffix in [
            ("POST", "/streams/{stream}/readings"), ("POST", "/readings"),
            ("POST", "/streams/{stream}/forecast"), ("POST", "/forecast"),
            ("GET", "/streams/{stream}"), ("DELETE", "/streams/{stream}"),
            ("GET", "/streams/{stream}/events"), ("GET", "/events"),
        ]
    } | {("GET", "/readyz", "503"), ("GET", "/v2/health/ready", "503")} | {
        ("POST", base + "/infer", "503") for base in (V2_MODEL, V2_VERSION)
    }  # fmt: skip
    codes: set[str] = set()
    assert redis.process is not None
    os.kill(redis.process.pid, signal.SIGSTOP)
    try:
        for _ in range(5):  # which request meets which 503 is a race; all of them are 503s
            with ThreadPoolExecutor(16) as pool:
                answers = list(pool.map(lambda a: api(*a[:2], **a[2]), _burst(stream_id)))
            # (v2's errors are messages without a code)
            codes |= {
                a.body["error"]["code"]
                for a in answers
                if a.status == 503 and isinstance(a.body["error"], dict)
            }
            if wanted <= seen and codes == {"redis_unavailable", "overloaded"}:
                break
    finally:
        os.kill(redis.process.pid, signal.SIGCONT)
    assert wanted <= seen, sorted(wanted - seen)
    assert codes == {"redis_unavailable", "overloaded"}


def _burst(stream_id: str) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for k in range(3):
        for prefix in (LONG, SHORT):
            stream = f"{stream_id}-down-{k}"
            yield "POST", prefix + "/streams/{stream}/readings", {
                "stream": stream, "body": {"values": [24.0]}
            }  # fmt: skip
            yield "POST", prefix + "/readings", {
                "body": {"readings": [{"stream": stream, "values": [24.0]}]}
            }  # fmt: skip
        for base in (V2_MODEL, V2_VERSION):
            yield "POST", base + "/infer", {"body": _v2_infer_body(f"{stream_id}-v2-{k}", [24.0])}
    for prefix in (LONG, SHORT):
        yield "POST", prefix + "/streams/{stream}/forecast", {
            "stream": stream_id, "body": {"horizon": 1}
        }  # fmt: skip
        yield "POST", prefix + "/forecast", {
            "body": {"horizon": 1, "items": [{"stream": stream_id}]}
        }  # fmt: skip
        yield "GET", prefix + "/streams/{stream}", {"stream": stream_id}
        yield "DELETE", prefix + "/streams/{stream}", {"stream": stream_id}
        yield "GET", prefix + "/streams/{stream}/events", {"stream": f"{stream_id}-sub"}
        yield "GET", prefix + "/events", {"query": f"?streams={stream_id}-sub2"}
    yield "GET", "/readyz", {}
    yield "GET", "/v2/health/ready", {}


# -- a third-party consumer of the document ------------------------------------------------------

FUZZ_CHECKS = [
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_headers_conformance",
    "response_schema_conformance",
]


@pytest.mark.slow
def test_a_fuzzer_driven_by_the_document_finds_no_server_error_and_no_undocumented_answer(
    service: ServiceProcess, tmp_path: Path
) -> None:
    """Schemathesis reads /openapi.json, generates valid and invalid requests for every operation
    (a fixed, deterministic set, bounded by --max-examples) and checks each answer against it;
    authentication is on, and it sends a token with every scope."""
    # An event stream never ends, so a fuzzer would wait on each valid request until its timeout;
    # _events_scenario checks those answers against the document instead.
    skipped = [
        "/v1/models/{model}/streams/{stream}/events",
        "/v1/streams/{stream}/events",
        "/v1/models/{model}/events",
        "/v1/events",
    ]
    args = [
        str(Path(sys.executable).parent / "st"), "run", f"{service.url}/openapi.json",
        "--url", service.url, "--max-examples", "25", "--generation-deterministic",
        "--phases", "examples,coverage,fuzzing", "--checks", ",".join(FUZZ_CHECKS),
        "--request-timeout", "10", "--no-color",
        # A token with every scope: the fuzzer explores what lies behind authentication (its
        # refusals are exercised, and checked, by the contract test above).
        "--header", f"Authorization: Bearer {ALL}",
    ]  # fmt: skip
    for path in skipped:
        args += ["--exclude-path", path]
    run = subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, timeout=280)
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
    # The fuzzer leaves out only the event paths (and may leave out /openapi.json itself).
    paths = call("GET", service.url + "/openapi.json").body["paths"]
    operations = sum(len(item) for item in paths.values())
    counts = re.search(r"Operations:\s+(\d+) selected / (\d+) total", run.stdout)
    tested = re.search(r"Tested:\s+(\d+)", run.stdout)
    assert counts and tested, run.stdout[-3000:]
    selected, total = int(counts.group(1)), int(counts.group(2))
    assert total - selected == len(skipped) and total >= operations - 1, counts.group(0)
    assert int(tested.group(1)) == selected
    generated = re.search(r"(\d+) generated", run.stdout)
    assert generated and int(generated.group(1)) > 10 * operations, run.stdout[-3000:]
