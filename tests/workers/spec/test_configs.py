"""The paper's configs in configs/: each validates, states what it reproduces, and adds up."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from workers.spec import (
    SweepSpec,
    SweepSuite,
    count_trials,
    expand,
    load_spec,
    preview,
)

ROOT = Path(__file__).resolve().parents[3]
CONFIGS = ROOT / "configs"


EXPECTED = {
    "table1_sorting.yaml": 45,
    "fig3_pondering.yaml": 110,
    "fig4_fashionmnist.yaml": 210,
    "fig4_cifar10.yaml": 210,
    "fig5_imagenet.yaml": 30,
    "table2_cifar10.yaml": 25,
    "fig6_placement.yaml": 20,
    "fig6_emd.yaml": 10,
    "fig6_ste.yaml": 10,
}


@pytest.fixture(scope="module")
def paper_preview() -> dict[str, Any]:
    suite = load_spec(CONFIGS / "paper.yaml")
    assert isinstance(suite, SweepSuite)
    return preview(suite)


def test_paper_suite_counts(paper_preview: dict[str, Any]) -> None:
    counts = {f["file"]: f["trials"] for f in paper_preview["files"]}
    assert counts == EXPECTED
    assert paper_preview["total"]["trials"] == sum(EXPECTED.values()) == 670 >= 600
    # shared trials: Fig 3's 5-ponder cells = Table 1's Signum-RNN T=5/10 cells (10), Fig 6-left
    # block 4 = Table 2 Signum (5), Fig 6-middle unconditioned = Table 2 Sort (5)
    assert paper_preview["total"]["distinct_trials"] == 650
    assert all(f["replicates"] == 5 for f in paper_preview["files"])


def test_paper_header_arithmetic_matches_the_configs(paper_preview: dict[str, Any]) -> None:
    header = (CONFIGS / "paper.yaml").read_text()
    documented = dict(re.findall(r"^#\s+(\S+\.yaml)\s.*=\s+(\d+)$", header, flags=re.M))
    assert {k: int(v) for k, v in documented.items()} == EXPECTED
    assert re.search(r"^#\s+total\s+670$", header, flags=re.M)
    docs = (ROOT / "docs" / "configs.md").read_text()
    for name, n in EXPECTED.items():
        assert re.search(rf"{re.escape(name)}.*\b{n}\b", docs), name


@pytest.mark.parametrize("path", sorted(p.name for p in CONFIGS.glob("*.yaml")))
def test_every_config_validates_and_states_what_it_reproduces(path: str) -> None:
    loaded = load_spec(CONFIGS / path)
    text = (CONFIGS / path).read_text()
    assert text.startswith("#"), "a config opens with a header comment"
    header = text[: text.index("\nname:")]
    if isinstance(loaded, SweepSuite):
        return
    trials = expand(loaded)
    if loaded.search is not None:  # its trials are proposed as it runs: the header gives its budget
        assert trials == []
        assert f"{loaded.num_configs} configurations x {len(loaded.seeds)} seeds" in header
    else:
        assert len(trials) == count_trials(loaded)
    for word in ("Trials:", "Cost:", "paper"):
        assert word in header, f"{path}: the header says nothing about {word!r}"
    if path in EXPECTED:
        assert "Choices the paper leaves open" in header
        assert loaded.duration_hours is not None
        assert re.search(rf"=\s*{len(trials)}\b", header), "the header's trial arithmetic"


def test_quickstart_is_six_small_trials() -> None:
    spec = load_spec(CONFIGS / "quickstart.yaml")
    assert isinstance(spec, SweepSpec)
    trials = expand(spec)
    assert len(trials) == 6
    assert {(t.config["model"], t.config["estimator"]) for t in trials} == {
        ("signum-dense", "dab"),
        ("signum-dense", "ste"),
        ("elu-dense", None),
    }
    assert "does not show" in spec.description  # the caption says what this budget shows
    assert {t.config["seq_len"] for t in trials} == {5} and spec.seeds == [0, 1]
    assert all(t.config["steps"] * t.config["batch_size"] <= 5_000_000 for t in trials)
    assert spec.resources.gpu == 0 and (spec.limits.max_concurrent or 1) <= 2


QUICKSTART_KEYS = [
    "ec643892aa0c6334c599",
    "738a26667b0375fbf3ad",
    "deea630ffbb331b7b4f9",
    "9631aa32f28a7cf2b337",
    "9acaabbba1d210a336e1",
    "1dffdfacf76be4eee623",
]


def test_trial_keys_of_the_shipped_configs_are_stable() -> None:
    """A trial's key is its resolved config's hash: a library change that alters it makes every
    finished trial run again (no skip, no adoption). Changing these values must be deliberate;
    fields added later are left out of the config at their default (docs/configs.md)."""
    import hashlib

    from workers.spec import expand, load_spec

    quick = load_spec(CONFIGS / "quickstart.yaml")
    assert [t.trial_key for t in expand(quick)] == QUICKSTART_KEYS  # type: ignore[arg-type]
    paper = load_spec(CONFIGS / "paper.yaml")
    keys = sorted(t.trial_key for _, s in paper.specs for t in expand(s))  # type: ignore[union-attr]
    assert hashlib.sha256("".join(keys).encode()).hexdigest()[:16] == "09458fe787f3fc6c"
