"""Typed trial configuration shared by every experiment family.

A trial config is a plain dict in a sweep spec; each family validates it into a pydantic model
derived from `TrialConfig` (unknown keys are errors, messages name the field). Fields hold
primitives and registry names only, so a config stays serialisable and hashable.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from dab_core.hard import hard_functions


def _known_hard_function(name: str) -> str:
    if name not in hard_functions:
        raise ValueError(f"unknown hard function {name!r}; known: {', '.join(hard_functions.names())}")
    return name


def _layer_sizes(sizes: tuple[int, ...]) -> tuple[int, ...]:
    if any(s < 1 for s in sizes):
        raise ValueError(f"layer sizes must be integers >= 1, got {list(sizes)}")
    return sizes


HardName = Annotated[str, AfterValidator(_known_hard_function)]
"""A registered hard function's name (the error lists the known names)."""

LayerSizes = Annotated[tuple[int, ...], AfterValidator(_layer_sizes)]
"""Hidden layer sizes of an MLP, each >= 1 (empty: no hidden layer)."""


class TrialConfig(BaseModel):
    """What every trial has, whatever its family."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    experiment: str = Field(description="experiment family name (registry key)")
    seed: int = Field(0, ge=0, description="seeds parameters, data order and sampling")
    steps: int = Field(ge=1, description="optimiser steps of the whole trial")
    eval_every: int = Field(500, ge=1, description="steps between evaluations and reports")
    checkpoint_every: int | None = Field(
        None, ge=1, description="steps between checkpoints; a multiple of eval_every (default: eval_every)"
    )
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto: cuda when available")
    num_threads: int | None = Field(
        None, ge=1, description="torch intra-op threads (default: torch's own choice)"
    )

    @model_validator(mode="after")
    def _checkpoint_on_eval_steps(self) -> TrialConfig:
        if self.checkpoint_every is not None and self.checkpoint_every % self.eval_every:
            raise ValueError(
                f"checkpoint_every ({self.checkpoint_every}) must be a multiple of "
                f"eval_every ({self.eval_every}): checkpoints are written with reports"
            )
        return self

    @property
    def checkpoint_interval(self) -> int:
        return self.checkpoint_every or self.eval_every


__all__ = ["HardName", "LayerSizes", "TrialConfig"]
