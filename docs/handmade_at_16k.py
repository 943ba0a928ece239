"""The hand-made T=5 recipe (configs/sorting_t5_cpu.yaml: lr 1e-3, cosine over 150,000 steps)
for one seed, trained 16,000 steps of that schedule and evaluated every 2,000: the comparison
at equal steps of docs/search.md. Prints the accuracies so far as one JSON line per evaluation.

    PYTHONPATH=. .venv/bin/python docs/handmade_at_16k.py SEED
"""

import json
import sys
import time

from dab_core.experiments import parse_config
from dab_core.training import build_task

seed = int(sys.argv[1])
config = {
    "experiment": "sorting",
    "model": "signum-dense",
    "seq_len": 5,
    "steps": 150_000,
    "lr": 1e-3,
    "lr_schedule": "cosine",
    "eval_every": 2000,
    "num_threads": 1,
    "seed": seed,
}
task = build_task(parse_config(config))
began = time.process_time()
out: dict[str, object] = {"seed": seed, "compiled": task.compiled}
for step in range(16_000):
    task.train_step(step)
    if (step + 1) % 2000 == 0:
        out[str(step + 1)] = task.evaluate()["test_all_or_none"]
        print(json.dumps(out), flush=True)
out["cpu_s"] = time.process_time() - began
print(json.dumps(out), flush=True)
