"""The driver's side of a search: Optuna proposing configurations through Ray Tune's
`OptunaSearch`, the schedulers that stop them, and the state both keep across a restore.

One Tune trial is one configuration, trained with every seed of the spec in one process
(`workers.trainable.dab_group_trainable`, `dab_core.training.fit_group`). Its reports carry the
mean over the seeds under the metric's own name, so the searcher is told the mean and the
scheduler judges the mean at each rung: a configuration is stopped or kept as a whole, never
one of its seeds. Per-seed values travel beside it (``m/<i>/<metric>``) for the MLflow runs.

Resume: Tune saves the searcher (`DabSearch`, the Optuna study inside) with its experiment
state; the scheduler it does not save, so `SchedulerState` carries it in the callbacks' state,
which Tune saves and restores with the experiment. Schedulers that key trials by object
(`MedianStoppingRule`) are given trials by id (`_ById`) so that their state survives a
restore, where Tune rebuilds its trial objects. The experiment state is saved after every
step of Tune's loop (``TUNE_GLOBAL_CHECKPOINT_S=0``), so a proposal is on storage soon after it
is made. Tune copies its state files to storage one by one while it writes the next save, so a
killed driver can leave a searcher ahead of the trials or behind them: the next driver makes
them agree before it restores (`workers.driver.search_state`), proposing again what has no
trial (`DabSearch.replay`: the same configuration, trial keys and MLflow runs).
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ray.tune import Callback
from ray.tune.schedulers import ASHAScheduler, MedianStoppingRule
from ray.tune.search import Searcher
from ray.tune.search.optuna import OptunaSearch

from workers.spec.expand import value_key
from workers.trainable import CELL, INDEX, MEMBERS, TRIAL_KEY

log = logging.getLogger("workers.driver")

#: Consecutive proposals of configurations already tried before a search counts its space as
#: exhausted (a small discrete space; Optuna's grid sampler re-samples once its grid is done).
MAX_DUPLICATE_PROPOSALS = 50


def group_key_of(member_keys: list[str]) -> str:
    """The Tune trial key of a configuration: a key of its members' trial keys."""
    from workers.spec.expand import trial_key_of

    return "g" + trial_key_of({"members": member_keys})[1:]


def sampler_of(spec: Any) -> Any:
    """The Optuna sampler of ``spec.search``, seeded with ``search.seed``."""
    import optuna

    from workers.spec.search import grid_values

    search = spec.search
    if search.algorithm == "random":
        return optuna.samplers.RandomSampler(seed=search.seed)
    if search.algorithm == "tpe":
        return optuna.samplers.TPESampler(seed=search.seed)
    return optuna.samplers.GridSampler(grid_values(spec.distributions), seed=search.seed)


class DabSearch(OptunaSearch):  # type: ignore[misc]
    """`OptunaSearch` over a spec's space, proposing each configuration at most once.

    Optuna samples a choice as its index; `suggest` turns the sample into the configuration's
    cell and its trials (`workers.spec.expand.search_trials`, which validates every seed's
    config) and returns them as the Tune trial's config. A proposal equal to an earlier one,
    or one the family refuses, is told to Optuna as failed and another is asked for.
    """

    def __init__(self, spec_data: Mapping[str, Any], metric: str, mode: str) -> None:
        from workers.spec import parse_spec
        from workers.spec.search import optuna_space

        spec = parse_spec(dict(spec_data))
        super().__init__(
            space=optuna_space(spec.distributions), metric=metric, mode=mode, sampler=sampler_of(spec)
        )
        self.spec_data = dict(spec_data)
        self.proposed: list[dict[str, Any]] = []  # cells, in proposal order (configuration index)
        self.ids: list[str] = []  # the Tune trial id of each proposal, by configuration index
        # configuration indexes to propose again before sampling: proposals whose trials a
        # restored experiment lacks (`workers.driver.search_state.repair_saved_search`)
        self.replay: list[int] = []
        self._proposed_keys: set[str] = set()
        self.refused: list[str] = []  # why proposals were refused, for the status notes
        self._spec: Any = None

    def _parsed(self) -> Any:
        if self._spec is None:
            from workers.spec import parse_spec

            self._spec = parse_spec(dict(self.spec_data))
        return self._spec

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "_spec"}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update({"ids": [], "replay": [], **state})
        # a state saved before ids were kept: unknown ids, so that indexes stay aligned
        self.ids += [""] * (len(self.proposed) - len(self.ids))
        self._spec = None

    def save(self, checkpoint_path: str) -> None:
        import pickle

        with open(checkpoint_path, "wb") as f:
            pickle.dump(self.__getstate__(), f)

    def restore(self, checkpoint_path: str) -> None:
        import pickle

        with open(checkpoint_path, "rb") as f:
            self.__setstate__(pickle.load(f))

    def _drop(self, trial_id: str, why: str) -> None:
        from optuna.trial import TrialState

        study = self._ot_study
        assert study is not None  # set up by OptunaSearch's constructor
        study.tell(self._ot_trials.pop(trial_id), state=TrialState.FAIL)
        self.refused.append(why)

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        if trial_id in self._ot_trials:  # not: a trial restored beyond what this state saw
            super().on_trial_result(trial_id, result)

    def on_trial_complete(
        self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False
    ) -> None:
        if trial_id not in self._ot_trials:
            log.warning("trial %s is not one Optuna was asked for (restored state): not told", trial_id)
            return
        super().on_trial_complete(trial_id, result=result, error=error)

    def _config(self, index: int, cell: dict[str, Any]) -> dict[str, Any]:
        """The Tune trial config of configuration `index`: its cell and its seeds' trials."""
        from workers.spec.expand import search_trials

        trials = search_trials(self._parsed(), [cell], first=index)
        keys = [t.trial_key for t in trials]
        return {
            TRIAL_KEY: group_key_of(keys),
            INDEX: index,
            CELL: cell,
            MEMBERS: [
                {"trial_key": t.trial_key, "seed": t.seed, "replicate": t.replicate, "config": t.config}
                for t in trials
            ],
        }

    def _replayed(self, trial_id: str) -> dict[str, Any]:
        """Configuration `replay[0]` proposed again, as the trial `trial_id`: the same cell and
        trial keys (so the same MLflow runs), its Optuna trial handed over when still open."""
        index = self.replay.pop(0)
        old = self.ids[index]
        if old in self._ot_trials and old not in self._completed_trials:
            self._ot_trials[trial_id] = self._ot_trials.pop(old)
        self.ids[index] = trial_id
        log.warning("configuration %d proposed again: the restored experiment had no trial of it", index)
        return self._config(index, self.proposed[index])

    def suggest(self, trial_id: str) -> dict[str, Any] | None:
        from workers.spec import SpecError
        from workers.spec.search import decode

        if self.replay:
            return self._replayed(trial_id)
        spec = self._parsed()
        for _ in range(MAX_DUPLICATE_PROPOSALS):
            sampled = super().suggest(trial_id)
            if sampled is None:
                return None
            cell = decode(spec.distributions, sampled)
            ck = value_key(cell)
            if ck in self._proposed_keys:
                self._drop(trial_id, f"proposed again: {ck}")
                continue
            index = len(self.proposed)
            try:
                config = self._config(index, cell)
            except SpecError as e:
                self._drop(trial_id, f"refused by the family: {e}")
                continue
            self.proposed.append(cell)
            self.ids.append(trial_id)
            self._proposed_keys.add(ck)
            return config
        log.info("no new configuration in %d proposals: the space is exhausted", MAX_DUPLICATE_PROPOSALS)
        return Searcher.FINISHED  # type: ignore[return-value]  # Tune's "no more" sentinel


