"""The /v1 readings API over real HTTP against a real Redis: predictions, exactly-once seqs,
all-or-nothing requests, the bulk path, stream state and ending a stream."""

from __future__ import annotations

import json

import numpy as np
from conftest import DemoReference, sea_temperatures
from service_harness import RedisServer, ServiceProcess, call


def post(service: ServiceProcess, stream: str, body: object, model: str | None = "elnino") -> dict:
    prefix = f"/v1/models/{model}" if model else "/v1"
    answer = call("POST", f"{service.url}{prefix}/streams/{stream}/readings", body)
    return {"status": answer.status, **(answer.body or {})}


def predictions(answer: dict) -> list[float]:
    return [r["prediction"][0] for r in answer["results"]]


def test_streamed_predictions_match_the_float64_reference(
    service: ServiceProcess, stream_id: str, demo_reference: DemoReference
) -> None:
    values = sea_temperatures(600, seed=1)
    got = []
    for k, v in enumerate(values, start=1):
        answer = post(service, stream_id, {"values": [v], "seq": k})
        assert answer["status"] == 200, answer
        assert [r["seq"] for r in answer["results"]] == [k]
        got += predictions(answer)
    expected = demo_reference.predictions(values)
    error = np.abs(np.asarray(got) - expected)
    assert error.max() < demo_reference.tolerance, (error.max(), demo_reference.tolerance)
    # float32 end to end lands far inside the tolerance; a state bug would not.
    assert error.max() < 1e-4


def test_a_multi_reading_request_equals_the_same_readings_one_by_one(
    service: ServiceProcess, stream_id: str
) -> None:
    values = sea_temperatures(40, seed=2)
    one_by_one = [predictions(post(service, stream_id + "-a", {"values": [v]}))[0] for v in values]
    batched = post(service, stream_id + "-b", {"readings": [{"values": [v]} for v in values]})
    assert batched["status"] == 200
    assert [r["seq"] for r in batched["results"]] == list(range(1, 41))
    np.testing.assert_allclose(predictions(batched), one_by_one, rtol=1e-5, atol=1e-5)


def test_response_shape_and_server_assigned_seqs(service: ServiceProcess, stream_id: str) -> None:
    first = post(service, stream_id, {"values": [24.0]})
    second = post(service, stream_id, {"values": [24.5], "ts": 1764000000.5})
    assert first["status"] == second["status"] == 200
    assert set(first) == {
        "status", "model", "model_version", "stream", "generation", "results"
    }  # fmt: skip
    assert first["model"] == "elnino" and first["stream"] == stream_id
    assert first["model_version"] == "19f94faff40a45e0"
    assert first["generation"] == second["generation"]
    assert [r["seq"] for r in first["results"] + second["results"]] == [1, 2]
    assert "duplicate" not in second


def test_a_retry_returns_the_stored_results_and_changes_nothing(
    service: ServiceProcess, stream_id: str
) -> None:
    body = {"readings": [{"values": [24.0], "seq": 1}, {"values": [25.0], "seq": 2}]}
    first = post(service, stream_id, body)
    retry = post(service, stream_id, body)
    assert retry["status"] == 200 and retry["duplicate"] is True
    assert retry["results"] == first["results"] and retry["generation"] == first["generation"]
    # A retry of the last reading alone is a duplicate too.
    part = post(service, stream_id, {"values": [25.0], "seq": 2})
    assert part["duplicate"] is True and part["results"] == first["results"][1:]
    state = call("GET", f"{service.url}/v1/models/elnino/streams/{stream_id}").body
    assert state["seq"] == 2
    # The next reading continues from the state after seq 2, exactly as without the retries.
    after = post(service, stream_id, {"values": [26.0], "seq": 3})
    twin = stream_id + "-twin"
    post(service, twin, {"readings": [{"values": [24.0]}, {"values": [25.0]}]})
    assert predictions(after) == predictions(post(service, twin, {"values": [26.0]}))


def test_stale_seqs_are_refused_with_the_current_seq(
    service: ServiceProcess, stream_id: str
) -> None:
    post(service, stream_id, {"values": [24.0], "seq": 5})
    post(service, stream_id, {"values": [24.0], "seq": 6})
    old = post(service, stream_id, {"values": [24.0], "seq": 5})  # applied, no longer held
    assert old["status"] == 409 and old["error"]["code"] == "stale_seq"
    assert old["error"]["current_seq"] == 6
    never = post(service, stream_id, {"values": [24.0], "seq": 3})  # below, never applied
    assert never["status"] == 409 and never["error"]["current_seq"] == 6
    mixed = post(
        service, stream_id, {"readings": [{"values": [1.0], "seq": 6}, {"values": [2.0], "seq": 7}]}
    )
    assert mixed["status"] == 409 and mixed["error"]["code"] == "stale_seq"
    state = call("GET", f"{service.url}/v1/models/elnino/streams/{stream_id}").body
    assert state["seq"] == 6  # nothing of the mixed request was applied


