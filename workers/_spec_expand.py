"""Expanding a sweep spec into trials (private; the public names are re-exported by
`workers.spec`): cells in order, each trial's config assembled from params and its cell,
validated against the family's typed config, with errors reported at the spec field the
wrong value came from."""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from workers._spec_common import (
    FieldPath,
    SpecError,
    canonical_json,
    cell_key_of,
    format_path,
    get_path,
    line_of,
    literal_known,
    short_repr,
    suggest,
    trial_key_of,
    value_key,
)

if TYPE_CHECKING:
    from dab_core.experiments import ExperimentFamily
    from workers.spec import PaperValue, SweepSpec


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


@dataclass
class _Cell:
    values: dict[str, Any]
    origin: FieldPath  # ("grid",) for a product cell, ("include", j) for an include
    provenance: dict[tuple[str, ...], FieldPath]  # config path -> spec path, for the cell's keys


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
            prov: dict[tuple[str, ...], FieldPath] = {}
            for k, i in zip(keys, combo, strict=True):
                _provenance(prov, tuple(k.split(".")), ("grid", k, i), spec.grid[k][i])
            yield _Cell(values, ("grid",) if keys else ("params",), prov)
    for j, inc in enumerate(spec.include):
        prov = {}
        for k, v in inc.items():
            _provenance(prov, tuple(k.split(".")), ("include", j, k), v)
        yield _Cell(dict(inc), ("include", j), prov)


def _provenance(
    prov: dict[tuple[str, ...], FieldPath], cfg: tuple[str, ...], spec: FieldPath, value: Any
) -> None:
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


