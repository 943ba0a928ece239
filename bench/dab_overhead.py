"""Training-step cost of the DAB bridge on the sorting task, measured in one run.

Compares, at the same sizes (Signum-Dense of the authors' demo: T -> 128 -> 128 -> 256 ->
bridge -> T*T, batch 1024):

* ours, with the bridge slot holding ``dab``, ``ste`` and ``elu``;
* a replica of the authors' public demo loop (apple/ml-dab ``main.py``): the same model built
  from the paper's ``BaseHardFn`` (appendix 7.1), batches from a ``DataLoader`` over a
  2M-row NumPy array (shuffle, 4 workers, per-item collation), and the ``.item()`` calls
  their loop makes every step.

Prints ms/step and samples/s, the ratios dab/ste, dab/elu and demo/ours, and the arithmetic
bound for dab/ste from multiply-accumulate counts (the demo's approximator is about as large
as the model, so a ratio near 2 is expected).

    python bench/dab_overhead.py [--seq-len 10] [--steps 200] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import time
import warnings

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dab_core.experiments.sorting import SortingConfig, SortingTask
from dab_core.reference import PaperSignumFn


def time_ours(estimator: str, seq_len: int, steps: int, warmup: int, train_size: int) -> float:
    cfg = SortingConfig(
        experiment="sorting",
        model="signum-dense",
        seq_len=seq_len,
        steps=steps + warmup,
        estimator=estimator,  # type: ignore[arg-type]
        train_size=train_size,
    )
    torch.manual_seed(0)
    task = SortingTask(cfg, torch.device("cpu"))
    for s in range(warmup):
        task.train_step(s)
    start = time.perf_counter()
    for s in range(warmup, warmup + steps):
        task.train_step(s)
    return (time.perf_counter() - start) / steps


# -- the authors' demo, rebuilt from the paper's appendix 7.1 and their public loop ------------


class _PaperDAB(nn.Module):
    def __init__(self, approximator: nn.Module) -> None:
        super().__init__()
        self.approximator = approximator

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.soft = self.approximator(x)
        self.hard = PaperSignumFn.apply(x, self.soft)
        return self.hard  # type: ignore[no-any-return]

    def loss(self) -> torch.Tensor:
        b = self.hard.shape[0]
        return F.mse_loss(self.soft.view(b, -1), self.hard.view(b, -1), reduction="none").sum(-1)


class _SortRows(torch.utils.data.Dataset):  # type: ignore[type-arg]
    def __init__(self, n: int, seq_len: int) -> None:
        rng = np.random.default_rng(0)
        self.data = rng.uniform(0, 1, size=(n, seq_len, 1)).astype(np.float32)
        self.labels = np.argsort(self.data[..., 0], axis=-1)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.from_numpy(self.data[i]), torch.from_numpy(self.labels[i])


def time_demo(seq_len: int, steps: int, warmup: int, rows: int, workers: int) -> float:
    torch.manual_seed(0)
    latent = 256
    approximator = nn.Sequential(
        nn.Linear(latent, latent // 2),
        nn.Tanh(),
        nn.Linear(latent // 2, latent // 2),
        nn.Tanh(),
        nn.Linear(latent // 2, latent),
    )
    dab = _PaperDAB(approximator)
    model = nn.Sequential(
        nn.Flatten(),
        nn.Linear(seq_len, latent // 2),
        nn.Tanh(),
        nn.Linear(latent // 2, latent // 2),
        nn.Tanh(),
        nn.Linear(latent // 2, latent),
        nn.Tanh(),
        dab,
        nn.Linear(latent, seq_len * seq_len),
        nn.Unflatten(1, (seq_len, seq_len)),
    )
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    loader = torch.utils.data.DataLoader(
        _SortRows(rows, seq_len),
        batch_size=1024,
        shuffle=True,
        drop_last=True,
        num_workers=workers,
        persistent_workers=workers > 0,
    )
    it = iter(loader)
    start = 0.0
    for i in range(warmup + steps):
        if i == warmup:
            start = time.perf_counter()
        try:
            x, y = next(it)
        except StopIteration:
            it = iter(loader)
            x, y = next(it)
        opt.zero_grad()
        logits = model(x)
        ce = F.cross_entropy(logits, y, reduction="none").sum(-1)
        loss = (ce + 10.0 * dab.loss()).mean()
        _ = loss.item(), dab.loss().mean().item()  # their loop logs both every step
        _ = logits.argmax(dim=1).eq(y).all(dim=1).float().mean().item()
        loss.backward()
        opt.step()
    return (time.perf_counter() - start) / steps


def macs(seq_len: int) -> tuple[int, int]:
    model = seq_len * 128 + 128 * 128 + 128 * 256 + 256 * seq_len * seq_len
    approximator = 256 * 128 + 128 * 128 + 128 * 256
    return model, approximator


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seq-len", type=int, default=10)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument(
        "--train-size", type=int, default=2_000_000, help="rows of the fixed training set (both loops)"
    )
    p.add_argument("--demo-workers", type=int, default=4, help="DataLoader workers of the demo (theirs: 4)")
    p.add_argument("--json", action="store_true")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    # The demo's 4 DataLoader workers on a 2-core machine: torch warns; it is their setting.
    warnings.filterwarnings("ignore", message="This DataLoader will create")

    t = {est: time_ours(est, a.seq_len, a.steps, a.warmup, a.train_size) for est in ("dab", "ste", "elu")}
    t["demo"] = time_demo(a.seq_len, a.steps, a.warmup, a.train_size, a.demo_workers)
    m, g = macs(a.seq_len)
    # A training step costs ~3 forward passes of the model (forward, input and weight grads);
    # the bridge adds g's forward, the VJP for x (input grads only) and the DAB loss backward
    # (input and weight grads): ~4 forward passes of g.
    bound = (3 * m + 4 * g) / (3 * m)
    result = {
        "seq_len": a.seq_len,
        "batch": 1024,
        "threads": a.threads,
        "ms_per_step": {k: round(v * 1e3, 2) for k, v in t.items()},
        "samples_per_s": {k: round(1024 / v) for k, v in t.items()},
        "ratio_dab_over_ste": round(t["dab"] / t["ste"], 2),
        "ratio_dab_over_elu": round(t["dab"] / t["elu"], 2),
        "bound_dab_over_ste_from_macs": round(bound, 2),
        "ratio_demo_over_ours_dab": round(t["demo"] / t["dab"], 2),
    }
    if a.json:
        print(json.dumps(result))
        return
    print(f"Signum-Dense T={a.seq_len}, batch 1024, {a.threads} threads, {a.steps} timed steps")
    for k in ("dab", "ste", "elu", "demo"):
        label = "authors' demo loop" if k == "demo" else f"ours, {k}"
        print(
            f"  {label:<20} {result['ms_per_step'][k]:>8.2f} ms/step {result['samples_per_s'][k]:>9} samples/s"
        )
    print(f"  dab/ste  = {result['ratio_dab_over_ste']:.2f}  (arithmetic bound from MACs: {bound:.2f})")
    print(f"  dab/elu  = {result['ratio_dab_over_elu']:.2f}")
    print(f"  demo/ours(dab) = {result['ratio_demo_over_ours_dab']:.2f}  (>= 1: ours at least as fast)")


if __name__ == "__main__":
    main()