def test_gaps_in_seq_are_allowed(service: ServiceProcess, stream_id: str) -> None:
    assert post(service, stream_id, {"values": [24.0], "seq": 10})["status"] == 200
    gap = post(service, stream_id, {"values": [24.0], "seq": 250})
    assert gap["status"] == 200 and gap["results"][0]["seq"] == 250
    server_assigned = post(service, stream_id, {"values": [24.0]})
    assert server_assigned["results"][0]["seq"] == 251


def test_a_multi_reading_request_is_all_or_nothing(service: ServiceProcess, stream_id: str) -> None:
    post(service, stream_id, {"values": [24.0], "seq": 1})
    bad = post(
        service,
        stream_id,
        {"readings": [{"values": [24.0], "seq": 2}, {"values": ["warm"], "seq": 3}]},
    )
    assert bad["status"] == 400 and bad["error"]["code"] == "invalid_values"
    state = call("GET", f"{service.url}/v1/models/elnino/streams/{stream_id}").body
    assert state["seq"] == 1
    good = post(
        service, stream_id, {"readings": [{"values": [24.0], "seq": 2}, {"values": [3], "seq": 3}]}
    )
    assert [r["seq"] for r in good["results"]] == [2, 3]


def test_state_read_and_end_of_stream(service: ServiceProcess, stream_id: str) -> None:
    url = f"{service.url}/v1/models/elnino/streams/{stream_id}"
    first = post(service, stream_id, {"values": [24.0], "seq": 1})
    last = post(service, stream_id, {"values": [25.0], "seq": 2})
    state = call("GET", url)
    assert state.status == 200
    assert set(state.body) == {
        "stream", "model", "model_version", "generation", "seq", "updated_at",
        "last_prediction", "expires_at",
    }  # fmt: skip
    assert state.body["seq"] == 2 and state.body["generation"] == first["generation"]
    assert state.body["last_prediction"] == last["results"][0]["prediction"]
    assert state.body["updated_at"].endswith("Z") and state.body["expires_at"].endswith("Z")

    assert call("DELETE", url).status == 204
    gone = call("GET", url)
    assert gone.status == 404 and gone.body["error"]["code"] == "stream_not_found"
    assert call("DELETE", url).status == 404

    again = post(service, stream_id, {"values": [24.0], "seq": 1})
    assert again["status"] == 200
    assert again["generation"] > first["generation"]  # a new generation, from zero state
    assert again["results"] == first["results"]


def test_short_paths_address_the_only_model(service: ServiceProcess, stream_id: str) -> None:
    short = post(service, stream_id, {"values": [24.0]}, model=None)
    assert short["status"] == 200 and short["model"] == "elnino"
    long = call("GET", f"{service.url}/v1/models/elnino/streams/{stream_id}").body
    short_state = call("GET", f"{service.url}/v1/streams/{stream_id}").body
    # expires_at is now + the key's remaining TTL, so two reads may differ by a millisecond.
    assert {**short_state, "expires_at": None} == {**long, "expires_at": None}
    bulk = call(
        "POST", f"{service.url}/v1/readings", {"readings": [{"stream": stream_id, "values": [1]}]}
    )
    assert bulk.status == 200 and bulk.body["results"][0]["results"][0]["seq"] == 2
    assert call("DELETE", f"{service.url}/v1/streams/{stream_id}").status == 204


