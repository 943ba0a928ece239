"""Experiment families: the registry that maps a config's ``experiment`` name to its typed
config and its task, and the helpers that parse a plain config dict."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from dab_core.config import TrialConfig
from dab_core.metrics import MetricSet
from dab_core.registry import Registry

if TYPE_CHECKING:
    import torch

    from dab_core.training import Task


@dataclass(frozen=True)
class ExperimentFamily:
    """One kind of experiment.

    Call contract: ``task_cls(config, device)`` with ``config`` an instance of ``config_cls``
    returns a `dab_core.training.Task` (a Task class, or a function that picks one: the
    representation family's threshold baseline has a task of its own). ``metrics`` declares what its trials report (direction,
    unit, how tables read a trial) and the metric a sweep optimises by default
    (`dab_core.metrics`).
    """

    name: str
    config_cls: type[TrialConfig]
    task_cls: Callable[[Any, torch.device], Task]
    metrics: MetricSet
    description: str = ""

    def parse(self, config: Mapping[str, Any]) -> TrialConfig:
        """Validate a plain dict into this family's typed config (pydantic ValidationError)."""
        return self.config_cls.model_validate(dict(config))


experiments: Registry[ExperimentFamily] = Registry(
    "experiment family", entry_point_group="dab_core.experiments"
)


def metrics_of(name: str) -> MetricSet:
    """The metric declarations of the family registered as `name` (UnknownNameError if none)."""
    return experiments.lookup(name).metrics


def family_of(config: Mapping[str, Any]) -> ExperimentFamily:
    """The family a plain config names under ``experiment``."""
    if "experiment" not in config:
        raise ValueError(f"config has no 'experiment' key; known families: {', '.join(experiments.names())}")
    return experiments.lookup(config["experiment"])


def parse_config(config: Mapping[str, Any]) -> TrialConfig:
    """Validate a plain config dict against its family's typed config."""
    return family_of(config).parse(config)


# Registering the built-in families is the side effect of importing their modules.
from dab_core.experiments import classification as _classification  # noqa: E402,F401
from dab_core.experiments import representation as _representation  # noqa: E402,F401
from dab_core.experiments import sorting as _sorting  # noqa: E402,F401

__all__ = ["ExperimentFamily", "experiments", "family_of", "metrics_of", "parse_config"]
