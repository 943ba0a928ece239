"""How `make test` splits the suite over two processes (pytest-xdist, ``-n 2 --dist loadgroup``).

Each heavy directory runs whole in one process, in file order, so that its session fixtures
start once and its clusters never run beside each other: ``tests/e2e`` (the service, Ray
clusters of ``ray start`` processes, 11 minutes of the 21 a serial run took here) in one,
``tests/workers`` (one local Ray for the session) in one; the rest is spread by load. Without
xdist (``pytest tests/...`` as a developer runs it) nothing changes.
"""

from __future__ import annotations

from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
GROUPED = ("e2e", "workers")  # top-level test directories that run in one process each


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook reads the marks
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not config.pluginmanager.hasplugin("xdist"):
        return
    for item in items:
        try:
            top = Path(item.path).resolve().relative_to(TESTS).parts[0]
        except ValueError:
            continue
        if top in GROUPED:
            item.add_marker(pytest.mark.xdist_group(top))
