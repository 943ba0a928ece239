"""A family the service does not ship, installed as a plugin, end to end over REST: its own metric
(``toy_error``: lower is better, raw, read as each run's best) drives the results.

The toy family (`tests/toy_family.py`) is written into a temporary directory as a module with a
``*.dist-info`` whose ``entry_points.txt`` names it in the ``dab_core.experiments`` group, and
the directory goes on PYTHONPATH before the service and its Ray head start: the Ray driver and
workers inherit it and load the plugin as any installed one.
"""

from __future__ import annotations

import importlib
import os
import statistics
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from mlflow import MlflowClient

from dab_core.experiments import experiments
from tests import toy_family

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
PLUGIN = "dab_toy_plugin"
SPEC = {
    "name": "toy-e2e",
    "experiment": "toy",
    "params": {"steps": 4, "eval_every": 1, "num_threads": 1},
    "grid": {"offset": [0.0, 2.0]},
    "replicates": 2,
    # no metric, no mode: both come from the toy family's declaration
    "resources": {"cpu": 1},
    "limits": {"max_concurrent": 2},
}


@pytest.fixture(scope="module", autouse=True)
def toy_plugin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The toy family as an installed plugin, for this process and every one it starts.

    Module-scoped and autouse, so it is set up before the module-scoped `stack` starts the
    service and its Ray head, and torn down after they stop."""
    root = tmp_path_factory.mktemp("plugin")
    source = (ROOT / "tests" / "toy_family.py").read_text()
    (root / f"{PLUGIN}.py").write_text(source + "\n\nregister()\n")
    dist = root / f"{PLUGIN}-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {PLUGIN}\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(f"[dab_core.experiments]\n{toy_family.NAME} = {PLUGIN}\n")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PYTHONPATH", os.pathsep.join(p for p in (str(root), os.environ.get("PYTHONPATH")) if p))
        mp.syspath_prepend(str(root))
        # This process's registry may have read its entry points already: import the plugin
        # here (a later entry-point load finds it imported and registers nothing twice).
        importlib.import_module(PLUGIN)
        try:
            yield root
        finally:
            experiments.remove(toy_family.NAME)
            sys.modules.pop(PLUGIN, None)


def test_a_plugin_familys_metric_drives_results_over_rest(stack: Any, wait_for: Any) -> None:
    _, settings, http = stack
    r = http.post("/v1/sweeps", json=SPEC)
    assert r.status_code == 202, r.text
    sid = r.json()["id"]
    done = wait_for(http, sid, lambda s: s["state"] in ("finished", "failed", "cancelled"))
    assert done["state"] == "finished", done
    assert done["counts"]["finished"] == 4

    # MLflow holds each run's last value, which is above its best: toy_error rises at the end.
    client = MlflowClient(settings.tracking_uri)
    runs = client.search_runs([done["mlflow_experiment_id"]], "tags.`dab.role` = 'trial'", max_results=100)
    finals = {
        (r.data.tags["dab.cell_key"], int(r.data.tags["dab.seed"])): r.data.metrics["toy_error"] for r in runs
    }
    assert finals == {
        (f"offset={off}", seed): pytest.approx(toy_family.expected(off, seed, "final"))
        for off in (0.0, 2.0)
        for seed in (0, 1)
    }

    res = http.get(f"/v1/sweeps/{sid}/results").json()
    assert res["metrics"] == ["toy_error"] and res["agg"] is None
    assert res["metric_info"] == {
        "toy_error": {"mode": "min", "unit": "raw", "display": "toy error", "agg": "best"}
    }
    assert [c["cell_key"] for c in res["cells"]] == ["offset=0.0", "offset=2.0"]
    for cell, off in zip(res["cells"], (0.0, 2.0), strict=True):
        m = cell["metrics"]["toy_error"]
        minima = {seed: toy_family.expected(off, seed, "best") for seed in (0, 1)}
        assert m["n"] == 2 and dict(zip(m["seeds"], m["values"], strict=True)) == pytest.approx(minima)
        assert m["mean"] == pytest.approx(statistics.fmean(minima.values()))
        assert m["std"] == pytest.approx(statistics.stdev(minima.values()))
        assert (m["min"], m["max"]) == (
            pytest.approx(min(minima.values())),
            pytest.approx(max(minima.values())),
        )
    # Welch: t = 2 / sqrt(0.005 / 2 + 0.005 / 2) = sqrt(800) on 2 degrees of freedom, where the
    # two-sided p is 1 - t / sqrt(t^2 + 2).
    assert res["cells"][1]["metrics"]["toy_error"]["p_value"] == pytest.approx(
        1 - 800**0.5 / 802**0.5, rel=1e-6
    )

    final = http.get(f"/v1/sweeps/{sid}/results", params={"agg": "final"}).json()
    assert final["agg"] == "final" and final["metric_info"]["toy_error"]["agg"] == "final"
    assert final["cells"][0]["metrics"]["toy_error"]["mean"] == pytest.approx(
        statistics.fmean(toy_family.expected(0.0, s, "final") for s in (0, 1))
    )

    md = http.get(f"/v1/sweeps/{sid}/results", params={"format": "markdown"}).text
    assert "%" not in md
    assert "| cell | toy error, minimum over each run's evaluations: mean ± std |" in md
    assert "| offset=0.0 | 0.3000 ± 0.0707 | 2/2 | 0.25 | 0.35 |" in md
    assert "| offset=2.0 | 2.3000 ± 0.0707 | 2/2 | 2.25 | 2.35 |" in md
