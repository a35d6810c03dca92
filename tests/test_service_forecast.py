"""Forecasts and what-ifs over real HTTP, on a real Redis: they leave a stream's state and event
log exactly as they were; what-if readings predict what posting them then answers; a stream with
no state forecasts from zero state; many streams answer in request order with per-item errors;
a forecast racing posts sees one consistent state; every bad request gets its code; forecasts are
counted as forecasts, not readings."""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import DEMO_MODEL_DIR, month_features, sea_temperatures
from inprocess_service import InProcessService
from service_harness import RedisServer, call, metric, scrape_metrics

from service.api import routes_forecast
from service.core.settings import Settings
from service.step.forecast import Forecasts
from service.step.forecast import forecast as core_forecast

MONTHS_MODEL = Path(__file__).resolve().parent / "data" / "elnino-months" / "model"
MAX_HORIZON = 64
MAX_READINGS = 500


@pytest.fixture(scope="module")
def served(
    redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[InProcessService]:
    """The demo (the default model), the months model, and the demo without a feedback mapping
    (``plain``)."""
    plain = tmp_path_factory.mktemp("plain") / "model"
    shutil.copytree(DEMO_MODEL_DIR, plain)
    meta = json.loads((plain / "model.json").read_text())
    meta["name"] = "plain"
    meta.pop("feedback", None)
    (plain / "model.json").write_text(json.dumps(meta))
    settings = Settings(
        redis_url=redis_server.url,
        models=(DEMO_MODEL_DIR, MONTHS_MODEL, plain),
        default_model="elnino",
        forecast_max_horizon=MAX_HORIZON,
        request_max_readings=MAX_READINGS,
    )
    running = InProcessService(settings).start()
    yield running
    running.stop()


def readings(values: list[float]) -> dict[str, Any]:
    return {"readings": [{"values": [v]} for v in values]}


def post(served: InProcessService, stream: str, body: dict[str, Any], model: str = "elnino") -> Any:
    answer = call("POST", f"{served.url}/v1/models/{model}/streams/{stream}/readings", body)
    assert answer.status == 200, answer.body
    return answer.body


def forecast(served: InProcessService, stream: str, body: dict[str, Any]) -> Any:
    answer = call("POST", f"{served.url}/v1/streams/{stream}/forecast", body)
    assert answer.status == 200, answer.body
    return answer.body


def predictions(entries: list[dict[str, Any]]) -> np.ndarray:
    return np.array([e["prediction"] for e in entries])


def redis_contents(redis_server: RedisServer) -> dict[bytes, Any]:
    """Every key's type and value (strings, and streams entry by entry), TTLs aside."""
    client = redis_server.client()
    contents: dict[bytes, Any] = {}
    for key in client.keys("*"):
        kind = client.type(key)
        if kind == b"string":
            contents[key] = client.get(key)
        elif kind == b"stream":
            contents[key] = client.xrange(key)
        elif kind == b"zset":
            contents[key] = client.zrange(key, 0, -1, withscores=True)
        else:
            contents[key] = kind
    return contents


def test_a_forecast_leaves_state_and_events_as_they_were(
    served: InProcessService, redis_server: RedisServer, stream_id: str
) -> None:
    post(served, stream_id, readings(sea_temperatures(40)))
    url = f"{served.url}/v1/streams/{stream_id}"
    before, redis_before = call("GET", url).body, redis_contents(redis_server)
    answer = forecast(served, stream_id, {"horizon": 12, "readings": [{"values": [30.0]}]})
    answer = forecast(served, stream_id, {"horizon": 12})
    after, redis_after = call("GET", url).body, redis_contents(redis_server)
    assert redis_after == redis_before
    before.pop("expires_at"), after.pop("expires_at")
    assert after == before
    assert answer["seq"] == 40 and answer["generation"] == before["generation"]
    assert answer["model"] == "elnino" and answer["version"] == 1
    assert [s["step"] for s in answer["forecast"]] == list(range(1, 13))
    assert "results" not in answer
    # the same forecast twice: nothing moved in between
    assert forecast(served, stream_id, {"horizon": 12}) == answer


def test_what_if_readings_predict_what_posting_them_answers(
    served: InProcessService, stream_id: str
) -> None:
    post(served, stream_id, readings(sea_temperatures(30)))
    hypothetical = [{"values": [v], "seq": 31 + k} for k, v in enumerate([24.5, 25.0, 26.1])]
    what_if = forecast(served, stream_id, {"horizon": 6, "readings": hypothetical})
    assert [r["seq"] for r in what_if["results"]] == [31, 32, 33]
    assert what_if["seq"] == 30  # the stored seq: nothing was applied
    posted = post(served, stream_id, {"readings": hypothetical})
    np.testing.assert_allclose(
        predictions(what_if["results"]), predictions(posted["results"]), rtol=1e-6, atol=1e-6
    )
    after = forecast(served, stream_id, {"horizon": 6})
    assert after["seq"] == 33
    np.testing.assert_allclose(
        predictions(what_if["forecast"]), predictions(after["forecast"]), rtol=1e-5, atol=1e-5
    )


def test_horizon_zero_with_readings_works_on_a_model_without_feedback(
    served: InProcessService, stream_id: str
) -> None:
    url = f"{served.url}/v1/models/plain/streams/{stream_id}/forecast"
    answer = call("POST", url, {"horizon": 0, "readings": [{"values": [25.0]}]})
    assert answer.status == 200, answer.body
    assert answer.body["forecast"] == [] and len(answer.body["results"]) == 1
    posted = post(served, stream_id, {"values": [25.0]}, model="plain")
    assert answer.body["results"][0]["prediction"] == posted["results"][0]["prediction"]


def test_a_stream_without_state_forecasts_from_zero_state(
    served: InProcessService, stream_id: str
) -> None:
    answer = forecast(served, stream_id, {"horizon": 5})
    assert answer["generation"] is None and answer["seq"] is None
    assert len(answer["forecast"]) == 5
    assert call("GET", f"{served.url}/v1/streams/{stream_id}").status == 404
    # what-ifs on a new stream predict what a new stream's first post answers
    values = sea_temperatures(4, seed=3)
    what_if = forecast(served, stream_id, {"horizon": 0, **readings(values)})
    posted = post(served, stream_id, readings(values))
    np.testing.assert_allclose(
        predictions(what_if["results"]), predictions(posted["results"]), rtol=1e-6, atol=1e-6
    )


def test_the_months_model_takes_its_covariates_by_name(
    served: InProcessService, stream_id: str
) -> None:
    months = month_features(24)
    values = [[t, s, c] for t, (s, c) in zip(sea_temperatures(24), months.tolist(), strict=True)]
    post(served, stream_id, {"readings": [{"values": v} for v in values]}, model="elnino-months")
    ahead = month_features(3, first=24).tolist()
    url = f"{served.url}/v1/models/elnino-months/streams/{stream_id}/forecast"
    body = {"horizon": 3, "covariates": [{"month_sin": s, "month_cos": c} for s, c in ahead]}
    answer = call("POST", url, body)
    assert answer.status == 200, answer.body
    assert len(answer.body["forecast"]) == 3
    # the same covariates in another order of keys: the same forecast
    body["covariates"] = [{"month_cos": c, "month_sin": s} for s, c in ahead]
    assert call("POST", url, body).body == answer.body


def alone(answer: dict[str, Any]) -> dict[str, Any]:
    """A one-stream answer as an item of a many-stream answer: without the model fields."""
    return {k: v for k, v in answer.items() if k not in ("model", "model_version", "version")}


def test_many_streams_answer_in_request_order_with_their_own_errors(
    served: InProcessService, stream_id: str
) -> None:
    a, b = stream_id + "-a", stream_id + "-b"
    post(served, a, readings(sea_temperatures(10, seed=1)))
    post(served, b, readings(sea_temperatures(20, seed=2)))
    items = [
        {"stream": b},
        {"stream": "bad stream id"},
        {"stream": a, "readings": [{"values": [22.0]}]},
        {"stream": a, "readings": [{"values": ["x"]}]},
        {"stream": stream_id + "-new"},
        {"stream": a, "covariates": [{"month_sin": 0.0}] * 4},
    ]
    answer = call("POST", f"{served.url}/v1/forecast", {"horizon": 4, "items": items})
    assert answer.status == 200, answer.body
    got = answer.body["forecasts"]
    assert answer.body["horizon"] == 4 and answer.body["version"] == 1
    assert [g["stream"] for g in got] == [i["stream"] for i in items]
    assert got[0] == alone(forecast(served, b, {"horizon": 4}))
    assert got[1]["error"]["code"] == "invalid_stream_id"
    assert got[2] == alone(forecast(served, a, {"horizon": 4, "readings": [{"values": [22.0]}]}))
    assert got[3]["error"]["code"] == "invalid_values"
    assert got[4]["seq"] is None and len(got[4]["forecast"]) == 4
    assert got[5]["error"]["code"] == "invalid_values"
    assert "month_sin" in got[5]["error"]["message"]


def test_a_forecast_racing_posts_sees_one_consistent_state(
    served: InProcessService, stream_id: str
) -> None:
    values = sea_temperatures(60, seed=5)
    post(served, stream_id, readings(values[:10]))

    def post_rest() -> None:
        for v in values[10:]:
            post(served, stream_id, {"values": [v]})

    with ThreadPoolExecutor(2) as pool:
        posting = pool.submit(post_rest)
        seen = []
        while not posting.done():
            seen.append(forecast(served, stream_id, {"horizon": 8}))
        posting.result()
    assert seen
    for answer in seen:
        # the forecast of the state after exactly `seq` readings, replayed on a new stream
        seq = answer["seq"]
        replay = forecast(
            served, f"{stream_id}-replay-{seq}", {"horizon": 8, **readings(values[:seq])}
        )
        np.testing.assert_allclose(
            predictions(answer["forecast"]), predictions(replay["forecast"]), rtol=0, atol=1e-4
        )


def bad(served: InProcessService, path: str, body: Any) -> tuple[int, str, str]:
    answer = call("POST", served.url + path, body)
    return answer.status, answer.body["error"]["code"], answer.body["error"]["message"]


@pytest.mark.parametrize(
    ("path", "body", "status", "code", "named"),
    [
        ("/v1/streams/s/forecast", {}, 400, "invalid_request", "horizon"),
        ("/v1/streams/s/forecast", {"horizon": -1}, 400, "invalid_request", "horizon"),
        ("/v1/streams/s/forecast", {"horizon": 2.0}, 400, "invalid_request", "horizon"),
        ("/v1/streams/s/forecast", {"horizon": True}, 400, "invalid_request", "horizon"),
        ("/v1/streams/s/forecast", {"horizon": MAX_HORIZON + 1}, 413, "payload_too_large", "65"),
        ("/v1/streams/s/forecast", {"horizon": 1, "steps": 2}, 400, "invalid_request", "steps"),
        ("/v1/streams/s/forecast", {"horizon": 0, "readings": []}, 400, "invalid_request", "read"),
        (
            "/v1/streams/s/forecast",
            {"horizon": 0, "readings": [{"values": [1.0, 2.0]}]},
            400,
            "invalid_values",
            "readings[0]",
        ),
        (
            "/v1/models/elnino-months/streams/s/forecast",
            {"horizon": 2},
            400,
            "invalid_values",
            "month_sin",
        ),
        (
            "/v1/models/elnino-months/streams/s/forecast",
            {"horizon": 1, "covariates": [{"month_sin": 0.5}]},
            400,
            "invalid_values",
            "month_cos",
        ),
        (
            "/v1/models/elnino-months/streams/s/forecast",
            {"horizon": 1, "covariates": [{"month_sin": 0.5, "month_cos": 0.8, "moon": 1}]},
            400,
            "invalid_values",
            "moon",
        ),
        (
            "/v1/models/elnino-months/streams/s/forecast",
            {"horizon": 1, "covariates": [{"month_sin": math.inf, "month_cos": 0.8}]},
            400,
            "invalid_values",
            "finite",
        ),
        (
            "/v1/models/elnino-months/streams/s/forecast",
            {"horizon": 1, "covariates": [{"month_sin": "0.5", "month_cos": 0.8}]},
            400,
            "invalid_values",
            "not a number",
        ),
        ("/v1/models/plain/streams/s/forecast", {"horizon": 1}, 400, "forecast_unsupported", ""),
        (
            "/v1/models/plain/forecast",
            {"horizon": 1, "items": [{"stream": "s"}]},
            400,
            "forecast_unsupported",
            "feedback",
        ),
        ("/v1/models/nope/streams/s/forecast", {"horizon": 1}, 404, "model_not_found", "nope"),
        ("/v1/models/nope/forecast", {"horizon": 1, "items": []}, 404, "model_not_found", "nope"),
        ("/v1/forecast", {"horizon": 1, "items": []}, 400, "invalid_request", "items"),
        ("/v1/forecast", {"horizon": 1}, 400, "invalid_request", "items"),
        (
            "/v1/forecast",
            {"horizon": 60, "items": [{"stream": f"s{k}"} for k in range(9)]},
            413,
            "payload_too_large",
            "540",
        ),
        (
            "/v1/streams/s/forecast",
            {"horizon": 10, **readings([20.0] * (MAX_READINGS - 9))},
            413,
            "payload_too_large",
            str(MAX_READINGS + 1),
        ),
    ],
)
def test_a_bad_request_gets_its_code(
    served: InProcessService, path: str, body: Any, status: int, code: str, named: str
) -> None:
    got_status, got_code, message = bad(served, path, body)
    assert (got_status, got_code) == (status, code), message
    assert named in message


def test_forecasts_are_counted_as_forecasts_not_readings(
    served: InProcessService, stream_id: str
) -> None:
    post(served, stream_id, readings(sea_temperatures(5)))
    before = scrape_metrics(served.url)
    forecast(served, stream_id, {"horizon": 12, "readings": [{"values": [21.0]}]})
    bad(served, "/v1/streams/s/forecast", {"horizon": -1})
    after = scrape_metrics(served.url)

    def delta(name: str, **labels: str) -> float:
        return metric(after, name, **labels) - metric(before, name, **labels)

    assert delta("lstm_forecasts_total", outcome="answered") == 1
    assert delta("lstm_forecasts_total", outcome="rejected") == 1
    assert delta("lstm_forecast_horizon_steps_count") == 1
    assert delta("lstm_forecast_horizon_steps_bucket", le="12.0") == 1
    assert delta("lstm_forecast_horizon_steps_bucket", le="8.0") == 0
    assert delta("lstm_readings_total", outcome="applied") == 0


def test_the_streams_of_a_request_share_each_model_call(
    served: InProcessService, stream_id: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One call for every stream's what-if readings, then one per horizon step, whatever the
    number of streams."""
    calls: list[int] = []

    def counted(*args: Any) -> Forecasts:
        result = core_forecast(*args)
        calls.append(result.calls)
        return result

    monkeypatch.setattr(routes_forecast, "forecast", counted)
    for k in range(0, 40, 2):
        post(served, f"{stream_id}-{k}", readings(sea_temperatures(3, seed=k)))
    items: list[dict[str, Any]] = [{"stream": f"{stream_id}-{k}"} for k in range(40)]
    items[7]["readings"] = [{"values": [20.0]}, {"values": [21.0]}]
    items[8]["readings"] = [{"values": [22.0]}]
    answer = call("POST", f"{served.url}/v1/forecast", {"horizon": 5, "items": items})
    assert answer.status == 200, answer.body
    assert all(len(f["forecast"]) == 5 for f in answer.body["forecasts"])
    assert calls == [1 + 5]
