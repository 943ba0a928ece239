"""The public face of `workers.spec`: every name importable before the package split still is,
and importing it stays cheap."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import workers.spec

ROOT = Path(__file__).resolve().parents[3]

#: What `from workers.spec import ...` gave before the split into a package (DEFAULT_METRICS
#: went: the families declare their metrics in dab_core).
PUBLIC = [
    "MAX_GRID_AXES",
    "MAX_REPLICATES",
    "MAX_SPEC_BYTES",
    "MAX_TRIALS",
    "TRIAL_KEY_LENGTH",
    "Limits",
    "PaperValue",
    "Resources",
    "SpecError",
    "SweepSpec",
    "SweepSuite",
    "Trial",
    "canonical_json",
    "cell_key_of",
    "count_cells",
    "count_trials",
    "expand",
    "load_spec",
    "paper_values",
    "parse_spec",
    "preview",
    "trial_key_of",
]


def test_every_public_name_is_still_there() -> None:
    assert set(PUBLIC) <= set(workers.spec.__all__)
    assert all(hasattr(workers.spec, name) for name in workers.spec.__all__)
    assert not hasattr(workers.spec, "DEFAULT_METRICS")


def test_import_is_cheap() -> None:
    code = "import sys, workers.spec; print(sorted(m for m in ('torch', 'fastapi', 'ray', 'mlflow', 'dab_core') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "[]"
