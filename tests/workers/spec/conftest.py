"""Helpers of the spec tests: a small valid sorting spec, and spec files under tmp_path."""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[3]
CONFIGS = ROOT / "configs"

SmallSpec = Callable[..., dict[str, Any]]
WriteFile = Callable[[Path, str, str], Path]


def _small(**changes: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "name": "small",
        "experiment": "sorting",
        "params": {"steps": 10, "seq_len": 4, "train_size": 0, "test_size": 16, "batch_size": 8},
        "grid": {"model": ["signum-dense", "elu-dense"], "lr": [1e-3, 1e-4]},
        "replicates": 2,
    }
    spec.update(changes)
    return spec


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text).lstrip())
    return path


@pytest.fixture
def small() -> SmallSpec:
    """``small(**changes)``: a valid sorting spec of 8 tiny trials; `changes` replace top-level fields."""
    return _small


@pytest.fixture
def write() -> WriteFile:
    """``write(dir, name, text)``: the dedented `text` as the file ``dir/name``."""
    return _write
