"""Small PNG writers for the artifacts a trial leaves at its end (matplotlib, Agg backend)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch


def _pyplot():  # type: ignore[no-untyped-def]
    import matplotlib

    matplotlib.use("Agg")  # files only, never a window
    import matplotlib.pyplot as plt

    return plt


def bar_png(path: Path, labels: Sequence[str], values: Sequence[float], title: str, ylabel: str) -> Path:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(4.0, 0.5 * len(labels)), 3.0))
    ax.bar(list(labels), list(values), color="tab:blue")
    ax.set_title(title)
    ax.set_ylabel(ylabel)
    ax.set_ylim(0, 1)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def image_rows_png(path: Path, rows: torch.Tensor, row_titles: Sequence[str]) -> Path:
    """Rows of images, (R, N, C, H, W) in [0, 1], one row per title."""
    plt = _pyplot()
    r, n = rows.shape[:2]
    fig, axes = plt.subplots(r, n, figsize=(1.2 * n, 1.3 * r), squeeze=False)
    for i in range(r):
        for j in range(n):
            img = rows[i, j].detach().float().clamp(0, 1).cpu()
            ax = axes[i][j]
            if img.shape[0] == 1:
                ax.imshow(img[0].numpy(), cmap="gray", vmin=0, vmax=1)
            else:
                ax.imshow(img.permute(1, 2, 0).numpy())
            ax.set_xticks([])
            ax.set_yticks([])
        axes[i][0].set_ylabel(row_titles[i])
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


__all__ = ["bar_png", "image_rows_png"]
