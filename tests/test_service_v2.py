"""The KServe v2 / Open Inference Protocol front end with Triton's sequence extension, driven by
Triton's own HTTP client (``tritonclient[http]``) wherever it can build the request, and by raw
HTTP where it cannot: metadata and health, inference in JSON and binary tensors, sequences mapped
onto the /v1 streams, exactly-once ``seq``, errors, concurrency and statistics."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from importlib.metadata import version as package_version
from typing import Any

import numpy as np
import pytest
import tritonclient.http as httpclient
import tritonclient.http.aio as aioclient
from conftest import DemoReference, sea_temperatures
from service_harness import RedisServer, Response, ServiceProcess, call
from sse_client import SseStream
from tritonclient.utils import InferenceServerException

MODEL = "elnino"
FINGERPRINT = "19f94faff40a45e0"  # the demo model's /v1 model_version
# Low, so a request just above it stays small; the default (2000) would work the same way.
MAX_STEPS = 64
EXTENSIONS = ["binary_tensor_data", "sequence", "statistics", "model_configuration", "parameters"]


@pytest.fixture(scope="module")
def v2_service(
    redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServiceProcess]:
    proc = ServiceProcess(
        tmp_path_factory.mktemp("v2-logs"),
        ["--request-max-readings", str(MAX_STEPS)],
        env={"REDIS_URL": redis_server.url},
    )
    proc.start()
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def client(v2_service: ServiceProcess) -> Iterator[httpclient.InferenceServerClient]:
    triton = httpclient.InferenceServerClient(url=f"127.0.0.1:{v2_service.port}")
    yield triton
    triton.close()


def unique_int_id() -> int:
    """A fresh integer sequence id: the module's tests share one Redis."""
    return uuid.uuid4().int >> 66


# -- building requests and reading answers ------------------------------------------------------


def steps(values: list[float]) -> np.ndarray:
    """One stream's T readings as the model input ``[1, T, input_size]`` (the demo: 1 input)."""
    return np.asarray(values, np.float32).reshape(1, -1, 1)


def tensor(
    data: np.ndarray, datatype: str = "FP32", name: str = "x", binary: bool = False
) -> httpclient.InferInput:
    x = httpclient.InferInput(name, list(data.shape), datatype)
    x.set_data_from_numpy(data, binary_data=binary)
    return x


def json_output(name: str = "y") -> list[httpclient.InferRequestedOutput]:
    # The client asks for binary outputs unless told otherwise.
    return [httpclient.InferRequestedOutput(name, binary_data=False)]


def infer(
    client: httpclient.InferenceServerClient,
    sequence_id: int | str,
    values: list[float],
    *,
    start: bool = False,
    end: bool = False,
    seq: int | None = None,
    binary: bool = False,
    model_version: str = "",
) -> Any:
    return client.infer(
        MODEL,
        [tensor(steps(values), binary=binary)],
        model_version=model_version,
        outputs=[httpclient.InferRequestedOutput("y", binary_data=binary)],
        sequence_id=sequence_id,
        sequence_start=start,
        sequence_end=end,
        parameters=None if seq is None else {"seq": seq},
    )


def predictions(result: Any) -> np.ndarray:
    y = result.as_numpy("y")
    assert y.dtype == np.float32 and y.shape[0] == 1 and y.shape[2] == 1, (y.dtype, y.shape)
    return np.asarray(y.reshape(-1))


def params(result: Any) -> dict[str, Any]:
    answer: dict[str, Any] = result.get_response()["parameters"]
    return answer


def v1_post(service: ServiceProcess, stream: str, values: list[float]) -> np.ndarray:
    """The /v1 predictions of ``values`` sent to ``stream`` as one multi-reading request."""
    answer = call(
        "POST",
        f"{service.url}/v1/models/{MODEL}/streams/{stream}/readings",
        {"readings": [{"values": [v]} for v in values]},
    )
    assert answer.status == 200, answer.body
    return np.asarray([r["prediction"][0] for r in answer.body["results"]], np.float32)


def v1_one_by_one(service: ServiceProcess, stream: str, values: list[float]) -> np.ndarray:
    """The /v1 predictions of ``values`` sent to ``stream`` one reading per request."""
    return np.concatenate([v1_post(service, stream, [v]) for v in values])


def v1_state(service: ServiceProcess, stream: str) -> Response:
    return call("GET", f"{service.url}/v1/models/{MODEL}/streams/{stream}")


def raw_infer(
    service: ServiceProcess,
    body: Any = None,
    raw: bytes | None = None,
    headers: dict[str, str] | None = None,
    path: str = f"/v2/models/{MODEL}/infer",
) -> Response:
    return call("POST", service.url + path, body, raw=raw, headers=headers)


def raw_request(sequence_id: Any, values: list[float]) -> dict[str, Any]:
    """A JSON inference request built by hand, for what the client will not send."""
    return {
        "parameters": {"sequence_id": sequence_id},
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [1, len(values), 1], "data": values}],
    }


