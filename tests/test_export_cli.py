"""lstm-export's command line: what a user sees on success and on every kind of bad input.

Every failure exits 1 with exactly one line on stderr that says what is wrong and what to do,
and writes nothing."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TorchForecaster

from model_export.__main__ import main

Arrays = dict[str, np.ndarray]


def run_cli(capsys: pytest.CaptureFixture[str], *argv: object) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def snapshot(directory: Path) -> dict[str, bytes]:
    """Every file and folder under ``directory``, with file contents."""
    return {
        str(p.relative_to(directory)): p.read_bytes() if p.is_file() else b"<dir>"
        for p in sorted(directory.rglob("*"))
    }


def assert_refused(
    capsys: pytest.CaptureFixture[str], out_dir: Path, *argv: object, match: str
) -> str:
    """Run the CLI expecting a refusal: one line on stderr, nothing changed on disk."""
    before = snapshot(out_dir.parent)
    code, _, err = run_cli(capsys, *argv, "--out", out_dir)
    assert code == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("lstm-export: error: ")
    assert match in lines[0], lines[0]
    assert snapshot(out_dir.parent) == before
    return lines[0]


def test_success_prints_one_line_per_outcome(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, saved_torch: Callable[..., Path]
) -> None:
    code, out, err = run_cli(capsys, saved_torch(), "--out", tmp_path / "out")
    assert code == 0 and err == ""
    lines = out.strip().splitlines()
    assert lines[0].startswith("loaded torch state_dict model.pt: 1-layer LSTM 2->8, head 8->1")
    assert lines[1].startswith("verified against the float64 reference: max |error| ")
    assert lines[2].startswith("verified against torch 2.13.0")
    assert lines[3].startswith(f"wrote {tmp_path / 'out'} (model model, version ")
    assert (tmp_path / "out" / "model.onnx").is_file()


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (
            lambda a: a.update({"encoder.weight": np.zeros(3)}),
            "neither LSTM (lstm.*) nor head (head.*)",
        ),
        (lambda a: a.update({"lstm.weight_hh_l0": np.zeros((32, 7))}), "recurrent weights"),
        (lambda a: a["lstm.weight_ih_l0"].__setitem__((0, 0), np.nan), "NaN"),
        (lambda a: a.pop("lstm.bias_hh_l0"), "only one of bias_ih / bias_hh"),
        (lambda a: a.pop("head.weight"), "no head weight head.weight"),
        (lambda a: a.update({"lstm.weight_ih_l0_reverse": np.zeros((32, 2))}), "bidirectional"),
        (lambda a: a.update({"lstm.weight_hr_l0": np.zeros((4, 8))}), "proj_size"),
        (lambda a: a.update({"head.weight": np.zeros((1, 9))}), "hidden size 8"),
        (
            lambda a: a.update(
                {"lstm.weight_ih_l2": np.zeros((32, 8)), "lstm.weight_hh_l2": np.zeros((32, 8))}
            ),
            "not 0..1",
        ),
    ],
    ids=[
        "unexpected-key",
        "shape-mismatch",
        "nan",
        "one-bias",
        "no-head",
        "bidirectional",
        "proj-size",
        "head-size",
        "layer-gap",
    ],
)
def test_bad_weights(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    saved_npz: Callable[..., Path],
    edit: Callable[[Arrays], None],
    match: str,
) -> None:
    assert_refused(capsys, tmp_path / "out", saved_npz(edit=edit), match=match)


@pytest.mark.parametrize(
    ("scaling", "match"),
    [
        ('{"input_std": [0.0, 1.0]}', "input_std must be > 0"),
        ('{"output_std": [-2.0]}', "output_std must be > 0"),
        ('{"input_mean": [1.0]}', "input_mean has 1 values; the model needs 2"),
        ('{"input_meen": [1.0, 2.0]}', "unknown scaling key(s) input_meen"),
        ('{"output_mean": ["a"]}', "must be a list of numbers"),
        ('{"output_mean": [NaN]}', "NaN or infinite"),
        ("[1, 2]", "must be a JSON object"),
        ("{not json", "not readable JSON"),
    ],
)
def test_bad_scaling(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    saved_npz: Callable[..., Path],
    scaling: str,
    match: str,
) -> None:
    (tmp_path / "scaling.json").write_text(scaling)
    assert_refused(
        capsys, tmp_path / "out", saved_npz(), "--scaling", tmp_path / "scaling.json", match=match
    )


def test_missing_scaling_file(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, saved_npz: Callable[..., Path]
) -> None:
    assert_refused(
        capsys,
        tmp_path / "out",
        saved_npz(),
        "--scaling",
        tmp_path / "nope.json",
        match="scaling file",
    )


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (["--features", "a,b,c"], "--features names 3 value(s); the model has 2"),
        (["--features", "a,a"], "non-empty and distinct"),
        (["--outputs", "y,z"], "--outputs names 2 value(s); the model has 1"),
        (["--tolerance", "-1"], "--tolerance must be a positive number"),
        (["--name", "has space"], "must match"),
        (["--format", "keras"], "not a Keras 3 .keras file"),
    ],
)
def test_bad_options(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    saved_npz: Callable[..., Path],
    args: list[str],
    match: str,
) -> None:
    assert_refused(capsys, tmp_path / "out", saved_npz(), *args, match=match)


def test_missing_and_unreadable_sources(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert_refused(capsys, tmp_path / "out", tmp_path / "missing.pt", match="does not exist")
    (tmp_path / "weights.bin").write_bytes(b"\0" * 10)
    assert_refused(capsys, tmp_path / "out", tmp_path / "weights.bin", match="pass --format")
    for name, match in [
        ("junk.pt", "not a readable torch state_dict"),
        ("junk.npz", "not a readable .npz"),
        ("junk.keras", "not a Keras 3 .keras file"),
    ]:
        (tmp_path / name).write_bytes(b"this is not a model file")
        assert_refused(capsys, tmp_path / "out", tmp_path / name, match=match)
    assert_refused(capsys, tmp_path / "out", tmp_path, match="is not a file")


def test_pickled_module_is_not_unpickled(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, torch_model: Callable[..., TorchForecaster]
) -> None:
    torch.save(
        torch_model(), tmp_path / "module.pt"
    )  # the whole module: needs arbitrary unpickling
    line = assert_refused(
        capsys, tmp_path / "out", tmp_path / "module.pt", match="not a readable torch state_dict"
    )
    assert "torch.save(model.state_dict(), path)" in line


def test_non_tensor_state_dict(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    torch.save({"lstm.weight_ih_l0": [1, 2, 3]}, tmp_path / "list.pt")
    assert_refused(
        capsys,
        tmp_path / "out",
        tmp_path / "list.pt",
        match="does not hold a state_dict of tensors",
    )


def test_existing_output_needs_force(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, saved_npz: Callable[..., Path]
) -> None:
    source = saved_npz()
    assert run_cli(capsys, source, "--out", tmp_path / "out")[0] == 0
    before = json.loads((tmp_path / "out" / "model.json").read_text())
    assert_refused(
        capsys, tmp_path / "out", source, "--name", "other", match="pass --force to replace it"
    )
    assert json.loads((tmp_path / "out" / "model.json").read_text()) == before
    assert run_cli(capsys, source, "--out", tmp_path / "out", "--name", "other", "--force")[0] == 0
    assert json.loads((tmp_path / "out" / "model.json").read_text())["name"] == "other"


def test_force_never_replaces_a_directory_that_is_not_a_model(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, saved_npz: Callable[..., Path]
) -> None:
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "keep.txt").write_text("mine")
    assert_refused(capsys, precious, saved_npz(), "--force", match="not a model directory")
    assert (precious / "keep.txt").read_text() == "mine"
    (tmp_path / "file").write_text("x")
    assert_refused(capsys, tmp_path / "file", saved_npz(), match="is not a directory")


def test_usage_errors_exit_2(
    capsys: pytest.CaptureFixture[str], saved_npz: Callable[..., Path]
) -> None:
    with pytest.raises(SystemExit) as exc:
        main([str(saved_npz())])  # no --out
    assert exc.value.code == 2
    assert "--out" in capsys.readouterr().err


def test_module_and_console_script(tmp_path: Path, saved_npz: Callable[..., Path]) -> None:
    source = saved_npz()
    done = subprocess.run(
        [sys.executable, "-m", "model_export", str(source), "--out", str(tmp_path / "a")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "wrote" in done.stdout
    script = Path(sys.executable).with_name("lstm-export")
    done = subprocess.run(
        [str(script), str(tmp_path / "nope.npz"), "--out", str(tmp_path / "b")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1
    assert (
        done.stderr.strip()
        == f"lstm-export: error: source file {tmp_path / 'nope.npz'} does not exist"
    )
    assert "Traceback" not in done.stderr


def test_unwritable_output_is_one_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, saved_npz: Callable[..., Path]
) -> None:
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where a folder should be")
    code, _, err = run_cli(capsys, saved_npz(), "--out", blocker / "model")
    assert code == 1
    assert err.startswith(f"lstm-export: error: cannot write {blocker / 'model'}: ")
    assert len(err.strip().splitlines()) == 1