@dataclass(frozen=True)
class _TrialRef:
    """A trial by its id: what `_ById` hands a scheduler in place of Tune's trial object."""

    trial_id: str


class _ById:
    """Mixin: pass trials to the scheduler's bookkeeping by id, so its state pickles and still
    matches after a restore (Tune rebuilds its trial objects; ids stay)."""

    def on_trial_add(self, tune_controller: Any, trial: Any) -> None:
        super().on_trial_add(tune_controller, _TrialRef(trial.trial_id))  # type: ignore[misc]

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict[str, Any]) -> str:
        return super().on_trial_result(tune_controller, _TrialRef(trial.trial_id), result)  # type: ignore[misc,no-any-return]

    def on_trial_complete(self, tune_controller: Any, trial: Any, result: dict[str, Any]) -> None:
        super().on_trial_complete(tune_controller, _TrialRef(trial.trial_id), result)  # type: ignore[misc]

    def on_trial_remove(self, tune_controller: Any, trial: Any) -> None:
        super().on_trial_remove(tune_controller, _TrialRef(trial.trial_id))  # type: ignore[misc]


class MedianById(_ById, MedianStoppingRule):  # type: ignore[misc]
    """Tune's median stopping rule, keeping its trials by id (see `_ById`)."""


def make_scheduler(spec: Any, max_steps: int, first_report: int) -> Any:
    """Ray Tune's scheduler for ``spec.scheduler``, on the ``step`` each report carries; None
    for fifo (Tune's default). ``grace_steps`` defaults to the first report."""
    cfg = spec.scheduler
    if cfg is None or cfg.type == "fifo":
        return None
    grace = cfg.grace_steps or first_report
    if cfg.type == "asha":
        return ASHAScheduler(
            time_attr="step",
            max_t=max(max_steps, grace),
            grace_period=grace,
            reduction_factor=cfg.reduction_factor or 3,
        )
    return MedianById(
        time_attr="step", grace_period=grace, min_samples_required=cfg.min_samples or 3, hard_stop=True
    )


def _plain(value: Any) -> Any:
    """`value` with defaultdicts as dicts (their factories, lambdas, do not pickle)."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


class SchedulerState(Callback):  # type: ignore[misc]
    """Carries the scheduler's bookkeeping in the callbacks' state, which Tune saves with its
    experiment and restores into this callback (unpickled from the Tuner with the scheduler
    itself, so it refers to the scheduler the restored Tuner runs)."""

    def __init__(self, scheduler: Any) -> None:
        self.scheduler = scheduler

    def get_state(self) -> dict[str, Any] | None:
        if self.scheduler is None:
            return None
        return {"scheduler": _plain(copy.copy(self.scheduler.__dict__))}

    def set_state(self, state: dict[str, Any]) -> None:
        import collections

        saved = state.get("scheduler")
        if self.scheduler is None or not saved:
            return
        for name, value in saved.items():
            current = self.scheduler.__dict__.get(name)
            if isinstance(current, collections.defaultdict):
                current.clear()
                current.update(value)
            else:
                self.scheduler.__dict__[name] = value
        log.info("scheduler state restored (%s)", type(self.scheduler).__name__)


__all__ = [
    "MAX_DUPLICATE_PROPOSALS",
    "DabSearch",
    "SchedulerState",
    "group_key_of",
    "make_scheduler",
    "sampler_of",
]
