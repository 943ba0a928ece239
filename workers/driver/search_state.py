"""A search's saved Tune state made consistent before a driver restores it.

Why: Tune keeps a search's experiment in three files, each named by the driver session that
wrote it: the trials (``experiment_state-*.json``), the search generator's count of trials it
made (``search_gen_state-*.json``, with the `ConcurrencyLimiter`'s live trials) and the
searcher (``searcher-state-*.pkl``: `DabSearch`, its Optuna study inside). At every step of its
loop (``TUNE_GLOBAL_CHECKPOINT_S=0`` for a search) Tune writes all three into a local staging
directory, and a background thread copies that directory to the sweep's storage while the loop
goes on writing the next save into it. Seen here: the copy failing on a searcher file that the
next save had already renamed (``FileNotFoundError ... .tmp-searcher-state-...pkl``). So the copy
on storage can hold files of different saves, and a driver killed then leaves it that way.

Restored as it is, a searcher state newer than the trials' state has proposed configurations
that no restored trial runs, and a count that says the trials were made: Tune ends the search
with exit 0 and those configurations never run (CI saw this once: the runs of the first 3 of 6
configurations and no more). The other way round, trials newer than the searcher, the searcher
would propose a configuration again that a restored trial already runs.

The repair takes the trials' file as the truth, since it is what Tune resumes:

* proposals with no trial are proposed again first (`DabSearch.replay`): the same cell, the same
  trial keys and so the same MLflow runs; their open Optuna trial goes with them;
* trials beyond the searcher's proposals are added to its proposals, so none is proposed twice
  (Optuna is not told their results: `DabSearch` skips trials it was not asked for);
* the generator's count is the number of restored trials, and the concurrency limiter forgets
  live trials that were not restored (they would hold its slots for good).

The newest file of each kind is the one Tune restores (the greatest name, as Tune picks it).
Files are rewritten only when they disagree, each whole (`Location.write_bytes`).
"""

from __future__ import annotations

import json
import logging
import pickle
from typing import Any

from workers.spec.expand import value_key
from workers.storage import Location
from workers.trainable import CELL, INDEX

log = logging.getLogger("workers.driver")

STATE_PREFIX = "experiment_state-"
GENERATOR_PREFIX = "search_gen_state-"
SEARCHER_PREFIX = "searcher-state-"
LIMITER = "name:ConcurrencyLimiter"


def _newest(names: list[str], prefix: str) -> str | None:
    matching = [n for n in names if n.startswith(prefix)]
    return max(matching) if matching else None


def saved_trials(experiment: Location, name: str) -> dict[int, tuple[str, dict[str, Any]]]:
    """The restored trials of a search: configuration index -> (Tune trial id, cell).

    Plain JSON: the fields Tune stores pickled (``CLOUDPICKLE_FALLBACK``) stay encoded; only the
    trial ids and configs, plain JSON, are read.
    """
    state = json.loads(experiment.child(name).read_bytes())
    out: dict[int, tuple[str, dict[str, Any]]] = {}
    for json_state, _metadata in state["trial_data"]:
        trial = json.loads(json_state)
        config = trial.get("config") or {}
        if INDEX in config:
            out[int(config[INDEX])] = (str(trial["trial_id"]), dict(config[CELL]))
    return out


def repair_saved_search(experiment: Location) -> list[str]:
    """Make the saved search at `experiment` consistent (see the module's docstring).

    Returns:
        What was repaired, one note each (empty when the files agree or are not there).
    """
    import ray.cloudpickle as cloudpickle

    names = experiment.files() if experiment.is_dir() else []
    state_name = _newest(names, STATE_PREFIX)
    generator_name = _newest(names, GENERATOR_PREFIX)
    searcher_name = _newest(names, SEARCHER_PREFIX)
    if not (state_name and generator_name and searcher_name):
        return []
    from workers.driver.search import DabSearch

    try:
        trials = saved_trials(experiment, state_name)
        generator = cloudpickle.loads(experiment.child(generator_name).read_bytes())
        # read as `DabSearch.restore` reads it (a state from before `ids` is aligned there)
        searcher = DabSearch.__new__(DabSearch)
        searcher.__setstate__(pickle.loads(experiment.child(searcher_name).read_bytes()))
    except Exception as e:  # unreadable here is Tune's to report as it restores: left as it is
        log.warning("the saved search at %s was not checked (%s: %s)", experiment.uri, type(e).__name__, e)
        return []
    proposed = searcher.proposed
    notes: list[str] = []
    searcher_changed = generator_changed = False

    lost = [i for i in range(len(proposed)) if i not in trials]
    if lost != searcher.replay:
        searcher.replay = lost
        searcher_changed = True
        if lost:
            notes.append(
                f"Tune's saved search had proposed configuration(s) {lost} without their trials "
                "(its state files were copied from different saves): they are proposed again"
            )
    added = []
    while len(proposed) in trials:  # trials beyond the proposals, up to the first gap
        trial_id, cell = trials[len(proposed)]
        added.append(len(proposed))
        proposed.append(cell)
        searcher.ids.append(trial_id)
        searcher._proposed_keys.add(value_key(cell))
    if added:
        searcher_changed = True
        notes.append(
            f"Tune's saved trials held configuration(s) {added} that its saved searcher had not "
            "proposed: the searcher now knows them (Optuna is not told their results)"
        )

    if generator["counter"] != len(trials):
        generator["counter"] = len(trials)
        generator_changed = True
    if lost and generator.get("finished"):
        generator["finished"] = False
        generator_changed = True
    limiter = generator.get(LIMITER)
    if limiter is not None:
        restored_ids = {trial_id for trial_id, _ in trials.values()}
        live = {t for t in limiter["live_trials"] if t in restored_ids}
        if live != limiter["live_trials"]:
            limiter["live_trials"] = live
            limiter["num_unfinished_live_trials"] = len(live)
            generator_changed = True

    if searcher_changed:
        experiment.child(searcher_name).write_bytes(
            pickle.dumps(searcher.__getstate__())
        )  # as DabSearch.save
    if generator_changed:
        experiment.child(generator_name).write_bytes(cloudpickle.dumps(generator))
    for note in notes:
        log.warning("%s", note)
    return notes


__all__ = ["repair_saved_search", "saved_trials"]
