"""GPU checks for the first session lent a GPU (issue 20): prints every figure as a markdown table.

1. **No host sync in the training loop.** A small model trains a few epochs on the device with
   ``torch.cuda.set_sync_debug_mode("error")`` around the per-batch loop (forward, ``record()``,
   backward, optimizer step): any call that waits for the GPU raises. ``probe()`` and ``step()``
   run with the mode at "warn" and the warnings are counted (``step()`` is meant to sync twice: the
   bad-index check and the epoch's counts).
2. **Bookkeeping on the device** at N = 1,281,167 and N = 10**8: ``record`` over the epoch in
   batches, ``record_probe`` for the excluded samples, ``step()``; median ms per epoch (CUDA
   synchronized around each phase), peak memory against ``bytes_per_sample`` x N.
3. **IES against no removal** on a small real model (a CNN on synthetic 16x16 class templates with
   noise, generated on the device: the GPU machine has torch but not mnist1d): test accuracy,
   backprop saved, wall time of the whole run and the speedup, same seed and epochs.

    python benchmarks/gpu_check.py                        # on the GPU machine (cuda:0)
    python benchmarks/gpu_check.py --device cpu --tiny    # rehearsal on CPU at small sizes (CI runs this)
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings
from contextlib import contextmanager
from typing import Dict, Iterator, List

import torch
import torch.nn.functional as F
from torch import nn

import ies
from ies.layout import bytes_per_sample


def sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


@contextmanager
def sync_mode(dev: torch.device, mode: str) -> Iterator[List[str]]:
    """``torch.cuda.set_sync_debug_mode(mode)`` inside (CUDA only); yields the sync warnings seen."""
    seen: List[str] = []
    if dev.type != "cuda":
        yield seen
        return
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode(mode)
        try:
            yield seen
        finally:
            torch.cuda.set_sync_debug_mode("default")
    seen.extend(str(w.message).splitlines()[0] for w in caught if "synchroniz" in str(w.message))


# --------------------------------------------------------------------------- data and model
def make_data(n: int, dev: torch.device, seed: int = 0) -> tuple:
    """Synthetic 10-class images (1x16x16): a class template plus noise whose scale varies per sample."""
    g = torch.Generator(device=dev).manual_seed(seed)
    templates = torch.randn(10, 1, 16, 16, generator=g, device=dev)
    y = torch.randint(0, 10, (n,), generator=g, device=dev)
    scale = 0.3 + 1.0 * torch.rand(n, 1, 1, 1, generator=g, device=dev)
    x = templates[y] + scale * torch.randn(n, 1, 16, 16, generator=g, device=dev)
    return x, y


def make_model(dev: torch.device) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(16, 32, 3, padding=1),
                         nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(32 * 4 * 4, 10)).to(dev)


def train(method: str, data: tuple, test: tuple, epochs: int, dev: torch.device, bs: int = 128) -> Dict[str, float]:
    """One run: ``none`` (shuffled batches) or ``ies`` (tracker.sampler, record, end_epoch)."""
    x, y = data
    n = x.shape[0]
    model = make_model(dev)
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)
    tracker = ies.IES(n, device=dev) if method == "ies" else None
    syncs: Dict[str, List[str]] = {"loop": [], "probe": [], "step": []}
    sync(dev)
    t0 = time.perf_counter()
    for epoch in range(epochs):
        if tracker is None:
            order = torch.randperm(n, generator=torch.Generator().manual_seed(epoch))
        else:
            order = torch.tensor(list(tracker.sampler(shuffle=True, seed=0)), dtype=torch.int64)
        batches = [order[s : s + bs] for s in range(0, order.numel(), bs)]
        with sync_mode(dev, "error"):  # the per-batch loop: nothing may wait for the GPU
            for idx in batches:
                idx_d = idx.to(dev, non_blocking=True)
                losses = F.cross_entropy(model(x[idx_d]), y[idx_d], reduction="none")
                loss = (tracker.record(idx_d, losses) if tracker is not None else losses).mean()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
        if tracker is not None:
            with sync_mode(dev, "warn") as seen:
                tracker.probe(model, (x, y), nn.CrossEntropyLoss(reduction="none"), batch_size=1024)
            syncs["probe"] += seen
            with sync_mode(dev, "warn") as seen:
                tracker.step()
            syncs["step"] += seen
    sync(dev)
    wall = time.perf_counter() - t0
    model.eval()
    with torch.no_grad():
        acc = float((model(test[0]).argmax(1) == test[1]).float().mean())
    saved = tracker.books.savings()["backprop_saved"] if tracker is not None else 0.0
    return {"acc": acc, "saved": saved, "wall": wall, "probe_syncs": len(syncs["probe"]) / epochs,
            "step_syncs": len(syncs["step"]) / epochs}


# --------------------------------------------------------------------------- bookkeeping on the device
def bookkeeping(n: int, dev: torch.device, epochs: int, bs: int) -> Dict[str, float]:
    """Median ms per epoch of record (+ record_probe) and step on the device, after a warm history."""
    g = torch.Generator(device=dev).manual_seed(0)
    base = torch.rand(n, generator=g, device=dev) * 4
    kind = torch.randint(0, 3, (n,), generator=g, device=dev)  # 0: plateau, 1: small noise, 2: large noise
    tracker = ies.IES(n, device=dev)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    state_bytes = torch.cuda.memory_allocated(dev) if dev.type == "cuda" else n * bytes_per_sample(tracker.config)
    rec_ms, step_ms = [], []
    for e in range(epochs):
        noise = torch.randn(n, generator=g, device=dev) * torch.where(kind == 0, 0.0, torch.where(kind == 1, 1e-4, 0.5))
        losses = base + noise
        active, excluded = tracker.active_indices(), tracker.excluded_indices()
        sync(dev)
        t0 = time.perf_counter()
        for s in range(0, active.numel(), bs):
            tracker.record(active[s : s + bs], losses[active[s : s + bs]])
        for s in range(0, excluded.numel(), bs):
            tracker.record_probe(excluded[s : s + bs], losses[excluded[s : s + bs]])
        sync(dev)
        t1 = time.perf_counter()
        tracker.step()
        sync(dev)
        t2 = time.perf_counter()
        if e >= 6:  # warm: the rule judges every sample
            rec_ms.append(1e3 * (t1 - t0))
            step_ms.append(1e3 * (t2 - t1))
    peak = torch.cuda.max_memory_allocated(dev) if dev.type == "cuda" else float("nan")
    return {"n": n, "record_ms": statistics.median(rec_ms), "step_ms": statistics.median(step_ms),
            "state_mb": state_bytes / 1e6, "bytes_per_sample": bytes_per_sample(tracker.config),
            "peak_mb": peak / 1e6, "excluded": int(tracker.excluded.sum()), "batch": bs}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda", help="cuda (default) or cpu for a rehearsal")
    ap.add_argument("--tiny", action="store_true", help="small sizes: N 5,000 and 20,000, 1,000 samples, 2 epochs")
    args = ap.parse_args()
    dev = torch.device(args.device)
    if dev.type == "cpu":
        torch.set_num_threads(1)  # a shared CPU: contended intra-op threads stall
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: run with --device cpu --tiny for a rehearsal")
    sizes = [(5_000, 256), (20_000, 4096)] if args.tiny else [(1_281_167, 256), (100_000_000, 65_536)]
    n_train, epochs = (1_000, 2) if args.tiny else (50_000, 20)
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "CPU"
    print(f"device {name}, torch {torch.__version__}, ies state {bytes_per_sample(ies.IESConfig())} B/sample\n")

    print("| N | batch | record ms/epoch | step ms/epoch | state MB (allocated after init) | peak MB | excluded |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for n, bs in sizes:
        r = bookkeeping(n, dev, epochs=9, bs=bs)
        print(f"| {r['n']:,} | {r['batch']:,} | {r['record_ms']:.1f} | {r['step_ms']:.1f} | {r['state_mb']:,.0f} | "
              f"{r['peak_mb']:,.0f} | {r['excluded']:,} |", flush=True)

    data, test = make_data(n_train, dev, seed=0), make_data(n_train // 4, dev, seed=1)
    print(f"\nsmall CNN on synthetic 16x16 templates, {n_train:,} train / {n_train // 4:,} test, {epochs} epochs, "
          "batch 128, SGD 0.02 momentum 0.9; the per-batch loop under set_sync_debug_mode('error')\n")
    print("| method | test acc | backprop saved | wall s | speedup | host syncs per probe() | per step() |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    runs = {m: train(m, data, test, epochs, dev) for m in ("none", "ies")}
    for m, r in runs.items():
        print(f"| {m} | {r['acc']:.4f} | {r['saved']:.1%} | {r['wall']:.1f} | {runs['none']['wall'] / r['wall']:.2f}x | "
              f"{r['probe_syncs']:.1f} | {r['step_syncs']:.1f} |")


if __name__ == "__main__":
    main()
