"""The direct local runner behind `make run` (before the service routes it through REST)."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from dab_core import run_trial
from workers.local import CHECKPOINT_DIR, RESULT_FILE, main, results_table, run_sweep
from workers.spec import expand, parse_spec

SPEC = """
name: tiny-local
experiment: sorting
params: {seq_len: 3, steps: 30, eval_every: 10, batch_size: 32, train_size: 0, test_size: 100,
         dense_hidden: [8, 8], approximator_hidden: [8], num_threads: 1}
grid: {model: [signum-dense, elu-dense]}
replicates: 1
metric: test_all_or_none
mode: max
paper:
  - {match: {model: signum-dense}, value: 0.993}
"""


def test_runs_every_trial_once_then_skips_finished_ones(tmp_path: Path) -> None:
    spec = parse_spec(SPEC)
    out = io.StringIO()
    results = run_sweep(spec, tmp_path, jobs=1, out=out)
    trials = expand(spec)
    assert set(results) == {t.trial_key for t in trials}
    for t in trials:
        saved = json.loads((tmp_path / "local" / "tiny-local" / t.trial_key / RESULT_FILE).read_text())
        assert saved["config"] == t.config and saved["metrics"]["step"] == 30
    assert "running 2" in out.getvalue()
    again = io.StringIO()
    assert run_sweep(spec, tmp_path, jobs=1, out=again) == results
    assert "2 already finished, running 0" in again.getvalue()
    table = results_table(spec, results)
    assert "| model=signum-dense |" in table and "| 99.3 |" in table


def test_an_interrupted_trial_resumes_from_its_kept_checkpoint(tmp_path: Path) -> None:
    spec = parse_spec(SPEC)
    trial = expand(spec)[0]
    straight = run_trial(trial.config)

    tdir = tmp_path / "local" / "tiny-local" / trial.trial_key
    tdir.mkdir(parents=True)

    def stop_at_20(metrics: dict[str, float], ckpt: str | None) -> None:
        if metrics["step"] == 20:
            assert ckpt is not None
            shutil.copytree(ckpt, tdir / CHECKPOINT_DIR)
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_trial(trial.config, report=stop_at_20)
    results = run_sweep(spec, tmp_path, jobs=1, out=io.StringIO())
    resumed = results[trial.trial_key]
    assert resumed["step"] == 30
    assert resumed["test_all_or_none"] == straight["test_all_or_none"]
    assert resumed["train_loss"] == pytest.approx(straight["train_loss"], rel=1e-5)


def test_cli_errors(tmp_path: Path, capsys: Any) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(SPEC.replace("signum-dense, elu-dense", "signum-dnese"))
    assert main([str(bad), "--state-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "bad.yaml" in err and "grid.model[0]" in err
