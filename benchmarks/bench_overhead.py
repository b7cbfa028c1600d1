"""The plumbing's own cost: IES with threshold 0 (nothing removed) against the plain loop.

A tiny MLP (64-128-128-10) on 1,280 samples, batch 64: the case where per-batch bookkeeping
weighs most. Both loops use a DataLoader over the same tensors; the IES loop wraps the data in
IndexedDataset, samples with tracker.sampler(), records every batch (range and duplicate
checks on) and calls end_epoch (its probe pass has nothing to do at threshold 0). The two
alternate epoch by epoch in one process; the figure is the median ratio over repeats.

    .venv/bin/python benchmarks/bench_overhead.py --repeats 15
"""

from __future__ import annotations

import argparse
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
    for _ in range(repeats):
        t0 = time.perf_counter()
        records()
        t1 = time.perf_counter()
        close()
        rec.append(t1 - t0)
        end.append(time.perf_counter() - t1)
    print(f"per epoch ({len(batches)} batches): loader {1000 * loader_plain:.2f} ms plain vs {1000 * loader_ies:.2f} ms "
          f"with IndexedDataset + tracker.sampler(); record() {1000 * statistics.median(rec):.2f} ms "
          f"({1e6 * statistics.median(rec) / len(batches):.0f} us per call); end_epoch() "
          f"{1000 * statistics.median(end):.2f} ms")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=15, help="timed epochs per loop")
    args = ap.parse_args()
    torch.set_num_threads(1)
    ds = make()
    net_a, net_b = model(), model()
    opt_a = torch.optim.SGD(net_a.parameters(), lr=0.05)
    opt_b = torch.optim.SGD(net_b.parameters(), lr=0.05)
    plain_loader = DataLoader(ds, batch_size=64, shuffle=True)
    tracker = ies.IES(len(ds), threshold=0.0)
    ies_loader = DataLoader(ies.IndexedDataset(ds), batch_size=64, sampler=tracker.sampler())
    plain_epoch(net_a, opt_a, plain_loader)  # warm-up, untimed
    ies_epoch(net_b, opt_b, ies_loader, tracker, ds)
    plain, with_ies = [], []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        plain_epoch(net_a, opt_a, plain_loader)
        t1 = time.perf_counter()
        ies_epoch(net_b, opt_b, ies_loader, tracker, ds)
        t2 = time.perf_counter()
        plain.append(t1 - t0)
        with_ies.append(t2 - t1)
    ratios = [b / a for a, b in zip(plain, with_ies)]
    breakdown(ds, tracker, plain_loader, ies_loader, net_b, args.repeats)
    print(f"plain loop: median {1000 * statistics.median(plain):.1f} ms/epoch; IES (threshold 0): "
          f"median {1000 * statistics.median(with_ies):.1f} ms/epoch")
    print(f"overhead: median {100 * (statistics.median(ratios) - 1):+.1f}% "
          f"(quartiles {100 * (statistics.quantiles(ratios, n=4)[0] - 1):+.1f}% .. "
          f"{100 * (statistics.quantiles(ratios, n=4)[2] - 1):+.1f}%), {args.repeats} alternating repeats, one thread")


if __name__ == "__main__":
    main()