def test_bulk_readings_answer_in_request_order_and_failures_do_not_sink_others(
    service: ServiceProcess, stream_id: str
) -> None:
    s1, s2 = stream_id + "-1", stream_id + "-2"
    body = {
        "readings": [
            {"stream": s1, "values": [24.0], "seq": 1},
            {"stream": s2, "values": [23.0]},
            {"stream": "bad id!", "values": [1.0]},
            {"stream": s1, "values": [25.0], "seq": 2},
            {"stream": s2, "values": [float("nan")]},
            {"stream": s1, "values": [25.0], "seq": 2},
            {"stream": s1, "values": [24.0], "seq": 1},
            {"stream": s2, "readings": [{"values": [1.0]}, {"values": [2.0]}]},
        ]
    }
    raw = json.dumps(body).replace("NaN", "1e999").encode()  # 1e999 parses as infinity
    answer = call("POST", f"{service.url}/v1/models/elnino/readings", raw=raw)
    assert answer.status == 200
    results = answer.body["results"]
    assert [r["stream"] for r in results] == [s1, s2, "bad id!", s1, s2, s1, s1, s2]
    assert results[0]["results"][0]["seq"] == 1
    assert results[1]["results"][0]["seq"] == 1
    assert results[2]["error"]["code"] == "invalid_stream_id"
    assert results[3]["results"][0]["seq"] == 2
    assert results[4]["error"]["code"] == "invalid_values"
    # Items are applied in order: a retry of item 3 is a duplicate; seq 1 is no longer held.
    assert results[5]["duplicate"] is True and results[5]["results"] == results[3]["results"]
    assert results[6]["error"]["code"] == "stale_seq" and results[6]["error"]["current_seq"] == 2
    assert [r["seq"] for r in results[7]["results"]] == [2, 3]
    # The bulk path computes what one-stream requests compute.
    twin = stream_id + "-twin"
    post(service, twin, {"values": [24.0]})
    assert predictions(post(service, twin, {"values": [25.0]})) == [
        results[3]["results"][0]["prediction"][0]
    ]


def test_models_health_readiness_and_metrics(service: ServiceProcess, stream_id: str) -> None:
    models = call("GET", f"{service.url}/v1/models").body
    assert models["default_model"] == "elnino"
    assert models["models"][0]["name"] == "elnino" and models["models"][0]["hidden_size"] == 64
    assert call("GET", f"{service.url}/v1/models/elnino").body == models["models"][0]
    assert call("GET", f"{service.url}/healthz").body == {"status": "alive"}
    assert call("GET", f"{service.url}/readyz").body == {"status": "ready", "models": ["elnino"]}
    post(service, stream_id, {"values": [24.0], "seq": 1})
    post(service, stream_id, {"values": [24.0], "seq": 1})
    text = call("GET", f"{service.url}/metrics").body
    assert 'lstm_readings_total{outcome="applied"}' in text
    assert 'lstm_readings_total{outcome="duplicate"}' in text
    assert "lstm_http_request_duration_seconds_bucket" in text
    assert 'route="/v1/models/{model}/streams/{stream}/readings"' in text
    assert 'lstm_model_info{model="elnino",version="19f94faff40a45e0"} 1.0' in text
    assert "lstm_redis_errors_total" in text


def test_state_lives_in_one_compact_redis_string(
    service: ServiceProcess, redis_server: RedisServer, stream_id: str
) -> None:
    post(service, stream_id, {"values": [24.0]})
    client = redis_server.client()
    key = f"lstm:{{elnino:{stream_id}}}:state"
    assert client.type(key) == b"string"
    raw = client.get(key)
    assert raw is not None
    # 2 layers x 64 units: h and c are 1024 bytes; header, version and one result add < 100.
    assert 1024 < len(raw) < 1124
    assert 0 < client.pttl(key) <= 604800 * 1000


def test_streams_with_different_numbers_of_readings_in_one_batch(
    service: ServiceProcess, stream_id: str, demo_reference: DemoReference
) -> None:
    lengths = [1, 3, 10, 40, 1, 2, 17, 5]
    series = [sea_temperatures(n, seed=50 + k) for k, n in enumerate(lengths)]
    items = [
        {"stream": f"{stream_id}-{k}", "readings": [{"values": [v]} for v in values]}
        for k, values in enumerate(series)
    ]
    answer = call("POST", f"{service.url}/v1/readings", {"readings": items})
    assert answer.status == 200
    for values, result in zip(series, answer.body["results"], strict=True):
        got = np.array([r["prediction"][0] for r in result["results"]])
        assert np.abs(got - demo_reference.predictions(values)).max() < demo_reference.tolerance


def test_a_stream_at_the_largest_seq_refuses_server_assigned_seqs(
    service: ServiceProcess, stream_id: str
) -> None:
    """Seqs stop at 2^63-1, the largest a client may send: the server never assigns one above it
    (found by fuzzing the OpenAPI document, which promises that bound)."""
    largest = 2**63 - 1
    assert post(service, stream_id, {"values": [24.0], "seq": largest})["status"] == 200
    for body in ({"values": [24.5]}, {"readings": [{"values": [24.5]}, {"values": [25.0]}]}):
        refused = post(service, stream_id, body)
        assert refused["status"] == 409, refused
        assert refused["error"]["code"] == "stale_seq"
        assert refused["error"]["current_seq"] == largest
    state = call("GET", f"{service.url}/v1/models/elnino/streams/{stream_id}").body
    assert state["seq"] == largest
