"""The plumbing's own cost: IES with threshold 0 (nothing removed) against the plain loop.

A tiny MLP (64-128-128-10) on 1,280 samples, batch 64: the case where per-batch bookkeeping
weighs most. Three loops over the same tensors, alternating epoch by epoch in one process:
the plain loop (DataLoader, shuffle, mean loss); the same loop with IndexedDataset batches
and per-sample losses reduced by hand (what the integration changes, without the tracker);
and the IES loop (tracker.sampler(), record() queueing the batch, end_epoch() whose probe pass has
nothing to do at threshold 0 and whose step() checks and writes the queued records). Figures: medians
of per-repeat ratios, in wall time and in the process's CPU time (``time.thread_time``, which does not
count the time spent waiting for a core on a shared machine).

    .venv/bin/python benchmarks/bench_overhead.py --repeats 101
    .venv/bin/python benchmarks/bench_overhead.py --tiny          # 3 repeats: a quick check that it runs
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import ies


def make() -> tuple:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1280, 64, generator=g)
    y = (x[:, :10].argmax(1) + (x[:, 10] > 1).long()) % 10
    return TensorDataset(x, y)


def model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 10))


def plain_epoch(net, opt, loader) -> None:
    for x, y in loader:
        loss = F.cross_entropy(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()


def indexed_epoch(net, opt, loader) -> None:
    """The IES loop without the tracker: IndexedDataset batches and per-sample losses, reduced by hand."""
    for idx, (x, y) in loader:
        loss = F.cross_entropy(net(x), y, reduction="none").mean()
        opt.zero_grad()
        loss.backward()
        opt.step()


def ies_epoch(net, opt, loader, tracker, ds) -> None:
    for idx, (x, y) in loader:
        loss = tracker.record(idx, F.cross_entropy(net(x), y, reduction="none")).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    tracker.end_epoch(net, ds, nn.CrossEntropyLoss(reduction="none"))


def _median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def breakdown(ds, tracker, plain_loader, ies_loader, net, repeats: int) -> None:
    """Where the difference goes, per epoch: the loader with IndexedDataset, record(), end_epoch()."""
    loader_plain = _median_time(lambda: [None for _ in plain_loader], repeats)
    loader_ies = _median_time(lambda: [None for _ in ies_loader], repeats)
    batches = [(idx, torch.rand(idx.numel())) for idx, _ in ies_loader]

    def records() -> None:
        for idx, losses in batches:
            tracker.record(idx, losses)

    def close() -> None:
        tracker.end_epoch(net, ds, nn.CrossEntropyLoss(reduction="none"))

    rec, end = [], []
    for _ in range(repeats):  # CPU time of this thread
        t0 = time.thread_time()
        records()
        t1 = time.thread_time()
        close()
        rec.append(t1 - t0)
        end.append(time.thread_time() - t1)
    print(f"per epoch ({len(batches)} batches), CPU time: loader {1000 * loader_plain:.2f} ms plain vs {1000 * loader_ies:.2f} ms "
          f"with IndexedDataset + tracker.sampler(); record() {1000 * statistics.median(rec):.2f} ms "
          f"({1e6 * statistics.median(rec) / len(batches):.0f} us per call); end_epoch() "
          f"{1000 * statistics.median(end):.2f} ms")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=15, help="timed epochs per loop")
    ap.add_argument("--tiny", action="store_true", help="3 repeats: a quick check that it runs")
    args = ap.parse_args()
    if args.tiny:
        args.repeats = 3
    torch.set_num_threads(1)
    ds = make()
    nets = [model() for _ in range(3)]
    opts = [torch.optim.SGD(n.parameters(), lr=0.05) for n in nets]
    plain_loader = DataLoader(ds, batch_size=64, shuffle=True)
    indexed_loader = DataLoader(ies.IndexedDataset(ds), batch_size=64, shuffle=True)
    tracker = ies.IES(len(ds), threshold=0.0)
    ies_loader = DataLoader(ies.IndexedDataset(ds), batch_size=64, sampler=tracker.sampler())
    loops = {
        "plain": lambda: plain_epoch(nets[0], opts[0], plain_loader),
        "indexed": lambda: indexed_epoch(nets[1], opts[1], indexed_loader),
        "ies": lambda: ies_epoch(nets[2], opts[2], ies_loader, tracker, ds),
    }
    for run in loops.values():  # warm-up, untimed
        run()
    times: dict = {k: [] for k in loops}
    cpu: dict = {k: [] for k in loops}
    for _ in range(args.repeats):  # alternate: each repeat runs one epoch of each loop
        for k, run in loops.items():
            t0, c0 = time.perf_counter(), time.thread_time()
            run()
            times[k].append(time.perf_counter() - t0)
            cpu[k].append(time.thread_time() - c0)
    breakdown(ds, tracker, plain_loader, ies_loader, nets[2], args.repeats)
    med = {k: 1000 * statistics.median(v) for k, v in times.items()}
    print(f"median ms/epoch: plain loop {med['plain']:.2f}; same loop with IndexedDataset and per-sample losses "
          f"{med['indexed']:.2f}; with IES (threshold 0) {med['ies']:.2f}")
    for clock, t in (("wall", times), ("CPU", cpu)):
        for name, base in (("the tracker (IES vs the indexed loop)", "indexed"),
                           ("the whole integration (IES vs plain)", "plain")):
            r = [b / a for a, b in zip(t[base], t["ies"])]
            q = statistics.quantiles(r, n=4) if len(r) > 1 else [r[0]] * 3
            print(f"{clock} overhead of {name}: median {100 * (statistics.median(r) - 1):+.1f}% "
                  f"(quartiles {100 * (q[0] - 1):+.1f}% .. {100 * (q[2] - 1):+.1f}%)")
    cmed = {k: 1000 * statistics.median(v) for k, v in cpu.items()}
    print(f"median CPU ms/epoch: plain {cmed['plain']:.2f}; indexed {cmed['indexed']:.2f}; IES {cmed['ies']:.2f}")
    print(f"{args.repeats} alternating repeats, one thread, load average {' / '.join(f'{x:.1f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
