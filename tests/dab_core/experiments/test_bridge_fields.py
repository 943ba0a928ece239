"""The bridge plumbing the three families share (`dab_core.experiments._bridge`): one set of
fields, one way to bind the hard function (errors name ``hard_params.<param>``), one builder."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from dab_core.approximators import ConvApproximator, DenseApproximator, ElementwiseApproximator
from dab_core.experiments import parse_config
from dab_core.experiments._bridge import BridgeFields, build_approximator
from dab_core.experiments.classification import ClassificationConfig
from dab_core.experiments.classification import make_bridge as cls_bridge
from dab_core.experiments.representation import RepresentationConfig
from dab_core.experiments.sorting import SortingConfig
from dab_core.hard import hard_functions

BASE: dict[str, dict[str, Any]] = {
    "sorting": {"experiment": "sorting", "model": "signum-dense", "seq_len": 3, "steps": 2},
    "classification": {"experiment": "classification", "dataset": "fake", "steps": 2},
    "representation": {
        "experiment": "representation",
        "dataset": "fake",
        "variant": "dab-signum",
        "bpp": 0.5,
        "steps": 2,
    },
}


def test_every_family_config_is_a_bridge_fields() -> None:
    for cls in (SortingConfig, ClassificationConfig, RepresentationConfig):
        assert issubclass(cls, BridgeFields)
        assert {"hard_params", "dab_loss", "dab_loss_to_input"} <= set(cls.model_fields)


@pytest.mark.parametrize("family", sorted(BASE))
def test_a_wrong_hard_parameter_names_the_parameter_in_every_family(family: str) -> None:
    for params, field, text in (
        ({"epsilon": 0.1}, ("hard_params", "epsilon"), "unknown parameter 'epsilon'"),
        ({"eps": "wide"}, ("hard_params", "eps"), "parameter 'eps' is a number"),
        ({"eps": -1.0}, ("hard_params", "eps"), "eps must be >= 0"),
    ):
        with pytest.raises(ValidationError) as e:
            parse_config({**BASE[family], "hard_params": params})
        err = e.value.errors()[0]["ctx"]["error"]
        assert err.fields[0] == field and text in str(err), (family, str(err))


def test_the_approximator_each_kind_builds() -> None:
    signum, topk = hard_functions.get("signum"), hard_functions.get("topk", k=4)
    assert isinstance(build_approximator("auto", signum, (8,), None), ElementwiseApproximator)
    dense = build_approximator("auto", topk, (2, 3, 3), (5,))
    assert isinstance(dense, DenseApproximator)  # shape-changing: dense, whatever the function
    assert isinstance(build_approximator("conv", signum, (4, 3, 3), None), ConvApproximator)
    # classification's bridge at placement 2 with a conv approximator of the default size
    cfg = ClassificationConfig(
        **{**BASE["classification"], "approximator": "conv", "placement": 2, "width": 4}
    )
    bridge = cls_bridge(cfg)
    assert isinstance(bridge.approximator, ConvApproximator) and bridge.approximator.net[0].out_channels == 64


def _error(config: dict[str, Any]) -> Any:
    with pytest.raises(ValidationError) as e:
        parse_config(config)
    return e.value.errors()[0]["ctx"]["error"] if "ctx" in e.value.errors()[0] else e.value


def test_the_estimators_through_every_family() -> None:
    """Every registered estimator is a config value; its parameters and its refusals name the
    field (`dab_core.estimators`)."""
    sorting = parse_config({**BASE["sorting"], "estimator": "perturbed", "estimator_params": {"sigma": 0.5}})
    assert sorting.estimator == "perturbed" and sorting.estimator_params == {"sigma": 0.5}
    err = _error({**BASE["sorting"], "estimator": "perturbed", "estimator_params": {"sigma": -1}})
    assert err.fields[0] == ("estimator_params", "sigma") and "perturbed" in str(err)
    err = _error({**BASE["sorting"], "estimator": "perturbed", "estimator_params": {"sigmaa": 1}})
    assert err.fields[0] == ("estimator_params", "sigmaa")
    unknown = _error({**BASE["sorting"], "estimator": "reinforce"})
    assert "unknown estimator 'reinforce'" in str(unknown) and "perturbed" in str(unknown)
    # blackbox needs a shape-preserving function; gumbel a stochastic one
    err = _error({**BASE["classification"], "hard": "topk", "hard_params": {"k": 8}, "estimator": "blackbox"})
    assert err.fields == (("estimator",), ("hard",)) and "'blackbox'" in str(err) and "topk" in str(err)
    err = _error({**BASE["sorting"], "estimator": "gumbel"})
    assert err.fields == (("estimator",), ("hard",)) and "signum" in str(err)
    rep = parse_config({**BASE["representation"], "variant": "dab-bernoulli", "estimator": "gumbel"})
    assert rep.estimator == "gumbel"
    err = _error({**BASE["representation"], "estimator": "elu"})
    assert err.fields[0] == ("estimator",) and "hard code" in str(err)
    err = _error({**BASE["representation"], "variant": "threshold", "estimator": "ste"})
    assert err.fields[0] == ("estimator",)
    # a plain activation takes no parameters
    err = _error({**BASE["sorting"], "model": "elu-dense", "estimator_params": {"sigma": 1.0}})
    assert err.fields[0] == ("estimator_params", "sigma")


@pytest.mark.parametrize(
    ("family", "estimator", "extra"),
    [
        ("sorting", "perturbed", {"estimator_params": {"samples": 2}}),
        ("sorting", "blackbox", {}),
        ("sorting", "ste", {}),
        ("classification", "perturbed", {"estimator_params": {"samples": 2}}),
        ("representation", "gumbel", {"variant": "dab-bernoulli"}),
    ],
)
def test_each_estimator_trains_without_an_approximator(
    family: str, estimator: str, extra: dict[str, Any]
) -> None:
    from dab_core import run_trial

    tiny = {
        "sorting": {"batch_size": 16, "train_size": 0, "test_size": 32, "dense_hidden": [8, 8]},
        "classification": {"width": 4, "image_size": 8, "batch_size": 8, "train_size": 16, "test_size": 8},
        "representation": {
            "width": 4,
            "image_size": 8,
            "batch_size": 8,
            "train_size": 16,
            "test_size": 8,
            "probe_epochs": 1,
            "dense_hidden": 8,
        },
    }[family]
    config = {
        **BASE[family],
        **tiny,
        **extra,
        "estimator": estimator,
        "steps": 2,
        "eval_every": 2,
        "num_threads": 1,
    }
    metrics = run_trial(config)
    assert metrics["step"] == 2.0 and "dab_loss" not in metrics  # no approximator, no DAB loss
    assert all(v == v for v in metrics.values())  # finite, no NaN
