"""What running a spec or suite would request (trials, cells, resources, the paper's numbers
per cell), without running anything."""

from __future__ import annotations

from typing import Any

from workers.spec.expand import expand, paper_values
from workers.spec.schema import MAX_TRIALS, SweepSpec, SweepSuite
from workers.spec.text import MAX_SPEC_BYTES


def _search_preview(spec: SweepSpec) -> dict[str, Any]:
    """A search's budget: at most this many configurations and trials (a scheduler stops some
    early, and a small discrete space can run out first), so its hours are upper bounds."""
    assert spec.search is not None
    scheduler = spec.scheduler.model_dump() if spec.scheduler is not None else {"type": "fifo"}
    return {
        "algorithm": spec.search.algorithm,
        "seed": spec.search.seed,
        "max_configurations": spec.num_configs,
        "max_trials": spec.num_configs * len(spec.seeds),
        "space": {
            k: {d.kind: list(d.choices) if d.kind == "choice" else [d.low, d.high]}
            for k, d in spec.distributions.items()
        },
        "scheduler": scheduler,
        "upper_bound": True,
    }


def _file_preview(file: str, spec: SweepSpec) -> dict[str, Any]:
    trials = expand(spec)
    cells: dict[str, dict[str, Any]] = {}
    for t in trials:
        c = cells.setdefault(
            t.cell_key,
            {
                "cell_key": t.cell_key,
                "cell": t.cell,
                "trials": 0,
                "seeds": [],
                "trial_keys": [],
                "paper": [
                    {
                        "metric": p.metric or spec.resolved_metric,
                        "value": p.value,
                        "std": p.std,
                        "source": p.source,
                    }
                    for p in paper_values(spec, t.config)
                ],
            },
        )
        c["trials"] += 1
        c["seeds"].append(t.seed)
        c["trial_keys"].append(t.trial_key)
    n, res, hours = len(trials), spec.resources, spec.duration_hours
    search = None
    if spec.search is not None:  # no trials before it runs: its budget, at most
        search = _search_preview(spec)
        n = search["max_trials"]
    out = {
        "file": file,
        "name": spec.name,
        "experiment": spec.experiment,
        "description": spec.description,
        "metric": spec.resolved_metric,
        "mode": spec.resolved_mode,
        "trials": n,
        "cells": len(cells),
        "replicates": len(spec.seeds),
        "seeds": spec.seeds,
        "resources": {
            "per_trial": res.model_dump(),
            "cpu": n * res.cpu,
            "gpu": n * res.gpu,
            "duration_hours": hours,
            "cpu_hours": n * res.cpu * hours if hours is not None else None,
            "gpu_hours": n * res.gpu * hours if hours is not None else None,
        },
        "limits": spec.limits.model_dump(),
        "cell_list": list(cells.values()),
    }
    if search is not None:
        out["cells"] = search["max_configurations"]
        out["search"] = search
    return out


def preview(spec: SweepSpec | SweepSuite) -> dict[str, Any]:
    """A JSON-able summary of what running `spec` would request, without running anything.

    Returns:
        ``{"kind", "name", "source", "files": [per file: trials, cells, replicates,
        resources, cell_list, ...], "total": {trials, distinct_trials, cells, cpu, gpu,
        cpu_hours, gpu_hours, files_without_duration}, "limits": {...}}``. Trials that two files
        share (same trial_key) are counted in each file's ``trials`` and once in
        ``distinct_trials``: a run skips the second.

    Raises:
        SpecError: from expanding any of the specs.
    """
    members = spec.specs if isinstance(spec, SweepSuite) else [(spec.source, spec)]
    files = [_file_preview(f, s) for f, s in members]
    keys = {k for f in files for c in f["cell_list"] for k in c["trial_keys"]}
    searched = sum(f["search"]["max_trials"] for f in files if "search" in f)  # proposed as they run
    timed = [f for f in files if f["resources"]["duration_hours"] is not None]
    return {
        "kind": "suite" if isinstance(spec, SweepSuite) else "spec",
        "name": spec.name,
        "source": spec.source,
        "description": spec.description,
        "files": files,
        "total": {
            "trials": sum(f["trials"] for f in files),
            "distinct_trials": len(keys) + searched,
            "cells": sum(f["cells"] for f in files),
            "cpu": sum(f["resources"]["cpu"] for f in files),
            "gpu": sum(f["resources"]["gpu"] for f in files),
            "cpu_hours": sum(f["resources"]["cpu_hours"] for f in timed) if timed else None,
            "gpu_hours": sum(f["resources"]["gpu_hours"] for f in timed) if timed else None,
            "files_without_duration": [f["file"] for f in files if f not in timed],
        },
        "limits": {"max_trials": MAX_TRIALS, "max_spec_bytes": MAX_SPEC_BYTES},
    }


__all__ = ["preview"]