class _Expander:
    """Builds and validates the trials of one spec, reporting errors at spec paths."""

    def __init__(self, spec: SweepSpec) -> None:
        self.spec = spec
        self.family = self._family()
        self.fields = list(self.family.config_cls.model_fields)
        self.base_prov: dict[tuple[str, ...], FieldPath] = {("experiment",): ("experiment",)}
        for k, v in spec.params.items():
            _provenance(self.base_prov, (k,), ("params", k), v)

    def error(self, message: str, path: FieldPath, cell: str | None = None, **extra: Any) -> SpecError:
        return SpecError(
            message,
            path=path,
            source=self.spec.source,
            line=line_of(self.spec._lines, path),
            cell=cell,
            **extra,
        )

    def _family(self) -> ExperimentFamily:
        from dab_core.experiments import experiments
        from dab_core.registry import UnknownNameError

        try:
            return experiments.lookup(self.spec.experiment)
        except UnknownNameError as e:
            raise self.error(
                str(e) + suggest(self.spec.experiment, experiments.names()), ("experiment",)
            ) from None

    def raw_config(
        self, cell: _Cell, cell_key: str
    ) -> tuple[dict[str, Any], dict[tuple[str, ...], FieldPath]]:
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

    def spec_path(
        self, loc: Sequence[Any], raw: Mapping[str, Any], prov: Mapping[tuple[str, ...], FieldPath]
    ) -> FieldPath | None:
        """Where in the spec the config value at pydantic `loc` was written."""
        loc = tuple(loc)
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
                return (*prov[head], *rest)  # type: ignore[misc]
        return None

    def blame(
        self, message: str, cell: _Cell, prov: Mapping[tuple[str, ...], FieldPath], raw: Mapping[str, Any]
    ) -> FieldPath:
        """The spec path a whole-config message is most about: a field it names that the cell
        sets, else a field it names, else the cell itself."""
        quoted = _UNKNOWN_NAME.search(message)
        if quoted:
            name = quoted.group(1)
            for cfg_path, spec_path in prov.items():
                ok, value = get_path(raw, cfg_path)
                if cfg_path[-1] == name or (ok and value == name):
                    return spec_path
        hits = []
        for cfg_path, spec_path in prov.items():
            if len(cfg_path) != 1 or cfg_path[0] == "experiment":
                continue
            m = re.search(rf"(?<![\w.]){re.escape(cfg_path[0])}(?![\w])", message)
            if m:
                hits.append((spec_path[0] == "params", m.start(), spec_path))
        if hits:
            return min(hits)[2]
        return cell.origin

    def describe(self, err: Mapping[str, Any]) -> str:
        loc, kind, ctx = tuple(err["loc"]), err["type"], err.get("ctx") or {}
        field = next(
            (p for p in reversed(loc) if isinstance(p, str) and p not in ("float", "int", "bool")), ""
        )
        fam = self.spec.experiment
        if kind == "literal_error":
            known = literal_known(str(ctx.get("expected", "")))
            return f"unknown {field} {short_repr(err.get('input'))}; known: {', '.join(known)}" + suggest(
                err.get("input"), known
            )
        if kind == "extra_forbidden":
            known = self.fields if len(loc) == 1 else []
            hint = f"; known: {', '.join(known)}{suggest(field, known)}" if known else ""
            return f"unknown field {field!r} for experiment {fam!r}{hint}"
        if kind == "missing":
            return f"missing required field {format_path(loc)!r} of experiment {fam!r}: set it in params or the grid"
        cause = ctx.get("error")
        if isinstance(cause, Exception):
            return str(cause)
        return f"{err['msg']}, got {short_repr(err.get('input'))}"

    def validate(
        self, raw: dict[str, Any], cell: _Cell, cell_key: str, prov: Mapping[tuple[str, ...], FieldPath]
    ) -> dict[str, Any]:
        from dab_core.registry import UnknownNameError

        try:
            text = canonical_json(raw)
            parsed = self.family.config_cls.model_validate_json(text, strict=True)
        except ValidationError as e:
            details: list[dict[str, Any]] = []
            for err in e.errors(include_url=False):
                message = self.describe(err)
                path = self.spec_path(err["loc"], raw, prov) if err["loc"] else None
                if path is not None:
                    path = _into_mapping(path, raw, err["loc"], message)
                if path is None:
                    path = ("params",) if err["type"] == "missing" else self.blame(message, cell, prov, raw)
                details.append(
                    {"path": format_path(path), "line": line_of(self.spec._lines, path), "message": message}
                )
            first = details[0]
            raise SpecError(
                first["message"],
                path=first["path"],
                source=self.spec.source,
                line=first["line"],
                cell=cell_key,
                details=details,
            ) from None
        except (UnknownNameError, TypeError, ValueError, KeyError) as e:
            # a family's validator let a non-validation error through (an unknown registry
            # name, a bad keyword for a hard function): still the spec's mistake
            message = str(e)
            raise self.error(message, self.blame(message, cell, prov, raw), cell_key) from None
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
            by_cell.append(row)
        self.check_excludes()
        self.check_paper([row[0].config for row in by_cell])
        out: list[Trial] = []
        for r in range(len(seeds)):
            for row in by_cell:
                t = row[r]
                out.append(Trial(len(out), t.cell, t.cell_key, t.replicate, t.seed, t.config, t.trial_key))
        return out

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


_UNKNOWN_NAME = re.compile(r"unknown [\w ]+? '([^']*)'")


def _into_mapping(path: FieldPath, raw: Mapping[str, Any], loc: Sequence[Any], message: str) -> FieldPath:
    """A message about an unknown key of a mapping field points at that key, not the mapping."""
    ok, value = get_path(raw, [p for p in loc if isinstance(p, str | int)])
    m = _UNKNOWN_NAME.search(message)
    if ok and isinstance(value, Mapping) and m and m.group(1) in value:
        return (*path, m.group(1))
    return path


def _matches(match: Mapping[str, Any], config: Mapping[str, Any]) -> bool:
    for k, v in match.items():
        ok, value = get_path(config, k.split("."))
        if not ok or value_key(value) != value_key(v):
            return False
    return True


def expand(spec: SweepSpec) -> list[Trial]:
    """Every trial of `spec`, in order, each config validated against its family.

    Raises:
        SpecError: at the spec path of the first wrong value, naming the trial's cell; also
            when two trials resolve to the same config.
    """
    return _Expander(spec).trials()


def paper_values(spec: SweepSpec, config: Mapping[str, Any]) -> list[PaperValue]:
    """The paper's numbers for the cell of `config` (a trial's resolved config)."""
    return [p for p in spec.paper if _matches(p.match, config)]


__all__ = ["Trial", "expand", "paper_values"]
