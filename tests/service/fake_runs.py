"""What MLflow would hold for a sweep's trials, without MLflow: `TrialRun`s and their metric
histories, for the unit tests of `service.results` and `service.report`."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from dab_core.experiments import ExperimentFamily, experiments
from service.results import TrialRun
from workers.spec import SweepSpec, Trial, expand, parse_spec


class FakeRuns:
    """Runs keyed by trial_key, each with a history per metric (its latest value is its
    ``metrics`` entry, as in MLflow)."""

    def __init__(self) -> None:
        self.runs: dict[str, TrialRun] = {}
        self.histories: dict[tuple[str, str], list[tuple[float, float]]] = {}

    def add(self, trial: Trial, status: str = "FINISHED", **histories: Sequence[float]) -> TrialRun:
        run_id = f"run-{trial.trial_key}"
        metrics: dict[str, float] = {}
        for metric, values in histories.items():
            self.histories[(run_id, metric)] = [(float(i + 1), float(v)) for i, v in enumerate(values)]
            metrics[metric] = float(values[-1])
        metrics["step"] = float(max((len(v) for v in histories.values()), default=0))
        run = TrialRun(run_id, trial.trial_key, trial.cell_key, trial.seed, status, metrics, 0, 1)
        self.runs[trial.trial_key] = run
        return run

    def history(self, run_id: str, metric: str) -> list[tuple[float, float]]:
        return list(self.histories.get((run_id, metric), []))


def spec_and_trials(doc: Mapping[str, Any]) -> tuple[SweepSpec, list[Trial]]:
    spec = parse_spec(dict(doc))
    return spec, expand(spec)


def by_cell(trials: Sequence[Trial]) -> dict[str, list[Trial]]:
    out: dict[str, list[Trial]] = {}
    for t in trials:
        out.setdefault(t.cell_key, []).append(t)
    return out


@contextmanager
def registered(name: str, family: ExperimentFamily) -> Iterator[ExperimentFamily]:
    """`family` in the experiments registry for the block, removed after."""
    experiments.add(name, family)
    try:
        yield family
    finally:
        experiments.remove(name)