def assert_error_body(answer: Response, status: int) -> None:
    """An error under /v2 is exactly ``{"error": "message"}`` with the status."""
    assert answer.status == status, (answer.status, answer.body)
    assert isinstance(answer.body, dict) and set(answer.body) == {"error"}, answer.body
    assert isinstance(answer.body["error"], str) and answer.body["error"], answer.body


def assert_client_error(
    caught: pytest.ExceptionInfo[InferenceServerException], status: int
) -> None:
    """The client found a JSON body with a string ``error`` (it reports anything else as its own
    decoding failure, with the body in ``debug_details``)."""
    error = caught.value
    assert error.status() == str(status), (error.status(), error.message())
    assert error.debug_details() is None, error.debug_details()
    assert isinstance(error.message(), str) and error.message(), error.message()


def close_to_reference(got: np.ndarray, values: list[float], reference: DemoReference) -> None:
    expected = reference.predictions(values)
    assert got.shape == expected.shape, (got.shape, expected.shape)
    error = np.abs(got.astype(np.float64) - expected)
    assert error.max() < reference.tolerance, (error.max(), reference.tolerance)


# -- metadata, health, configuration ------------------------------------------------------------


def test_server_metadata_health_and_readiness(
    v2_service: ServiceProcess, client: httpclient.InferenceServerClient
) -> None:
    assert client.get_server_metadata() == {
        "name": "lstm-serve",
        "version": package_version("lstm-serve"),
        "extensions": EXTENSIONS,
    }
    assert client.is_server_live() and client.is_server_ready()
    live = call("GET", v2_service.url + "/v2/health/live")
    assert live.status == 200 and live.body is None  # an empty body
    assert call("GET", v2_service.url + "/v2/health/ready").status == 200
    for version in ("", "1", FINGERPRINT):
        assert client.is_model_ready(MODEL, version), version
    assert not client.is_model_ready(MODEL, "2")
    assert not client.is_model_ready("no-such-model")
    assert_error_body(call("GET", v2_service.url + "/v2/models/no-such-model/ready"), 404)
    assert_error_body(call("GET", v2_service.url + f"/v2/models/{MODEL}/versions/2/ready"), 404)
    assert_error_body(call("GET", v2_service.url + "/v2/no/such/path"), 404)


def test_model_metadata_answers_for_version_1_and_the_fingerprint_only(
    v2_service: ServiceProcess, client: httpclient.InferenceServerClient
) -> None:
    # The fingerprint is the version string /v1 reports, not a copy of the constant above.
    fingerprint = call("GET", f"{v2_service.url}/v1/models/{MODEL}").body["version"]
    assert fingerprint == FINGERPRINT
    expected = {
        "name": MODEL,
        "versions": ["1"],
        "platform": "onnxruntime_onnx",
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, -1, 1]}],
        "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, -1, 1]}],
    }
    for version in ("", "1", fingerprint):
        assert client.get_model_metadata(MODEL, version) == expected, version
    for model, version in ((MODEL, "2"), (MODEL, "0"), (MODEL, "19f94faff40a45e1"), ("nope", "")):
        with pytest.raises(InferenceServerException) as caught:
            client.get_model_metadata(model, version)
        assert_client_error(caught, 404)
    assert_error_body(call("GET", f"{v2_service.url}/v2/models/{MODEL}/versions/2"), 404)


def test_model_configuration(
    v2_service: ServiceProcess, client: httpclient.InferenceServerClient
) -> None:
    config = client.get_model_config(MODEL)
    assert config["name"] == MODEL
    assert config["platform"] == "onnxruntime_onnx"
    assert isinstance(config["backend"], str) and config["backend"]
    assert isinstance(config["max_batch_size"], int) and config["max_batch_size"] > 0
    # Triton's configuration carries more fields per tensor (format, optional, ...); these are
    # the ones a client reads the model's signature from.
    [x] = config["input"]
    assert {k: x[k] for k in ("name", "data_type", "dims")} == {
        "name": "x", "data_type": "TYPE_FP32", "dims": [-1, 1]
    }  # fmt: skip
    [y] = config["output"]
    assert {k: y[k] for k in ("name", "data_type", "dims")} == {
        "name": "y", "data_type": "TYPE_FP32", "dims": [-1, 1]
    }  # fmt: skip
    assert isinstance(config["sequence_batching"], dict)
    assert "instance_group" in config and "version_policy" in config
    for version in ("1", FINGERPRINT):
        assert client.get_model_config(MODEL, version) == config, version
    with pytest.raises(InferenceServerException) as caught:
        client.get_model_config(MODEL, "2")
    assert_client_error(caught, 404)


def test_repository_index_lists_the_served_model(
    v2_service: ServiceProcess, client: httpclient.InferenceServerClient
) -> None:
    [entry] = client.get_model_repository_index()
    # Triton adds a "reason" (empty when the model is ready) to each entry.
    assert {k: entry[k] for k in ("name", "version", "state")} == {
        "name": MODEL, "version": "1", "state": "READY"
    }  # fmt: skip


