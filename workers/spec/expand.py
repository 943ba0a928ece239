"""Expanding a sweep spec into trials: cells in order, each trial's config assembled from
params and its cell, validated against the family's typed config, with errors reported at
the spec field the wrong value came from; and the keys that name values, cells and trials."""

from __future__ import annotations

import hashlib
import itertools
import json
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from workers.spec.errors import (
    FieldError,
    FieldPath,
    Issue,
    SpecError,
    get_path,
    issue_of_exception,
    line_of,
    short_repr,
    spec_error,
)

if TYPE_CHECKING:
    from workers.spec.schema import PaperValue, SweepSpec

#: Digits of the sha256 hex digest kept in a trial key (80 bits: collisions are negligible).
TRIAL_KEY_LENGTH = 20

# --------------------------------------------------------------------------- keys


def canonical_json(obj: Any) -> str:
    """The canonical JSON text of a JSON value: sorted keys, no spaces, UTF-8 as is.

    Python's float repr is the shortest round-tripping form on every platform, so equal
    configs give equal text on any machine. Non-finite numbers are refused (not JSON).
    """
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def normal_value(value: Any) -> Any:
    """JSON value with integral floats as ints, so 5 and 5.0 compare equal (bools stay bools)."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, Mapping):
        return {k: normal_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [normal_value(v) for v in value]
    return value


def value_key(value: Any) -> str:
    """A string equal for equal JSON values (``5 == 5.0``; ``true != 1``)."""
    return canonical_json(normal_value(value))


#: Config fields that choose how a trial computes, not what: its results do not depend on them
#: beyond float rounding (the sorting family's ``compile``: compiled steps equal eager ones
#: within float tolerance, tests/dab_core/experiments/test_sorting_compile.py). They are left out
#: of the trial key, so a trial run compiled is the same trial as one run eager (a resubmission
#: skips it), and adding such a field does not change the keys of sweeps already run.
EXECUTION_FIELDS = frozenset({"compile"})


def trial_key_of(config: Mapping[str, Any]) -> str:
    """The content key of a resolved trial config: sha256 of its canonical JSON, shortened,
    without the `EXECUTION_FIELDS`."""
    what = {k: v for k, v in config.items() if k not in EXECUTION_FIELDS}
    return hashlib.sha256(canonical_json(what).encode("utf-8")).hexdigest()[:TRIAL_KEY_LENGTH]


_BARE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\-/]*$")


def cell_key_of(cell: Mapping[str, Any]) -> str:
    """A short readable key of a cell, independent of key order: ``model=signum-dense,seq_len=5``.

    Strings are written bare when that is unambiguous, everything else as canonical JSON.
    """

    def fmt(v: Any) -> str:
        if isinstance(v, str) and _BARE.match(v) and v not in ("true", "false", "null"):
            return v
        return canonical_json(v)

    return ",".join(f"{k}={fmt(cell[k])}" for k in sorted(cell))


# --------------------------------------------------------------------------- trials


@dataclass(frozen=True)
class Trial:
    """One trial of a sweep.

    Attributes:
        index: position in the sweep's order (replicate-major).
        cell: the grid point (axis values, or an include cell's values); no seed.
        cell_key: `cell` as a short string independent of key order.
        replicate: index of the seed in the spec's seed list.
        seed: the seed (also ``config["seed"]``).
        config: the fully resolved, validated config (defaults filled in), JSON-able; what
            the trainable runs.
        trial_key: content hash of `config` (see `trial_key_of`): same config, same key.
    """

    index: int
    cell: dict[str, Any]
    cell_key: str
    replicate: int
    seed: int
    config: dict[str, Any]
    trial_key: str


#: config path -> the spec path its value was written at
Provenance = dict[tuple[str | int, ...], FieldPath]


@dataclass
class _Cell:
    values: dict[str, Any]
    origin: FieldPath  # ("grid",) for a product cell, ("include", j) for an include
    provenance: Provenance  # for the cell's own keys


def _iter_cells(spec: SweepSpec) -> Iterator[_Cell]:
    keys = list(spec.grid)
    excludes = [{k: value_key(v) for k, v in ex.items()} for ex in spec.exclude]
    vkeys = {k: [value_key(v) for v in spec.grid[k]] for k in keys}
    position = {k: i for i, k in enumerate(keys)}
    if keys or not spec.include:
        for combo in itertools.product(*(range(len(spec.grid[k])) for k in keys)):
            if any(all(vkeys[k][combo[position[k]]] == v for k, v in ex.items()) for ex in excludes):
                continue
            values = {k: spec.grid[k][i] for k, i in zip(keys, combo, strict=True)}
            prov: Provenance = {}
            for k, i in zip(keys, combo, strict=True):
                _provenance(prov, tuple(k.split(".")), ("grid", k, i), spec.grid[k][i])
            yield _Cell(values, ("grid",) if keys else ("params",), prov)
    for j, inc in enumerate(spec.include):
        prov = {}
        for k, v in inc.items():
            _provenance(prov, tuple(k.split(".")), ("include", j, k), v)
        yield _Cell(dict(inc), ("include", j), prov)


def _provenance(prov: Provenance, cfg: tuple[str | int, ...], spec: FieldPath, value: Any) -> None:
    prov[cfg] = spec
    if isinstance(value, Mapping):
        for k, v in value.items():
            _provenance(prov, (*cfg, k), (*spec, k), v)


def _set_path(config: dict[str, Any], parts: Sequence[str], value: Any) -> bool:
    node = config
    for p in parts[:-1]:
        nxt = node.setdefault(p, {})
        if not isinstance(nxt, dict):
            return False
        node = nxt
    node[parts[-1]] = value
    return True


def _spec_path(loc: FieldPath, raw: Mapping[str, Any], prov: Provenance) -> FieldPath | None:
    """Where in the spec the config value at `loc` was written (None: nowhere, a default)."""
    for n in range(len(loc), 0, -1):
        head = loc[:n]
        if head in prov:
            found, node = get_path(raw, head)
            rest: list[str | int] = []
            for part in loc[n:]:
                ok, node = get_path(node, [part]) if found else (False, None)
                if not ok:
                    break
                rest.append(part)
            return (*prov[head], *rest)
    return None


class _Expander:
    """Builds and validates the trials of one spec, reporting errors at spec paths."""

    def __init__(self, spec: SweepSpec) -> None:
        from workers.spec.schema import family_of

        self.spec = spec
        try:
            self.family = family_of(spec.experiment)
        except FieldError as e:
            raise self.error(e.message, e.rel_path) from None
        self.fields = list(self.family.config_cls.model_fields)
        self.base_prov: Provenance = {("experiment",): ("experiment",)}
        for k, v in spec.params.items():
            _provenance(self.base_prov, (k,), ("params", k), v)

    def error(self, message: str, path: FieldPath, cell: str | None = None) -> SpecError:
        return SpecError(
            message, path=path, source=self.spec.source, line=line_of(self.spec._lines, path), cell=cell
        )

    def raw_config(self, cell: _Cell, cell_key: str) -> tuple[dict[str, Any], Provenance]:
        raw = json.loads(json.dumps(self.spec.params))  # a deep copy of plain JSON data
        raw["experiment"] = self.spec.experiment
        prov = dict(self.base_prov)
        for k, v in cell.values.items():
            parts = k.split(".")
            for p in [p for p in prov if p[: len(parts)] == tuple(parts)]:
                del prov[p]  # a cell value replaces whatever params set at or below it
            if not _set_path(raw, parts, json.loads(json.dumps(v))):
                raise self.error(
                    f"cannot set {k!r}: {'.'.join(parts[:-1])} is not a mapping in params",
                    (*cell.origin, k) if cell.origin[0] == "include" else ("grid", k),
                    cell_key,
                )
        prov.update(cell.provenance)
        return raw, prov

    def place(self, issue: Issue, cell: _Cell, raw: Mapping[str, Any], prov: Provenance) -> FieldPath:
        """The spec path of a problem of the config `raw`: where its value was written; for a
        rule over several fields, the first of them that the cell sets, else the first that
        params sets; for a name, where it was written; else the cell itself."""
        if issue.blame:
            placed = [p for p in (_spec_path(f, raw, prov) for f in issue.blame) if p is not None]
            in_cell = [p for p in placed if p[0] != "params"]
            if in_cell or placed:
                return (in_cell or placed)[0]
        if issue.path:
            found = _spec_path(issue.path, raw, prov)
            if found is not None:
                return found
        if issue.kind == "missing":
            return ("params",)
        if issue.name is not None:
            for cfg_path, spec_path in prov.items():
                ok, value = get_path(raw, cfg_path)
                if cfg_path[-1] == issue.name or (ok and value == issue.name):
                    return spec_path
        return cell.origin

    def validate(self, raw: dict[str, Any], cell: _Cell, cell_key: str, prov: Provenance) -> dict[str, Any]:
        try:
            parsed = self.family.config_cls.model_validate_json(canonical_json(raw), strict=True)
        except ValidationError as e:
            raise spec_error(
                e,
                model=self.family.config_cls,
                data=raw,
                source=self.spec.source,
                lines=self.spec._lines,
                place=lambda issue: self.place(issue, cell, raw, prov),
                owner=self.spec.experiment,
                cell=cell_key,
            ) from None
        except (TypeError, ValueError, KeyError) as e:
            # a family's validator let a non-validation error through (a library error such
            # as UnknownNameError or HardParamTypeError, located by its attributes, or any
            # other): still the spec's mistake
            issue = issue_of_exception(e, (), raw)
            raise self.error(issue.message, self.place(issue, cell, raw, prov), cell_key) from None
        return parsed.model_dump(mode="json")

    def trials(self) -> list[Trial]:
        spec = self.spec
        seeds = spec.seeds
        by_cell: list[list[Trial]] = []
        seen: dict[str, tuple[str, int]] = {}
        for cell in _iter_cells(spec):
            ck = cell_key_of(cell.values)
            raw, prov = self.raw_config(cell, ck)
            row = []
            for r, seed in enumerate(seeds):
                raw["seed"] = seed
                prov[("seed",)] = ("replicates",) if isinstance(spec.replicates, int) else ("replicates", r)
                config = self.validate(raw, cell, ck, prov)
                key = trial_key_of(config)
                if key in seen:
                    other, other_seed = seen[key]
                    raise self.error(
                        f"resolves to the same trial as cell {other or '(params only)'} (seed {other_seed}): "
                        "every trial of a sweep must differ",
                        cell.origin,
                        ck,
                    )
                seen[key] = (ck, seed)
                row.append(Trial(0, dict(cell.values), ck, r, seed, config, key))
            self.check_stacked(row[0].config, ck)  # a cell's seeds differ in seed alone
            by_cell.append(row)
        self.check_excludes()
        self.check_paper([row[0].config for row in by_cell])
        out: list[Trial] = []
        for r in range(len(seeds)):
            for row in by_cell:
                t = row[r]
                out.append(Trial(len(out), t.cell, t.cell_key, t.replicate, t.seed, t.config, t.trial_key))
        return out

    def search_trials(self, cells: Sequence[Mapping[str, Any]], first: int = 0) -> list[Trial]:
        """The trials of a search's proposed configurations: cell ``first + i`` is `cells[i]`
        (searched field -> value); each is trained with every seed, so its trials are indexed
        configuration-major (``index = configuration * replicates + replicate``)."""
        seeds = self.spec.seeds
        out: list[Trial] = []
        for i, values in enumerate(cells):
            prov: Provenance = {}
            for k, v in values.items():
                _provenance(prov, tuple(k.split(".")), ("space", k), v)
            cell = _Cell(dict(values), ("space",), prov)
            ck = cell_key_of(cell.values)
            raw, prov = self.raw_config(cell, ck)
            for r, seed in enumerate(seeds):
                raw["seed"] = seed
                prov[("seed",)] = (
                    ("replicates",) if isinstance(self.spec.replicates, int) else ("replicates", r)
                )
                config = self.validate(raw, cell, ck, prov)
                index = (first + i) * len(seeds) + r
                out.append(Trial(index, dict(values), ck, r, seed, config, trial_key_of(config)))
        return out

    def check_space(self) -> None:
        """Every end of every searched range, and every value of every choice, makes a valid
        config (the other fields at their first end): a range past what a field allows is
        refused here, at ``space.<field>.<kind>[i]``, not when the searcher first samples it."""
        space = self.spec.distributions
        first = {k: d.ends()[0][1] for k, d in space.items()}
        for k, d in space.items():
            for pos, value in d.ends():
                values = {**first, k: value}
                prov: Provenance = {}
                for name, v in values.items():
                    at: FieldPath = ("space", name, space[name].kind, pos if name == k else 0)
                    _provenance(prov, tuple(name.split(".")), at, v)
                cell = _Cell(values, ("space", k), prov)
                ck = cell_key_of(values)
                raw, prov = self.raw_config(cell, ck)
                raw["seed"] = self.spec.seeds[0]
                self.check_stacked(self.validate(raw, cell, ck, prov), ck)

    def check_stacked(self, config: Mapping[str, Any], cell_key: str) -> None:
        """With ``execution.seeds: stacked``, the cell's config must be one `dab_core.stacked`
        can stack (its model, estimator and hard function), refused at ``execution.seeds``."""
        if self.spec.execution.seeds != "stacked":
            return
        from dab_core.experiments import parse_config
        from dab_core.stacked import check_stackable

        try:
            check_stackable([parse_config(config)])
        except ValueError as e:
            why = str(e).replace("fit_stacked", "stacked seeds").replace(" (use fit_group)", "")
            raise self.error(
                f"{why}; use execution.seeds: separate", ("execution", "seeds"), cell_key
            ) from None

    def check_excludes(self) -> None:
        for j, ex in enumerate(self.spec.exclude):
            for k, v in ex.items():
                if value_key(v) not in {value_key(x) for x in self.spec.grid[k]}:
                    raise self.error(
                        f"{short_repr(v)} is not a value of grid.{k}, so this exclude would remove nothing",
                        ("exclude", j, k),
                    )

    def check_paper(self, configs: Sequence[Mapping[str, Any]]) -> None:
        claimed: dict[tuple[int, str], int] = {}
        for j, entry in enumerate(self.spec.paper):
            for k in entry.match:
                if configs and not any(get_path(c, k.split("."))[0] for c in configs):
                    known = ", ".join(self.fields)
                    raise self.error(
                        f"{k!r} is not a config field of experiment {self.spec.experiment!r}; known: {known}",
                        ("paper", j, "match", k),
                    )
            metric = entry.metric or self.spec.resolved_metric
            hits = [i for i, c in enumerate(configs) if _matches(entry.match, c)]
            if not hits:
                raise self.error("matches no cell of this sweep", ("paper", j, "match"))
            for i in hits:
                if (i, metric) in claimed:
                    raise self.error(
                        f"gives {metric} for a cell that paper[{claimed[(i, metric)]}] already gives it for",
                        ("paper", j),
                    )
                claimed[(i, metric)] = j


def _matches(match: Mapping[str, Any], config: Mapping[str, Any]) -> bool:
    for k, v in match.items():
        ok, value = get_path(config, k.split("."))
        if not ok or value_key(value) != value_key(v):
            return False
    return True


def expand(spec: SweepSpec) -> list[Trial]:
    """Every trial of `spec`, in order, each config validated against its family.

    A search has no trials before its searcher proposes them: its space is checked against the
    family (`_Expander.check_space`) and the list is empty; `search_trials` gives the trials of
    the configurations it proposed.

    Raises:
        SpecError: at the spec path of the first wrong value, naming the trial's cell; also
            when two trials resolve to the same config.
    """
    expander = _Expander(spec)
    if spec.search is not None:
        expander.check_space()
        return []
    return expander.trials()


def search_trials(spec: SweepSpec, cells: Sequence[Mapping[str, Any]], first: int = 0) -> list[Trial]:
    """The trials of a search's configurations `cells` (searched field -> value), the first of
    them configuration number `first`; see `_Expander.search_trials`.

    Raises:
        SpecError: a value the family's config refuses (a rule across fields the space's ends
            did not show), at ``space.<field>``.
    """
    return _Expander(spec).search_trials(cells, first)


def paper_values(spec: SweepSpec, config: Mapping[str, Any]) -> list[PaperValue]:
    """The paper's numbers for the cell of `config` (a trial's resolved config)."""
    return [p for p in spec.paper if _matches(p.match, config)]


__all__ = [
    "TRIAL_KEY_LENGTH",
    "Trial",
    "canonical_json",
    "cell_key_of",
    "expand",
    "paper_values",
    "search_trials",
    "trial_key_of",
    "value_key",
]
