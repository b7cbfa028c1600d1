"""Per-epoch bookkeeping cost of IES: the tracker vs. a straightforward per-sample version.

One "epoch" here is the bookkeeping of a training epoch without the model: ``record``
for every batch of ``--batch-size`` active samples, ``record_probe`` for every batch of
excluded samples (the probe pass), then the end-of-epoch ``step``. On CPU ``record`` only
queues the batch; ``step`` checks every queued call at once (range, repeated indices), writes
the losses and record flags, commits the history and applies the rule (``ies/records.py``), so
the step column includes those checks and writes. The naive version implements the same rule
the way a first implementation would: a dict of per-sample lists, ``.tolist()`` per batch, a
Python loop over samples at the end of the epoch. It validates nothing, which only flatters
the naive side.

Both see the same losses. Before timing, both have seen enough epochs that the rule is
evaluated for every sample (warm history), and after every epoch the two excluded sets
must be identical (correctness guard; the benchmark aborts otherwise). The losses lie on
the grid ``j * 2**-14`` so that float32 (tracker) and float64 (naive) decide alike.
Timings alternate tracker / naive epoch by epoch; medians are reported, as wall time and as
the process's CPU time (``time.thread_time``: on a shared machine the wall clock also counts
the time the process waited for a core; CPU time does not).

    python benchmarks/bench_bookkeeping.py                       # N = 50,000 and 1,281,167
    python benchmarks/bench_bookkeeping.py --sizes 50000 --repeats 9
    python benchmarks/bench_bookkeeping.py --tiny                # N = 2,000, 1 repeat: a quick check that it runs
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import sys
import time
from typing import Dict, List, Set, Tuple

import torch

from ies import IES

GRID = 2.0 ** -14


# --------------------------------------------------------------------------- the naive version
class NaiveIES:
    """The IES rule as a first implementation would write it: dicts of lists, per-sample loops."""

    def __init__(self, num_samples: int, threshold: float = 1e-3, order: int = 2, window: int = 3, m: int = 1):
        self.n, self.threshold, self.order, self.window, self.m = num_samples, threshold, order, window, m
        self.history: Dict[int, List[float]] = {i: [] for i in range(num_samples)}
        self.pending: Dict[int, float] = {}
        self.excluded: Set[int] = set()
        self.coef = [(-1) ** j * math.comb(order, j) for j in range(order + 1)]

    def record(self, indices: torch.Tensor, losses: torch.Tensor) -> torch.Tensor:
        for i, v in zip(indices.tolist(), losses.detach().tolist()):
            self.pending[i] = v
        return losses

    record_scores = record

    def active_indices(self) -> List[int]:
        return [i for i in range(self.n) if i not in self.excluded]

    def step(self) -> Tuple[int, int, int]:
        need = self.order + self.window + self.m
        for i, v in self.pending.items():
            h = self.history[i]
            h.append(v)
            if len(h) > need:
                h.pop(0)
        mastered = set()
        for i in range(self.n):
            h = self.history[i]
            if len(h) < need:
                continue
            if any(not math.isfinite(x) for x in h):
                continue
            diffs = []
            for t in range(self.order, need):
                d = 0.0
                for j, c in enumerate(self.coef):
                    d += c * h[t - j]
                diffs.append(d)
            avgs = []
            for s in range(self.m + 1):
                tot = 0.0
                for d in diffs[s : s + self.window]:
                    tot += abs(d)
                avgs.append(tot / self.window)
            if sum(avgs[-self.m :]) < self.threshold:
                mastered.add(i)
        new = len(mastered - self.excluded)
        back = len(self.excluded - mastered)
        self.excluded = mastered
        self.pending = {}
        return len(mastered), new, back


# --------------------------------------------------------------------------- data
class Losses:
    """Deterministic per-epoch losses on the 2**-14 grid with a realistic mix: plateaus
    (mastered), small noise around the threshold (in and out), large noise (never), jumps."""

    def __init__(self, n: int, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.n, self.seed = n, seed
        self.base = (torch.rand(n, generator=g) * 4 / GRID).round() * GRID
        self.kind = torch.randint(0, 20, (n,), generator=g)  # 0-8 plateau, 9-13 small noise, 14-17 large, 18-19 jumps

    def epoch(self, e: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(self.seed * 100_003 + e)
        small = torch.randint(-12, 13, (self.n,), generator=g).float() * GRID
        large = torch.randint(-2000, 2001, (self.n,), generator=g).float() * GRID
        jump = (torch.rand(self.n, generator=g) < 0.15).float() * 0.5
        k = self.kind
        x = self.base.clone()
        x = torch.where((k >= 9) & (k < 14), x + small, x)
        x = torch.where((k >= 14) & (k < 18), x + large, x)
        x = torch.where(k >= 18, x + jump, x)
        return x.clamp(0, 8 - GRID)


def batches(active: torch.Tensor, excluded: torch.Tensor, losses: torch.Tensor, epoch: int, bs: int):
    """Shuffled batches of active samples (training) and in-order batches of excluded (scoring)."""
    g = torch.Generator().manual_seed(epoch)
    act = active[torch.randperm(active.numel(), generator=g)]
    train = [(act[s : s + bs], losses[act[s : s + bs]]) for s in range(0, act.numel(), bs)]
    score = [(excluded[s : s + bs], losses[excluded[s : s + bs]]) for s in range(0, excluded.numel(), bs)]
    return train, score


def run_fast(tr: IES, train, score) -> Tuple[float, float, float, float]:
    """``(wall total, wall step, cpu total, cpu step)`` in seconds."""
    t0, c0 = time.perf_counter(), time.thread_time()
    for idx, val in train:
        tr.record(idx, val)
    for idx, val in score:
        tr.record_probe(idx, val)
    t1, c1 = time.perf_counter(), time.thread_time()
    tr.step()
    t2, c2 = time.perf_counter(), time.thread_time()
    return t2 - t0, t2 - t1, c2 - c0, c2 - c1


def run_slow(nv: NaiveIES, train, score) -> Tuple[float, float]:
    """``(wall, cpu)`` in seconds."""
    t0, c0 = time.perf_counter(), time.thread_time()
    for idx, val in train:
        nv.record(idx, val)
    for idx, val in score:
        nv.record_scores(idx, val)
    nv.step()
    return time.perf_counter() - t0, time.thread_time() - c0


def guard(tr: IES, nv: NaiveIES, where: str) -> None:
    fast = tr.excluded_indices().tolist()
    if fast != sorted(nv.excluded):
        diff = set(fast) ^ nv.excluded
        sys.exit(f"correctness guard failed {where}: excluded sets differ at {len(diff)} samples, e.g. {sorted(diff)[:5]}")


def bench(n: int, repeats: int, slow_repeats: int, bs: int) -> dict:
    data = Losses(n)
    tr, nv = IES(n), NaiveIES(n)
    need = tr.config.order + tr.config.window + tr.config.m
    epoch = 0

    def epoch_batches():
        ex = tr.excluded_indices()
        return batches(tr.active_indices(), ex, data.epoch(epoch), epoch, bs)

    # warm history: both see `need` epochs, so the rule is evaluated for every sample
    t_warm = time.perf_counter()
    for _ in range(need):
        train, score = epoch_batches()
        run_fast(tr, train, score)
        run_slow(nv, train, score)
        epoch += 1
        guard(tr, nv, f"after warm-up epoch {epoch}")
    t_warm = time.perf_counter() - t_warm
    assert all(len(h) == need for h in nv.history.values())
    if not 0 < len(nv.excluded) < n:
        sys.exit("the benchmark data should leave some but not all samples excluded")

    fast_total, fast_step, slow_total, excl, back = [], [], [], [], []
    cpu_total, cpu_step, cpu_slow = [], [], []
    for r in range(max(repeats, slow_repeats)):
        train, score = epoch_batches()
        excl.append(len(score) and sum(i.numel() for i, _ in score))
        before = set(nv.excluded)
        pair = []
        if r < repeats:
            pair.append("fast")
        if r < slow_repeats:
            pair.append("slow")
        if r % 2:
            pair.reverse()  # alternate which one runs first
        for which in pair:
            if which == "fast":
                tot, st, ctot, cst = run_fast(tr, train, score)
                fast_total.append(tot)
                fast_step.append(st)
                cpu_total.append(ctot)
                cpu_step.append(cst)
            else:
                wall, cpu = run_slow(nv, train, score)
                slow_total.append(wall)
                cpu_slow.append(cpu)
        if len(pair) == 1:  # keep the two in lockstep: the other one consumes the epoch untimed
            (run_slow(nv, train, score) if pair == ["fast"] else run_fast(tr, train, score))
        back.append(len(before - nv.excluded))
        epoch += 1
        guard(tr, nv, f"after timed epoch {epoch}")

    f, s, fs = statistics.median(fast_total), statistics.median(slow_total), statistics.median(fast_step)
    cf, cs, cfs = statistics.median(cpu_total), statistics.median(cpu_slow), statistics.median(cpu_step)
    return {
        "n": n, "fast_ms": 1e3 * f, "step_ms": 1e3 * fs, "slow_ms": 1e3 * s, "speedup": s / f,
        "cpu_fast_ms": 1e3 * cf, "cpu_step_ms": 1e3 * cfs, "cpu_slow_ms": 1e3 * cs, "cpu_speedup": cs / cf,
        "repeats": len(fast_total), "slow_repeats": len(slow_total), "excluded": statistics.median(excl),
        "reincluded": statistics.median(back), "warm_s": t_warm,
    }


def profile_step(n: int, bs: int) -> None:
    """cProfile (CPU time) of one step() after the warm-up, the records of a full epoch queued."""
    import cProfile
    import pstats

    torch.set_num_threads(1)
    data, tr = Losses(n), IES(n)
    for e in range(8):
        train, score = batches(tr.active_indices(), tr.excluded_indices(), data.epoch(e), e, bs)
        if e < 7:
            run_fast(tr, train, score)
    for idx, val in train:
        tr.record(idx, val)
    for idx, val in score:
        tr.record_probe(idx, val)
    prof = cProfile.Profile(time.thread_time)
    prof.enable()
    tr.step()
    prof.disable()
    print(f"one step() at N = {n:,} (CPU time, load average {_load()}):")
    pstats.Stats(prof).sort_stats("tottime").print_stats(15)


def _load() -> str:
    try:
        return " / ".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:  # pragma: no cover - not POSIX
        return "n/a"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="50000,1281167", help="comma-separated N (default: 50000,1281167)")
    ap.add_argument("--repeats", type=int, default=5, help="timed epochs per implementation (median)")
    ap.add_argument("--slow-repeats", type=int, default=None,
                    help="timed epochs of the naive version (default: --repeats)")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (default 1: the naive version is single-threaded, and intra-op threads "
                         "stall on a shared machine); 0 keeps torch's default")
    ap.add_argument("--min-speedup", type=float, default=50.0)
    ap.add_argument("--max-step-ms", type=float, default=30.0, help="target for the step at N=1,281,167")
    ap.add_argument("--tiny", action="store_true", help="N = 2,000, 1 repeat, no targets: a quick check that it runs")
    ap.add_argument("--profile-step", type=int, default=0, metavar="N",
                    help="only profile one warm step() at N (cProfile on CPU time): where the step's time goes")
    args = ap.parse_args()
    if args.profile_step:
        return profile_step(args.profile_step, args.batch_size)
    if args.tiny:
        args.sizes, args.repeats, args.slow_repeats = "2000", 1, 1
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    sizes = [int(s) for s in args.sizes.split(",") if s]
    slow_repeats = args.slow_repeats or args.repeats

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, python {platform.python_version()}, "
          f"{platform.machine()}; batch size {args.batch_size}; rule: order 2, window 3, m 1, threshold 1e-3")
    print(f"medians over {args.repeats} epochs (naive: {slow_repeats}), alternating; the naive version is "
          f"checked to give the same excluded set after every epoch; load average at start {_load()}")
    print("| N | tracker ms/epoch | of which step | naive ms/epoch | speedup | tracker CPU ms | step CPU ms | "
          "naive CPU ms | CPU speedup | excluded | re-included |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    ok = True
    rows = []
    for n in sizes:
        r = bench(n, args.repeats, slow_repeats, args.batch_size)
        rows.append(r)
        print(f"| {r['n']:,} | {r['fast_ms']:.1f} | {r['step_ms']:.1f} | {r['slow_ms']:,.1f} | {r['speedup']:.1f}x | "
              f"{r['cpu_fast_ms']:.1f} | {r['cpu_step_ms']:.1f} | {r['cpu_slow_ms']:,.1f} | {r['cpu_speedup']:.1f}x | "
              f"{int(r['excluded']):,} | {int(r['reincluded']):,} |", flush=True)
    print(f"\nload average at the end {_load()}")
    if args.tiny:
        return
    for r in rows:
        for what, speed, step in (("wall", r["speedup"], r["step_ms"]), ("CPU", r["cpu_speedup"], r["cpu_step_ms"])):
            good = speed >= args.min_speedup
            ok &= good
            print(f"[{'PASS' if good else 'FAIL'}] N={r['n']:,}: {what} speedup {speed:.1f}x >= {args.min_speedup:g}x")
            if r["n"] == 1_281_167:
                good = step < args.max_step_ms
                ok &= good
                print(f"[{'PASS' if good else 'FAIL'}] N={r['n']:,}: {what} step {step:.1f} ms < {args.max_step_ms:g} ms")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
