"""Spec bodies as the API receives them: media types, the service's limits, data roots."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from service.core.config import Settings
from service.core.errors import InvalidSpecError, UnsupportedMediaError
from workers.spec import (
    SpecError,
    SweepSpec,
    SweepSuite,
    Trial,
    canonical_json,
    count_trials,
    expand,
    parse_spec,
    parse_suite,
)

JSON_TYPES = ("application/json",)
YAML_TYPES = ("application/yaml", "application/x-yaml", "text/yaml", "text/x-yaml", "text/plain")


def media_type(content_type: str | None) -> str | None:
    """The body's kind from its Content-Type: ``application/json``, ``application/yaml`` or None
    (absent: detected from the text). Anything else is a 415."""
    if not content_type:
        return None
    base = content_type.split(";", 1)[0].strip().lower()
    if base in JSON_TYPES or base.endswith("+json"):
        return "application/json"
    if base in YAML_TYPES or base.endswith("+yaml"):
        return "application/yaml"
    raise UnsupportedMediaError(
        f"Content-Type {base!r} is not a spec: send application/json or application/yaml",
        field="Content-Type",
    )


@dataclass(frozen=True)
class CheckedSpec:
    spec: SweepSpec
    trials: list[Trial]
    data: dict[str, Any]  # the validated spec as JSON data (defaults filled in)
    spec_hash: str

    @property
    def cells(self) -> int:
        """Cells of a grid; a search's configurations (its budget: at most this many)."""
        if self.spec.search is not None:
            return self.spec.num_configs
        return len({t.cell_key for t in self.trials})

    @property
    def trial_count(self) -> int:
        """Trials of a grid; a search's budget (configurations x seeds: at most this many)."""
        return count_trials(self.spec) if self.spec.search is not None else len(self.trials)


@dataclass(frozen=True)
class CheckedSuite:
    suite: SweepSuite  # its members are the checked specs', in order
    members: list[tuple[str, CheckedSpec]]  # (file as listed, the member checked)
    spec_hash: str  # of the members' files and validated specs: the idempotency comparison

    @property
    def trial_count(self) -> int:
        return sum(c.trial_count for _, c in self.members)

    @property
    def trial_keys(self) -> list[str]:
        """The distinct trial keys over every member, in first-seen order."""
        return list(dict.fromkeys(t.trial_key for _, c in self.members for t in c.trials))


def check_suite(
    body: bytes | str | Mapping[str, Any], content_type: str | None, settings: Settings
) -> CheckedSuite:
    """Parse a suite with inline members (`workers.spec.parse_suite`), then check each member
    as a sweep (`check_spec`); an error names the member: ``members[2].spec.grid.bpp``."""
    kind = media_type(content_type) if not isinstance(body, Mapping) else None
    try:
        suite = parse_suite(body, source="<request body>", content_type=kind)
    except SpecError as e:
        raise InvalidSpecError.from_spec_error(e) from None
    members = []
    for i, (file, spec) in enumerate(suite.specs):
        try:
            checked = check_spec(spec.model_dump(mode="json"), None, settings)
        except InvalidSpecError as e:
            prefix = f"members[{i}].spec"
            e.field = (
                f"{prefix}.{e.field}"
                if e.field and not e.field.startswith("[")
                else f"{prefix}{e.field or ''}"
            )
            e.message = f"member {i} ({file}): {e.message}"
            raise
        members.append((file, checked))
    digest = hashlib.sha256(
        canonical_json({"name": suite.name, "members": [[f, c.spec_hash] for f, c in members]}).encode()
    ).hexdigest()
    return CheckedSuite(suite, members, digest)


def check_spec(
    body: bytes | str | Mapping[str, Any], content_type: str | None, settings: Settings
) -> CheckedSpec:
    """Parse, validate and expand a spec against the service's limits.

    Raises:
        InvalidSpecError: naming the field (and line) of the first problem.
        UnsupportedMediaError: a Content-Type that is neither JSON nor YAML.
    """
    kind = media_type(content_type) if not isinstance(body, Mapping) else None
    try:
        spec = parse_spec(body, source="<request body>", content_type=kind)
        n = count_trials(spec)
        if n > settings.max_trials_per_sweep:
            raise SpecError(
                f"the spec expands to {n:,} trials; this service accepts at most "
                f"{settings.max_trials_per_sweep:,} per sweep (DAB_MAX_TRIALS_PER_SWEEP)",
                path="replicates" if not spec.grid else "grid",
                source="<request body>",
            )
        trials = expand(spec)
    except SpecError as e:
        raise InvalidSpecError.from_spec_error(e) from None
    data = spec.model_dump(mode="json")
    check_data_roots(data, settings.allowed_data_dirs)
    return CheckedSpec(spec, trials, data, hashlib.sha256(canonical_json(data).encode()).hexdigest())


def _data_root_values(data: Mapping[str, Any]) -> list[tuple[str, Any]]:
    """(field path, value) of every data_root the spec sets: params, grid axes, include cells."""
    found: list[tuple[str, Any]] = []
    if "data_root" in data.get("params", {}):
        found.append(("params.data_root", data["params"]["data_root"]))
    for i, v in enumerate(data.get("grid", {}).get("data_root", [])):
        found.append((f"grid.data_root[{i}]", v))
    for j, cell in enumerate(data.get("include", [])):
        if "data_root" in cell:
            found.append((f"include[{j}].data_root", cell["data_root"]))
    return found


def check_data_roots(data: Mapping[str, Any], allowed: list[Path]) -> None:
    """Every data_root must resolve (symlinks and '..' followed) inside an allowed directory."""
    for path, value in _data_root_values(data):
        if value is None:
            continue
        if not isinstance(value, str) or not value.strip():
            raise InvalidSpecError(f"a data_root is a directory path, got {value!r}", field=path)
        raw = Path(value).expanduser()
        if not raw.is_absolute():
            raise InvalidSpecError(
                f"data_root {value!r} must be an absolute path inside one of: "
                + ", ".join(str(a) for a in allowed),
                field=path,
            )
        resolved = raw.resolve()
        if not any(resolved == a or resolved.is_relative_to(a) for a in allowed):
            raise InvalidSpecError(
                f"data_root {value!r} is outside the data directories this service allows "
                f"({', '.join(str(a) for a in allowed)}; DAB_DATA_DIRS)",
                field=path,
            )


__all__ = ["CheckedSpec", "CheckedSuite", "check_data_roots", "check_spec", "check_suite", "media_type"]
