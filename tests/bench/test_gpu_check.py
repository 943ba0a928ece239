"""bench/gpu_check.sh: it refuses clearly without CUDA, and its dry run on the CPU goes through
every step of the check and writes the document the GPU run writes."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "bench" / "gpu_check.sh"


def _run(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(SCRIPT)],
        env={**os.environ, "PYTHON": sys.executable, **env},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA: the check would run")
def test_without_cuda_it_fails_clearly_and_writes_nothing(tmp_path: Path) -> None:
    out = tmp_path / "gpu.md"
    r = _run(tmp_path, DAB_GPU_CHECK_OUT=str(out))
    assert r.returncode == 2
    assert "no CUDA device" in r.stderr and "DAB_GPU_CHECK_DEVICE=cpu" in r.stderr
    assert not out.exists() and not Path(f"{out}.partial").exists()


def test_a_wrong_device_is_refused(tmp_path: Path) -> None:
    r = _run(tmp_path, DAB_GPU_CHECK_DEVICE="tpu")
    assert r.returncode == 2 and "must be cuda or cpu, got 'tpu'" in r.stderr


@pytest.mark.slow
def test_the_dry_run_on_the_cpu_writes_every_section(tmp_path: Path) -> None:
    out = tmp_path / "gpu.md"
    r = _run(tmp_path, DAB_GPU_CHECK_DEVICE="cpu", DAB_GPU_CHECK_OUT=str(out))
    assert r.returncode == 0, r.stderr[-3000:]
    text = out.read_text()
    assert "the CPU (dry run)" in text
    # 1: the anchor, eager and compiled steps with their ratios
    assert re.search(r"the authors' model \(anchor\)\s+[\d.]+ ms/step", text)
    assert re.search(r"dab compiled \(default\)\s+[\d.]+ ms/step", text)
    assert re.search(r"authors_over_ours_compiled\s+[\d.]+ +\(rounds: [\d.]+ \.\. [\d.]+\)", text)
    # 2: stacked seeds against separate models
    assert "## 2. Stacked seeds" in text and re.search(r"\d+\.\d+x?", text.split("## 2.")[1])
    # 3: one row per packing, the first at 1.00x
    rows = re.findall(r"^\| (\d) \| [\d,]+ \| ([\d.]+)x \| [\d.]+ \|$", text, re.M)
    assert [k for k, _ in rows] == ["1", "2"] and rows[0][1] == "1.00"
