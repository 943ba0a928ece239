"""Training-step cost of the DAB bridge on the sorting task, measured in one run.

Compares, at the same sizes (Signum-Dense of the authors' demo: T -> 128 -> 128 -> 256 ->
bridge -> T*T, batch 1024), one training step (forward, loss, backward, Adam):

* **the anchor: the authors' model**, built from the paper's ``BaseHardFn`` (appendix 7.1,
  `dab_core.reference.PaperSignumFn`) as in apple/ml-dab ``main.py``, fed fresh in-memory
  ``torch.rand`` batches: their model and loss without their data loader or logging, so the
  comparison is of models, the fair one;
* ours, eager, with ``dab``, ``ste`` and ``elu`` in the bridge slot (fresh batches drawn on
  the device, ``train_size: 0``);
* ours with ``compile: default`` (and ``reduce-overhead``, CUDA graphs, with ``--device cuda``);
* once, after the rounds: a replica of the authors' whole demo loop (batches from a
  ``DataLoader`` over a 2M-row NumPy array, 4 workers, per-item collation, and the ``.item()``
  calls their loop makes every step), the number the README compared against before.

Each contender is built and warmed up first (compilation happens there and is printed apart),
then the rounds time every contender in turn, in an order that alternates from round to round,
so a drift in the machine's load (shared with other work) falls on all of them. It prints the
median ms/step over rounds, and for each ratio its median with the lowest and highest round.

    python bench/dab_overhead.py [--seq-len 10] [--steps 100] [--rounds 5] [--threads 2]
                                 [--device cpu|cuda] [--no-demo-loop] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dab_core.experiments.sorting import SortingConfig, SortingTask
from dab_core.reference import PaperSignumFn

Step = Callable[[int], object]


def ours(estimator: str, seq_len: int, device: str, compile_mode: str = "off") -> tuple[Step, SortingTask]:
    cfg = SortingConfig(
        experiment="sorting",
        model="signum-dense",
        seq_len=seq_len,
        steps=10**6,
        estimator=estimator,  # type: ignore[arg-type]
        train_size=0,
        test_size=16,
        device=device,  # type: ignore[arg-type]
        compile=compile_mode,  # type: ignore[arg-type]
    )
    torch.manual_seed(0)
    task = SortingTask(cfg, torch.device(device))
    return task.train_step, task


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


def _paper_model(seq_len: int) -> tuple[nn.Module, _PaperDAB]:
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
    return model, dab


def authors_model(seq_len: int, device: str) -> Step:
    """The authors' model and loss on fresh in-memory batches: no loader, no logging."""
    model, dab = _paper_model(seq_len)
    model.to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    gen = torch.Generator(device=device).manual_seed(0)

    def step(_: int) -> torch.Tensor:
        x = torch.rand(1024, seq_len, 1, generator=gen, device=device)
        y = x[..., 0].argsort(dim=1)
        opt.zero_grad()
        logits = model(x)
        ce = F.cross_entropy(logits, y, reduction="none").sum(-1)
        loss = (ce + 10.0 * dab.loss()).mean()
        loss.backward()
        opt.step()
        return loss.detach()

    return step


def time_demo_loop(seq_len: int, steps: int, warmup: int, rows: int, workers: int) -> float:
    """The authors' whole demo loop (DataLoader, per-step logging), seconds per step."""
    model, dab = _paper_model(seq_len)
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


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _time(step: Step, first: int, steps: int, device: str) -> float:
    _sync(device)
    start = time.perf_counter()
    for s in range(first, first + steps):
        step(s)
    _sync(device)
    return (time.perf_counter() - start) / steps