def test_inference_addresses_version_1_and_the_fingerprint_and_nothing_else(
    v2_service: ServiceProcess, client: httpclient.InferenceServerClient, stream_id: str
) -> None:
    first = infer(client, stream_id, [24.0], model_version="1")
    second = infer(client, stream_id, [24.5], model_version=FINGERPRINT)
    assert first.get_response()["model_version"] == "1"
    assert second.get_response()["model_version"] == "1"
    assert v1_state(v2_service, stream_id).body["seq"] == 2  # both reached the one stream
    with pytest.raises(InferenceServerException) as caught:
        infer(client, stream_id, [25.0], model_version="2")
    assert_client_error(caught, 404)
    assert v1_state(v2_service, stream_id).body["seq"] == 2


# -- inference ----------------------------------------------------------------------------------


def test_response_shape_and_parameters(
    v2_service: ServiceProcess, client: httpclient.InferenceServerClient, stream_id: str
) -> None:
    values = [24.0, 24.4, 25.1]
    result = client.infer(
        MODEL,
        [tensor(steps(values))],
        outputs=json_output(),
        request_id="req-17",
        sequence_id=stream_id,
    )
    body = result.get_response()
    assert body["model_name"] == MODEL and body["model_version"] == "1" and body["id"] == "req-17"
    state = v1_state(v2_service, stream_id).body
    assert body["parameters"]["sequence_id"] == stream_id
    assert body["parameters"]["stream"] == stream_id
    assert body["parameters"]["generation"] == state["generation"]
    assert body["parameters"]["duplicate"] is False
    assert {"sequence_id", "stream", "generation", "seq", "duplicate"} <= set(body["parameters"])
    assert state["seq"] == 3
    [output] = body["outputs"]
    assert output["name"] == "y" and output["datatype"] == "FP32" and output["shape"] == [1, 3, 1]
    assert len(output["data"]) == 3 and all(isinstance(v, float) for v in output["data"])
    # /v1 holds the last step's prediction, the same number.
    assert np.float32(state["last_prediction"][0]) == np.float32(output["data"][-1])


