"""Preview: what a spec or suite would request, without running anything."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from workers.spec import (
    parse_spec,
    preview,
)

SmallSpec = Callable[..., dict[str, Any]]  # the `small` fixture (conftest.py)


def test_preview_totals_resources(small: SmallSpec) -> None:
    spec = parse_spec(small(resources={"cpu": 2, "gpu": 0.25, "memory_gb": 3}, duration_hours=1.5))
    f = preview(spec)["files"][0]
    assert (f["trials"], f["cells"], f["replicates"]) == (8, 4, 2)
    r = f["resources"]
    assert (r["cpu"], r["gpu"], r["cpu_hours"], r["gpu_hours"]) == (16, 2, 24, 3)
    assert sum(c["trials"] for c in f["cell_list"]) == 8
    assert preview(parse_spec(small()))["files"][0]["resources"]["cpu_hours"] is None
    json.dumps(preview(spec))
