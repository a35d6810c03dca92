"""The forecast endpoint agrees with the exported graph run by hand: a stream fed 600 real
readings (NOAA's monthly Niño 1+2 sea surface temperature) through the real service forecasts 12
steps, and an autoregressive loop of the exported graph (one step per call, fed its own outputs),
started from the state record the service stored in Redis, gives the same forecast. Step 1 feeds
the stored last prediction back, so the loop starts from it. For torch and Keras exports of the
demo's weights, and for the El Niño months model, whose month covariates the caller gives."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import elnino_sst, month_features
from forecast_reference import graph_forecast, torch_module
from inprocess_service import InProcessService
from model_runner import ExportedModel
from service_harness import RedisServer, call
from test_forecast_frameworks import demo_weights, export_named, keras_demo

from service.api.app_keys import STORE
from service.core.ids import DEFAULT_TENANT
from service.core.settings import Settings
from service.step.record import StreamState

MONTHS_MODEL = Path(__file__).resolve().parent / "data" / "elnino-months" / "model"
HISTORY = 600
HORIZON = 12


@pytest.fixture(scope="module")
def exports(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The demo's weights exported from torch and from Keras, and the months model."""
    tmp = tmp_path_factory.mktemp("exports")
    arrays, scaling, info = demo_weights()
    torch.save(torch_module(arrays).float().state_dict(), tmp / "elnino.pt")
    keras_demo(arrays).save(tmp / "elnino.keras")
    return {
        "torch": export_named(tmp / "elnino.pt", tmp / "torch", scaling, info),
        "keras": export_named(tmp / "elnino.keras", tmp / "keras", scaling, info),
        "months": MONTHS_MODEL,
    }


def stored_state(
    running: InProcessService, redis_server: RedisServer, model: str, stream: str, directory: Path
) -> StreamState:
    assert running.app is not None
    key = running.app[STORE].state_key(DEFAULT_TENANT, model, stream)
    raw = redis_server.client().get(key)
    assert raw is not None
    meta = ExportedModel(directory).meta
    return StreamState.decode(
        raw, meta["version"], (meta["num_layers"], meta["hidden_size"]), meta["output_size"]
    )


def check_against_graph(
    redis_server: RedisServer,
    directory: Path,
    stream: str,
    values: np.ndarray,
    covariates: np.ndarray,
) -> np.ndarray:
    """Post ``values [600, I]`` to a fresh service on ``directory``, forecast, and hold the answer
    against the graph loop from the stored state; the forecast ``[H, O]``."""
    graph = ExportedModel(directory)
    name = graph.meta["name"]
    running = InProcessService(Settings(redis_url=redis_server.url, models=(directory,))).start()
    try:
        base = f"{running.url}/v1/models/{name}/streams/{stream}"
        posted = call(
            "POST", base + "/readings", {"readings": [{"values": v} for v in values.tolist()]}
        )
        assert posted.status == 200, posted.body
        cov_names = [f for f in graph.meta["features"] if f not in graph.meta["feedback"].values()]
        body: dict[str, object] = {"horizon": HORIZON}
        if cov_names:
            body["covariates"] = [
                dict(zip(cov_names, row, strict=True)) for row in covariates.tolist()
            ]
        answer = call("POST", base + "/forecast", body)
        assert answer.status == 200, answer.body
        state = stored_state(running, redis_server, name, stream, directory)
    finally:
        running.stop()
    assert answer.body["generation"] == state.generation and answer.body["seq"] == state.seq
    assert [s["step"] for s in answer.body["forecast"]] == list(range(1, HORIZON + 1))
    got = np.array([s["prediction"] for s in answer.body["forecast"]], np.float32)
    assert state.h is not None and state.c is not None
    last = state.results[state.seq]
    # step 1 feeds the stored last prediction: the loop starts from exactly that
    assert np.array_equal(last, np.float32(posted.body["results"][-1]["prediction"]))
    want = graph_forecast(graph, state.h[:, None].copy(), state.c[:, None].copy(), last, covariates)
    # DESIGN.md's tolerance, 1e-4 × max(1, output_std) per output, and float32 rounding
    limit = 1e-4 * np.maximum(1.0, np.asarray(graph.meta["scaling"]["output_std"]))
    assert np.all(np.abs(got - want) <= limit), (got, want)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    return got


@pytest.mark.parametrize("source", ["torch", "keras"])
def test_a_forecast_is_the_graph_fed_its_own_outputs_from_the_stored_state(
    redis_server: RedisServer, exports: dict[str, Path], source: str, stream_id: str
) -> None:
    values = elnino_sst()[:HISTORY, None]
    got = check_against_graph(redis_server, exports[source], stream_id, values, np.zeros((12, 0)))
    assert np.ptp(got) > 1.0  # it follows the seasons, not a constant


def test_the_months_model_forecasts_the_real_series_with_given_covariates(
    redis_server: RedisServer, exports: dict[str, Path], stream_id: str
) -> None:
    sst = elnino_sst()
    values = np.concatenate([sst[:HISTORY, None], month_features(HISTORY)], axis=1)
    # the readings' month features describe each reading's own month; the forecast's
    # covariates[0] the month after the last reading, and so on
    covariates = month_features(HORIZON, first=HISTORY)
    got = check_against_graph(redis_server, exports["months"], stream_id, values, covariates)
    assert got.shape == (HORIZON, 1)
