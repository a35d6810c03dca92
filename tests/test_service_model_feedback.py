"""A served model's feedback mapping: parsed once at load into index arrays; model.json files
written before it existed load as "no mapping"; a mapping that names what the model lacks stops
the load with a message that names it."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import DEMO_MODEL_DIR

from service.step.model import ModelLoadError, ServedModel, load_models

MONTHS_MODEL_DIR = Path(__file__).resolve().parent / "data" / "elnino-months" / "model"


@pytest.fixture
def model_copy(tmp_path: Path) -> Callable[..., Path]:
    """A copy of a model directory whose model.json ``edit`` may change."""

    def copy(source: Path, edit: Callable[[dict[str, Any]], None] | None = None) -> Path:
        target = tmp_path / f"model-{len(list(tmp_path.iterdir()))}"
        shutil.copytree(source, target)
        meta = json.loads((target / "model.json").read_text())
        if edit is not None:
            edit(meta)
        (target / "model.json").write_text(json.dumps(meta))
        return target

    return copy


def load(directory: Path) -> ServedModel:
    (model,) = load_models((directory,), threads=1).values()
    return model


def test_the_demo_model_feeds_its_one_output_into_its_one_feature() -> None:
    feedback = load(DEMO_MODEL_DIR).feedback
    assert feedback is not None
    assert feedback.pairs == (("next_month_sst_c", "sst_c"),)
    assert feedback.fed_features.tolist() == [0] and feedback.from_outputs.tolist() == [0]
    assert feedback.covariates == () and feedback.covariate_features.tolist() == []
    assert feedback.to_json() == {"next_month_sst_c": "sst_c"}


def test_features_no_output_feeds_are_the_covariates_in_feature_order() -> None:
    feedback = load(MONTHS_MODEL_DIR).feedback
    assert feedback is not None
    assert feedback.fed_features.tolist() == [0] and feedback.from_outputs.tolist() == [0]
    assert feedback.covariates == ("month_sin", "month_cos")
    assert feedback.covariate_features.tolist() == [1, 2]


def test_indices_follow_the_names_not_the_order_written(model_copy: Callable[..., Path]) -> None:
    def edit(meta: dict[str, Any]) -> None:
        meta["features"] = ["a", "b", "c", "d"]
        meta["outputs"] = ["p", "q"]
        meta["feedback"] = {"q": "a", "p": "c"}

    # the graph's sizes do not matter to the mapping: only the names do
    feedback = load(model_copy(DEMO_MODEL_DIR, edit)).feedback
    assert feedback is not None
    assert feedback.pairs == (("q", "a"), ("p", "c"))
    assert feedback.fed_features.tolist() == [0, 2] and feedback.from_outputs.tolist() == [1, 0]
    assert feedback.covariates == ("b", "d") and feedback.covariate_features.tolist() == [1, 3]
    with pytest.raises(ValueError, match="read-only"):
        feedback.fed_features[0] = 1


@pytest.mark.parametrize("written", ["absent", None, {}])
def test_a_model_json_without_a_mapping_loads_as_no_mapping(
    model_copy: Callable[..., Path], written: object
) -> None:
    def edit(meta: dict[str, Any]) -> None:
        if written == "absent":
            del meta["feedback"]  # as written before the mapping existed
        else:
            meta["feedback"] = written

    model = load(model_copy(DEMO_MODEL_DIR, edit))
    assert model.feedback is None
    assert model.version == "19f94faff40a45e0"


@pytest.mark.parametrize(
    ("feedback", "match"),
    [
        (
            {"next_month": "sst_c"},
            "feedback names output 'next_month', which the model does not have "
            "(its outputs: next_month_sst_c)",
        ),
        (
            {"next_month_sst_c": "month"},
            "feedback feeds feature 'month', which the model does not have "
            "(its features: sst_c, month_sin, month_cos)",
        ),
        ({"next_month_sst_c": 0}, "feedback of output 'next_month_sst_c' must be a feature name"),
        ([["next_month_sst_c", "sst_c"]], "feedback must be an object from output name"),
    ],
    ids=["unknown-output", "unknown-feature", "not-a-name", "not-an-object"],
)
def test_a_mapping_naming_what_the_model_lacks_stops_the_load(
    model_copy: Callable[..., Path], feedback: object, match: str
) -> None:
    directory = model_copy(MONTHS_MODEL_DIR, lambda meta: meta.update(feedback=feedback))
    with pytest.raises(ModelLoadError) as exc:
        load(directory)
    assert str(exc.value).startswith(f"{directory / 'model.json'}: {match}")


def test_a_feature_fed_by_two_outputs_stops_the_load(model_copy: Callable[..., Path]) -> None:
    def edit(meta: dict[str, Any]) -> None:
        meta["outputs"] = ["p", "q"]
        meta["feedback"] = {"p": "sst_c", "q": "sst_c"}

    with pytest.raises(ModelLoadError, match="feeds feature 'sst_c' from both 'p' and 'q'"):
        load(model_copy(MONTHS_MODEL_DIR, edit))
