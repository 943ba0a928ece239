"""Sweep specs: the schema, loading (YAML or JSON), expansion into trials, and preview.

A spec names an experiment family, fixed `params`, `grid` axes whose cartesian product gives
the cells, `include`/`exclude` cells, and `replicates` (seeds). `expand` turns it into an
ordered list of `Trial`, each with its fully resolved, validated config and a content hash
(`trial_key`) that is the same on any machine for the same config: a later sweep can skip the
trials a former one already finished. The format is documented in ``docs/configs.md``.

The package imports neither FastAPI nor Ray, and imports `dab_core` (hence torch) only when a
spec is validated or expanded, so the service, the workers and the CLI can all import it
cheaply. Its modules, by concern: `schema` (the models and their rules), `count` (trial
counts by arithmetic), `load` (text, limits, files and suites), `expand` (trials and keys),
`errors` (`SpecError` and the translation of validation errors), `preview`.

Rules beyond the field types:

* Values are not coerced: ``"5"`` where an integer is expected is an error, as in typed JSON.
* A field is either fixed (``params``) or swept (a ``grid`` axis), never both; ``include``
  cells may override ``params``. Grid, include and exclude keys may be dotted paths into
  nested config fields (``hard_params.eps``). ``experiment`` and ``seed`` are set by the
  spec itself (top-level ``experiment``, ``replicates``), never in params or cells.
* ``metric`` defaults to the family's declared default metric (`dab_core.metrics`), ``mode``
  to the direction the family declares for the metric (``max`` for an undeclared one).
* Cells: the grid's product in axis order (values in list order), minus every product cell
  that an ``exclude`` entry matches (an exclude lists some axes and one value each), then the
  ``include`` cells in their order. A spec without grid axes has one cell (params alone)
  when it has no includes, and exactly its includes otherwise.
* Trials: every cell times every seed; ordered replicate-major (seed 0 of every cell, then
  seed 1, ...) so that a sweep stopped early holds whole replicates of the grid.
* Limits: `MAX_SPEC_BYTES` of spec text, `MAX_DEPTH` levels of nesting, `MAX_NODES` values
  once YAML aliases are expanded, `MAX_TRIALS` trials (or ``limits.max_trials`` if lower),
  counted arithmetically before anything is expanded; and the bounds of each family's
  config fields (``steps`` at most ``dab_core.config.MAX_STEPS``, ...).
"""

from __future__ import annotations

from workers.spec.count import count_cells, count_trials
from workers.spec.errors import FieldPath, SpecError
from workers.spec.expand import (
    TRIAL_KEY_LENGTH,
    Trial,
    canonical_json,
    cell_key_of,
    expand,
    paper_values,
    trial_key_of,
)
from workers.spec.load import MAX_SUITE_MEMBERS, load_spec, parse_spec, parse_suite, suite_document
from workers.spec.preview import preview
from workers.spec.schema import (
    MAX_GRID_AXES,
    MAX_REPLICATES,
    MAX_TRIALS,
    Limits,
    Mode,
    PaperValue,
    Resources,
    SweepSpec,
    SweepSuite,
)
from workers.spec.text import MAX_DEPTH, MAX_NODES, MAX_SPEC_BYTES

__all__ = [
    "MAX_DEPTH",
    "MAX_GRID_AXES",
    "MAX_NODES",
    "MAX_REPLICATES",
    "MAX_SPEC_BYTES",
    "MAX_SUITE_MEMBERS",
    "MAX_TRIALS",
    "TRIAL_KEY_LENGTH",
    "FieldPath",
    "Limits",
    "Mode",
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
    "parse_suite",
    "preview",
    "suite_document",
    "trial_key_of",
]
