"""The registry: duplicates, unknown names, and plugins from installed entry points."""

from __future__ import annotations

import pickle
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from dab_core.registry import Registry, UnknownNameError


def test_add_lookup_duplicates_and_unknown() -> None:
    reg: Registry[int] = Registry("widget")
    reg.add("a", 1)

    @reg.register("b")
    def _b() -> int:
        return 2

    assert reg.names() == ["a", "b"] and reg.lookup("a") == 1 and "b" in reg
    with pytest.raises(ValueError, match="widget 'a' is already registered"):
        reg.add("a", 3)
    with pytest.raises(UnknownNameError, match=r"unknown widget 'c'; known: a, b") as e:
        reg.lookup("c")
    # what callers locate the mistake by, without reading the message; it survives pickling
    assert (e.value.name, e.value.kind, e.value.known) == ("c", "widget", ("a", "b"))
    assert isinstance(e.value, KeyError) and isinstance(e.value, ValueError)
    back = pickle.loads(pickle.dumps(e.value))
    assert (str(back), back.name, back.known) == (str(e.value), "c", ("a", "b"))
    with pytest.raises(ValueError, match="non-empty string"):
        reg.add("", 4)


def test_plugins_register_through_their_entry_point_group(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An installed package declares `[dab_core.hard_functions]` in its entry points; the
    registry imports it on first use, which registers its functions."""
    (tmp_path / "dab_plugin_demo.py").write_text(
        textwrap.dedent(
            """
            from dab_core.hard import hard_functions

            @hard_functions.register("plugin_step", elementwise=True)
            def plugin_step(x, at: float = 0.0):
                return (x > at).to(x.dtype)
            """
        )
    )
    dist = tmp_path / "dab_plugin_demo-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: dab-plugin-demo\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[dab_core.hard_functions]\nstep = dab_plugin_demo\n")
    monkeypatch.syspath_prepend(str(tmp_path))

    from dab_core.hard import HardFunctionRegistry

    fresh = HardFunctionRegistry("hard function", entry_point_group="dab_core.hard_functions")
    import dab_core.hard

    monkeypatch.setattr(dab_core.hard, "hard_functions", fresh)
    try:
        assert "plugin_step" in fresh.names()
        f = fresh.get("plugin_step", at=0.5)
        assert f(torch.tensor([[0.2, 0.7]])).tolist() == [[0.0, 1.0]]
    finally:
        sys.modules.pop("dab_plugin_demo", None)
