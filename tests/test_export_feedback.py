"""--feedback OUTPUT=FEATURE: which outputs feed which features in a forecast, declared at export.

Every name is checked against the model's, each feature is fed at most once and each output feeds
at most one feature; the mapping lands in model.json in feature order and leaves the version alone
(the fingerprint covers weights and scaling only)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from test_export_cli import assert_refused, run_cli

from model_export import FeedbackError, export, feedback_mapping

NAMES = ["--features", "level,rain,temp", "--outputs", "next_level,next_temp"]


def test_the_mapping_is_written_in_feature_order(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, saved_torch: Callable[..., Path]
) -> None:
    source = saved_torch(inputs=3, outputs=2)
    code, out, err = run_cli(
        capsys,
        source,
        "--out",
        tmp_path / "m",
        *NAMES,
        "--feedback",
        "next_temp=temp",
        "--feedback",
        "next_level=level",
    )
    assert code == 0, err
    meta = json.loads((tmp_path / "m" / "model.json").read_text())
    assert list(meta["feedback"].items()) == [("next_level", "level"), ("next_temp", "temp")]
    assert "forecast feedback: next_level -> level, next_temp -> temp" in out.splitlines()


def test_without_feedback_the_mapping_is_empty_and_nothing_is_printed(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, saved_torch: Callable[..., Path]
) -> None:
    code, out, _ = run_cli(capsys, saved_torch(), "--out", tmp_path / "m")
    assert code == 0
    assert json.loads((tmp_path / "m" / "model.json").read_text())["feedback"] == {}
    assert not any(line.startswith("forecast feedback") for line in out.splitlines())


def test_default_names_can_be_mapped(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, saved_torch: Callable[..., Path]
) -> None:
    source = saved_torch(inputs=2, outputs=1)
    assert run_cli(capsys, source, "--out", tmp_path / "m", "--feedback", "y0=x1")[0] == 0
    assert json.loads((tmp_path / "m" / "model.json").read_text())["feedback"] == {"y0": "x1"}


@pytest.mark.parametrize(
    ("pairs", "match"),
    [
        (
            ["next_lvl=level"],
            "--feedback next_lvl=level: the model has no output 'next_lvl'; its outputs are "
            "next_level, next_temp (name them with --outputs)",
        ),
        (
            ["next_level=lvl"],
            "--feedback next_level=lvl: the model has no feature 'lvl'; its features are "
            "level, rain, temp (name them with --features)",
        ),
        (
            ["next_level=level", "next_temp=level"],
            "--feedback next_temp=level: feature 'level' is already fed by output 'next_level'; "
            "a feature is fed by at most one output",
        ),
        (
            ["next_level=level", "next_level=temp"],
            "--feedback next_level=temp: output 'next_level' already feeds feature 'level'; "
            "an output feeds at most one feature",
        ),
        # a feature name of the model's inputs is not an output, and the other way round
        (["level=next_level"], "the model has no output 'level'"),
    ],
    ids=["unknown-output", "unknown-feature", "feature-fed-twice", "output-feeds-two", "swapped"],
)
def test_bad_mappings_are_refused_naming_the_culprit(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    saved_torch: Callable[..., Path],
    pairs: list[str],
    match: str,
) -> None:
    flags = [arg for pair in pairs for arg in ("--feedback", pair)]
    source = saved_torch(inputs=3, outputs=2)
    assert_refused(capsys, tmp_path / "m", source, *NAMES, *flags, match=match)


def test_a_pair_given_twice_is_one_pair(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, saved_torch: Callable[..., Path]
) -> None:
    source = saved_torch(inputs=2, outputs=1)
    flags = ["--feedback", "y0=x0", "--feedback", "y0=x0"]
    assert run_cli(capsys, source, "--out", tmp_path / "m", *flags)[0] == 0
    assert json.loads((tmp_path / "m" / "model.json").read_text())["feedback"] == {"y0": "x0"}


@pytest.mark.parametrize("pair", ["y0", "y0=", "=x0", "y0=x0=x1", "y0==x0"])
def test_a_malformed_pair_is_a_usage_error(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    saved_torch: Callable[..., Path],
    pair: str,
) -> None:
    with pytest.raises(SystemExit) as exc:
        run_cli(capsys, saved_torch(), "--out", tmp_path / "m", "--feedback", pair)
    assert exc.value.code == 2
    assert "must be OUTPUT=FEATURE" in capsys.readouterr().err
    assert not (tmp_path / "m").exists()


def test_the_api_takes_a_mapping_or_pairs(tmp_path: Path, saved_npz: Callable[..., Path]) -> None:
    source = saved_npz(inputs=3, outputs=2)
    by_map = export(source, tmp_path / "a", feedback={"y1": "x2", "y0": "x1"})
    by_pairs = export(source, tmp_path / "b", feedback=[("y0", "x1"), ("y1", "x2")])
    assert by_map.metadata["feedback"] == by_pairs.metadata["feedback"] == {"y0": "x1", "y1": "x2"}
    with pytest.raises(FeedbackError, match="no output 'y2'"):
        export(source, tmp_path / "c", feedback={"y2": "x0"})
    assert not (tmp_path / "c").exists()
    assert feedback_mapping(None, ["x0"], ["y0"]) == {}


def test_the_mapping_leaves_the_version_alone(
    tmp_path: Path, saved_npz: Callable[..., Path]
) -> None:
    source = saved_npz(inputs=3, outputs=2)
    versions = {
        export(source, tmp_path / "none").metadata["version"],
        export(source, tmp_path / "one", feedback={"y0": "x0"}).metadata["version"],
        export(source, tmp_path / "two", feedback={"y0": "x2", "y1": "x0"}).metadata["version"],
    }
    assert len(versions) == 1
