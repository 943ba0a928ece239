"""Typed trial configuration shared by every experiment family.

A trial config is a plain dict in a sweep spec; each family validates it into a pydantic model
derived from `TrialConfig` (unknown keys are errors, messages name the field). Fields hold
primitives and registry names only, so a config stays serialisable and hashable.

Count fields have upper bounds as well as lower ones: a config is refused before any compute
when it asks for more than a trial can do (``steps: 10**15`` would otherwise be accepted and
run until killed). Each bound says at its definition what it allows and why.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from dab_core.hard import HardParamError, hard_functions

#: Most optimiser steps of one trial. The paper's longest run is the authors' sorting budget,
#: 4,234,104 steps (2168 epochs x 1953 steps); 10**8 is 24 times that, about 4.6 GPU-days at
#: their 4 ms/step and months on a CPU. Longer is a mistake (an extra zero), not a study.
MAX_STEPS = 100_000_000
#: Widest hidden layer of an MLP (or LSTM). The paper's widest is 512; a 16,384 x 16,384
#: float32 layer is 1 GiB of weights and 3 more of Adam state, about one GPU's worth.
MAX_WIDTH = 16_384
#: Most hidden layers of an MLP. The paper's deepest has 3; each layer is a sequential matmul.
MAX_LAYERS = 64


class ConfigError(ValueError):
    """A config is wrong in a way that involves named fields (a rule across fields, a hard
    function's parameters).

    Attributes:
        fields: paths of the fields involved, from the config's root, the one to blame first
            (``("ponder_steps",)``, ``("hard_params", "eps")``).

    A `ValueError`, so pydantic validators raise it as a validation error; the ValidationError
    then carries it as ``ctx["error"]``, and callers (sweep specs) point at the field from
    `fields` rather than from the message.
    """

    def __init__(self, message: str, *fields: str | Sequence[str | int]) -> None:
        super().__init__(message)
        self.fields: tuple[tuple[str | int, ...], ...] = tuple(
            tuple(f.split(".")) if isinstance(f, str) else tuple(f) for f in fields
        )

    def __reduce__(self) -> tuple[object, ...]:  # fields survive pickling
        return (type(self), (str(self), *self.fields))

    @classmethod
    def of_hard_params(cls, e: HardParamError | TypeError | ValueError, prefix: str = "") -> ConfigError:
        """`e` (from binding or shaping a hard function) as an error of ``hard_params``, at the
        parameter it names when it names one."""
        param = getattr(e, "param", None)
        return cls(f"{prefix}{e}", ("hard_params", param) if param else ("hard_params",))


def _known_hard_function(name: str) -> str:
    hard_functions.lookup(name)  # UnknownNameError (a ValueError): "unknown hard function ..."
    return name


def _layer_sizes(sizes: tuple[int, ...]) -> tuple[int, ...]:
    if any(s < 1 for s in sizes):
        raise ValueError(f"layer sizes must be integers >= 1, got {list(sizes)}")
    if any(s > MAX_WIDTH for s in sizes):
        raise ValueError(f"layer sizes must be at most {MAX_WIDTH:,} (MAX_WIDTH), got {list(sizes)}")
    return sizes


HardName = Annotated[str, AfterValidator(_known_hard_function)]
"""A registered hard function's name (the error lists the known names)."""

LayerSizes = Annotated[tuple[int, ...], Field(max_length=MAX_LAYERS), AfterValidator(_layer_sizes)]
"""Hidden layer sizes of an MLP, each from 1 to `MAX_WIDTH`, at most `MAX_LAYERS` of them
(empty: no hidden layer)."""


class TrialConfig(BaseModel):
    """What every trial has, whatever its family."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    experiment: str = Field(description="experiment family name (registry key)")
    # torch.manual_seed takes 64 bits; sweep specs give seeds below 2**63.
    seed: int = Field(0, ge=0, le=2**63 - 1, description="seeds parameters, data order and sampling")
    steps: int = Field(ge=1, le=MAX_STEPS, description="optimiser steps of the whole trial")
    # Bounded by MAX_STEPS: an interval longer than any trial would never report.
    eval_every: int = Field(500, ge=1, le=MAX_STEPS, description="steps between evaluations and reports")
    checkpoint_every: int | None = Field(
        None,
        ge=1,
        le=MAX_STEPS,
        description="steps between checkpoints; a multiple of eval_every (default: eval_every)",
    )
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto: cuda when available")
    # More threads than any machine has cores only adds contention.
    num_threads: int | None = Field(
        None, ge=1, le=1024, description="torch intra-op threads (default: torch's own choice)"
    )

    @model_validator(mode="after")
    def _checkpoint_on_eval_steps(self) -> TrialConfig:
        if self.checkpoint_every is not None and self.checkpoint_every % self.eval_every:
            raise ConfigError(
                f"checkpoint_every ({self.checkpoint_every}) must be a multiple of "
                f"eval_every ({self.eval_every}): checkpoints are written with reports",
                "checkpoint_every",
                "eval_every",
            )
        return self

    @property
    def checkpoint_interval(self) -> int:
        return self.checkpoint_every or self.eval_every


__all__ = ["MAX_LAYERS", "MAX_STEPS", "MAX_WIDTH", "ConfigError", "HardName", "LayerSizes", "TrialConfig"]
