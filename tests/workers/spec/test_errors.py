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


# ------------------------------------------------------------------------------- from structure


def test_locations_do_not_depend_on_the_words_of_messages(
    small: SmallSpec, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Reword every library message a location used to be read from: the paths stay."""
    from dab_core.config import ConfigError
    from dab_core.hard import HardFunctionDef, HardParamError
    from dab_core.registry import Registry

    real_unknown = Registry._unknown

    def reworded_unknown(self: Registry[Any], name: object) -> Any:
        e = real_unknown(self, name)
        e.args = ("no such thing, sorry",)
        return e

    real_bind = HardFunctionDef.bind

    def reworded_bind(self: HardFunctionDef, **params: Any) -> Any:
        try:
            return real_bind(self, **params)
        except HardParamError as e:
            raise type(e)(
                "that will not do", function=e.function, param=e.param, accepted=e.accepted
            ) from None

    real_init = ConfigError.__init__

    def reworded_init(self: ConfigError, message: str, *fields: Any) -> None:
        real_init(self, "these fields disagree", *fields)

    monkeypatch.setattr(Registry, "_unknown", reworded_unknown)
    monkeypatch.setattr(HardFunctionDef, "bind", reworded_bind)
    monkeypatch.setattr(ConfigError, "__init__", reworded_init)

    def error_of(**changes: Any) -> SpecError:
        with pytest.raises(SpecError) as e:
            expand(parse_spec(small(**changes)))
        return e.value

    base = small()["params"]
    # an unknown hard function, fixed and swept
    err = error_of(params={**base, "hard": "sgn"})
    assert (err.path, err.message) == ("params.hard", "no such thing, sorry (did you mean 'signum'?)")
    err = error_of(grid={"model": ["signum-dense"], "hard": ["signum", "sgn"]})
    assert err.path == "grid.hard[1]"
    # an unknown hard parameter points at the key, fixed and swept, in either family
    err = error_of(
        params={**base, "model": "signum-dense", "hard_params": {"epsilon": 1}}, grid={"lr": [0.1]}
    )
    assert err.path == "params.hard_params.epsilon"  # the message is the family's ConfigError's
    err = error_of(grid={"model": ["signum-dense"], "hard_params": [{"eps": 0.1}, {"epsilon": 1}]})
    assert err.path == "grid.hard_params[1].epsilon"
    err = error_of(
        experiment="classification",
        params={"steps": 1, "dataset": "fake"},
        grid={"hard_params": [{"eps": 0.1}, {"epsilon": 1}]},
    )
    assert err.path == "grid.hard_params[1].epsilon"
    # a rule over two fields blames the one the cell varies, then the one params sets
    err = error_of(grid={"model": ["signum-dense", "signum-rnn"], "ponder_steps": [0, 2]}, replicates=1)
    assert (err.path, err.message) == ("grid.ponder_steps[1]", "these fields disagree")
    err = error_of(params={**base, "model": "signum-dense"}, grid={"ponder_steps": [0, 2]}, replicates=1)
    assert err.path == "grid.ponder_steps[1]"
    err = error_of(params={**base, "model": "signum-dense", "ponder_steps": 2}, grid={"lr": [0.1]})
    assert err.path == "params.ponder_steps"
    no_batch = {k: v for k, v in base.items() if k != "batch_size"}
    err = error_of(params={**no_batch, "train_size": 4}, grid={"model": ["elu-dense"], "batch_size": [8]})
    assert err.path == "grid.batch_size[0]"
    # the unknown family, named at `experiment`
    with pytest.raises(SpecError) as e:
        parse_spec(small(experiment="sortnig"))
    assert e.value.path == "experiment" and "sorting" in e.value.message


def test_a_trial_config_error_from_outside_pydantic_is_located_too(
    small: SmallSpec, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a family's validator that lets a library error through (not a ValueError for pydantic)
    from dab_core.experiments.sorting import SortingConfig
    from dab_core.hard import HardParamTypeError

    def raising(cls: type[SortingConfig], *args: Any, **kwargs: Any) -> Any:
        raise HardParamTypeError("nope", function="signum", param="eps")

    monkeypatch.setattr(SortingConfig, "model_validate_json", classmethod(raising))
    with pytest.raises(SpecError) as e:
        expand(parse_spec(small(grid={"model": ["signum-dense"], "hard_params": [{"eps": 0.1}]})))
    assert e.value.path == "grid" and e.value.message == "nope"  # no field of the cell is named: the cell


@pytest.mark.parametrize(
    ("family", "params", "path", "bound"),
    [
        ("sorting", {"steps": 10**15}, "params.steps", "100000000"),
        ("sorting", {"eval_every": 10**9}, "params.eval_every", "100000000"),
        ("sorting", {"batch_size": 10**7}, "params.batch_size", "1048576"),
        ("sorting", {"train_size": 10**9}, "params.train_size", "100000000"),
        ("sorting", {"test_size": 10**9}, "params.test_size", "10000000"),
        ("sorting", {"rnn_hidden": 10**6}, "params.rnn_hidden", "16384"),
        ("sorting", {"ponder_steps": 1000, "model": "signum-rnn"}, "params.ponder_steps", "64"),
        ("sorting", {"dense_hidden": [10**6]}, "params.dense_hidden", "16,384 (MAX_WIDTH)"),
        ("sorting", {"num_threads": 10**6}, "params.num_threads", "1024"),
        ("classification", {"batch_size": 10**6, "dataset": "fake"}, "params.batch_size", "65536"),
        ("classification", {"width": 10**4, "dataset": "fake"}, "params.width", "512"),
        ("classification", {"eval_batch_size": 10**6, "dataset": "fake"}, "params.eval_batch_size", "65536"),
        ("representation", {"probe_epochs": 10**6}, "params.probe_epochs", "1000"),
        ("representation", {"train_size": 10**9}, "params.train_size", "2000000"),
    ],
)
def test_count_fields_are_bounded_with_the_bound_in_the_error(
    family: str, params: dict[str, Any], path: str, bound: str
) -> None:
    base: dict[str, Any] = {
        "sorting": {"steps": 10, "seq_len": 4, "model": "elu-dense", "train_size": 0},
        "classification": {"steps": 10},
        "representation": {"steps": 10, "variant": "dab-binary", "dataset": "fake", "bpp": 1.0},
    }[family]
    spec = parse_spec({"name": "x", "experiment": family, "params": {**base, **params}})
    with pytest.raises(SpecError) as e:
        expand(spec)
    assert e.value.path == path, str(e.value)
    assert bound in e.value.message
    assert e.value.to_dict()["details"][0]["path"] == path


def test_a_swept_count_out_of_bounds_names_the_axis_value(small: SmallSpec) -> None:
    with pytest.raises(SpecError) as e:
        expand(parse_spec(small(grid={"model": ["elu-dense"], "steps": [10, 10**15]}, params={"seq_len": 4})))
    assert e.value.path == "grid.steps[1]" and "less than or equal to 100000000" in e.value.message


def test_to_dict_keeps_its_keys() -> None:
    err = SpecError("bad", path=("grid", "model", 2), source="x.yaml", line=7, cell="model=x")
    assert err.to_dict() == {
        "error": "invalid_spec",
        "message": str(err),
        "source": "x.yaml",
        "path": "grid.model[2]",
        "line": 7,
        "cell": "model=x",
        "details": [{"path": "grid.model[2]", "line": 7, "message": "bad"}],
    }