def measure(a: argparse.Namespace) -> dict[str, Any]:
    contenders: dict[str, Step] = {"authors": authors_model(a.seq_len, a.device)}
    for est in ("dab", "ste", "elu"):
        contenders[est] = ours(est, a.seq_len, a.device)[0]
    modes = ["default"] + (["reduce-overhead"] if a.device == "cuda" else [])
    for mode in modes:
        contenders[f"dab compiled ({mode})"] = ours("dab", a.seq_len, a.device, mode)[0]
    compile_s: dict[str, float] = {}
    for name, step in contenders.items():  # warm-up: the compiling step is timed apart
        began = time.perf_counter()
        step(0)
        _sync(a.device)
        if "compiled" in name:
            compile_s[name] = time.perf_counter() - began
        _time(step, 1, a.warmup, a.device)
    names = list(contenders)
    rounds: list[dict[str, float]] = []
    for r in range(a.rounds):
        order = names if r % 2 == 0 else names[::-1]
        first = 1 + a.warmup + r * a.steps
        rounds.append({n: _time(contenders[n], first, a.steps, a.device) for n in order})
    med = {n: statistics.median(rd[n] for rd in rounds) for n in names}

    def ratio(num: str, den: str) -> dict[str, float]:
        per = [rd[num] / rd[den] for rd in rounds]
        return {
            "median": round(statistics.median(per), 3),
            "low": round(min(per), 3),
            "high": round(max(per), 3),
        }

    compiled = f"dab compiled ({modes[-1]})"
    result: dict[str, Any] = {
        "seq_len": a.seq_len,
        "batch": 1024,
        "threads": torch.get_num_threads(),
        "device": a.device,
        "rounds": a.rounds,
        "steps_per_round": a.steps,
        "ms_per_step": {n: round(v * 1e3, 2) for n, v in med.items()},
        "samples_per_s": {n: round(1024 / v) for n, v in med.items()},
        "compile_s": {n: round(v, 1) for n, v in compile_s.items()},
        "authors_over_ours_eager": ratio("authors", "dab"),
        "authors_over_ours_compiled": ratio("authors", compiled),
        "eager_over_compiled": ratio("dab", compiled),
        "dab_over_ste": ratio("dab", "ste"),
        "dab_over_elu": ratio("dab", "elu"),
        "load_average": round(os.getloadavg()[0], 2),
    }
    m, g = macs(a.seq_len)
    # A training step costs ~3 forward passes of the model (forward, input and weight grads);
    # the bridge adds g's forward, the VJP for x (input grads only) and the DAB loss backward
    # (input and weight grads): ~4 forward passes of g.
    result["bound_dab_over_ste_from_macs"] = round((3 * m + 4 * g) / (3 * m), 2)
    if a.demo_loop and a.device == "cpu":
        demo = time_demo_loop(a.seq_len, a.steps, a.warmup, a.train_size, a.demo_workers)
        result["ms_per_step"]["authors' demo loop"] = round(demo * 1e3, 2)
        result["demo_loop_over_ours_compiled"] = round(demo / med[compiled], 2)
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seq-len", type=int, default=10)
    p.add_argument("--steps", type=int, default=100, help="timed steps per contender per round")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--train-size", type=int, default=2_000_000, help="rows of the demo loop's training set")
    p.add_argument("--demo-workers", type=int, default=4, help="DataLoader workers of the demo (theirs: 4)")
    p.add_argument("--no-demo-loop", dest="demo_loop", action="store_false", help="skip the demo loop")
    p.add_argument("--json", action="store_true")
    a = p.parse_args()
    if a.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: torch sees no CUDA device")
    torch.set_num_threads(a.threads)
    # The demo's 4 DataLoader workers on a 2-core machine: torch warns; it is their setting.
    warnings.filterwarnings("ignore", message="This DataLoader will create")
    result = measure(a)
    if a.json:
        print(json.dumps(result))
        return
    print(
        f"Signum-Dense T={a.seq_len}, batch 1024, {result['threads']} threads, {a.device}, "
        f"{a.rounds} rounds x {a.steps} steps (load average {result['load_average']})"
    )
    for name, ms in result["ms_per_step"].items():
        label = "the authors' model (anchor)" if name == "authors" else name
        label = label if name in ("authors", "authors' demo loop") or "compiled" in name else f"ours, {name}"
        print(f"  {label:<34} {ms:>8.2f} ms/step {round(1024 / ms * 1e3):>9} samples/s")
    for name, s in result["compile_s"].items():
        print(f"  compiling {name}: {s:.1f} s once (left out of the rounds)")
    for key in (
        "authors_over_ours_compiled",
        "authors_over_ours_eager",
        "eager_over_compiled",
        "dab_over_ste",
    ):
        r = result[key]
        print(f"  {key:<28} {r['median']:.2f}  (rounds: {r['low']:.2f} .. {r['high']:.2f})")
    print(f"  dab/ste bound from MACs: {result['bound_dab_over_ste_from_macs']:.2f}")
    if "demo_loop_over_ours_compiled" in result:
        print(f"  the demo loop / ours compiled: {result['demo_loop_over_ours_compiled']:.2f}")


if __name__ == "__main__":
    main()
