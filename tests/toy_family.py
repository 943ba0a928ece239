"""A toy experiment family for the tests: its own metric ``toy_error`` (lower is better, raw,
read as each run's best), and a task that trains nothing.

Importing this module registers nothing: unit tests add `FAMILY` to the registry in a fixture
(and remove it after); the end-to-end test copies this file into a plugin on PYTHONPATH whose
import registers it (`register`), so that the service, the Ray driver and its workers all have it.

The task's ``toy_error`` at report ``k`` (1-based, one report per step) is
``offset + 0.1 * seed + ERRORS[k - 1]``: falling, then rising at the last report, so a run's
final value is above its best (its minimum).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from dab_core.config import TrialConfig
from dab_core.experiments import ExperimentFamily, experiments
from dab_core.metrics import Metric, MetricSet
from dab_core.training import Stateful, Task

NAME = "toy"
ERRORS = (1.0, 0.5, 0.25, 0.75)  # one per step of a 4-step trial: best 0.25, final 0.75


class ToyConfig(TrialConfig):
    offset: float = 0.0


class _Counter(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("done", torch.zeros((), dtype=torch.long))


class ToyTask(Task):
    def __init__(self, config: TrialConfig, device: torch.device) -> None:
        super().__init__(config, device)
        assert isinstance(config, ToyConfig)
        self.cfg = config
        self.counter = _Counter()

    def state(self) -> Mapping[str, Stateful]:
        return {"counter": self.counter}

    def train_step(self, step: int) -> dict[str, torch.Tensor]:
        self.counter.done.fill_(step + 1)
        return {"train_loss": torch.zeros(())}

    def evaluate(self) -> dict[str, float]:
        k = int(self.counter.done)
        return {"toy_error": self.cfg.offset + 0.1 * self.cfg.seed + ERRORS[min(max(k, 1), len(ERRORS)) - 1]}


def expected(offset: float, seed: int, agg: str) -> float:
    """A run's toy_error read by `agg` (``best``: its minimum; ``final``: its last)."""
    return offset + 0.1 * seed + (min(ERRORS) if agg == "best" else ERRORS[-1])


FAMILY = ExperimentFamily(
    name=NAME,
    config_cls=ToyConfig,
    task_cls=ToyTask,
    metrics=MetricSet(
        (
            Metric("toy_error", "min", "raw", "toy error", agg="best"),
            Metric("train_loss", "min"),
        ),
        default="toy_error",
    ),
    description="a toy family for tests",
)


def register() -> None:
    experiments.add(NAME, FAMILY)
