"""What issue 21's durable checkpoints cost per epoch: RunFolder.save_epoch (metrics, checkpoint with its
SHA-256 sidecar, status, fsyncs) against the writes before it (tmp + rename, no fsync, no digest).

Run: ``.venv/bin/python benchmarks/save_cost.py`` (docs/reliability.md quotes it); ``--tiny``: a 200-sample
run and 2 repeats, a quick check that the script runs (tests/benchmarks/test_scripts.py). The two are timed
alternately in one process, 20 times each; medians are printed, with one epoch of the same run.
"""

import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from ies.experiments import tables
from ies.experiments.config import RunConfig
from ies.experiments.engine import run_training
from ies.experiments.runs import RunFolder


def main() -> None:
    tiny = "--tiny" in sys.argv[1:]
    states: list = []
    t0 = time.perf_counter()
    cfg = RunConfig(epochs=2, train_size=200) if tiny else RunConfig(epochs=2)  # the default MNIST-1D run, 2 epochs
    run_training(cfg, on_checkpoint=states.append)
    epoch_s = (time.perf_counter() - t0) / 2
    state = states[-1]
    d = Path(tempfile.mkdtemp())
    folder = RunFolder(d)
    folder.start(state["config"])

    def before(s: dict) -> None:
        tables.write_csv(d / "metrics.csv", s["rows"])
        tmp = d / ".before.tmp"
        torch.save(s, tmp)
        os.replace(tmp, d / "checkpoint.pt")
        tables.write_json(d / "status.json", {"status": "running"})

    times: dict = {"now": [], "before": []}
    for _ in range(2 if tiny else 20):
        for name, fn in (("now", folder.save_epoch), ("before", before)):
            t0 = time.perf_counter()
            fn(state)
            times[name].append(time.perf_counter() - t0)
    ms = {k: round(1000 * statistics.median(v), 1) for k, v in times.items()}
    print(f"save per epoch: now {ms['now']} ms, before {ms['before']} ms; checkpoint "
          f"{(d / 'checkpoint.pt').stat().st_size:,} bytes; one epoch of the run {epoch_s:.1f} s")


if __name__ == "__main__":
    main()
