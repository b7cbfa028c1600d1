"""Bytes each rank sends and receives per epoch in DistributedIES's merges (gloo, localhost).

W processes (``mp.spawn``, a file-based process group) run the engine's order each epoch:
``record()`` over the rank's shard of ``tracker.sampler()``, ``probe()`` (its share of the
samples to probe; losses from a table, no model), ``step()``. Every ``dist.all_gather`` is
wrapped to count the bytes of the tensor this rank sends; with all-gather every rank receives
W times what each rank sends in that call (the pairs are padded to the largest rank's count).
The losses are bench_bookkeeping's deterministic mix, so about two thirds of the samples are
excluded once histories are full, and back-off probing measures only the due ones.

The last lines extrapolate to W = 64 and N = 1,281,167 from the measured bytes per recorded
sample (received: 12 per recorded sample, plus 56 bytes of metadata per rank and merge).

    python benchmarks/bench_distributed.py                 # W = 2 and 4, N = 50,000, 10 epochs
    python benchmarks/bench_distributed.py --tiny          # W = 2, N = 2,000, 3 epochs (CI)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_bookkeeping import Losses  # noqa: E402

from ies.distributed import DistributedIES  # noqa: E402


class SendCounter:
    """Wraps ``dist.all_gather``: the bytes this rank sends in each call."""

    def __init__(self) -> None:
        self.orig, self.sent = dist.all_gather, []
        dist.all_gather = self

    def __call__(self, out, tensor, *args, **kwargs):
        self.sent.append(tensor.numel() * tensor.element_size())
        return self.orig(out, tensor, *args, **kwargs)


def worker(rank: int, world: int, n: int, epochs: int, folder: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{folder}/pg", rank=rank, world_size=world)
    try:
        data, tracker, counter = Losses(n), DistributedIES(n), SendCounter()
        table = (torch.arange(n),)
        rows = []
        for e in range(epochs):
            losses = data.epoch(e)
            order = torch.tensor(list(tracker.sampler(shuffle=True, seed=0)), dtype=torch.int64)
            for s in range(0, order.numel(), 256):
                tracker.record(order[s : s + 256], losses[order[s : s + 256]])
            probed = tracker.probe(torch.nn.Identity(), table, forward=lambda _m, b: losses[b[0]])
            stats = tracker.step()
            rows.append({"epoch": e, "gathers": len(counter.sent), "sent": sum(counter.sent),
                         "own": int(order.unique().numel()) + probed, "recorded": stats.trained + stats.probed,
                         "excluded": stats.excluded})
            counter.sent = []
        if rank == 0:
            with open(os.path.join(folder, "rows.json"), "w") as f:
                json.dump(rows, f)
    finally:
        dist.destroy_process_group()


def measure(world: int, n: int, epochs: int) -> list:
    with tempfile.TemporaryDirectory() as folder:
        mp.spawn(worker, args=(world, n, epochs, folder), nprocs=world, join=True)
        with open(os.path.join(folder, "rows.json")) as f:
            return json.load(f)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--worlds", default="2,4", help="comma-separated world sizes (default 2,4)")
    ap.add_argument("--n", type=int, default=50_000, help="samples (default 50,000)")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--tiny", action="store_true", help="W = 2, N = 2,000, 3 epochs: a quick check that it runs")
    args = ap.parse_args()
    if args.tiny:
        args.worlds, args.n, args.epochs = "2", 2000, 3
    print(f"torch {torch.__version__}, gloo on localhost, N = {args.n:,}, {args.epochs} epochs; per rank 0 and epoch")
    print("| W | epoch | excluded | recorded (all ranks) | all-gathers | bytes sent | bytes received | received / recorded |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    per_sample = []
    for world in [int(w) for w in args.worlds.split(",") if w]:
        for r in measure(world, args.n, args.epochs):
            received = world * r["sent"]
            per_sample.append(received / r["recorded"])
            print(f"| {world} | {r['epoch']} | {r['excluded']:,} | {r['recorded']:,} | {r['gathers']} | {r['sent']:,} | "
                  f"{received:,} | {received / r['recorded']:.2f} |")
    big_n, big_w = 1_281_167, 64
    meta = 2 * 56  # two merges per epoch, 7 int64 of metadata each
    print(f"\nreceived bytes per recorded sample: median {statistics.median(per_sample):.2f}, "
          f"max {max(per_sample):.2f} (12 for the pairs, the rest metadata and padding)")
    print(f"extrapolated to W = {big_w}, N = {big_n:,} with every sample recorded in an epoch: each rank sends "
          f"~{(12 * big_n / big_w + meta) / 1e6:.2f} MB and receives ~{(12 * big_n + big_w * meta) / 1e6:.1f} MB per "
          "epoch (12 B per recorded sample plus 112 B of metadata per rank)")


if __name__ == "__main__":
    main()
