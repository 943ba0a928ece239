"""Spec errors: every mistake names its file, line and field path, found from structure (loc and
the library's exception attributes), never from the words of a message."""

from __future__ import annotations

import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from workers.spec import (
    SpecError,
    expand,
    load_spec,
    parse_spec,
)

SmallSpec = Callable[..., dict[str, Any]]  # the `small` fixture (conftest.py)
WriteFile = Callable[[Path, str, str], Path]  # the `write` fixture


def test_yaml_error_names_file_line_and_field(tmp_path: Path, write: WriteFile) -> None:
    path = write(
        tmp_path,
        "bad.yaml",
        """
        name: bad
        experiment: sorting
        params:
          steps: 10
          seq_len: 5
        grid:
          model: [signum-dense, elu-dense, signum-dnese]
        """,
    )
    spec = load_spec(path)
    with pytest.raises(SpecError) as e:
        expand(spec)  # type: ignore[arg-type]
    err = e.value
    assert (err.source, err.line, err.path) == (str(path), 7, "grid.model[2]")
    assert str(err).startswith(f"{path}:7: grid.model[2]: unknown model 'signum-dnese'; known: ")
    assert "elu-dense, signum-dense, signum-rnn" in str(err) and "did you mean 'signum-dense'" in str(err)
    assert "[in trial cell model=signum-dnese]" in str(err)


@pytest.mark.parametrize(
    ("text", "line", "path", "needle"),
    [
        (
            "name: x\nexperiment: sorting\ngrdi: {}\nparams: {steps: 1, seq_len: 5}\n",
            3,
            "grdi",
            "did you mean 'grid'",
        ),
        (
            "name: x\nexperiment: sorting\nparams:\n  steps: 1\n  seq_len: '5'\n  model: elu-dense\n",
            5,
            "params.seq_len",
            "valid integer",
        ),
        (
            "name: x\nexperiment: sorting\nparams: {steps: 1, seq_len: 5, model: elu-dense, sequence: 3}\n",
            3,
            "params.sequence",
            "unknown field 'sequence'",
        ),
        (
            "name: x\nexperiment: sorting\nparams: {steps: 1, seq_len: 5, model: signum-dense, hard: sgn}\n",
            3,
            "params.hard",
            "unknown hard function 'sgn'",
        ),
        (
            "name: x\nexperiment: sorting\nparams: {steps: 1, seq_len: 5, model: signum-dense, hard_params: {epsilon: 1}}\n",
            3,
            "params.hard_params.epsilon",
            "unknown parameter 'epsilon'",
        ),
        ("name: x\nexperiment: sortin\nparams: {steps: 1}\n", 2, "experiment", "did you mean 'sorting'"),
        (
            "name: x\nexperiment: sorting\nparams: {steps: 1, seq_len: 5}\nparams: {}\n",
            4,
            "params",
            "duplicate key 'params'",
        ),
        (
            "name: x\nexperiment: sorting\nparams: {steps: 1, seq_len: 5}\ngrid:\n  model: [elu-dense]\n  steps: [2]\n",
            6,
            "grid.steps",
            "also fixed in params",
        ),
        (
            "name: x\nexperiment: sorting\nparams: {steps: 1, seq_len: 5, seed: 3}\n",
            3,
            "params.seed",
            "replicates",
        ),
        (
            "name: x\nexperiment: sorting\nparams: {steps: 1, seq_len: 5}\ngrid: {model: elu-dense}\n",
            4,
            "grid.model",
            "list of values",
        ),
        (
            "name: x\nexperiment: sorting\nparams: {steps: 1, seq_len: 5}\ngrid: {model: [elu-dense, elu-dense]}\n",
            4,
            "grid.model[1]",
            "duplicate value",
        ),
        (
            "name: x\nexperiment: sorting\nparams: {steps: 1, seq_len: 5}\ngrid:\n  model: [elu-dense]\nexclude:\n  - {model: signum-rnn}\n",
            7,
            "exclude[0].model",
            "remove nothing",
        ),
        (
            "name: x\nexperiment: sorting\nparams: {steps: 1, seq_len: 5, model: elu-dense}\nreplicates: [0, 1, 1]\n",
            4,
            "replicates[2]",
            "listed twice",
        ),
        (
            "name: x\nexperiment: sorting\nparams: {steps: 1, seq_len: 5, model: elu-dense}\nresources: {gpu: 1.5}\n",
            4,
            "resources.gpu",
            "whole GPUs",
        ),
        (
            "name: x\nexperiment: sorting\nparams: {steps: 1, seq_len: 5, model: elu-dense}\nmode: maximum\n",
            4,
            "mode",
            "unknown mode 'maximum'",
        ),
        (
            "name: x\nexperiment: sorting\nparams:\n  steps: 1\n  seq_len: 5\n  gamma: .nan\n  model: elu-dense\n",
            6,
            "params.gamma",
            "NaN",
        ),
        ("name: x\nexperiment: sorting\nparams: [steps, 1]\n", 3, "params", "valid dictionary"),
        (
            "name: x\nexperiment: sorting\nparams:\n  steps: 1\n  model: elu-dense\n",
            3,
            "params",
            "missing required field 'seq_len'",
        ),
    ],
)
def test_errors_name_line_and_path(
    tmp_path: Path, text: str, line: int | None, path: str, needle: str, write: WriteFile
) -> None:
    file = write(tmp_path, "spec.yaml", text)
    with pytest.raises(SpecError) as e:
        spec = load_spec(file)
        expand(spec)  # type: ignore[arg-type]
    err = e.value
    assert err.path == path, str(err)
    assert err.line == (line if line is not None else err.line), str(err)
    if line is not None:
        assert str(err).startswith(f"{file}:{line}: {path}: "), str(err)
    assert needle in str(err)
    assert "\n" not in str(err)
    assert err.to_dict()["details"][0]["path"] == path


def test_spec_errors_pickle_with_their_location() -> None:
    err = SpecError("bad", path="grid.model[2]", source="x.yaml", line=7, cell="model=x")
    back = pickle.loads(pickle.dumps(err))
    assert (back.path, back.source, back.line, back.cell, str(back)) == (
        err.path,
        err.source,
        7,
        "model=x",
        str(err),
    )


def test_model_level_errors_blame_the_swept_field(small: SmallSpec) -> None:
    spec = parse_spec(
        small(grid={"model": ["signum-dense", "signum-rnn"], "ponder_steps": [0, 2]}, replicates=1)
    )
    with pytest.raises(SpecError) as e:
        expand(spec)
    assert e.value.path == "grid.ponder_steps[1]"
    assert e.value.cell == "model=signum-dense,ponder_steps=2"
    assert "ponder_steps applies to model 'signum-rnn' only" in str(e.value)