def test_json_and_binary_tensors_give_the_same_predictions_as_v1(
    v2_service: ServiceProcess, client: httpclient.InferenceServerClient, stream_id: str
) -> None:
    values = sea_temperatures(6, seed=21)
    # Three fresh streams fed the same readings one step per request: JSON tensors, binary
    # tensors, and /v1. The same model on the same inputs must give the same float32 numbers.
    as_json = np.concatenate([predictions(infer(client, stream_id + "-j", [v])) for v in values])
    as_binary = np.concatenate(
        [predictions(infer(client, stream_id + "-b", [v], binary=True)) for v in values]
    )
    by_v1 = v1_one_by_one(v2_service, stream_id + "-v1", values)
    np.testing.assert_array_equal(as_json, by_v1)
    np.testing.assert_array_equal(as_binary, by_v1)
    # Mixed: binary in, JSON out, and the client's default (binary_data_output, no outputs named).
    mixed = client.infer(
        MODEL,
        [tensor(steps(values), binary=True)],
        outputs=json_output(),
        sequence_id="m-" + stream_id,
    )
    default = client.infer(MODEL, [tensor(steps(values))], sequence_id="d-" + stream_id)
    np.testing.assert_allclose(predictions(mixed), by_v1, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(predictions(default), predictions(mixed))


def test_binary_output_wire_format(v2_service: ServiceProcess, stream_id: str) -> None:
    values = [24.0, 24.5, 25.0, 25.5]
    body, json_size = httpclient.InferenceServerClient.generate_request_body(
        [tensor(steps(values), binary=True)],
        outputs=[httpclient.InferRequestedOutput("y", binary_data=True)],
        sequence_id=stream_id,
    )
    assert json_size is not None  # the input went in the binary section
    # The harness decodes bodies as text; float32 bytes need not be UTF-8, so read raw bytes.
    request = urllib.request.Request(
        f"{v2_service.url}/v2/models/{MODEL}/infer",
        data=body,
        method="POST",
        headers={"Inference-Header-Content-Length": str(json_size)},
    )
    with urllib.request.urlopen(request, timeout=30) as answer:
        status, headers, payload = answer.status, answer.headers, answer.read()
    assert status == 200
    assert headers["Content-Type"].startswith("application/octet-stream")
    header_length = int(headers["Inference-Header-Content-Length"])
    head = json.loads(payload[:header_length])
    [output] = head["outputs"]
    assert output["name"] == "y" and output["shape"] == [1, 4, 1] and "data" not in output
    assert output["parameters"]["binary_data_size"] == 4 * len(values)
    assert len(payload) == header_length + 4 * len(values)
    got = np.frombuffer(payload[header_length:], dtype="<f4")
    np.testing.assert_allclose(got, v1_post(v2_service, stream_id + "-v1", values), rtol=1e-5)


def test_nested_json_data_and_any_content_type_are_accepted(
    v2_service: ServiceProcess, stream_id: str
) -> None:
    values = [24.0, 24.5, 25.0]
    flat = raw_infer(v2_service, raw_request(stream_id + "-f", values))
    nested_body = raw_request(stream_id + "-n", values)
    nested_body["inputs"][0]["data"] = [[[v] for v in values]]
    nested = raw_infer(
        v2_service, nested_body, headers={"Content-Type": "application/x-www-form-urlencoded"}
    )
    assert flat.status == nested.status == 200, (flat.body, nested.body)
    assert flat.body["outputs"][0]["data"] == nested.body["outputs"][0]["data"]
    assert flat.body["outputs"][0]["shape"] == [1, 3, 1]


# -- sequences ----------------------------------------------------------------------------------


def test_sequence_start_resets_the_stream_to_zero_state(
    v2_service: ServiceProcess,
    client: httpclient.InferenceServerClient,
    stream_id: str,
    demo_reference: DemoReference,
) -> None:
    before = [infer(client, stream_id, [v]) for v in sea_temperatures(5, seed=31)]
    old_generation = params(before[-1])["generation"]
    values = sea_temperatures(3, seed=32)
    restarted = infer(client, stream_id, values, start=True)
    assert params(restarted)["generation"] > old_generation
    fresh = predictions(infer(client, stream_id + "-fresh", values))
    np.testing.assert_array_equal(predictions(restarted), fresh)
    close_to_reference(predictions(restarted), values, demo_reference)
    state = v1_state(v2_service, stream_id).body
    assert state["generation"] == params(restarted)["generation"] and state["seq"] == 3


def test_sequence_end_ends_the_stream_and_the_next_request_starts_from_zero(
    v2_service: ServiceProcess,
    client: httpclient.InferenceServerClient,
    stream_id: str,
    demo_reference: DemoReference,
) -> None:
    values = sea_temperatures(4, seed=33)
    first = infer(client, stream_id, values[:2], start=True)
    last = infer(client, stream_id, values[2:], end=True)
    # The ending request's own steps still run on the stream's state.
    close_to_reference(
        np.concatenate([predictions(first), predictions(last)]), values, demo_reference
    )
    assert params(last)["generation"] == params(first)["generation"]
    gone = v1_state(v2_service, stream_id)
    assert gone.status == 404, gone.body
    again = infer(client, stream_id, values[:2])  # no sequence_start: a new generation anyway
    np.testing.assert_array_equal(predictions(again), predictions(first))
    assert params(again)["generation"] > params(first)["generation"]
    assert v1_state(v2_service, stream_id).body["seq"] == 2


def test_a_request_without_start_on_an_unknown_stream_starts_it(
    v2_service: ServiceProcess,
    client: httpclient.InferenceServerClient,
    stream_id: str,
    demo_reference: DemoReference,
) -> None:
    assert v1_state(v2_service, stream_id).status == 404
    values = sea_temperatures(2, seed=34)
    result = infer(client, stream_id, values)
    close_to_reference(predictions(result), values, demo_reference)
    state = v1_state(v2_service, stream_id).body
    assert state["seq"] == 2 and state["generation"] == params(result)["generation"]


def test_integer_and_string_ids_and_v1_reach_one_stream(
    v2_service: ServiceProcess,
    client: httpclient.InferenceServerClient,
    demo_reference: DemoReference,
) -> None:
    n = unique_int_id()
    values = sea_temperatures(3, seed=35)
    by_int = infer(client, n, [values[0]])
    by_str = infer(client, str(n), [values[1]])
    by_v1 = v1_post(v2_service, str(n), [values[2]])
    assert params(by_int)["sequence_id"] == n and params(by_str)["sequence_id"] == str(n)
    assert params(by_int)["stream"] == params(by_str)["stream"] == str(n)
    assert params(by_int)["generation"] == params(by_str)["generation"]
    got = np.concatenate([predictions(by_int), predictions(by_str), by_v1])
    close_to_reference(got, values, demo_reference)
    assert v1_state(v2_service, str(n)).body["seq"] == 3
    # The largest integer id is accepted, as an integer, and is the stream of its decimal string.
    largest = 2**64 - 1
    top = infer(client, largest, [24.0], start=True)
    assert params(top)["sequence_id"] == largest and params(top)["stream"] == str(largest)
    assert v1_state(v2_service, str(largest)).body["generation"] == params(top)["generation"]


def test_steps_alternating_between_v1_and_v2_equal_one_continuous_run(
    v2_service: ServiceProcess,
    client: httpclient.InferenceServerClient,
    stream_id: str,
    demo_reference: DemoReference,
) -> None:
    values = sea_temperatures(10, seed=36)
    got = []
    for k, v in enumerate(values):
        if k % 2:
            got.append(v1_post(v2_service, stream_id, [v]))
        else:
            got.append(predictions(infer(client, stream_id, [v], binary=k % 4 == 0)))
    continuous = v1_one_by_one(v2_service, stream_id + "-v1", values)
    np.testing.assert_array_equal(np.concatenate(got), continuous)
    close_to_reference(continuous, values, demo_reference)
    assert v1_state(v2_service, stream_id).body["seq"] == len(values)


def test_interleaved_sequences_each_follow_their_own_state(
    v2_service: ServiceProcess,
    client: httpclient.InferenceServerClient,
    stream_id: str,
    demo_reference: DemoReference,
) -> None:
    ids: list[int | str] = [f"{stream_id}-{k}" for k in range(3)] + [unique_int_id()]
    series = [sea_temperatures(8, seed=40 + k) for k in range(len(ids))]
    got: list[list[float]] = [[] for _ in ids]
    for step in range(8):
        for k, sequence_id in enumerate(ids):
            got[k] += predictions(infer(client, sequence_id, [series[k][step]])).tolist()
    for k, sequence_id in enumerate(ids):
        # The reference: the same readings on a fresh /v1 stream in one request, and the exporter's
        # float64 run.
        reference = v1_post(v2_service, f"{stream_id}-ref-{k}", series[k])
        np.testing.assert_allclose(got[k], reference, rtol=1e-5, atol=1e-5)
        close_to_reference(np.asarray(got[k]), series[k], demo_reference)
        assert v1_state(v2_service, str(sequence_id)).body["seq"] == 8


def test_a_request_of_t_steps_equals_t_single_steps(
    v2_service: ServiceProcess,
    client: httpclient.InferenceServerClient,
    stream_id: str,
    demo_reference: DemoReference,
) -> None:
    values = sea_temperatures(12, seed=37)
    whole = infer(client, stream_id + "-t", values)
    assert whole.get_response()["outputs"][0]["shape"] == [1, 12, 1]
    single = np.concatenate([predictions(infer(client, stream_id + "-1", [v])) for v in values])
    np.testing.assert_allclose(predictions(whole), single, rtol=1e-5, atol=1e-5)
    close_to_reference(predictions(whole), values, demo_reference)
    assert v1_state(v2_service, stream_id + "-t").body["seq"] == 12
    # A T-step request continues the stream's state like any other.
    more = infer(client, stream_id + "-t", values[:5], binary=True)
    expected = demo_reference.predictions(values + values[:5])[-5:]
    assert np.abs(predictions(more) - expected).max() < demo_reference.tolerance


def test_v2_steps_are_events_like_any_other(
    v2_service: ServiceProcess, client: httpclient.InferenceServerClient, stream_id: str
) -> None:
    values = [24.0, 24.5, 25.0]
    got = np.concatenate(
        [
            predictions(infer(client, stream_id, values[:2])),
            predictions(infer(client, stream_id, values[2:])),
        ]
    )
    url = f"{v2_service.url}/v1/models/{MODEL}/streams/{stream_id}/events?from=start"
    with SseStream(url) as events:
        assert events.status == 200
        received = [e.json() for e in events.take(3)]
    assert [e["seq"] for e in received] == [1, 2, 3]
    assert [e["values"] for e in received] == [[v] for v in values]
    np.testing.assert_array_equal(
        np.asarray([e["prediction"][0] for e in received], np.float32), got
    )


# -- exactly once -------------------------------------------------------------------------------


def test_a_resent_request_with_seq_is_a_duplicate_and_the_stream_advances_once(
    v2_service: ServiceProcess,
    client: httpclient.InferenceServerClient,
    stream_id: str,
    demo_reference: DemoReference,
) -> None:
    first = infer(client, stream_id, [24.0], seq=1)
    second = infer(client, stream_id, [24.6], seq=2)
    resent = infer(client, stream_id, [24.6], seq=2)
    assert params(second)["duplicate"] is False and params(resent)["duplicate"] is True
    np.testing.assert_array_equal(predictions(resent), predictions(second))
    assert params(resent)["generation"] == params(second)["generation"]
    assert params(second)["seq"] == params(resent)["seq"] == 2
    assert v1_state(v2_service, stream_id).body["seq"] == 2
    # A resend in binary is the same request: still a duplicate.
    assert params(infer(client, stream_id, [24.6], seq=2, binary=True))["duplicate"] is True
    # The next step continues from the state after seq 2, as if nothing had been resent.
    third = infer(client, stream_id, [25.1], seq=3)
    got = np.concatenate([predictions(first), predictions(second), predictions(third)])
    close_to_reference(got, [24.0, 24.6, 25.1], demo_reference)
    # A T-step request takes seq .. seq+T-1, and its resend is a duplicate of all of them.
    block = infer(client, stream_id, [25.3, 25.0, 24.8], seq=10)
    block_again = infer(client, stream_id, [25.3, 25.0, 24.8], seq=10)
    assert params(block_again)["duplicate"] is True
    np.testing.assert_array_equal(predictions(block_again), predictions(block))
    assert v1_state(v2_service, stream_id).body["seq"] == 12
    # seq 2's result is no longer held: a lower seq is refused, and changes nothing.
    with pytest.raises(InferenceServerException) as caught:
        infer(client, stream_id, [24.6], seq=2)
    assert_client_error(caught, 409)
    assert v1_state(v2_service, stream_id).body["seq"] == 12


def test_without_seq_a_resent_request_is_a_new_step(
    v2_service: ServiceProcess,
    client: httpclient.InferenceServerClient,
    stream_id: str,
    demo_reference: DemoReference,
) -> None:
    first = infer(client, stream_id, [24.0])
    again = infer(client, stream_id, [24.0])
    assert params(again)["duplicate"] is False
    assert v1_state(v2_service, stream_id).body["seq"] == 2
    got = np.concatenate([predictions(first), predictions(again)])
    close_to_reference(got, [24.0, 24.0], demo_reference)
    assert got[0] != got[1]  # the second step ran on the first's state


def test_a_resent_start_request_with_seq_does_not_start_again(
    v2_service: ServiceProcess,
    client: httpclient.InferenceServerClient,
    stream_id: str,
    demo_reference: DemoReference,
) -> None:
    for v in sea_temperatures(3, seed=38):
        infer(client, stream_id, [v])
    started = infer(client, stream_id, [24.2], start=True, seq=1)
    resent = infer(client, stream_id, [24.2], start=True, seq=1)
    assert params(started)["duplicate"] is False and params(resent)["duplicate"] is True
    np.testing.assert_array_equal(predictions(resent), predictions(started))
    # Not a second new generation: the resend changed nothing.
    assert params(resent)["generation"] == params(started)["generation"]
    state = v1_state(v2_service, stream_id).body
    assert state["generation"] == params(started)["generation"] and state["seq"] == 1
    following = infer(client, stream_id, [24.9], seq=2)
    close_to_reference(
        np.concatenate([predictions(started), predictions(following)]), [24.2, 24.9], demo_reference
    )


def test_a_resent_end_request_with_seq_does_not_restart_the_stream(
    v2_service: ServiceProcess, client: httpclient.InferenceServerClient, stream_id: str
) -> None:
    infer(client, stream_id, [24.0], seq=1)
    ended = infer(client, stream_id, [24.5], seq=2, end=True)
    assert v1_state(v2_service, stream_id).status == 404
    resent = infer(client, stream_id, [24.5], seq=2, end=True)
    assert params(resent)["duplicate"] is True
    np.testing.assert_array_equal(predictions(resent), predictions(ended))
    # the answer names the generation that applied it, as the first answer did
    assert params(resent)["generation"] == params(ended)["generation"]
    # A duplicate changes nothing: the stream stays ended rather than starting a new generation.
    assert v1_state(v2_service, stream_id).status == 404


# -- errors -------------------------------------------------------------------------------------

ONE_STEP = steps([24.0])


def _refusals() -> list[Any]:
    """(model, client.infer keyword arguments, status), for requests the client can build. The
    sequence id is filled in by the test unless the case sets one."""
    x = [tensor(ONE_STEP)]
    cases: list[tuple[str, str, dict[str, Any], int]] = [
        # tritonclient leaves sequence_id out when it is 0: the missing case.
        ("missing-sequence-id", MODEL, {"inputs": x, "sequence_id": 0}, 400),
        ("bool-sequence-id", MODEL, {"inputs": x, "sequence_id": True}, 400),
        ("negative-sequence-id", MODEL, {"inputs": x, "sequence_id": -5}, 400),
        ("sequence-id-above-2^64-1", MODEL, {"inputs": x, "sequence_id": 2**64}, 400),
        ("bad-string-id", MODEL, {"inputs": x, "sequence_id": "bad id!"}, 400),
        ("string-id-too-long", MODEL, {"inputs": x, "sequence_id": "a" * 129}, 400),
        ("seq-0", MODEL, {"inputs": x, "parameters": {"seq": 0}}, 400),
        ("seq-2^63", MODEL, {"inputs": x, "parameters": {"seq": 2**63}}, 400),
        ("seq-string", MODEL, {"inputs": x, "parameters": {"seq": "7"}}, 400),
        ("seq-bool", MODEL, {"inputs": x, "parameters": {"seq": True}}, 400),
        ("fp64", MODEL, {"inputs": [tensor(ONE_STEP.astype(np.float64), "FP64")]}, 400),
        ("batch-of-2", MODEL, {"inputs": [tensor(np.zeros((2, 1, 1), np.float32))]}, 400),
        ("input-size-2", MODEL, {"inputs": [tensor(np.zeros((1, 1, 2), np.float32))]}, 400),
        ("two-dims", MODEL, {"inputs": [tensor(np.zeros((1, 1), np.float32))]}, 400),
        ("no-steps", MODEL, {"inputs": [tensor(np.zeros((1, 0, 1), np.float32))]}, 400),
        ("unknown-input", MODEL, {"inputs": [tensor(ONE_STEP, name="z")]}, 400),
        ("two-inputs", MODEL, {"inputs": [tensor(ONE_STEP), tensor(ONE_STEP)]}, 400),
        ("unknown-output", MODEL, {"inputs": x, "outputs": json_output("z")}, 400),
        ("nan-binary", MODEL, {"inputs": [tensor(steps([np.nan]), binary=True)]}, 400),
        ("inf-binary", MODEL, {"inputs": [tensor(steps([24.0, np.inf]), binary=True)]}, 400),
        ("unknown-model", "no-such-model", {"inputs": x}, 404),
        ("unknown-version", MODEL, {"inputs": x, "model_version": "2"}, 404),
        (
            "too-many-steps",
            MODEL,
            {"inputs": [tensor(np.zeros((1, MAX_STEPS + 1, 1), np.float32))]},
            413,
        ),
    ]
    return [pytest.param(model, kwargs, status, id=name) for name, model, kwargs, status in cases]


@pytest.mark.parametrize(("model", "kwargs", "status"), _refusals())
def test_refused_requests_through_the_client(
    v2_service: ServiceProcess,
    client: httpclient.InferenceServerClient,
    stream_id: str,
    model: str,
    kwargs: dict[str, Any],
    status: int,
) -> None:
    kwargs = {"sequence_id": stream_id, **kwargs}
    with pytest.raises(InferenceServerException) as caught:
        client.infer(model, **kwargs)
    assert_client_error(caught, status)
    # The same bytes sent raw: the whole body is {"error": message}.
    version = kwargs.pop("model_version", "")
    body, json_size = httpclient.InferenceServerClient.generate_request_body(**kwargs)
    path = f"/v2/models/{model}" + (f"/versions/{version}" if version else "") + "/infer"
    headers = {} if json_size is None else {"Inference-Header-Content-Length": str(json_size)}
    assert_error_body(raw_infer(v2_service, raw=body, headers=headers, path=path), status)
    assert v1_state(v2_service, stream_id).status == 404  # nothing was applied


def test_the_request_at_the_steps_limit_is_accepted(
    client: httpclient.InferenceServerClient, stream_id: str
) -> None:
    result = infer(client, stream_id, sea_temperatures(MAX_STEPS, seed=39))
    assert predictions(result).shape == (MAX_STEPS,)


def _raw_refusals() -> list[Any]:
    """Bodies the client cannot build: (raw bytes, headers, status)."""

    def body(sequence_id: Any, data: Any = None, shape: Any = None) -> bytes:
        request = raw_request(sequence_id, [24.0])
        if data is not None:
            request["inputs"][0]["data"] = data
        if shape is not None:
            request["inputs"][0]["shape"] = shape
        return json.dumps(request).encode()

    good = body("raw-ok")
    cases: list[tuple[str, bytes, dict[str, str], int]] = [
        ("sequence-id-0", body(0), {}, 400),
        ("sequence-id-empty", body(""), {}, 400),
        ("sequence-id-fraction", body(1.5), {}, 400),
        ("sequence-id-null", body(None), {}, 400),
        ("not-json", b"this is not json", {}, 400),
        ("json-not-an-object", b"[1, 2, 3]", {}, 400),
        ("json-nan", body("raw-nan", data=[float("nan")]), {}, 400),  # json.dumps writes NaN
        ("json-1e999", good.replace(b"24.0", b"1e999"), {}, 400),
        ("string-data", body("raw-str", data=["warm"]), {}, 400),
        ("data-shorter-than-shape", body("raw-short", shape=[1, 2, 1]), {}, 400),
        ("header-length-beyond-body", good, {"Inference-Header-Content-Length": "100000"}, 400),
        ("body-over-the-limit", b'{"pad": "' + b"x" * (1 << 21) + b'"}', {}, 413),
    ]
    return [pytest.param(raw, headers, status, id=name) for name, raw, headers, status in cases]


@pytest.mark.parametrize(("raw", "headers", "status"), _raw_refusals())
def test_refused_raw_requests(
    v2_service: ServiceProcess, raw: bytes, headers: dict[str, str], status: int
) -> None:
    assert_error_body(raw_infer(v2_service, raw=raw, headers=headers), status)


def test_503_when_redis_is_down(
    redis_factory: Callable[[], RedisServer],
    service_factory: Callable[..., ServiceProcess],
    stream_id: str,
) -> None:
    redis = redis_factory()
    service = service_factory("--redis-timeout-s", "0.5", env={"REDIS_URL": redis.url})
    assert call("GET", service.url + "/v2/health/ready").status == 200
    redis.kill()
    deadline = time.monotonic() + 10
    while (ready := call("GET", service.url + "/v2/health/ready")).status == 200:
        assert time.monotonic() < deadline, "still ready with Redis gone"
        time.sleep(0.1)
    assert_error_body(ready, 503)
    assert call("GET", service.url + "/v2/health/live").status == 200  # alive, just not ready
    refused = raw_infer(service, raw_request(stream_id, [24.0]))
    assert_error_body(refused, 503)
    assert "Retry-After" in refused.headers


# -- concurrency --------------------------------------------------------------------------------


@pytest.mark.slow
def test_many_concurrent_sequences_each_match_the_reference(
    v2_service: ServiceProcess, stream_id: str, demo_reference: DemoReference
) -> None:
    count, length = 24, 6
    ids: list[int | str] = [unique_int_id() if k % 2 else f"{stream_id}-{k}" for k in range(count)]
    series = [sea_temperatures(length, seed=200 + k) for k in range(count)]

    async def feed() -> list[np.ndarray]:
        triton = aioclient.InferenceServerClient(url=f"127.0.0.1:{v2_service.port}")
        try:

            async def one(k: int) -> np.ndarray:
                out = []
                for step, v in enumerate(series[k], start=1):
                    x = aioclient.InferInput("x", [1, 1, 1], "FP32")
                    x.set_data_from_numpy(steps([v]), binary_data=k % 3 == 0)
                    result = await triton.infer(
                        MODEL,
                        [x],
                        outputs=[aioclient.InferRequestedOutput("y", binary_data=k % 2 == 0)],
                        sequence_id=ids[k],
                        sequence_start=step == 1,
                        parameters={"seq": step},
                    )
                    out.append(predictions(result))
                return np.concatenate(out)

            return list(await asyncio.gather(*(one(k) for k in range(count))))
        finally:
            await triton.close()

    results = asyncio.run(feed())
    for k in range(count):
        close_to_reference(results[k], series[k], demo_reference)
    applied = [v1_state(v2_service, str(i)).body["seq"] for i in ids]
    assert applied == [length] * count  # every step applied once


@pytest.mark.slow
def test_concurrent_steps_on_one_sequence_apply_each_once(
    v2_service: ServiceProcess, stream_id: str, demo_reference: DemoReference
) -> None:
    n = 40
    values = sea_temperatures(n, seed=7)

    async def burst() -> list[Any]:
        triton = aioclient.InferenceServerClient(url=f"127.0.0.1:{v2_service.port}")
        try:

            async def one(v: float) -> Any:
                x = aioclient.InferInput("x", [1, 1, 1], "FP32")
                x.set_data_from_numpy(steps([v]), binary_data=False)
                return await triton.infer(
                    MODEL,
                    [x],
                    outputs=[aioclient.InferRequestedOutput("y", binary_data=False)],
                    sequence_id=stream_id,
                )

            return list(await asyncio.gather(*(one(v) for v in values)))
        finally:
            await triton.close()

    answers = asyncio.run(burst())
    seqs = [params(a)["seq"] for a in answers]
    assert sorted(seqs) == list(range(1, n + 1))  # none lost, none doubled
    assert len({params(a)["generation"] for a in answers}) == 1
    # Each step's prediction follows from the steps the service applied before it.
    by_seq = sorted(zip(seqs, values, answers, strict=True), key=lambda t: t[0])
    got = np.concatenate([predictions(a) for _, _, a in by_seq])
    close_to_reference(got, [v for _, v, _ in by_seq], demo_reference)
    assert v1_state(v2_service, stream_id).body["seq"] == n


# -- statistics ---------------------------------------------------------------------------------


def _elnino_stats(stats: dict[str, Any]) -> dict[str, Any]:
    [entry] = [m for m in stats["model_stats"] if m["name"] == MODEL]
    found: dict[str, Any] = entry
    return found


def test_statistics_count_successful_inferences(
    v2_service: ServiceProcess, client: httpclient.InferenceServerClient, stream_id: str
) -> None:
    before = _elnino_stats(client.get_inference_statistics(MODEL))
    n = 7
    for k in range(n):
        infer(client, stream_id, [24.0 + k / 10])
    after = _elnino_stats(client.get_inference_statistics(MODEL))
    assert after["version"] == "1"
    assert set(after["inference_stats"]) == {
        "success", "fail", "queue", "compute_input", "compute_infer", "compute_output",
        "cache_hit", "cache_miss",
    }  # fmt: skip
    assert {"last_inference", "batch_stats", "execution_count"} <= set(after)
    assert after["inference_count"] - before["inference_count"] == n
    success, success_before = (
        after["inference_stats"]["success"],
        before["inference_stats"]["success"],
    )
    assert success["count"] - success_before["count"] == n
    assert success["ns"] > success_before["ns"]
    # Batches may join requests, never split one: between 1 and n executions.
    assert 1 <= after["execution_count"] - before["execution_count"] <= n
    now_ms = time.time() * 1000
    assert now_ms - 60_000 < after["last_inference"] <= now_ms + 1000
    assert isinstance(after["batch_stats"], list) and after["batch_stats"]
    # The same numbers under the version paths and the all-models path.
    for answer in (
        client.get_inference_statistics(MODEL, "1"),
        client.get_inference_statistics(MODEL, FINGERPRINT),
        client.get_inference_statistics(),
    ):
        assert _elnino_stats(answer)["inference_count"] == after["inference_count"]


def test_statistics_are_summed_over_workers(
    redis_server: RedisServer, service_factory: Callable[..., ServiceProcess], stream_id: str
) -> None:
    service = service_factory("--workers", "2", env={"REDIS_URL": redis_server.url})
    deadline = time.monotonic() + 60  # the harness returns as soon as the first worker answers
    while "workers serving on" not in service.log():
        assert time.monotonic() < deadline, service.log()
        time.sleep(0.05)
    stats_url = f"{service.url}/v2/models/{MODEL}/stats"
    before = _elnino_stats(call("GET", stats_url).body)
    # Each call is a new connection, which the kernel hands to either worker: the requests are
    # spread over both, and every read, whichever worker answers it, must count them all.
    n = 24
    for k in range(n):
        answer = raw_infer(service, raw_request(f"{stream_id}-{k % 3}", [24.0]))
        assert answer.status == 200, answer.body
    for _ in range(8):
        stats = call("GET", stats_url)
        assert stats.status == 200, stats.body
        entry = _elnino_stats(stats.body)
        assert entry["inference_count"] - before["inference_count"] == n
        success = entry["inference_stats"]["success"]["count"]
        assert success - before["inference_stats"]["success"]["count"] == n
        every_model = _elnino_stats(call("GET", f"{service.url}/v2/models/stats").body)
        assert every_model["inference_count"] == entry["inference_count"]
